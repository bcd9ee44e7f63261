//! Durable job queues in the same sled tree as the event log.
//!
//! Every change runs on the writer thread, one atomic batch per operation, so state
//! checks and writes never interleave (the compare-and-swap is the single writer).
//! Completing a job writes its outcome and its `job.completed` event in the same batch:
//! a crash can never keep one without the other.
//!
//! Keys:
//! - `J` seq(8)                         -> job record (JSON)
//! - `R` queue 0x00 run_at(8) seq(8)    -> ready index: FIFO by due time, then age
//! - `L` lease_until(8) seq(8)          -> lease index, for expiry
//! - `D` queue 0x00 seq(8)              -> dead letters
//! - `K` queue 0x00 0x01 owner_len(2) owner key -> seq (idempotency keys, per owner;
//!   `K` queue 0x00 key, without the owner, was written before keys were scoped)
//! - `C` queue                          -> counts per state

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::keys::be_u64;

pub const JOB: u8 = b'J';
pub const READY: u8 = b'R';
pub const LEASE: u8 = b'L';
pub const DEAD: u8 = b'D';
pub const IDEM: u8 = b'K';
pub const COUNTS: u8 = b'C';
pub const NEXT_JOB: &str = "next_job";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobError {
    #[error("no job {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Leased,
    Succeeded,
    Failed,
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Leased,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A job as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub seq: u64,
    pub queue: String,
    /// The payload's JSON text.
    pub payload: String,
    pub reply_topic: Option<String>,
    pub max_attempts: u32,
    pub attempts: u32,
    pub state: JobState,
    pub created_ms: u64,
    pub run_at_ms: u64,
    pub updated_ms: u64,
    pub lease_until_ms: Option<u64>,
    pub worker: Option<String>,
    pub result: Option<String>,
    pub last_error: Option<String>,
    pub finished_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    /// Who enqueued it (token subject).
    pub owner: Option<String>,
    /// The token subject that took the current lease: only it may act on the lease
    /// without naming `worker` and `attempt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_subject: Option<String>,
}

/// The next job number (the counter is written by the enqueue's own batch).
pub fn next_job_seq(tree: &sled::Tree) -> Result<u64, sled::Error> {
    Ok(tree
        .get(super::keys::meta(NEXT_JOB))?
        .filter(|v| v.len() == 8)
        .map(|v| be_u64(&v))
        .unwrap_or(1)
        .max(1))
}

pub fn job_id(seq: u64) -> String {
    format!("j{seq}")
}

pub fn parse_job_id(s: &str) -> Option<u64> {
    let digits = s.strip_prefix('j')?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Queue names: 1-64 bytes of `A-Z a-z 0-9 _ . ~ -`.
pub fn valid_queue(q: &str) -> bool {
    !q.is_empty()
        && q.len() <= 64
        && q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'~' | b'-'))
}

pub fn job_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = JOB;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn queue_prefix(tag: u8, queue: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(queue.len() + 18);
    k.push(tag);
    k.extend_from_slice(queue.as_bytes());
    k.push(0);
    k
}

pub fn ready_prefix(queue: &str) -> Vec<u8> {
    queue_prefix(READY, queue)
}

