//! The per-topic index: which seqs belong to a topic, stored as runs.
//!
//! Key `i` topic 0x00 first(8, BE) -> value: empty (the run is `first` alone, which is
//! how schema 2 wrote every entry) or last(8, BE) (every seq from `first` to `last`
//! inclusive is the topic's). The writer stages one run per stretch of consecutive
//! events on one topic in a batch, so a batch of 1 000 events on one topic costs one
//! index write instead of 1 000: with sled, each write costs as much as the event's own.
//!
//! Events leave a topic only from its oldest end (retention), so trimming cuts runs at
//! the front: [`trim_through`].

use super::keys;
use super::StoreError;
use crate::model::Topic;

/// Seqs `first..=last`, all of one topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub last: u64,
}

impl Run {
    pub fn one(seq: u64) -> Run {
        Run {
            first: seq,
            last: seq,
        }
    }

    /// The stored value: empty for a run of one, else `last`.
    pub fn value(&self) -> Vec<u8> {
        if self.first == self.last {
            Vec::new()
        } else {
            self.last.to_be_bytes().to_vec()
        }
    }

    /// A stored entry; None when it is not one (wrong length, `last` before `first`).
    pub fn decode(key: &[u8], value: &[u8]) -> Option<Run> {
        let first = keys::index_seq(key)?;
        let last = match value.len() {
            0 => first,
            8 => keys::be_u64(value),
            _ => return None,
        };
        (last >= first).then_some(Run { first, last })
    }
}

/// The runs one batch adds: consecutive seqs on one topic extend the last run.
#[derive(Default)]
pub struct RunsBuilder {
    runs: Vec<(Topic, Run)>,
}

impl RunsBuilder {
    pub fn push(&mut self, topic: &Topic, seq: u64) {
        if let Some((t, run)) = self.runs.last_mut() {
            if t == topic && run.last.checked_add(1) == Some(seq) {
                run.last = seq;
                return;
            }
        }
        self.runs.push((topic.clone(), Run::one(seq)));
    }

    /// Writes the runs into `batch` and empties the builder.
    pub fn write_into(&mut self, batch: &mut sled::Batch) {
        for (topic, run) in self.runs.drain(..) {
            batch.insert(keys::index(topic.as_str(), run.first), run.value());
        }
    }
}

/// The run holding `seq`, if one starts at or before it and reaches it.
fn run_holding(tree: &sled::Tree, topic: &str, seq: u64) -> Result<Option<Run>, StoreError> {
    let found = tree
        .range(keys::index(topic, 0)..=keys::index(topic, seq))
        .next_back()
        .transpose()?;
    Ok(found
        .and_then(|(k, v)| Run::decode(&k, &v))
        .filter(|r| r.first <= seq && seq <= r.last))
}

/// The topic's seqs in `after+1..=upto`, ascending, at most `limit`.
pub fn seqs_after(
    tree: &sled::Tree,
    topic: &str,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    let Some(start) = after.checked_add(1) else {
        return Ok(out);
    };
    if start > upto || limit == 0 {
        return Ok(out);
    }
    let take = |run: Run, out: &mut Vec<u64>| {
        let from = run.first.max(start);
        let to = run.last.min(upto);
        let mut s = from;
        while s <= to && out.len() < limit {
            out.push(s);
            s += 1;
        }
    };
    // a run that began at or before `after` may reach past it
    if let Some(run) = run_holding(tree, topic, after)? {
        take(run, &mut out);
    }
    for kv in tree.range(keys::index(topic, start)..=keys::index(topic, upto)) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = kv?;
        if let Some(run) = Run::decode(&k, &v) {
            take(run, &mut out);
        }
    }
    Ok(out)
}

/// The topic's seqs below `before` (all when None), newest first, at most `limit`.
pub fn seqs_before(
    tree: &sled::Tree,
    topic: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    let below = before.unwrap_or(u64::MAX);
    if below == 0 || limit == 0 {
        return Ok(out);
    }
    for kv in tree
        .range(keys::index(topic, 0)..keys::index(topic, below))
        .rev()
    {
        let (k, v) = kv?;
        let Some(run) = Run::decode(&k, &v) else {
            continue;
        };
        let mut s = run.last.min(below - 1);
        loop {
            if out.len() >= limit {
                return Ok(out);
            }
            out.push(s);
            if s == run.first {
                break;
            }
            s -= 1;
        }
    }
    Ok(out)
}

/// Stages into `batch` the removal of every index entry of `topic` up to `through`: runs
/// wholly at or below it go, a run reaching past it starts again at `through + 1`.
pub fn trim_through(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    topic: &str,
    through: u64,
) -> Result<(), StoreError> {
    for kv in tree.range(keys::index(topic, 0)..=keys::index(topic, through)) {
        let (k, v) = kv?;
        batch.remove(k.as_ref());
        if let Some(run) = Run::decode(&k, &v) {
            if run.last > through {
                let rest = Run {
                    first: through + 1,
                    last: run.last,
                };
                batch.insert(keys::index(topic, rest.first), rest.value());
            }
        }
    }
    Ok(())
}

