//! Schema versions and the steps between them.
//!
//! The `log` tree holds the marker `m schema` (u32, big-endian). At open:
//! - no marker: a new database; its markers are written in one atomic batch;
//! - a marker newer than [`SCHEMA_VERSION`]: refused ([`StoreError::NewerSchema`]);
//! - an older marker: every step from it up to [`SCHEMA_VERSION`] runs, in order, in
//!   one atomic sled batch that writes the new marker last, so a crash leaves either the
//!   old database or the fully migrated one, never a half-migrated one.
//!
//! Every open also records which surepush version last wrote the database
//! (`m written_by`). A step is a function from schema N to N+1; add one to [`STEPS`]
//! and raise [`SCHEMA_VERSION`] together.
//!
//! Schema history:
//! 1. events, index, topic metadata, jobs; markers `schema`, `epoch`, `next_seq`.
//! 2. adds `created_ms` (when the database was made) and `written_by` (the surepush
//!    version that last opened it for writing).
//! 3. index entries may be runs (`i` topic 0x00 first -> last). Every
//!    schema-2 entry is already a run of one, so the step writes nothing but the
//!    marker, which keeps older builds (which would read a run as its first event
//!    alone) from opening the database.
//! 4. events live in segment files under `db/events` (`segments.rs`), not under `e` keys.
//! 5. the per-topic index is kept in memory (`index.rs`); the `i` keys are removed.

use std::collections::BTreeMap;

use super::{keys, meta, now_ms, StoreError, SCHEMA_VERSION};

/// The surepush version this build records as the database's last writer.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Meta names added by schema 2.
pub const CREATED_MS: &str = "created_ms";
pub const WRITTEN_BY: &str = "written_by";

/// The writes of a migration, applied as one atomic batch with the marker last.
/// `get` sees earlier steps' writes; `tree` is the database as it was before the
/// migration, for scans.
pub struct Pending<'a> {
    pub tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Pending<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(w) => Ok(w.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }
}

/// One schema step: turns a database of schema `from` into schema `from + 1`.
struct Step {
    from: u32,
    what: &'static str,
    run: fn(&mut Pending) -> Result<(), StoreError>,
}

const STEPS: &[Step] = &[
    Step {
        from: 1,
        what:
            "record the creation time (the oldest retained event's, or now) and the writer version",
        run: step_1_to_2,
    },
    Step {
        from: 2,
        what: "per-topic index entries may be runs of seqs (existing entries are runs of one)",
        run: step_2_to_3,
    },
    Step {
        from: 3,
        what: "events move from the database into segment files under db/events (done right after opening)",
        run: step_3_to_4,
    },
    Step {
        from: 4,
        what: "the per-topic index is kept in memory, built from the segments (the database's copy is removed right after opening)",
        run: step_4_to_5,
    },
];

fn step_1_to_2(p: &mut Pending) -> Result<(), StoreError> {
    let oldest = p
        .tree
        .scan_prefix([keys::EVENT])
        .next()
        .transpose()?
        .and_then(|(_, v)| super::record::decode_head(&v).ok().map(|h| h.time_ms));
    let created = oldest.unwrap_or_else(now_ms);
    p.insert(keys::meta(CREATED_MS), created.to_be_bytes());
    p.insert(keys::meta(WRITTEN_BY), VERSION.as_bytes());
    Ok(())
}

fn step_2_to_3(_: &mut Pending) -> Result<(), StoreError> {
    Ok(())
}

/// Nothing to write here: `stored::absorb_sled_events` moves the events once the
/// segments are open. The marker keeps an older build (which would not see them) out.
fn step_3_to_4(_: &mut Pending) -> Result<(), StoreError> {
    Ok(())
}

/// Nothing to write here: `stored::drop_sled_index` removes the old index once the
/// log is open. The marker keeps an older build (which would find no index) out.
fn step_4_to_5(_: &mut Pending) -> Result<(), StoreError> {
    Ok(())
}

/// What opening did to the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The marker found; None for a new database.
    pub found: Option<u32>,
    /// The schema now.
    pub schema: u32,
    /// Descriptions of the steps that ran.
    pub steps: Vec<String>,
}

/// The schema marker of a database, None when it has none (new or empty).
pub fn schema_of(tree: &sled::Tree) -> Result<Option<u32>, StoreError> {
    Ok(tree.get(keys::meta(meta::SCHEMA))?.map(|v| {
        // A marker of another length is not one this build wrote: treat it as newer.
        u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4]))
    }))
}

