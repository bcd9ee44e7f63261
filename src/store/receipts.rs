//! Delivery receipts. For an event published with `"receipt": true`: who got it (written
//! to their connection: delivered) and who confirmed it (their client handed it to the
//! app and said so: acknowledged), per token subject, with times and the transport.
//!
//! Keys in the log tree:
//! - `r` seq(8, BE)             -> topic: the event asked for receipts (written in the
//!   same batch as the event, so the two are durable together)
//! - `s` seq(8, BE) subject     -> [`Mark`] as JSON
//!
//! Which events asked is also kept in memory, so fan-out pays one atomic load per batch
//! while no event asks. Delivered marks are gathered in memory and written by
//! [`Receipts::write_marks`] (the server calls it every 200 ms): a crash may lose the
//! last ones, and the next delivery marks again. Acknowledgements are durable before
//! they are answered. Receipts go with their event's age (`storage.retention_max_age_secs`,
//! or a week when events are kept forever).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::keys::be_u64;
use super::StoreError;

pub const WANTED: u8 = b'r';
pub const MARK: u8 = b's';

/// Longest subject kept in a mark (longer ones are cut: a subject is a token's `sub`).
const MAX_SUBJECT: usize = 256;

pub fn wanted_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = WANTED;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn mark_prefix(seq: u64) -> [u8; 9] {
    let mut k = wanted_key(seq);
    k[0] = MARK;
    k
}

fn mark_key(seq: u64, subject: &str) -> Vec<u8> {
    let mut k = mark_prefix(seq).to_vec();
    k.extend_from_slice(subject.as_bytes());
    k
}

fn clip(subject: &str) -> &str {
    if subject.len() <= MAX_SUBJECT {
        return subject;
    }
    let mut end = MAX_SUBJECT;
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    &subject[..end]
}

/// One subject's receipt of one event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// First written to one of the subject's connections (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
    /// The transport of that first delivery ("sse_stream", "sse_close", "longpoll", "poll").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// First acknowledged by the subject's client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_ms: Option<u64>,
}

impl Mark {
    /// Keeps the first time of each kind.
    fn merge(&mut self, other: &Mark) {
        if self.delivered_ms.is_none() {
            self.delivered_ms = other.delivered_ms;
            self.transport.clone_from(&other.transport);
        }
        if self.acknowledged_ms.is_none() {
            self.acknowledged_ms = other.acknowledged_ms;
        }
    }
}

/// The receipts of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventReceipts {
    pub topic: String,
    /// Per subject, in subject order.
    pub marks: Vec<(String, Mark)>,
}

pub struct Receipts {
    tree: sled::Tree,
    /// Events that asked for receipts: seq -> topic.
    wanted: RwLock<BTreeMap<u64, Box<str>>>,
    wanted_len: AtomicUsize,
    /// Delivered marks not yet written.
    pending: Mutex<HashMap<(u64, Box<str>), Mark>>,
}