/// An entry as a snapshot at `head` holds it: cut to end at `head`, None when it starts
/// after it (or is not an index entry).
pub fn clamp_to(key: &[u8], value: &[u8], head: u64) -> Option<Vec<u8>> {
    let run = Run::decode(key, value)?;
    (run.first <= head).then(|| {
        Run {
            first: run.first,
            last: run.last.min(head),
        }
        .value()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("log").unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    /// Writes these seqs (ascending) of topics as one batch would.
    fn write(tree: &sled::Tree, seqs: &[(&str, u64)]) {
        let mut b = RunsBuilder::default();
        for (t, s) in seqs {
            b.push(&topic(t), *s);
        }
        let mut batch = sled::Batch::default();
        b.write_into(&mut batch);
        tree.apply_batch(batch).unwrap();
    }

    fn entries(tree: &sled::Tree) -> Vec<(u64, u64)> {
        tree.scan_prefix([keys::INDEX])
            .map(|kv| {
                let (k, v) = kv.unwrap();
                let r = Run::decode(&k, &v).unwrap();
                (r.first, r.last)
            })
            .collect()
    }

    /// a: 1..=3 and 5..=6; b: 4, written as one batch.
    fn sample() -> sled::Tree {
        let t = tree();
        write(
            &t,
            &[("a", 1), ("a", 2), ("a", 3), ("b", 4), ("a", 5), ("a", 6)],
        );
        t
    }

    #[test]
    fn consecutive_events_of_a_topic_are_one_entry() {
        let t = sample();
        assert_eq!(entries(&t), vec![(1, 3), (5, 6), (4, 4)]);
        // a run of one is stored as schema 2 stored every entry: an empty value
        assert_eq!(t.get(keys::index("b", 4)).unwrap().unwrap().len(), 0);
        assert_eq!(Run::decode(&keys::index("a", 9), &[1, 2, 3]), None);
        assert_eq!(Run::decode(&keys::index("a", 9), &3u64.to_be_bytes()), None);
    }

    #[test]
    fn reads_cut_runs_at_both_ends() {
        let t = sample();
        write(&t, &[("a", 7)]); // schema-2 style single entries mix with runs
        let all = |after, upto, limit| seqs_after(&t, "a", after, upto, limit).unwrap();
        assert_eq!(all(0, u64::MAX, 100), vec![1, 2, 3, 5, 6, 7]);
        assert_eq!(all(1, u64::MAX, 100), vec![2, 3, 5, 6, 7]);
        assert_eq!(all(2, 5, 100), vec![3, 5]);
        assert_eq!(all(0, u64::MAX, 4), vec![1, 2, 3, 5]);
        assert_eq!(all(4, 4, 100), Vec::<u64>::new());
        assert_eq!(all(7, u64::MAX, 100), Vec::<u64>::new());
        assert_eq!(all(u64::MAX, u64::MAX, 100), Vec::<u64>::new());
        assert_eq!(seqs_after(&t, "b", 0, 10, 10).unwrap(), vec![4]);
        assert_eq!(seqs_after(&t, "c", 0, 10, 10).unwrap(), Vec::<u64>::new());

        let back = |before, limit| seqs_before(&t, "a", before, limit).unwrap();
        assert_eq!(back(None, 100), vec![7, 6, 5, 3, 2, 1]);
        assert_eq!(back(Some(3), 100), vec![2, 1]);
        assert_eq!(back(Some(6), 2), vec![5, 3]);
        assert_eq!(back(Some(0), 10), Vec::<u64>::new());
    }

    #[test]
    fn trimming_cuts_the_front_run() {
        let t = sample();
        let mut batch = sled::Batch::default();
        trim_through(&t, &mut batch, "a", 2).unwrap();
        t.apply_batch(batch).unwrap();
        assert_eq!(entries(&t), vec![(3, 3), (5, 6), (4, 4)]);
        let mut batch = sled::Batch::default();
        trim_through(&t, &mut batch, "a", 5).unwrap();
        t.apply_batch(batch).unwrap();
        assert_eq!(entries(&t), vec![(6, 6), (4, 4)]);
        assert_eq!(seqs_after(&t, "a", 0, 100, 100).unwrap(), vec![6]);
    }

    #[test]
    fn a_snapshot_clamps_runs_to_its_head() {
        let k = keys::index("a", 5);
        let v = 9u64.to_be_bytes();
        assert_eq!(clamp_to(&k, &v, 20), Some(v.to_vec()));
        assert_eq!(clamp_to(&k, &v, 7), Some(7u64.to_be_bytes().to_vec()));
        assert_eq!(clamp_to(&k, &v, 5), Some(Vec::new()));
        assert_eq!(clamp_to(&k, &v, 4), None);
    }
}
