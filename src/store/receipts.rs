//! Delivery receipts. For an event published with `"receipt": true`: who got it (written
//! to their connection: delivered) and who confirmed it (their client handed it to the
//! app and said so: acknowledged), per token subject, with times and the transport.
//!
//! Keys in the log tree:
//! - `r` seq(8, BE)             -> time_ms(8, BE) topic: the event asked for receipts
//!   (written in the same batch as the event, so the two are durable together)
//! - `s` seq(8, BE) subject     -> [`Mark`] as JSON
//!
//! Which events asked is also kept in memory, so fan-out pays one atomic load per batch
//! while no event asks. Delivered marks are gathered in memory and written by
//! [`Receipts::write_marks`] (the server calls it every 200 ms): a crash may lose the
//! last ones, and the next delivery marks again. Acknowledgements are durable before
//! they are answered. Receipts go with their event's age (`storage.retention_max_age_secs`,
//! or a week when events are kept forever).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::keys::be_u64;
use super::StoreError;

pub const WANTED: u8 = b'r';
pub const MARK: u8 = b's';

/// Longest subject kept in a mark (longer ones are cut: a subject is a token's `sub`).
const MAX_SUBJECT: usize = 256;

/// The `r` value: when the event was published, and its topic.
pub fn wanted_value(time_ms: u64, topic: &str) -> Vec<u8> {
    let mut v = time_ms.to_be_bytes().to_vec();
    v.extend_from_slice(topic.as_bytes());
    v
}

/// An event that asked for receipts.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub topic: Box<str>,
    pub time_ms: u64,
}

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
    /// Delivered and not (yet) acknowledged.
    fn unacknowledged(&self) -> bool {
        self.delivered_ms.is_some() && self.acknowledged_ms.is_none()
    }

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
    /// Events that asked for receipts.
    wanted: RwLock<BTreeMap<u64, Wanted>>,
    wanted_len: AtomicUsize,
    /// Marks delivered and not acknowledged (written ones).
    unacknowledged: AtomicI64,
    /// Woken by every acknowledgement (waiters re-read what they wait for).
    acknowledged: tokio::sync::Notify,
    /// Delivered marks not yet written: seq -> subject -> mark.
    pending: Mutex<HashMap<u64, HashMap<Box<str>, Mark>>>,
}