/// Refuses a schema newer than this build's.
pub fn check_readable(found: u32) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings the `log` tree to [`SCHEMA_VERSION`] (creating a new database's markers),
/// records this version as the last writer, and flushes.
pub fn upgrade(db: &sled::Db, tree: &sled::Tree) -> Result<Opened, StoreError> {
    let found = schema_of(tree)?;
    let from = match found {
        Some(v) => {
            check_readable(v)?;
            v
        }
        None => 0,
    };
    let steps: Vec<&Step> = if from == 0 {
        Vec::new()
    } else {
        (from..SCHEMA_VERSION)
            .map(|v| {
                STEPS
                    .iter()
                    .find(|s| s.from == v)
                    .ok_or(StoreError::NoMigration { from: v })
            })
            .collect::<Result<_, _>>()?
    };
    let written_by = tree.get(keys::meta(WRITTEN_BY))?;
    if found == Some(SCHEMA_VERSION) && written_by.as_deref() == Some(VERSION.as_bytes()) {
        return Ok(Opened {
            found,
            schema: SCHEMA_VERSION,
            steps: Vec::new(),
        });
    }
    let mut p = Pending {
        tree,
        writes: BTreeMap::new(),
    };
    if from == 0 {
        let epoch: u32 = rand::random();
        p.insert(keys::meta(meta::EPOCH), u64::from(epoch).to_be_bytes());
        p.insert(keys::meta(meta::NEXT_SEQ), 1u64.to_be_bytes());
        p.insert(keys::meta(CREATED_MS), now_ms().to_be_bytes());
    }
    for step in &steps {
        (step.run)(&mut p)?;
    }
    p.insert(keys::meta(WRITTEN_BY), VERSION.as_bytes());
    let mut batch = sled::Batch::default();
    for (k, v) in p.writes {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    // The marker last: the schema says what the rest of the batch made.
    batch.insert(keys::meta(meta::SCHEMA), &SCHEMA_VERSION.to_be_bytes());
    tree.apply_batch(batch)?;
    db.flush()?;
    for step in &steps {
        tracing::info!(
            from = step.from,
            to = step.from + 1,
            "migrated the database: {}",
            step.what
        );
    }
    Ok(Opened {
        found,
        schema: SCHEMA_VERSION,
        steps: steps.iter().map(|s| s.what.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (sled::Db, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("log").unwrap();
        (db, tree)
    }

    #[test]
    fn steps_are_contiguous_up_to_the_current_schema() {
        for v in 1..SCHEMA_VERSION {
            assert!(STEPS.iter().any(|s| s.from == v), "no step from {v}");
        }
        assert!(STEPS.iter().all(|s| s.from < SCHEMA_VERSION));
    }

    #[test]
    fn new_database_gets_every_marker() {
        let (db, tree) = temp_db();
        let o = upgrade(&db, &tree).unwrap();
        assert_eq!(o.found, None);
        assert_eq!(schema_of(&tree).unwrap(), Some(SCHEMA_VERSION));
        assert!(meta::get_u64(&tree, meta::EPOCH).unwrap().is_some());
        assert_eq!(meta::get_u64(&tree, meta::NEXT_SEQ).unwrap(), Some(1));
        assert!(meta::get_u64(&tree, CREATED_MS).unwrap().is_some());
        assert_eq!(
            tree.get(keys::meta(WRITTEN_BY)).unwrap().unwrap(),
            VERSION.as_bytes()
        );
        // a second open changes nothing
        let again = upgrade(&db, &tree).unwrap();
        assert_eq!(again.found, Some(SCHEMA_VERSION));
        assert!(again.steps.is_empty());
    }

    #[test]
    fn schema_1_is_migrated_with_the_oldest_event_time() {
        let (db, tree) = temp_db();
        tree.insert(keys::meta(meta::SCHEMA), &1u32.to_be_bytes())
            .unwrap();
        tree.insert(keys::meta(meta::EPOCH), &7u64.to_be_bytes())
            .unwrap();
        let rec = super::super::record::encode_record(1_600_000_000_000, "a", "t", "{}");
        tree.insert(keys::event(5), rec).unwrap();
        let o = upgrade(&db, &tree).unwrap();
        assert_eq!(o.found, Some(1));
        assert_eq!(o.steps.len(), (SCHEMA_VERSION - 1) as usize);
        assert_eq!(schema_of(&tree).unwrap(), Some(SCHEMA_VERSION));
        assert_eq!(
            meta::get_u64(&tree, CREATED_MS).unwrap(),
            Some(1_600_000_000_000)
        );
        // the epoch of an existing database is kept
        assert_eq!(meta::get_u64(&tree, meta::EPOCH).unwrap(), Some(7));
    }

    #[test]
    fn newer_schema_is_refused_and_left_alone() {
        let (db, tree) = temp_db();
        tree.insert(keys::meta(meta::SCHEMA), &99u32.to_be_bytes())
            .unwrap();
        let e = upgrade(&db, &tree).unwrap_err();
        assert!(matches!(
            e,
            StoreError::NewerSchema {
                found: 99,
                supported: SCHEMA_VERSION
            }
        ));
        assert!(e.to_string().contains("newer surepush"));
        assert_eq!(schema_of(&tree).unwrap(), Some(99));
        assert!(tree.get(keys::meta(WRITTEN_BY)).unwrap().is_none());
    }
}
