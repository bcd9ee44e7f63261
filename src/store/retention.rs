//! Retention: by age, by count per topic, and by a total disk budget, in three steps so
//! that publishing never waits behind a pass:
//!
//! 1. `plan` (off the writer) reads what to remove: the oldest events by age or disk
//!    budget (a prefix of the log, up to a new `swept` mark), and each topic's oldest
//!    events beyond its count (through the per-topic index).
//! 2. `TrimPlan::apply` (on the writer) records it: per topic, `count` falls and
//!    `trimmed_through` rises; one small batch and a flush; the in-memory index is cut. From then on readers leave
//!    those events out, and a client resuming from before them is told `reset: true`.
//! 3. `reclaim` (off the writer) frees the space: segment files with nothing alive are
//!    unlinked whole, and a file less than half alive is rewritten with what is.
//!
//! The disk budget counts what is really on disk (segments and sled's files) and is met
//! by dropping the fewest oldest segments that bring the total under it; when even all
//! of them would not (sled's part alone is over the budget), nothing is deleted and
//! `surepush_storage_budget_unmet` says so: the rule can no longer eat the whole log.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

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
    /// Headroom kept on the data disk: the oldest segments go while less is free.
    pub min_free_disk_bytes: u64,
    /// Most events one pass removes (and most records it reads).
    pub max_work: usize,
}

