//! Retention: by age, by count per topic, and by a total disk budget. Runs on the
//! writer thread in bounded passes, so publishes are never held up for long.
//! Every deletion raises the topic's `trimmed_through`, which is how a client resuming
//! from before it learns (`reset: true`) that it missed events.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::index;
use super::log::Shared;
use super::meta::{self, TopicMeta};
use super::record::decode_head;
use super::{keys, StoreError};
use crate::config::StorageConfig;

#[derive(Clone, Copy, Debug)]
pub struct RetentionPolicy {
    pub max_age_ms: u64,
    pub max_events_per_topic: u64,
    pub max_disk_bytes: u64,
    /// Most events deleted by one pass.
    pub max_work: usize,
}

impl RetentionPolicy {
    pub fn from_config(c: &StorageConfig) -> Self {
        RetentionPolicy {
            max_age_ms: c.retention_max_age_secs.saturating_mul(1000),
            max_events_per_topic: c.retention_max_events_per_topic,
            max_disk_bytes: c.retention_max_disk_bytes,
            max_work: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_count: u64,
    pub deleted_by_disk: u64,
    /// The pass stopped at its work bound: run another.
    pub more: bool,
}

impl RetentionReport {
    pub fn deleted(&self) -> u64 {
        self.deleted_by_age + self.deleted_by_count + self.deleted_by_disk
    }
}

struct Deleter<'a> {
    shared: &'a Shared,
    batch: sled::Batch,
    metas: HashMap<String, TopicMeta>,
    max_trimmed: u64,
    count: usize,
    deleted: Vec<u64>,
}

impl<'a> Deleter<'a> {
    /// A fresh batch; `count` carries the work already done by earlier phases.
    fn new(shared: &'a Shared, count: usize) -> Self {
        Deleter {
            shared,
            batch: sled::Batch::default(),
            metas: HashMap::new(),
            max_trimmed: shared.max_trimmed.load(Ordering::Acquire),
            count,
            deleted: Vec::new(),
        }
    }

    fn delete(&mut self, seq: u64, topic: &str) -> Result<(), StoreError> {
        self.batch.remove(&keys::event(seq));
        if !self.metas.contains_key(topic) {
            let m = TopicMeta::load(&self.shared.tree, topic)?;
            self.metas.insert(topic.to_string(), m);
        }
        if let Some(m) = self.metas.get_mut(topic) {
            m.count = m.count.saturating_sub(1);
            m.trimmed_through = m.trimmed_through.max(seq);
        }
        self.max_trimmed = self.max_trimmed.max(seq);
        self.count += 1;
        self.deleted.push(seq);
        Ok(())
    }

    /// Deletes the oldest events of the whole log while `keep_going` says so.
    fn delete_oldest(
        &mut self,
        limit: usize,
        mut keep_going: impl FnMut(u64) -> bool,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut iter = self.shared.tree.scan_prefix([keys::EVENT]);
        while self.count < limit {
            let Some(kv) = iter.next() else { break };
            let (k, v) = kv?;
            let Some(seq) = keys::event_seq(&k) else {
                continue;
            };
            let head = decode_head(&v)?;
            if !keep_going(head.time_ms) {
                break;
            }
            let topic = head.topic.to_string();
            self.delete(seq, &topic)?;
            n += 1;
        }
        Ok(n)
    }

    fn commit(self) -> Result<(), StoreError> {
        let Deleter {
            shared,
            mut batch,
            metas,
            max_trimmed,
            mut deleted,
            ..
        } = self;
        if deleted.is_empty() {
            return Ok(());
        }
        for (topic, m) in &metas {
            // Events leave a topic from its oldest end, so its index loses a prefix.
            index::trim_through(&shared.tree, &mut batch, topic, m.trimmed_through)?;
            batch.insert(keys::topic(topic), &m.encode());
        }
        batch.insert(keys::meta(meta::MAX_TRIMMED), &max_trimmed.to_be_bytes());
        shared.tree.apply_batch(batch)?;
        shared.max_trimmed.fetch_max(max_trimmed, Ordering::AcqRel);
        // Readers serve recent events from memory: drop the deleted ones there too.
        deleted.sort_unstable();
        if let Ok(mut recent) = shared.recent.write() {
            recent
                .events
                .retain(|e| deleted.binary_search(&e.seq).is_err());
        }
        Ok(())
    }
}

pub(super) fn run(
    shared: &Shared,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if shared
        .retention_hold
        .load(std::sync::atomic::Ordering::Acquire)
        > 0
    {
        // a backup is copying events: the next pass catches up
        tracing::debug!("retention held while a backup copies events");
        return Ok(report);
    }
    let limit = policy.max_work.max(1);
    // Each phase commits before the next reads, so no event is deleted twice.
    let mut used = 0;

    if policy.max_age_ms > 0 {
        let cutoff = now_ms.saturating_sub(policy.max_age_ms);
        let mut d = Deleter::new(shared, used);
        report.deleted_by_age = d.delete_oldest(limit, |t| t < cutoff)?;
        used = d.count;
        d.commit()?;
    }

    if policy.max_disk_bytes > 0 && used < limit {
        let size = shared.db.size_on_disk()?;
        if size > policy.max_disk_bytes {
            // Delete a slice proportional to the excess; sled reuses the space, so the
            // size on disk falls over the following passes rather than at once.
            let total = shared.head.load(Ordering::Acquire).max(1);
            let excess = (size - policy.max_disk_bytes) as f64 / size as f64;
            let want = ((total as f64 * excess).ceil() as usize).clamp(1, limit - used);
            let mut d = Deleter::new(shared, used);
            report.deleted_by_disk = d.delete_oldest(used + want, |_| true)?;
            used = d.count;
            d.commit()?;
        }
    }

    let mut d = Deleter::new(shared, used);
    if policy.max_events_per_topic > 0 {
        let mut topics: Vec<String> = shared
            .over_limit
            .lock()
            .map(|mut s| s.drain().collect())
            .unwrap_or_default();
        // The writer flags topics by the configured limit; a stricter policy than that
        // must look at every topic.
        let threshold = shared.flag_threshold;
        if threshold == 0 || policy.max_events_per_topic < threshold {
            topics = super::log::topics_over(&shared.tree, policy.max_events_per_topic)?
                .into_iter()
                .collect();
        }
        let mut unfinished = Vec::new();
        for topic in topics {
            let m = TopicMeta::load(&shared.tree, &topic)?;
            let excess = m.count.saturating_sub(policy.max_events_per_topic) as usize;
            if excess == 0 {
                continue;
            }
            let room = limit.saturating_sub(d.count);
            // the oldest: seqs start at 1, so all after 0
            let seqs = index::seqs_after(&shared.tree, &topic, 0, u64::MAX, excess.min(room))?;
            for s in &seqs {
                d.delete(*s, &topic)?;
            }
            report.deleted_by_count += seqs.len() as u64;
            if seqs.len() < excess {
                unfinished.push(topic);
            }
        }
        if !unfinished.is_empty() {
            report.more = true;
            if let Ok(mut s) = shared.over_limit.lock() {
                s.extend(unfinished);
            }
        }
    }
    let used = d.count;
    d.commit()?;
    if used >= limit {
        report.more = true;
    }
    shared.metrics.retention_deleted.inc_by(report.deleted());
    Ok(report)
}