impl Receipts {
    /// Loads which events asked for receipts.
    pub fn open(tree: &sled::Tree) -> Result<Receipts, StoreError> {
        let mut wanted = BTreeMap::new();
        for kv in tree.scan_prefix([WANTED]) {
            let (k, v) = kv?;
            if k.len() == 9 && v.len() >= 8 {
                let topic = String::from_utf8_lossy(&v[8..]).into_owned();
                let w = Wanted {
                    topic: topic.into_boxed_str(),
                    time_ms: be_u64(&v[..8]),
                };
                wanted.insert(be_u64(&k[1..]), w);
            }
        }
        let mut unacknowledged = 0i64;
        for kv in tree.scan_prefix([MARK]) {
            let (_, v) = kv?;
            if serde_json::from_slice::<Mark>(&v).is_ok_and(|m| m.unacknowledged()) {
                unacknowledged += 1;
            }
        }
        Ok(Receipts {
            tree: tree.clone(),
            unacknowledged: AtomicI64::new(unacknowledged),
            acknowledged: tokio::sync::Notify::new(),
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

    /// Events that asked for receipts and are still kept.
    pub fn events(&self) -> usize {
        self.wanted_len.load(Ordering::Relaxed)
    }

    /// Subjects' marks delivered and not acknowledged (of the events still kept).
    pub fn unacknowledged(&self) -> u64 {
        self.unacknowledged.load(Ordering::Relaxed).max(0) as u64
    }

    fn read_wanted(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Wanted>> {
        self.wanted.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_wanted(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Wanted>> {
        self.wanted.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer made these events durable, with their `r` keys.
    pub(super) fn note_wanted(&self, events: impl IntoIterator<Item = (u64, Wanted)>) {
        let mut w = self.write_wanted();
        w.extend(events);
        self.wanted_len.store(w.len(), Ordering::Relaxed);
    }

    /// `seqs` were written to a connection of `subject`.
    pub fn delivered(&self, seqs: impl IntoIterator<Item = u64>, subject: &str, transport: &str) {
        let now = super::now_ms();
        let wanted = self.read_wanted();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let subject = clip(subject);
        for seq in seqs {
            if !wanted.contains_key(&seq) {
                continue;
            }
            let marks = pending.entry(seq).or_default();
            // the first delivery counts; later ones (other connections) cost a lookup
            if !marks.contains_key(subject) {
                marks.insert(
                    subject.into(),
                    Mark {
                        delivered_ms: Some(now),
                        transport: Some(transport.to_string()),
                        acknowledged_ms: None,
                    },
                );
            }
        }
    }

    /// Writes the gathered delivered marks (merged with what is stored). Returns how many.
    pub fn write_marks(&self) -> Result<usize, StoreError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let wanted = self.read_wanted();
        let mut n = 0;
        // an event forgotten since its delivery was marked leaves no mark behind
        for (seq, marks) in pending.into_iter().filter(|(s, _)| wanted.contains_key(s)) {
            for (subject, mark) in marks {
                self.merge(seq, &subject, &mark)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Merges `mark` into the stored one; returns the stored mark before and after.
    fn merge(&self, seq: u64, subject: &str, mark: &Mark) -> Result<(Mark, Mark), StoreError> {
        let key = mark_key(seq, subject);
        let parse = |b: Option<&[u8]>| -> Mark {
            b.and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default()
        };
        let before = self.tree.fetch_and_update(&key, |old| {
            let mut m = parse(old);
            m.merge(mark);
            serde_json::to_vec(&m).ok()
        })?;
        let before = parse(before.as_deref());
        let mut after = before.clone();
        after.merge(mark);
        let delta = i64::from(after.unacknowledged()) - i64::from(before.unacknowledged());
        self.unacknowledged.fetch_add(delta, Ordering::Relaxed);
        Ok((before, after))
    }

    /// `subject`'s client acknowledged `seqs`. Returns the seqs that asked for receipts
    /// (others are ignored) and, for each first acknowledgement, the time since the event
    /// was published (ms). Durable once `flush` has run (the caller does it).
    pub fn acknowledge(
        &self,
        seqs: &[u64],
        subject: &str,
    ) -> Result<(Vec<u64>, Vec<u64>), StoreError> {
        let now = super::now_ms();
        // held while marking: `forget_upto` cannot remove the event in between and
        // leave a mark behind
        let wanted = self.read_wanted();
        let known: Vec<(u64, u64)> = seqs
            .iter()
            .filter_map(|s| wanted.get(s).map(|w| (*s, w.time_ms)))
            .collect();
        let subject = clip(subject);
        let mut latencies = Vec::new();
        for &(seq, published_ms) in &known {
            let (before, _) = self.merge(
                seq,
                subject,
                &Mark {
                    acknowledged_ms: Some(now),
                    ..Mark::default()
                },
            )?;
            if before.acknowledged_ms.is_none() {
                latencies.push(now.saturating_sub(published_ms));
            }
        }
        Ok((known.into_iter().map(|(s, _)| s).collect(), latencies))
    }

    /// Notified after acknowledgements were recorded (register before reading).
    pub fn acknowledged(&self) -> &tokio::sync::Notify {
        &self.acknowledged
    }

    /// The topic of an event that asked for receipts.
    pub fn topic_of(&self, seq: u64) -> Option<String> {
        self.read_wanted().get(&seq).map(|w| w.topic.to_string())
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
        for (subject, m) in pending.get(&seq).into_iter().flatten() {
            marks.entry(subject.to_string()).or_default().merge(m);
        }
        Ok(Some(EventReceipts {
            topic,
            marks: marks.into_iter().collect(),
        }))
    }

    /// One subject's marks, newest event first, at most `limit`: (seq, topic, mark).
    /// Every kept event's marks are looked at (bounded by retention).
    pub fn of_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<(u64, String, Mark)>, StoreError> {
        let subject = clip(subject);
        let mut found: BTreeMap<u64, Mark> = BTreeMap::new();
        for kv in self.tree.scan_prefix([MARK]) {
            let (k, v) = kv?;
            if k.len() < 9 || &k[9..] != subject.as_bytes() {
                continue;
            }
            if let Ok(m) = serde_json::from_slice::<Mark>(&v) {
                found.insert(be_u64(&k[1..9]), m);
            }
        }
        {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (seq, marks) in pending.iter() {
                if let Some(m) = marks.get(subject) {
                    found.entry(*seq).or_default().merge(m);
                }
            }
        }
        let wanted = self.read_wanted();
        Ok(found
            .into_iter()
            .rev()
            .filter_map(|(seq, m)| wanted.get(&seq).map(|w| (seq, w.topic.to_string(), m)))
            .take(limit)
            .collect())
    }

    /// Removes the receipts of events up to `seq` (retention took them or they are too
    /// old). Returns how many events' receipts went.
    pub fn forget_upto(&self, seq: u64) -> Result<usize, StoreError> {
        // the write lock first: no mark is written for these events meanwhile
        let mut w = self.write_wanted();
        let gone: Vec<u64> = w.range(..=seq).map(|(s, _)| *s).collect();
        for &s in &gone {
            let mut batch = sled::Batch::default();
            batch.remove(&wanted_key(s));
            let mut unacknowledged = 0;
            for kv in self.tree.scan_prefix(mark_prefix(s)) {
                let (k, v) = kv?;
                if serde_json::from_slice::<Mark>(&v).is_ok_and(|m| m.unacknowledged()) {
                    unacknowledged += 1;
                }
                batch.remove(k);
            }
            self.unacknowledged
                .fetch_sub(unacknowledged, Ordering::Relaxed);
            self.tree.apply_batch(batch)?;
        }
        for s in &gone {
            w.remove(s);
        }
        self.wanted_len.store(w.len(), Ordering::Relaxed);
        drop(w);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|s, _| *s > seq);
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
        t.insert(wanted_key(7), wanted_value(1_000, "alarms/1"))
            .unwrap();
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
        assert_eq!((r.events(), r.unacknowledged()), (1, 1));
        let (known, latencies) = r.acknowledge(&[7, 8], "alice").unwrap();
        assert_eq!(known, vec![7]);
        assert_eq!(latencies.len(), 1, "the first acknowledgement is timed");
        assert_eq!(r.unacknowledged(), 0);
        assert!(
            r.acknowledge(&[7], "alice").unwrap().1.is_empty(),
            "a repeat is not"
        );
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
        r.delivered([7], "bob", "poll");
        r.write_marks().unwrap();
        assert_eq!(r.unacknowledged(), 1);
        let again = Receipts::open(&t).unwrap();
        assert_eq!(again.unacknowledged(), 1, "counted again at open");
        let bobs = again.of_subject("bob", 10).unwrap();
        assert_eq!(bobs.len(), 1);
        assert_eq!((bobs[0].0, bobs[0].1.as_str()), (7, "alarms/1"));
        assert!(
            again.of_subject("bo", 10).unwrap().is_empty(),
            "whole subjects only"
        );
        assert_eq!(again.forget_upto(7).unwrap(), 1);
        assert!(!again.any() && again.of_event(7).unwrap().is_none());
        assert_eq!(again.unacknowledged(), 0);
        assert_eq!(t.scan_prefix([MARK]).count(), 0);
    }

    #[test]
    fn a_forgotten_event_leaves_no_mark_behind() {
        let (_d, t) = tree();
        t.insert(wanted_key(3), wanted_value(1, "a")).unwrap();
        let r = Receipts::open(&t).unwrap();
        r.delivered([3], "alice", "poll");
        assert_eq!(r.forget_upto(3).unwrap(), 1);
        assert_eq!(r.write_marks().unwrap(), 0);
        assert_eq!(r.acknowledge(&[3], "alice").unwrap().0, Vec::<u64>::new());
        assert_eq!(t.scan_prefix([MARK]).count(), 0);
        assert_eq!(r.unacknowledged(), 0);
    }

    #[test]
    fn subjects_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(200);
        assert!(clip(&long).len() <= MAX_SUBJECT);
        assert!(long.starts_with(clip(&long)));
    }
}
