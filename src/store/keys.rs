//! Key layout of the single sled tree. One tree means one `apply_batch` is atomic
//! across events, index and metadata (and later jobs).
//!
//! - `e` seq(8, BE)              -> encoded event record
//! - `i` topic 0x00 first(8, BE) -> empty or last(8, BE): a run of the topic's seqs
//!   (the per-topic index of schema 4 and before; now kept in memory, see `index`, and
//!   removed from sled at open)
//! - `t` topic                   -> topic metadata
//! - `m` name                    -> database metadata (schema, epoch, next_seq, ...)
//! - `r` seq(8, BE), `s` seq(8, BE) subject -> delivery receipts (see `receipts`)
//! - `J`, `R`, `L`, `D`, `K`, `C`  -> job queues (see `jobs`)

pub const EVENT: u8 = b'e';
pub const INDEX: u8 = b'i';
pub const TOPIC: u8 = b't';
pub const META: u8 = b'm';

pub fn event(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn event_seq(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == EVENT).then(|| be_u64(&key[1..]))
}

#[cfg(test)]
pub fn index(topic: &str, seq: u64) -> Vec<u8> {
    let mut k = index_prefix(topic);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `i` topic 0x00: every index entry of exactly this topic starts with it.
#[cfg(test)]
pub fn index_prefix(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 10);
    k.push(INDEX);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

#[cfg(test)]
pub fn index_seq(key: &[u8]) -> Option<u64> {
    (key.len() >= 10).then(|| be_u64(&key[key.len() - 8..]))
}

pub fn topic(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 1);
    k.push(TOPIC);
    k.extend_from_slice(topic.as_bytes());
    k
}

pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_order() {
        assert_eq!(event_seq(&event(7)), Some(7));
        assert!(event(1) < event(2) && event(255) < event(256));
        assert_eq!(index_seq(&index("a/b", 99)), Some(99));
        assert!(index("a", 5) < index("a", 6));
        // a topic's entries never interleave with a longer topic sharing its prefix
        assert!(index("a", u64::MAX) < index("a/b", 0));
        assert!(index("a", u64::MAX) < index("a0", 0));
    }
}