impl RetentionPolicy {
    pub fn from_config(c: &StorageConfig) -> Self {
        RetentionPolicy {
            max_age_ms: c.retention_max_age_secs.saturating_mul(1000),
            max_events_per_topic: c.retention_max_events_per_topic,
            max_disk_bytes: c.retention_max_disk_bytes,
            min_free_disk_bytes: c.min_free_disk_bytes,
            max_work: 100_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_count: u64,
    pub deleted_by_disk: u64,
    /// Bytes of segment files freed by this pass.
    pub freed_bytes: u64,
    /// The disk budget could not be met by deleting old events (nothing was deleted
    /// for it).
    pub budget_unmet: bool,
    /// The pass stopped at its work bound: run another.
    pub more: bool,
}

impl RetentionReport {
    pub fn deleted(&self) -> u64 {
        self.deleted_by_age + self.deleted_by_count + self.deleted_by_disk
    }
}

/// What one topic loses in a pass.
#[derive(Clone, Copy, Debug, Default)]
struct TopicTrim {
    through: u64,
    removed: u64,
}

/// What a pass removes: applied on the writer.
#[derive(Debug, Default)]
pub struct TrimPlan {
    topics: HashMap<String, TopicTrim>,
    /// The new `swept` mark (every event at or below it is removed).
    swept: u64,
    pub report: RetentionReport,
}

impl TrimPlan {
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// One event of `topic` goes, unless it is already gone.
    fn remove(&mut self, topic: &str, seq: u64, already: u64) -> bool {
        let t = self.topics.entry(topic.to_string()).or_default();
        if seq <= already.max(t.through) {
            return false;
        }
        t.through = seq;
        t.removed += 1;
        true
    }

    /// Records the plan: runs on the writer thread, one batch and a flush.
    pub(super) fn apply(self, shared: &Shared) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut max_trimmed = shared.max_trimmed.load(Ordering::Acquire);
        let mut marks = Vec::with_capacity(self.topics.len());
        for (topic, trim) in &self.topics {
            let mut m = TopicMeta::load(&shared.tree, topic)?;
            m.count = m.count.saturating_sub(trim.removed);
            m.trimmed_through = m.trimmed_through.max(trim.through);
            batch.insert(keys::topic(topic), &m.encode());
            max_trimmed = max_trimmed.max(m.trimmed_through);
            marks.push((topic.clone(), m.trimmed_through));
        }
        let swept = self.swept.max(shared.trimmed().swept);
        batch.insert(keys::meta(meta::MAX_TRIMMED), &max_trimmed.to_be_bytes());
        batch.insert(keys::meta(meta::SWEPT), &swept.to_be_bytes());
        shared.tree.apply_batch(batch)?;
        // durable before `reclaim` frees any file
        shared.sync()?;
        {
            let mut trimmed = shared.trimmed.write().unwrap_or_else(|p| p.into_inner());
            for (topic, through) in marks {
                shared.index.trim_through(&topic, through);
                trimmed.topics.insert(topic, through);
            }
            trimmed.swept = swept;
            // Readers serve recent events from memory: drop the removed ones there too.
            if let Ok(mut recent) = shared.recent.write() {
                recent.events.retain(|e| trimmed.alive(e.seq, &e.topic));
            }
        }
        shared.max_trimmed.fetch_max(max_trimmed, Ordering::AcqRel);
        Ok(())
    }
}

/// Works out one pass (reads only).
pub(super) fn plan(
    shared: &Shared,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<TrimPlan, StoreError> {
    let mut plan = TrimPlan::default();
    if shared.retention_hold.load(Ordering::Acquire) > 0 {
        // a backup is copying events: the next pass catches up
        tracing::debug!("retention held while a backup copies events");
        return Ok(plan);
    }
    let trimmed = shared.trimmed().clone();
    let head = shared.head.load(Ordering::Acquire);
    let limit = policy.max_work.max(1);
    plan.swept = trimmed.swept;
    let mut work = 0usize;

    // Age and disk both remove a prefix of the log: read it once, up to the further mark.
    let mut age_cutoff = None;
    if policy.max_age_ms > 0 {
        age_cutoff = Some(now_ms.saturating_sub(policy.max_age_ms));
    }
    let disk_through = disk_target(shared, policy, &mut plan.report);
    if age_cutoff.is_some() || disk_through.is_some() {
        let from = trimmed.swept + 1;
        let mut failed = None;
        let mut removed: Vec<(String, u64, bool)> = Vec::new();
        let mut swept = trimmed.swept;
        shared.segments.scan(from, head, |seq, rec| {
            let h = match decode_head(&rec) {
                Ok(h) => h,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            let by_disk = disk_through.is_some_and(|d| seq <= d);
            let by_age = age_cutoff.is_some_and(|c| h.time_ms < c);
            if !by_disk && !by_age {
                return false;
            }
            removed.push((h.topic.to_string(), seq, by_disk));
            swept = seq;
            work += 1;
            work < limit
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        for (topic, seq, by_disk) in removed {
            if plan.remove(&topic, seq, trimmed.through(&topic)) {
                if by_disk {
                    plan.report.deleted_by_disk += 1;
                } else {
                    plan.report.deleted_by_age += 1;
                }
            }
        }
        plan.swept = swept;
        if work >= limit {
            plan.report.more = true;
        }
    }

    if policy.max_events_per_topic > 0 && work < limit {
        count_excess(shared, policy, &trimmed, head, limit - work, &mut plan)?;
    }
    Ok(plan)
}

/// The seq through which the oldest segments must go to bring the database under its
/// budget and keep the disk's headroom: the fewest whole sealed segments that suffice.
/// None when nothing needs to go, or when deleting every sealed segment would not
/// suffice (then nothing is deleted, and the metric and log say so).
fn disk_target(
    shared: &Shared,
    policy: &RetentionPolicy,
    report: &mut RetentionReport,
) -> Option<u64> {
    if policy.max_disk_bytes == 0 && policy.min_free_disk_bytes == 0 {
        return None;
    }
    let sled_bytes = shared.db.size_on_disk().unwrap_or(0);
    let total = shared.segments.bytes() + sled_bytes;
    let budget = policy.max_disk_bytes;
    let over_budget = if budget > 0 {
        total.saturating_sub(budget)
    } else {
        0
    };
    let free = match policy.min_free_disk_bytes {
        0 => None,
        _ => shared.space.available(),
    };
    let short_of_headroom = free.map_or(0, |f| policy.min_free_disk_bytes.saturating_sub(f));
    let need = over_budget.max(short_of_headroom);
    let metrics = &shared.metrics;
    if need == 0 {
        metrics.storage_budget_unmet.set(0);
        return None;
    }
    let mut freed = 0u64;
    for seg in shared.segments.sealed() {
        freed += seg.bytes;
        if freed >= need {
            metrics.storage_budget_unmet.set(0);
            return Some(seg.last_seq.max(seg.name_seq));
        }
    }
    metrics.storage_budget_unmet.set(1);
    report.budget_unmet = true;
    tracing::warn!(
        budget,
        total,
        sled_bytes,
        free_bytes = free,
        min_free_disk_bytes = policy.min_free_disk_bytes,
        newest_segment_bytes = shared.segments.active_bytes(),
        "the disk budget (retention_max_disk_bytes, min_free_disk_bytes) cannot be met by deleting old events: nothing deleted for it; raise the budget, free disk space or lower the other limits"
    );
    None
}

/// Each topic over its count loses its oldest live events, found through its index.
fn count_excess(
    shared: &Shared,
    policy: &RetentionPolicy,
    trimmed: &super::stored::Trimmed,
    head: u64,
    mut room: usize,
    plan: &mut TrimPlan,
) -> Result<(), StoreError> {
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
        let already = plan.topics.get(&topic).copied().unwrap_or_default();
        let live = m.count.saturating_sub(already.removed);
        let excess = live.saturating_sub(policy.max_events_per_topic) as usize;
        if excess == 0 {
            continue;
        }
        if room == 0 {
            unfinished.push(topic);
            continue;
        }
        let from = trimmed.through(&topic).max(already.through);
        let seqs = shared
            .index
            .seqs_after(&topic, from, head, excess.min(room));
        room -= seqs.len();
        let through = trimmed.through(&topic);
        for s in &seqs {
            if plan.remove(&topic, *s, through) {
                plan.report.deleted_by_count += 1;
            }
        }
        if seqs.len() < excess {
            unfinished.push(topic);
        }
    }
    if !unfinished.is_empty() {
        plan.report.more = true;
        if let Ok(mut s) = shared.over_limit.lock() {
            s.extend(unfinished);
        }
    }
    Ok(())
}

/// Frees what applied plans removed: segment files with nothing alive (unlinked), and
/// at most one file less than half alive (rewritten).
/// Returns the bytes of segment files freed.
pub(super) fn reclaim(shared: &Shared) -> Result<u64, StoreError> {
    if shared.retention_hold.load(Ordering::Acquire) > 0 {
        return Ok(0);
    }
    let trimmed = shared.trimmed().clone();
    let mut freed = 0u64;
    let mut rewrote = false;
    for seg in shared.segments.sealed() {
        let live: u64 = if seg.records == 0 || seg.last_seq <= trimmed.swept {
            0
        } else {
            seg.topics
                .iter()
                .filter(|(t, span)| trimmed.alive(span.last_seq, t))
                .map(|(_, span)| span.bytes)
                .sum()
        };
        if live == 0 {
            if shared.segments.remove(seg.name_seq)? {
                freed += seg.bytes;
            }
        } else if !rewrote && live * 2 < seg.bytes {
            rewrote = true;
            freed += shared
                .segments
                .rewrite(seg.name_seq, |seq, rec| trimmed.alive_record(seq, rec))?;
        }
    }
    Ok(freed)
}