impl Receipts {
    /// Loads which events asked for receipts.
    pub fn open(tree: &sled::Tree) -> Result<Receipts, StoreError> {
        let mut wanted = BTreeMap::new();
        for kv in tree.scan_prefix([WANTED]) {
            let (k, v) = kv?;
            if k.len() == 9 {
                let topic = String::from_utf8_lossy(&v).into_owned();
                wanted.insert(be_u64(&k[1..]), topic.into_boxed_str());
            }
        }
        Ok(Receipts {
            tree: tree.clone(),
            wanted_len: AtomicUsize::new(wanted.len()),
            wanted: RwLock::new(wanted),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// True while any retained event asked for receipts (fan-out checks this first).
    pub fn any(&self) -> bool {
        self.wanted_len.load(Ordering::Relaxed) > 0
    }

    pub fn wants(&self, seq: u64) -> bool {
        self.any() && self.read_wanted().contains_key(&seq)
    }

    fn read_wanted(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Box<str>>> {
        self.wanted.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_wanted(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Box<str>>> {
        self.wanted.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer made these events durable, with their `r` keys.
    pub(super) fn note_wanted(&self, events: impl IntoIterator<Item = (u64, Box<str>)>) {
        let mut w = self.write_wanted();
        w.extend(events);
        self.wanted_len.store(w.len(), Ordering::Relaxed);
    }

    /// `seqs` were written to a connection of `subject`.
    pub fn delivered(&self, seqs: impl IntoIterator<Item = u64>, subject: &str, transport: &str) {
        let now = super::now_ms();
        let wanted = self.read_wanted();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for seq in seqs {
            if !wanted.contains_key(&seq) {
                continue;
            }
            pending
                .entry((seq, clip(subject).into()))
                .or_insert_with(|| Mark {
                    delivered_ms: Some(now),
                    transport: Some(transport.to_string()),
                    acknowledged_ms: None,
                });
        }
    }

    /// Writes the gathered delivered marks (merged with what is stored). Returns how many.
    pub fn write_marks(&self) -> Result<usize, StoreError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let n = pending.len();
        for ((seq, subject), mark) in pending {
            self.merge(seq, &subject, &mark)?;
        }
        Ok(n)
    }

    fn merge(&self, seq: u64, subject: &str, mark: &Mark) -> Result<(), StoreError> {
        let key = mark_key(seq, subject);
        self.tree.fetch_and_update(&key, |old| {
            let mut m: Mark = old
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            m.merge(mark);
            serde_json::to_vec(&m).ok()
        })?;
        Ok(())
    }

    /// `subject`'s client acknowledged `seqs`. Returns the seqs that asked for receipts
    /// (others are ignored). Durable once `flush` has run (the caller does it).
    pub fn acknowledge(&self, seqs: &[u64], subject: &str) -> Result<Vec<u64>, StoreError> {
        let now = super::now_ms();
        let known: Vec<u64> = {
            let wanted = self.read_wanted();
            seqs.iter()
                .copied()
                .filter(|s| wanted.contains_key(s))
                .collect()
        };
        let subject = clip(subject);
        for &seq in &known {
            self.merge(
                seq,
                subject,
                &Mark {
                    acknowledged_ms: Some(now),
                    ..Mark::default()
                },
            )?;
        }
        Ok(known)
    }

    /// The topic of an event that asked for receipts.
    pub fn topic_of(&self, seq: u64) -> Option<String> {
        self.read_wanted().get(&seq).map(|t| t.to_string())
    }

    /// Every subject's mark of one event (the delivered ones gathered but not yet
    /// written included); None when the event did not ask for receipts.
    pub fn of_event(&self, seq: u64) -> Result<Option<EventReceipts>, StoreError> {
        let Some(topic) = self.topic_of(seq) else {
            return Ok(None);
        };
        let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
        for kv in self.tree.scan_prefix(mark_prefix(seq)) {
            let (k, v) = kv?;
            let subject = String::from_utf8_lossy(&k[9..]).into_owned();
            if let Ok(m) = serde_json::from_slice::<Mark>(&v) {
                marks.insert(subject, m);
            }
        }
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for ((s, subject), m) in pending.iter() {
            if *s == seq {
                marks.entry(subject.to_string()).or_default().merge(m);
            }
        }
        Ok(Some(EventReceipts {
            topic,
            marks: marks.into_iter().collect(),
        }))
    }

    /// Removes the receipts of events up to `seq` (retention took them or they are too
    /// old). Returns how many events' receipts went.
    pub fn forget_upto(&self, seq: u64) -> Result<usize, StoreError> {
        let gone: Vec<u64> = self.read_wanted().range(..=seq).map(|(s, _)| *s).collect();
        for &s in &gone {
            let mut batch = sled::Batch::default();
            batch.remove(&wanted_key(s));
            for k in self.tree.scan_prefix(mark_prefix(s)).keys() {
                batch.remove(k?);
            }
            self.tree.apply_batch(batch)?;
        }
        let mut w = self.write_wanted();
        for s in &gone {
            w.remove(s);
        }
        self.wanted_len.store(w.len(), Ordering::Relaxed);
        Ok(gone.len())
    }

    /// The oldest event that asked for receipts.
    pub fn first(&self) -> Option<u64> {
        self.read_wanted().keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let t = db.open_tree("log").unwrap();
        (dir, t)
    }

    #[test]
    fn delivered_then_acknowledged_keeps_the_first_times() {
        let (_d, t) = tree();
        t.insert(wanted_key(7), "alarms/1").unwrap();
        let r = Receipts::open(&t).unwrap();
        assert!(r.any() && r.wants(7) && !r.wants(8));
        r.delivered([7, 8], "alice", "sse_stream");
        r.delivered([7], "alice", "longpoll");
        let seen = r.of_event(7).unwrap().unwrap();
        assert_eq!(seen.topic, "alarms/1");
        assert_eq!(
            seen.marks.len(),
            1,
            "pending marks are shown before they are written"
        );
        assert_eq!(r.write_marks().unwrap(), 1);
        assert_eq!(r.acknowledge(&[7, 8], "alice").unwrap(), vec![7]);
        r.delivered([7], "alice", "poll");
        r.write_marks().unwrap();
        let m = &r.of_event(7).unwrap().unwrap().marks[0];
        assert_eq!(m.0, "alice");
        assert_eq!(
            m.1.transport.as_deref(),
            Some("sse_stream"),
            "the first delivery counts"
        );
        assert!(m.1.delivered_ms.is_some() && m.1.acknowledged_ms.is_some());
        assert!(r.of_event(8).unwrap().is_none());
        // reopened: the same
        let again = Receipts::open(&t).unwrap();
        assert_eq!(again.of_event(7).unwrap(), r.of_event(7).unwrap());
        assert_eq!(again.forget_upto(7).unwrap(), 1);
        assert!(!again.any() && again.of_event(7).unwrap().is_none());
        assert_eq!(t.scan_prefix([MARK]).count(), 0);
    }

    #[test]
    fn subjects_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(200);
        assert!(clip(&long).len() <= MAX_SUBJECT);
        assert!(long.starts_with(clip(&long)));
    }
}