pub fn ready_key(queue: &str, run_at: u64, seq: u64) -> Vec<u8> {
    let mut k = ready_prefix(queue);
    k.extend_from_slice(&run_at.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// (run_at, seq) of a ready-index key.
pub fn ready_parts(key: &[u8]) -> Option<(u64, u64)> {
    (key.len() >= 17).then(|| {
        let n = key.len();
        (be_u64(&key[n - 16..n - 8]), be_u64(&key[n - 8..]))
    })
}

pub fn lease_key(until: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = LEASE;
    k[1..9].copy_from_slice(&until.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn dead_prefix(queue: &str) -> Vec<u8> {
    queue_prefix(DEAD, queue)
}

pub fn dead_key(queue: &str, seq: u64) -> Vec<u8> {
    let mut k = dead_prefix(queue);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// An idempotency key as its owner (the token subject; "" without auth) sent it: one
/// owner's `invoice-77` is not another's. Keys are header text (no byte below 0x20),
/// so the 0x01 tag cannot meet a key stored before scoping ([`legacy_idem_key`]).
pub fn idem_key(queue: &str, owner: Option<&str>, key: &str) -> Vec<u8> {
    let owner = owner.unwrap_or("").as_bytes();
    let owner = &owner[..owner.len().min(u16::MAX as usize)];
    let mut k = queue_prefix(IDEM, queue);
    k.push(0x01);
    k.extend_from_slice(&(owner.len() as u16).to_be_bytes());
    k.extend_from_slice(owner);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The key of a job enqueued before idempotency keys were scoped by owner.
pub fn legacy_idem_key(queue: &str, key: &str) -> Vec<u8> {
    let mut k = queue_prefix(IDEM, queue);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn counts_key(queue: &str) -> Vec<u8> {
    let mut k = vec![COUNTS];
    k.extend_from_slice(queue.as_bytes());
    k
}

/// Jobs per state in one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
}

impl QueueCounts {
    pub fn decode(b: &[u8]) -> QueueCounts {
        let get = |i: usize| b.get(i * 8..i * 8 + 8).map(be_u64).unwrap_or(0);
        QueueCounts {
            queued: get(0),
            leased: get(1),
            succeeded: get(2),
            failed: get(3),
            dead: get(4),
        }
    }

    pub fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        for (i, v) in self.as_array().iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    pub fn as_array(&self) -> [u64; 5] {
        [
            self.queued,
            self.leased,
            self.succeeded,
            self.failed,
            self.dead,
        ]
    }

    fn slot(&mut self, s: JobState) -> &mut u64 {
        match s.index() {
            0 => &mut self.queued,
            1 => &mut self.leased,
            2 => &mut self.succeeded,
            3 => &mut self.failed,
            _ => &mut self.dead,
        }
    }

    /// Moves one job from `from` (None: new) to `to` (None: deleted).
    pub fn moved(&mut self, from: Option<JobState>, to: Option<JobState>) {
        if let Some(f) = from {
            let s = self.slot(f);
            *s = s.saturating_sub(1);
        }
        if let Some(t) = to {
            *self.slot(t) += 1;
        }
    }
}

/// Retry delay after `attempts` failed attempts: base * 2^(attempts-1), capped, with
/// up to 20 % jitter so retried jobs do not all return at once.
pub fn backoff_ms(attempts: u32, base_ms: u64, max_ms: u64) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
    let capped = exp.min(max_ms);
    let jitter = if capped >= 5 {
        rand::random_range(0..=capped / 5)
    } else {
        0
    };
    capped.saturating_sub(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keys_counts() {
        assert_eq!(parse_job_id(&job_id(42)), Some(42));
        for bad in ["", "j", "42", "jx", "j-1", "j99999999999999999999999"] {
            assert_eq!(parse_job_id(bad), None, "{bad}");
        }
        assert!(valid_queue("reports.v2-a_b~"));
        assert!(!valid_queue("a/b") && !valid_queue("") && !valid_queue(&"q".repeat(65)));
        assert!(ready_key("q", 1, 9) < ready_key("q", 2, 1));
        assert!(ready_key("q", u64::MAX, u64::MAX) < ready_key("q0", 0, 0));
        assert_eq!(ready_parts(&ready_key("q", 7, 8)), Some((7, 8)));
        let mut c = QueueCounts::default();
        c.moved(None, Some(JobState::Queued));
        c.moved(Some(JobState::Queued), Some(JobState::Leased));
        assert_eq!(QueueCounts::decode(&c.encode()), c);
        assert_eq!(c.leased, 1);
        assert_eq!(c.queued, 0);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_ms(1, 1000, 60_000) <= 1000);
        assert!(backoff_ms(1, 1000, 60_000) >= 800);
        assert!(backoff_ms(3, 1000, 60_000) >= 3200);
        assert!(backoff_ms(40, 1000, 60_000) <= 60_000);
        assert_eq!(backoff_ms(5, 0, 60_000), 0);
    }
}
