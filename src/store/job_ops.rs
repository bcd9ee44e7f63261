//! Job state changes, run on the writer thread: each is one atomic batch, with the
//! outcome event (if any) in the same batch as the outcome.

use std::collections::HashMap;

use super::jobs::{
    self, backoff_ms, counts_key, dead_key, idem_key, job_id, job_key, lease_key, legacy_idem_key,
    ready_key, ready_parts, ready_prefix, JobError, JobRecord, JobState, QueueCounts,
};
use super::writer::{Commit, EventBatch, Writer};
use super::{keys, StoreError};
use crate::model::Topic;

/// A job to enqueue, validated.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub queue: String,
    pub payload: String,
    pub reply_topic: Option<Topic>,
    pub max_attempts: u32,
    pub run_at_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    pub owner: Option<String>,
}

/// Who claims to hold a lease; `None` fields are not checked.
#[derive(Clone, Debug, Default)]
pub struct Holder {
    pub worker: Option<String>,
    pub attempt: Option<u32>,
    /// The caller's token subject (None without auth).
    pub subject: Option<String>,
}

impl Holder {
    /// Neither `worker` nor `attempt` was given: a worker of before they were required.
    pub fn is_anonymous(&self) -> bool {
        self.worker.is_none() && self.attempt.is_none()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

#[derive(Debug)]
pub enum JobOp {
    Enqueue(NewJob),
    Lease {
        queue: String,
        worker: String,
        /// The leasing token's subject.
        subject: Option<String>,
        max: usize,
        lease_ms: u64,
    },
    Heartbeat {
        seq: u64,
        holder: Holder,
        lease_ms: u64,
    },
    Complete {
        seq: u64,
        holder: Holder,
        result: String,
    },
    Fail {
        seq: u64,
        holder: Holder,
        error: String,
        retry: bool,
        backoff: Backoff,
    },
    ExpireLeases {
        backoff: Backoff,
    },
    Requeue {
        seq: u64,
    },
    Discard {
        seq: u64,
    },
}

#[derive(Debug)]
pub enum JobReply {
    Enqueued {
        job: JobRecord,
        created: bool,
    },
    Leased {
        jobs: Vec<JobRecord>,
        /// When the next delayed job of the queue becomes due.
        next_due_ms: Option<u64>,
    },
    Updated(JobRecord),
    Expired {
        returned: u32,
        dead: u32,
    },
    Discarded,
}

impl JobReply {
    /// True when the operation changed nothing (so there is nothing to make durable).
    pub fn is_noop(&self) -> bool {
        match self {
            JobReply::Leased { jobs, .. } => jobs.is_empty(),
            JobReply::Expired { returned, dead } => returned + dead == 0,
            _ => false,
        }
    }
}

/// The job this owner already enqueued with this idempotency key, if any (also one
/// stored before keys were scoped by owner, when it is the same owner's).
fn idempotent_twin(
    tree: &sled::Tree,
    queue: &str,
    owner: Option<&str>,
    key: &str,
) -> Result<Option<JobRecord>, StoreError> {
    if let Some(v) = tree.get(idem_key(queue, owner, key))? {
        return Ok(Some(load(tree, keys::be_u64(&v))?));
    }
    if let Some(v) = tree.get(legacy_idem_key(queue, key))? {
        let job = load(tree, keys::be_u64(&v))?;
        if job.owner.as_deref() == owner {
            return Ok(Some(job));
        }
    }
    Ok(None)
}

fn load(tree: &sled::Tree, seq: u64) -> Result<JobRecord, StoreError> {
    let v = tree
        .get(job_key(seq))?
        .ok_or_else(|| StoreError::Job(JobError::NotFound(job_id(seq))))?;
    serde_json::from_slice(&v)
        .map_err(|e| StoreError::Task(format!("job {} is unreadable: {e}", job_id(seq))))
}

fn encode(job: &JobRecord) -> Vec<u8> {
    serde_json::to_vec(job).unwrap_or_default()
}

fn conflict(msg: String) -> StoreError {
    StoreError::Job(JobError::Conflict(msg))
}

/// Refuses a caller that does not hold the job's current lease.
fn check_holder(job: &JobRecord, holder: &Holder) -> Result<(), StoreError> {
    let id = job_id(job.seq);
    if job.state != JobState::Leased {
        return Err(conflict(format!(
            "job {id} is {}, not leased: the lease was lost or the job already finished",
            job.state.as_str()
        )));
    }
    if let Some(a) = holder.attempt {
        if a != job.attempts {
            return Err(conflict(format!(
                "job {id} is on attempt {}, not {a}: the lease expired and it was given out again",
                job.attempts
            )));
        }
    }
    if let (Some(w), Some(cur)) = (&holder.worker, &job.worker) {
        if w != cur {
            return Err(conflict(format!("job {id} is leased by another worker")));
        }
    }
    // Naming neither is allowed only to the token that took the lease (workers of
    // before `worker` and `attempt` were sent; deprecated): another token must name them.
    if holder.is_anonymous() && job.lease_subject.is_some() && holder.subject != job.lease_subject {
        return Err(conflict(format!(
            "job {id} was leased with another token: send \"worker\" and \"attempt\" as the lease gave them"
        )));
    }
    Ok(())
}

/// Only jobs that were given up on (dead or failed) may be requeued or discarded.
fn require_given_up(job: &JobRecord, action: &str) -> Result<(), StoreError> {
    if matches!(job.state, JobState::Dead | JobState::Failed) {
        return Ok(());
    }
    Err(conflict(format!(
        "job {} is {}; only dead or failed jobs can be {action}",
        job_id(job.seq),
        job.state.as_str()
    )))
}

/// One job operation's batch, with the queue counters it moves.
struct JobBatch {
    ev: EventBatch,
    counts: HashMap<String, QueueCounts>,
}

impl JobBatch {
    fn new() -> Self {
        JobBatch {
            ev: EventBatch::default(),
            counts: HashMap::new(),
        }
    }

    fn moved(
        &mut self,
        tree: &sled::Tree,
        queue: &str,
        from: Option<JobState>,
        to: Option<JobState>,
    ) -> Result<(), StoreError> {
        if !self.counts.contains_key(queue) {
            let c = tree
                .get(counts_key(queue))?
                .map(|v| QueueCounts::decode(&v))
                .unwrap_or_default();
            self.counts.insert(queue.to_string(), c);
        }
        if let Some(c) = self.counts.get_mut(queue) {
            c.moved(from, to);
        }
        Ok(())
    }

    fn put(&mut self, job: &JobRecord) {
        self.ev.batch.insert(&job_key(job.seq), encode(job));
    }
}

impl Writer {
    pub(super) fn run_job(
        &mut self,
        op: JobOp,
        commit: &mut Commit,
    ) -> Result<JobReply, StoreError> {
        let now = self.now();
        let tree = self.shared.tree.clone();
        let mut jb = JobBatch::new();
        let reply = match op {
            JobOp::Enqueue(new) => {
                if let Some(key) = &new.idempotency_key {
                    if let Some(job) =
                        idempotent_twin(&tree, &new.queue, new.owner.as_deref(), key)?
                    {
                        return Ok(JobReply::Enqueued {
                            job,
                            created: false,
                        });
                    }
                }
                let seq = jobs::next_job_seq(&tree)?;
                let run_at = new.run_at_ms.unwrap_or(now).max(now);
                let job = JobRecord {
                    seq,
                    queue: new.queue.clone(),
                    payload: new.payload,
                    reply_topic: new.reply_topic.map(|t| t.to_string()),
                    max_attempts: new.max_attempts,
                    attempts: 0,
                    state: JobState::Queued,
                    created_ms: now,
                    run_at_ms: run_at,
                    updated_ms: now,
                    lease_until_ms: None,
                    worker: None,
                    result: None,
                    last_error: None,
                    finished_ms: None,
                    idempotency_key: new.idempotency_key.clone(),
                    owner: new.owner,
                    lease_subject: None,
                };
                jb.put(&job);
                jb.ev
                    .batch
                    .insert(ready_key(&job.queue, run_at, seq), &[] as &[u8]);
                jb.ev
                    .batch
                    .insert(keys::meta(jobs::NEXT_JOB), &(seq + 1).to_be_bytes());
                if let Some(key) = &new.idempotency_key {
                    jb.ev.batch.insert(
                        idem_key(&job.queue, job.owner.as_deref(), key),
                        &seq.to_be_bytes(),
                    );
                }
                jb.moved(&tree, &job.queue, None, Some(JobState::Queued))?;
                commit.queues.insert(job.queue.clone());
                JobReply::Enqueued { job, created: true }
            }
            JobOp::Lease {
                queue,
                worker,
                subject,
                max,
                lease_ms,
            } => {
                let mut leased = Vec::new();
                let mut next_due_ms = None;
                for kv in tree.scan_prefix(ready_prefix(&queue)) {
                    let (k, _) = kv?;
                    let Some((run_at, seq)) = ready_parts(&k) else {
                        continue;
                    };
                    if run_at > now {
                        next_due_ms = Some(run_at);
                        break;
                    }
                    if leased.len() >= max {
                        next_due_ms = Some(run_at);
                        break;
                    }
                    let mut job = load(&tree, seq)?;
                    jb.ev.batch.remove(k);
                    if job.state != JobState::Queued {
                        continue; // stale index entry
                    }
                    job.state = JobState::Leased;
                    job.attempts += 1;
                    job.worker = Some(worker.clone());
                    job.lease_subject = subject.clone();
                    job.lease_until_ms = Some(now + lease_ms);
                    job.updated_ms = now;
                    jb.ev
                        .batch
                        .insert(&lease_key(now + lease_ms, seq), &[] as &[u8]);
                    jb.put(&job);
                    jb.moved(
                        &tree,
                        &queue,
                        Some(JobState::Queued),
                        Some(JobState::Leased),
                    )?;
                    leased.push(job);
                }
                if !leased.is_empty() {
                    self.shared.metrics.job_attempts.inc_by(leased.len() as u64);
                }
                JobReply::Leased {
                    jobs: leased,
                    next_due_ms,
                }
            }
            JobOp::Heartbeat {
                seq,
                holder,
                lease_ms,
            } => {
                let mut job = load(&tree, seq)?;
                check_holder(&job, &holder)?;
                if let Some(old) = job.lease_until_ms {
                    jb.ev.batch.remove(&lease_key(old, seq));
                }
                job.lease_until_ms = Some(now + lease_ms);
                job.updated_ms = now;
                jb.ev
                    .batch
                    .insert(&lease_key(now + lease_ms, seq), &[] as &[u8]);
                jb.put(&job);
                JobReply::Updated(job)
            }
            JobOp::Complete {
                seq,
                holder,
                result,
            } => {
                let mut job = load(&tree, seq)?;
                check_holder(&job, &holder)?;
                let data = format!(
                    "{{\"job_id\":\"{}\",\"queue\":\"{}\",\"status\":\"succeeded\",\"attempts\":{},\"result\":{}}}",
                    job_id(seq),
                    job.queue,
                    job.attempts,
                    result
                );
                self.finish_job(&mut jb, &mut job, JobState::Succeeded, now)?;
                job.result = Some(result);
                jb.put(&job);
                self.outcome_event(&mut jb, &job, "job.completed", &data, now);
                JobReply::Updated(job)
            }
            JobOp::Fail {
                seq,
                holder,
                error,
                retry,
                backoff,
            } => {
                let mut job = load(&tree, seq)?;
                check_holder(&job, &holder)?;
                job.last_error = Some(error);
                self.retry_or_finish(&mut jb, &mut job, retry, backoff, now, commit)?;
                jb.put(&job);
                JobReply::Updated(job)
            }
            JobOp::ExpireLeases { backoff } => {
                let mut returned = 0;
                let mut dead = 0;
                let end = lease_key(now, u64::MAX);
                for kv in tree.range(lease_key(0, 0)..=end).take(1000) {
                    let (k, _) = kv?;
                    jb.ev.batch.remove(k.clone());
                    let seq = keys::be_u64(&k[9..17]);
                    let Ok(mut job) = load(&tree, seq) else {
                        continue;
                    };
                    if job.state != JobState::Leased || job.lease_until_ms.is_none_or(|u| u > now) {
                        continue; // stale entry: heartbeat moved it, or finished
                    }
                    job.last_error = Some(format!(
                        "lease expired (worker {} stopped heartbeating)",
                        job.worker.as_deref().unwrap_or("?")
                    ));
                    job.lease_until_ms = None; // its index entry is removed above
                    self.retry_or_finish(&mut jb, &mut job, true, backoff, now, commit)?;
                    jb.put(&job);
                    if job.state == JobState::Dead {
                        dead += 1;
                    } else {
                        returned += 1;
                    }
                }
                self.shared
                    .metrics
                    .lease_expiries
                    .inc_by(u64::from(returned + dead));
                JobReply::Expired { returned, dead }
            }
            JobOp::Requeue { seq } => {
                let mut job = load(&tree, seq)?;
                require_given_up(&job, "requeued")?;
                jb.ev.batch.remove(dead_key(&job.queue, seq));
                jb.moved(&tree, &job.queue, Some(job.state), Some(JobState::Queued))?;
                job.state = JobState::Queued;
                job.attempts = 0;
                job.run_at_ms = now;
                job.updated_ms = now;
                job.finished_ms = None;
                jb.ev
                    .batch
                    .insert(ready_key(&job.queue, now, seq), &[] as &[u8]);
                jb.put(&job);
                commit.queues.insert(job.queue.clone());
                JobReply::Updated(job)
            }
            JobOp::Discard { seq } => {
                let job = load(&tree, seq)?;
                require_given_up(&job, "discarded")?;
                jb.ev.batch.remove(&job_key(seq));
                jb.ev.batch.remove(dead_key(&job.queue, seq));
                if let Some(k) = &job.idempotency_key {
                    jb.ev
                        .batch
                        .remove(idem_key(&job.queue, job.owner.as_deref(), k));
                    jb.ev.batch.remove(legacy_idem_key(&job.queue, k));
                }
                jb.moved(&tree, &job.queue, Some(job.state), None)?;
                JobReply::Discarded
            }
        };
        let JobBatch { mut ev, counts } = jb;
        for (q, c) in &counts {
            ev.batch.insert(counts_key(q), &c.encode()[..]);
        }
        if !ev.records.is_empty() {
            self.seal(&mut ev);
        }
        self.apply(ev, commit)?;
        Ok(reply)
    }

    /// Moves a leased job to a final state (its lease index entry removed).
    fn finish_job(
        &mut self,
        jb: &mut JobBatch,
        job: &mut JobRecord,
        to: JobState,
        now: u64,
    ) -> Result<(), StoreError> {
        if let Some(until) = job.lease_until_ms.take() {
            jb.ev.batch.remove(&lease_key(until, job.seq));
        }
        jb.moved(&self.shared.tree, &job.queue, Some(job.state), Some(to))?;
        job.state = to;
        job.updated_ms = now;
        job.finished_ms = Some(now);
        if to == JobState::Dead {
            jb.ev
                .batch
                .insert(dead_key(&job.queue, job.seq), &[] as &[u8]);
        }
        self.shared
            .metrics
            .job_latency_seconds
            .observe(now.saturating_sub(job.created_ms) as f64 / 1000.0);
        Ok(())
    }

    /// After a failed attempt: back to the queue with backoff, or dead / failed for good.
    fn retry_or_finish(
        &mut self,
        jb: &mut JobBatch,
        job: &mut JobRecord,
        retry: bool,
        backoff: Backoff,
        now: u64,
        commit: &mut Commit,
    ) -> Result<(), StoreError> {
        let error = job.last_error.clone().unwrap_or_default();
        let data = |status: &str| {
            format!(
                "{{\"job_id\":\"{}\",\"queue\":\"{}\",\"status\":\"{status}\",\"attempts\":{},\"error\":{}}}",
                job_id(job.seq),
                job.queue,
                job.attempts,
                serde_json::Value::String(error.clone())
            )
        };
        if retry && job.attempts < job.max_attempts {
            if let Some(until) = job.lease_until_ms.take() {
                jb.ev.batch.remove(&lease_key(until, job.seq));
            }
            jb.moved(
                &self.shared.tree,
                &job.queue,
                Some(job.state),
                Some(JobState::Queued),
            )?;
            let run_at = now + backoff_ms(job.attempts, backoff.base_ms, backoff.max_ms);
            job.state = JobState::Queued;
            job.run_at_ms = run_at;
            job.updated_ms = now;
            job.worker = None;
            jb.ev
                .batch
                .insert(ready_key(&job.queue, run_at, job.seq), &[] as &[u8]);
            commit.queues.insert(job.queue.clone());
            return Ok(());
        }
        let (state, kind) = if retry {
            (JobState::Dead, "job.dead")
        } else {
            (JobState::Failed, "job.failed")
        };
        let data = data(state.as_str());
        self.finish_job(jb, job, state, now)?;
        self.outcome_event(jb, job, kind, &data, now);
        Ok(())
    }

    /// The outcome event on the job's reply topic, in the job's own batch.
    fn outcome_event(
        &mut self,
        jb: &mut JobBatch,
        job: &JobRecord,
        kind: &str,
        data: &str,
        now: u64,
    ) {
        let Some(topic) = job
            .reply_topic
            .as_deref()
            .and_then(|t| Topic::parse(t).ok())
        else {
            return;
        };
        self.stage_event(&mut jb.ev, &topic, kind, data, now, false);
    }
}
