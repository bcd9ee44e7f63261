//! Per-topic metadata and database markers.

use super::keys;

/// Kept per topic: how many events it has, its last activity, and the highest seq that
/// retention removed from it (a client resuming from below that has missed events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopicMeta {
    pub count: u64,
    pub last_seq: u64,
    pub last_time_ms: u64,
    pub trimmed_through: u64,
}

impl TopicMeta {
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.count.to_be_bytes());
        b[8..16].copy_from_slice(&self.last_seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.last_time_ms.to_be_bytes());
        b[24..32].copy_from_slice(&self.trimmed_through.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> TopicMeta {
        if b.len() < 32 {
            return TopicMeta::default();
        }
        TopicMeta {
            count: keys::be_u64(&b[0..8]),
            last_seq: keys::be_u64(&b[8..16]),
            last_time_ms: keys::be_u64(&b[16..24]),
            trimmed_through: keys::be_u64(&b[24..32]),
        }
    }

    pub fn load(tree: &sled::Tree, topic: &str) -> Result<TopicMeta, sled::Error> {
        Ok(tree
            .get(keys::topic(topic))?
            .map(|v| TopicMeta::decode(&v))
            .unwrap_or_default())
    }
}

pub const NEXT_SEQ: &str = "next_seq";
pub const EPOCH: &str = "epoch";
pub const SCHEMA: &str = "schema";
pub const MAX_TRIMMED: &str = "max_trimmed";
pub const PROBE: &str = "probe";
/// Every event with seq at or below this was removed by age or disk retention.
pub const SWEPT: &str = "swept";

/// `restore_gap/<from>` -> to: seqs in `[from, to)` were never issued by this database's
/// line. A restore leaves such a gap after the backup's head, so ids the lost server
/// issued after the backup are never reused: a client holding one is told to reset.
pub const RESTORE_GAP_PREFIX: &str = "restore_gap/";
/// Seqs skipped by a restore: more than any server issues between a backup and its loss.
pub const RESTORE_GAP: u64 = 1 << 32;

pub fn restore_gap_key(from: u64) -> Vec<u8> {
    let mut k = keys::meta(RESTORE_GAP_PREFIX);
    k.extend_from_slice(&from.to_be_bytes());
    k
}

/// Every restore gap, in order.
pub fn restore_gaps(tree: &sled::Tree) -> Result<Vec<(u64, u64)>, sled::Error> {
    let prefix = keys::meta(RESTORE_GAP_PREFIX);
    let mut out = Vec::new();
    for kv in tree.scan_prefix(&prefix) {
        let (k, v) = kv?;
        if k.len() == prefix.len() + 8 && v.len() == 8 {
            out.push((keys::be_u64(&k[prefix.len()..]), keys::be_u64(&v)));
        }
    }
    Ok(out)
}

/// The next seq this database would issue (the larger of the marker and the last event).
pub fn next_seq(tree: &sled::Tree) -> Result<u64, sled::Error> {
    let mut next = get_u64(tree, NEXT_SEQ)?.unwrap_or(1).max(1);
    if let Some((k, _)) = tree.scan_prefix([keys::EVENT]).next_back().transpose()? {
        if let Some(last) = keys::event_seq(&k) {
            next = next.max(last + 1);
        }
    }
    Ok(next)
}

/// Records a restore gap after the current head and moves `next_seq` past it.
pub fn open_restore_gap(tree: &sled::Tree) -> Result<(u64, u64), sled::Error> {
    let from = next_seq(tree)?;
    let to = from.saturating_add(RESTORE_GAP);
    let mut b = sled::Batch::default();
    b.insert(restore_gap_key(from), &to.to_be_bytes());
    b.insert(keys::meta(NEXT_SEQ), &to.to_be_bytes());
    tree.apply_batch(b)?;
    Ok((from, to))
}

pub fn get_u64(tree: &sled::Tree, name: &str) -> Result<Option<u64>, sled::Error> {
    Ok(tree
        .get(keys::meta(name))?
        .filter(|v| v.len() == 8)
        .map(|v| keys::be_u64(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = TopicMeta {
            count: 1,
            last_seq: 2,
            last_time_ms: 3,
            trimmed_through: 4,
        };
        assert_eq!(TopicMeta::decode(&m.encode()), m);
        assert_eq!(TopicMeta::decode(&[1, 2]), TopicMeta::default());
    }
}
