//! Which stored events are alive, and moving events between sled and the segments.
//!
//! Retention never edits a segment in place: it raises a topic's `trimmed_through` (and
//! the log-wide `swept` mark of age and disk retention) in sled, and from then on every
//! reader leaves those events out (`Trimmed::alive`). Files are freed afterwards, whole
//! (`retention::reclaim`). Databases of schema 3 and before kept events in sled under
//! `e` keys, and backups still carry them so: `absorb_sled_events` moves them into the
//! segments when the database is opened. Opening also builds the in-memory per-topic
//! index (`index_record`) and drops the one schema 4 kept in sled (`drop_sled_index`).

use std::collections::HashMap;
use std::sync::Arc;

use super::backup::{EachEvent, EventSource};
use super::index::IndexBuilder;
use super::meta::{self, TopicMeta};
use super::record::decode_head;
use super::segments::Segments;
use super::{keys, StoreError};
use crate::config::StorageConfig;

/// Segment size when the configuration leaves it to us: 1/64 of the disk budget, within
/// 1-4 MiB. Count and age retention free a segment only once all of it is gone, so what
/// is kept overhangs by about one segment: small segments keep `db/` close to what is
/// kept (soak, 100 topics x 2 000 events: 16 MiB segments 2.35x the retained JSON, 4 MiB
/// 2.10x), and a 4 GiB budget is still only ~1 000 files.
pub fn segment_bytes(config: &StorageConfig) -> u64 {
    if config.segment_bytes > 0 {
        return config.segment_bytes;
    }
    match config.retention_max_disk_bytes {
        0 => 4 << 20,
        budget => (budget / 64).clamp(1 << 20, 4 << 20),
    }
}

/// Retention's marks, as readers need them.
#[derive(Clone, Debug, Default)]
pub struct Trimmed {
    /// Per topic: events with seq at or below this are gone.
    pub topics: HashMap<String, u64>,
    /// Every event with seq at or below this is gone (age and disk retention).
    pub swept: u64,
}

impl Trimmed {
    pub fn load(tree: &sled::Tree) -> Result<Trimmed, StoreError> {
        let mut topics = HashMap::new();
        for kv in tree.scan_prefix([keys::TOPIC]) {
            let (k, v) = kv?;
            let m = TopicMeta::decode(&v);
            if m.trimmed_through > 0 {
                topics.insert(
                    String::from_utf8_lossy(&k[1..]).into_owned(),
                    m.trimmed_through,
                );
            }
        }
        let swept = meta::get_u64(tree, meta::SWEPT)?.unwrap_or(0);
        Ok(Trimmed { topics, swept })
    }

    pub fn through(&self, topic: &str) -> u64 {
        self.topics.get(topic).copied().unwrap_or(0).max(self.swept)
    }

    pub fn alive(&self, seq: u64, topic: &str) -> bool {
        seq > self.through(topic)
    }

    /// For a stored record: alive unless retention removed it (an unreadable head is
    /// kept, so that the reader reports it).
    pub fn alive_record(&self, seq: u64, record: &[u8]) -> bool {
        match decode_head(record) {
            Ok(h) => self.alive(seq, h.topic),
            Err(_) => true,
        }
    }
}

