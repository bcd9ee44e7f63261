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
