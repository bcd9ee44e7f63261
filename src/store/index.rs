//! The per-topic index: which seqs belong to a topic, kept in memory.
//!
//! Up to schema 4 the index lived in sled (`i` topic first -> last runs). With events in
//! segment files, that made sled the larger half of `db/`: every event cost an index
//! write there, and every retention pass as many deletions, which sled's log structure
//! keeps on disk until it collects them (soak: sled 75 MB beside 86 MB of segments).
//! The index is derived data: opening the log reads every record anyway (to check it
//! and to learn which topics a segment holds), so it builds the index then
//! ([`IndexBuilder`]), and from then on the writer adds to it and retention cuts it.
//!
//! Seqs are kept as blocks of 32-bit offsets from a base: about 4 bytes per retained
//! event (a million retained events: ~4 MiB). Events leave a topic only from its
//! oldest end (retention), so trimming drops whole blocks at the front.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

/// Most offsets in one block: bounds the cost of cutting the front block.
const BLOCK_LEN: usize = 1024;

/// Seqs `base + offsets[i]`, ascending, never empty.
struct Block {
    base: u64,
    offsets: Vec<u32>,
}

impl Block {
    fn last(&self) -> u64 {
        self.base + self.offsets.last().copied().unwrap_or(0) as u64
    }

    fn seq(&self, i: usize) -> u64 {
        self.base + self.offsets[i] as u64
    }

    /// Index of the first offset whose seq is above `seq`.
    fn first_above(&self, seq: u64) -> usize {
        if seq < self.base {
            return 0;
        }
        let rel = seq - self.base;
        self.offsets.partition_point(|&o| (o as u64) <= rel)
    }
}

/// One topic's seqs, ascending.
#[derive(Default)]
struct TopicSeqs {
    blocks: VecDeque<Block>,
    len: u64,
}

impl TopicSeqs {
    fn last(&self) -> u64 {
        self.blocks.back().map(Block::last).unwrap_or(0)
    }

    /// Adds `seq`, which must be above every seq held (others are ignored).
    fn push(&mut self, seq: u64) -> bool {
        if self.len > 0 && seq <= self.last() {
            return false;
        }
        if let Some(b) = self.blocks.back_mut() {
            let rel = seq - b.base;
            if b.offsets.len() < BLOCK_LEN && rel <= u32::MAX as u64 {
                b.offsets.push(rel as u32);
                self.len += 1;
                return true;
            }
        }
        let mut offsets = Vec::with_capacity(4);
        offsets.push(0);
        self.blocks.push_back(Block { base: seq, offsets });
        self.len += 1;
        true
    }

    fn after(&self, after: u64, upto: u64, limit: usize, out: &mut Vec<u64>) {
        let mut bi = self.blocks.partition_point(|b| b.last() <= after);
        while let Some(b) = self.blocks.get(bi) {
            for i in b.first_above(after)..b.offsets.len() {
                let s = b.seq(i);
                if s > upto || out.len() >= limit {
                    return;
                }
                out.push(s);
            }
            bi += 1;
        }
    }

    fn before(&self, below: u64, limit: usize, out: &mut Vec<u64>) {
        let end = self.blocks.partition_point(|b| b.base < below);
        for b in self.blocks.range(..end).rev() {
            let upto = b.first_above(below - 1);
            for i in (0..upto).rev() {
                if out.len() >= limit {
                    return;
                }
                out.push(b.seq(i));
            }
        }
    }

    /// Drops every seq at or below `through`.
    fn trim_through(&mut self, through: u64) {
        while self.blocks.front().is_some_and(|b| b.last() <= through) {
            if let Some(b) = self.blocks.pop_front() {
                self.len -= b.offsets.len() as u64;
            }
        }
        if let Some(b) = self.blocks.front_mut() {
            let cut = b.first_above(through);
            if cut > 0 {
                b.offsets.drain(..cut);
                self.len -= cut as u64;
                // offsets stay relative to the old base, which is still below them all
            }
        }
    }
}

/// Builds the index of a log being opened, record by record in seq order.
#[derive(Default)]
pub struct IndexBuilder {
    topics: HashMap<Box<str>, TopicSeqs>,
}

impl IndexBuilder {
    pub fn push(&mut self, topic: &str, seq: u64) {
        match self.topics.get_mut(topic) {
            Some(t) => {
                t.push(seq);
            }
            None => {
                let mut t = TopicSeqs::default();
                t.push(seq);
                self.topics.insert(topic.into(), t);
            }
        }
    }

    pub fn build(self) -> TopicIndex {
        TopicIndex {
            topics: RwLock::new(self.topics),
        }
    }
}

/// Every topic's seqs: the writer adds, retention cuts, readers look up.
pub struct TopicIndex {
    topics: RwLock<HashMap<Box<str>, TopicSeqs>>,
}