/// Moves events kept under sled `e` keys (a database of schema 3 or before, or one just
/// restored from a backup) into the segments, then removes them from sled. Safe to cut
/// at any point: what the segments already hold is not appended again, and the keys go
/// only once the segments are durable. Returns how many events moved.
pub fn absorb_sled_events(
    db: &sled::Db,
    tree: &sled::Tree,
    segments: &Segments,
    next_seq: u64,
    index: &mut IndexBuilder,
    trimmed: &Trimmed,
) -> Result<u64, StoreError> {
    if tree.scan_prefix([keys::EVENT]).next().is_none() {
        return Ok(0);
    }
    let have = segments.last_seq();
    let mut moved = 0u64;
    let mut chunk: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut chunk_bytes = 0usize;
    for kv in tree.scan_prefix([keys::EVENT]) {
        let (k, v) = kv?;
        let Some(seq) = keys::event_seq(&k) else {
            continue;
        };
        if seq <= have {
            continue;
        }
        chunk_bytes += v.len();
        index_record(index, trimmed, seq, &v);
        chunk.push((seq, v.to_vec()));
        if chunk_bytes >= 4 << 20 {
            moved += chunk.len() as u64;
            segments.append(&std::mem::take(&mut chunk))?;
            chunk_bytes = 0;
        }
    }
    moved += chunk.len() as u64;
    segments.append(&chunk)?;
    segments.sync()?;
    // The marker first: with the keys gone, it alone says where the seqs go on.
    tree.insert(keys::meta(meta::NEXT_SEQ), &next_seq.to_be_bytes())?;
    remove_prefix(tree, keys::EVENT)?;
    db.flush()?;
    tracing::info!(
        events = moved,
        "moved the events from the database into segment files"
    );
    Ok(moved)
}

/// Adds a stored record to the index being built, unless retention removed it.
pub fn index_record(index: &mut IndexBuilder, trimmed: &Trimmed, seq: u64, record: &[u8]) {
    if let Ok(h) = decode_head(record) {
        index_topic(index, trimmed, seq, h.topic);
    }
}

/// The same for a record whose topic is already decoded (segments at open).
pub fn index_topic(index: &mut IndexBuilder, trimmed: &Trimmed, seq: u64, topic: &str) {
    if trimmed.alive(seq, topic) {
        index.push(topic, seq);
    }
}

/// Removes the per-topic index that schema 4 and before kept in sled (`i` keys; a
/// database not yet opened by this build, or one just restored from an older backup):
/// the index is built from the segments now. In chunks; safe to cut at any point.
pub fn drop_sled_index(db: &sled::Db, tree: &sled::Tree) -> Result<(), StoreError> {
    let removed = remove_prefix(tree, keys::INDEX)?;
    if removed > 0 {
        db.flush()?;
        tracing::info!(
            entries = removed,
            "removed the per-topic index from the database (it is kept in memory now)"
        );
    }
    Ok(())
}

/// Removes every key under a one-byte prefix, 10 000 keys per batch (a batch is atomic;
/// cut between batches, what is left is removed the next time). Returns how many.
fn remove_prefix(tree: &sled::Tree, prefix: u8) -> Result<u64, StoreError> {
    let mut removed = 0u64;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0u64;
        for k in tree.scan_prefix([prefix]).keys().take(10_000) {
            batch.remove(k?);
            n += 1;
        }
        if n == 0 {
            return Ok(removed);
        }
        tree.apply_batch(batch)?;
        removed += n;
    }
}

/// The live events a backup copies: any left under sled `e` keys (a database not yet
/// opened by this build), then the segments, leaving out what retention removed.
pub struct BackupEvents {
    pub legacy: Option<sled::Tree>,
    pub segments: Arc<Segments>,
    pub trimmed: Trimmed,
}

impl EventSource for BackupEvents {
    fn each(&self, upto: u64, f: &mut EachEvent<'_>) -> Result<(), StoreError> {
        let mut last = 0;
        if let Some(tree) = &self.legacy {
            for kv in tree.range(keys::event(0)..=keys::event(upto)) {
                let (k, v) = kv?;
                if let Some(seq) = keys::event_seq(&k) {
                    if self.trimmed.alive_record(seq, &v) {
                        f(seq, &v)?;
                    }
                    last = seq;
                }
            }
        }
        let mut failed = None;
        self.segments.scan(last + 1, upto, |seq, v| {
            if self.trimmed.alive_record(seq, &v) {
                if let Err(e) = f(seq, &v) {
                    failed = Some(e);
                    return false;
                }
            }
            true
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