impl TopicIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, TopicSeqs>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, TopicSeqs>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds events (seqs rising per topic, above what the index holds): one lock.
    pub fn extend<'a>(&self, events: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut topics = self.write();
        for (topic, seq) in events {
            let added = match topics.get_mut(topic) {
                Some(t) => t.push(seq),
                None => topics.entry(topic.into()).or_default().push(seq),
            };
            if !added {
                tracing::error!(topic, seq, "index: a seq arrived out of order; ignored");
            }
        }
    }

    /// The topic's seqs in `after+1..=upto`, ascending, at most `limit`.
    pub fn seqs_after(&self, topic: &str, after: u64, upto: u64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if after >= upto || limit == 0 {
            return out;
        }
        if let Some(t) = self.read().get(topic) {
            t.after(after, upto, limit, &mut out);
        }
        out
    }

    /// The topic's seqs below `before` (all when None), newest first, at most `limit`.
    pub fn seqs_before(&self, topic: &str, before: Option<u64>, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let below = before.unwrap_or(u64::MAX);
        if below == 0 || limit == 0 {
            return out;
        }
        if let Some(t) = self.read().get(topic) {
            t.before(below, limit, &mut out);
        }
        out
    }

    /// Drops the topic's seqs at or below `through` (and the topic, once it has none).
    pub fn trim_through(&self, topic: &str, through: u64) {
        let mut topics = self.write();
        let empty = match topics.get_mut(topic) {
            Some(t) => {
                t.trim_through(through);
                t.len == 0
            }
            None => false,
        };
        if empty {
            topics.remove(topic);
        }
    }

    /// How many seqs the topic has in the index.
    #[cfg(test)]
    pub fn len(&self, topic: &str) -> u64 {
        self.read().get(topic).map_or(0, |t| t.len)
    }

    /// Seqs held over all topics.
    pub fn total(&self) -> u64 {
        self.read().values().map(|t| t.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(seqs: &[(&str, u64)]) -> TopicIndex {
        let mut b = IndexBuilder::default();
        for (t, s) in seqs {
            b.push(t, *s);
        }
        b.build()
    }

    /// a: 1..=3, 5..=7; b: 4
    fn sample() -> TopicIndex {
        index(&[
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 4),
            ("a", 5),
            ("a", 6),
            ("a", 7),
        ])
    }

    #[test]
    fn reads_cut_at_both_ends() {
        let t = sample();
        let all = |after, upto, limit| t.seqs_after("a", after, upto, limit);
        assert_eq!(all(0, u64::MAX, 100), vec![1, 2, 3, 5, 6, 7]);
        assert_eq!(all(1, u64::MAX, 100), vec![2, 3, 5, 6, 7]);
        assert_eq!(all(2, 5, 100), vec![3, 5]);
        assert_eq!(all(0, u64::MAX, 4), vec![1, 2, 3, 5]);
        assert_eq!(all(4, 4, 100), Vec::<u64>::new());
        assert_eq!(all(7, u64::MAX, 100), Vec::<u64>::new());
        assert_eq!(all(u64::MAX, u64::MAX, 100), Vec::<u64>::new());
        assert_eq!(t.seqs_after("b", 0, 10, 10), vec![4]);
        assert_eq!(t.seqs_after("c", 0, 10, 10), Vec::<u64>::new());

        let back = |before, limit| t.seqs_before("a", before, limit);
        assert_eq!(back(None, 100), vec![7, 6, 5, 3, 2, 1]);
        assert_eq!(back(Some(3), 100), vec![2, 1]);
        assert_eq!(back(Some(6), 2), vec![5, 3]);
        assert_eq!(back(Some(1), 10), Vec::<u64>::new());
        assert_eq!(back(Some(0), 10), Vec::<u64>::new());
        assert_eq!((t.len("a"), t.len("b"), t.total()), (6, 1, 7));
    }

    #[test]
    fn trimming_cuts_the_front_and_forgets_empty_topics() {
        let t = sample();
        t.trim_through("a", 2);
        assert_eq!(t.seqs_after("a", 0, 100, 100), vec![3, 5, 6, 7]);
        t.trim_through("a", 5);
        assert_eq!(t.seqs_after("a", 0, 100, 100), vec![6, 7]);
        assert_eq!(t.seqs_before("a", None, 100), vec![7, 6]);
        assert_eq!(t.len("a"), 2);
        t.trim_through("b", 4);
        assert_eq!(t.len("b"), 0);
        assert!(!t.read().contains_key("b"));
        // a topic that comes back starts afresh
        t.extend([("b", 9)]);
        assert_eq!(t.seqs_after("b", 0, 100, 100), vec![9]);
    }

    #[test]
    fn many_blocks_far_apart_seqs_and_out_of_order_pushes() {
        let t = index(&[]);
        // a restore gap (2^32 seqs) between two stretches, and more than one block each
        let low: Vec<u64> = (1..=2500).map(|i| i * 3).collect();
        let high: Vec<u64> = (0..2500).map(|i| (1u64 << 33) + i * 2).collect();
        t.extend(low.iter().chain(&high).map(|&s| ("x", s)));
        t.extend([("x", 5)]); // below the last: ignored
        assert_eq!(t.len("x"), 5000);
        let every: Vec<u64> = low.iter().chain(&high).copied().collect();
        assert_eq!(t.seqs_after("x", 0, u64::MAX, usize::MAX), every);
        assert_eq!(
            t.seqs_after("x", 3000, 3100, usize::MAX),
            (1001..=1033).map(|i| i * 3).collect::<Vec<_>>()
        );
        let newest_first: Vec<u64> = every.iter().rev().copied().collect();
        assert_eq!(t.seqs_before("x", None, usize::MAX), newest_first);
        assert_eq!(t.seqs_before("x", Some(high[0]), 3), vec![7500, 7497, 7494]);
        // cut inside the second block, then past the gap
        t.trim_through("x", 3 * 1500);
        assert_eq!(t.len("x"), 3500);
        assert_eq!(t.seqs_after("x", 0, u64::MAX, 2), vec![4503, 4506]);
        t.trim_through("x", high[9]);
        assert_eq!(t.len("x"), 2490);
        assert_eq!(t.seqs_after("x", 0, u64::MAX, 1), vec![high[10]]);
        assert_eq!(t.seqs_before("x", Some(high[11]), 5), vec![high[10]]);
    }
}
