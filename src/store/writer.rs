//! The single writer thread. It takes every publish waiting in its queue (and, with
//! `group_commit`, what arrives within the gathering window) and writes them in one
//! atomic sled batch. The flusher thread then flushes, and only then makes them visible:
//! recent-events ring, head, replies, hub wake-ups. Concurrent publishes therefore share
//! one fsync, and the writer applies the next group while the last one is flushed (one
//! flush covers every group applied before it began).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::job_ops::{JobOp, JobReply};
use super::log::{NewEvent, Shared};
use super::meta::{self, TopicMeta};
use super::record::{
    decode_head, decode_record, encode_record, event_json, event_json_with_receipt,
};
use super::retention::TrimPlan;
use super::{keys, now_ms, StoreError};
use crate::config::{Durability, StorageConfig};
use crate::model::{EventId, Topic};

/// Upper bound on the events one commit group takes, so one flush stays short.
const MAX_GROUP_EVENTS: usize = 50_000;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum WriteCmd {
    Publish {
        events: Vec<NewEvent>,
        reply: Reply<Vec<EventId>>,
    },
    /// Records what a retention pass removes (see `retention::plan`).
    Trim {
        plan: TrimPlan,
        reply: Reply<()>,
    },
    Probe {
        reply: Reply<()>,
    },
    Job {
        op: JobOp,
        reply: Reply<JobReply>,
    },
    /// The cut of a consistent snapshot: runs after the group's writes are flushed,
    /// before the next group, so no write is half in it. Everything but the events is
    /// copied here; the events up to the cut's head are copied after, off this thread.
    Backup {
        path: std::path::PathBuf,
        files: Vec<(String, std::path::PathBuf)>,
        reply: Reply<super::backup::OnlineSnapshot>,
    },
}

pub(super) struct Writer {
    pub shared: Arc<Shared>,
    next_seq: u64,
    last_time_ms: u64,
    flusher: Arc<Flusher>,
    to_flusher: mpsc::Sender<FlushCmd>,
}

enum FlushCmd {
    Commit(Commit),
    /// Answered once every commit sent before it is flushed and visible.
    Barrier(mpsc::SyncSender<()>),
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<WriteCmd>,
    next_seq: u64,
    config: &StorageConfig,
) -> Result<JoinHandle<()>, StoreError> {
    let max_window = match config.durability {
        Durability::FlushEveryWrite => None,
        Durability::GroupCommit => Some(Duration::from_millis(config.group_commit_ms)),
    };
    let flusher = Arc::new(Flusher {
        shared: shared.clone(),
        max_per_topic: config.retention_max_events_per_topic,
    });
    let (to_flusher, flusher_rx) = mpsc::channel();
    let flusher_thread = {
        let flusher = flusher.clone();
        std::thread::Builder::new()
            .name("surepush-flusher".into())
            .spawn(move || flusher.run(flusher_rx))
            .map_err(|e| StoreError::Task(e.to_string()))?
    };
    let mut writer = Writer {
        shared,
        next_seq,
        last_time_ms: 0,
        flusher,
        to_flusher,
    };
    std::thread::Builder::new()
        .name("surepush-writer".into())
        .spawn(move || {
            // Group commit waits for more writes at most as long as the last group took
            // (mostly its flush: waiting longer than a flush costs only adds latency), and
            // not at all once as many writers are in as last time (PostgreSQL's
            // commit_delay with commit_siblings).
            let mut last_took = Duration::ZERO;
            let mut last_len = 0usize;
            while let Ok(first) = rx.recv() {
                let window = max_window.map(|w| w.min(last_took));
                let group = gather(first, &rx, window, last_len);
                last_len = group.len();
                let started = Instant::now();
                writer.run_group(group);
                last_took = started.elapsed();
            }
            // Closing: every applied group is flushed and answered before the log closes.
            drop(writer);
            let _ = flusher_thread.join();
        })
        .map_err(|e| StoreError::Task(e.to_string()))
}

/// Everything already queued, plus what arrives within the window (group commit), which
/// closes early once the group has `enough` commands.
fn gather(
    first: WriteCmd,
    rx: &mpsc::Receiver<WriteCmd>,
    window: Option<Duration>,
    enough: usize,
) -> Vec<WriteCmd> {
    let deadline = window.map(|w| Instant::now() + w);
    let mut n_events = events_in(&first);
    let mut group = vec![first];
    while n_events < MAX_GROUP_EVENTS {
        let next = match rx.try_recv() {
            Ok(cmd) => Some(cmd),
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) if enough > 0 && group.len() >= enough => None,
            Err(mpsc::TryRecvError::Empty) => match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        None
                    } else {
                        rx.recv_timeout(d - now).ok()
                    }
                }
                None => None,
            },
        };
        match next {
            Some(cmd) => {
                n_events += events_in(&cmd);
                group.push(cmd);
            }
            None => break,
        }
    }
    group
}

fn events_in(cmd: &WriteCmd) -> usize {
    match cmd {
        WriteCmd::Publish { events, .. } => events.len(),
        _ => 1,
    }
}

/// One commit group's work: what becomes visible, and who is answered, once flushed.
#[derive(Default)]
pub(super) struct Commit {
    records: Vec<(u64, Vec<u8>)>,
    topics: HashMap<Topic, TopicMeta>,
    /// Queues that got jobs to lease: their waiting workers are woken.
    pub queues: HashSet<String>,
    replies: Vec<PendingReply>,
    /// The last seq written when the group was handed over (the head once it is visible).
    head: u64,
}

/// Answers a caller once the group's flush succeeded (None) or failed (Some(error)).
type PendingReply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A batch with the events it adds and the topic metadata they move.
#[derive(Default)]
pub(super) struct EventBatch {
    pub batch: sled::Batch,
    pub metas: HashMap<Topic, TopicMeta>,
    pub records: Vec<(u64, Vec<u8>)>,
    /// Events that asked for delivery receipts (their `r` keys are in `batch`).
    pub wanted: Vec<(u64, super::receipts::Wanted)>,
}

impl Commit {
    /// Answers `reply` with `value` once the group is durable (or with the flush error).
    pub fn reply_after_flush<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        self.replies.push(Box::new(move |err: Option<&StoreError>| {
            let _ = reply.send(match err {
                None => Ok(value),
                Some(e) => Err(e.for_waiter()),
            });
        }));
    }
}

impl Writer {
    fn run_group(&mut self, group: Vec<WriteCmd>) {
        let mut publishes = Vec::new();
        let mut others = Vec::new();
        let mut commit = Commit::default();
        // Below the free-space mark new events and jobs are refused; what finishes work
        // already accepted (completions, leases, retention) goes on.
        let low = self.shared.space.low().map(|free| StoreError::LowDisk {
            free,
            min: self.shared.space.min_free(),
        });
        for cmd in group {
            match (cmd, &low) {
                (WriteCmd::Publish { reply, .. }, Some(e)) => {
                    self.shared.metrics.publish_errors.inc();
                    let _ = reply.send(Err(e.for_waiter_low()));
                }
                (
                    WriteCmd::Job {
                        op: JobOp::Enqueue(_),
                        reply,
                    },
                    Some(e),
                ) => {
                    let _ = reply.send(Err(e.for_waiter_low()));
                }
                (WriteCmd::Publish { events, reply }, None) => publishes.push((events, reply)),
                (other, _) => others.push(other),
            }
        }
        // Publishes share one batch; each job operation is its own batch after them, so
        // it reads what came before. One flush makes the whole group durable.
        if !publishes.is_empty() {
            self.stage_publishes(publishes, &mut commit);
        }
        let mut rest = Vec::new();
        for cmd in others {
            match cmd {
                WriteCmd::Job { op, reply } => match self.run_job(op, &mut commit) {
                    // Nothing was written (an empty lease, no expired lease): nothing
                    // to wait for, and no flush for an idle queue.
                    Ok(value) if value.is_noop() => {
                        let _ = reply.send(Ok(value));
                    }
                    Ok(value) => commit.reply_after_flush(reply, value),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                other => rest.push(other),
            }
        }
        if !commit.replies.is_empty() {
            commit.head = self.next_seq.saturating_sub(1);
            if let Err(mpsc::SendError(FlushCmd::Commit(commit))) =
                self.to_flusher.send(FlushCmd::Commit(commit))
            {
                self.flusher.finish(vec![commit]); // no flusher thread: flush here
            }
        }
        if !rest.is_empty() {
            // Retention, probes and backup cuts see every earlier group flushed.
            self.wait_flushed();
        }
        for cmd in rest {
            match cmd {
                WriteCmd::Trim { plan, reply } => {
                    let _ = reply.send(plan.apply(&self.shared));
                }
                WriteCmd::Probe { reply } => {
                    let r = self
                        .shared
                        .tree
                        .insert(keys::meta(meta::PROBE), &now_ms().to_be_bytes())
                        .map_err(StoreError::from)
                        .and_then(|_| self.shared.sync());
                    let _ = reply.send(r);
                }
                WriteCmd::Backup { path, files, reply } => {
                    let head = self.shared.head.load(std::sync::atomic::Ordering::Acquire);
                    let r = super::backup::begin_online(&self.shared.db, &path, &files, head);
                    let _ = reply.send(r);
                }
                WriteCmd::Publish { .. } | WriteCmd::Job { .. } => {}
            }
        }
    }

    /// Wall clock, but never backwards, so event times follow id order.
    pub(super) fn now(&mut self) -> u64 {
        self.last_time_ms = now_ms().max(self.last_time_ms);
        self.last_time_ms
    }

    /// Adds one event to the batch and returns its id. Topic metadata is read through
    /// `eb.metas` (from the tree on first use); `seal` writes it into the batch.
    pub(super) fn stage_event(
        &mut self,
        eb: &mut EventBatch,
        topic: &Topic,
        kind: &str,
        data_json: &str,
        time_ms: u64,
        receipt: bool,
    ) -> EventId {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = EventId {
            seq,
            epoch: self.shared.epoch,
        };
        let json = if receipt {
            eb.batch.insert(
                &super::receipts::wanted_key(seq),
                super::receipts::wanted_value(time_ms, topic.as_str()),
            );
            eb.wanted.push((
                seq,
                super::receipts::Wanted {
                    topic: topic.as_str().into(),
                    time_ms,
                },
            ));
            event_json_with_receipt(id, topic.as_str(), kind, data_json, time_ms)
        } else {
            event_json(id, topic.as_str(), kind, data_json, time_ms)
        };
        let rec = encode_record(time_ms, topic.as_str(), kind, &json);
        let m = eb.metas.entry(topic.clone()).or_insert_with(|| {
            TopicMeta::load(&self.shared.tree, topic.as_str()).unwrap_or_default()
        });
        m.count += 1;
        m.last_seq = seq;
        m.last_time_ms = time_ms;
        eb.records.push((seq, rec));
        id
    }

    /// Writes the staged topic metadata and the seq counter into `batch`.
    pub(super) fn seal(&self, eb: &mut EventBatch) {
        for (topic, m) in &eb.metas {
            eb.batch.insert(keys::topic(topic.as_str()), &m.encode());
        }
        eb.batch
            .insert(keys::meta(meta::NEXT_SEQ), &self.next_seq.to_be_bytes());
    }

    /// Appends the batch's events to the segments, then applies the batch (topic
    /// metadata, next seq: what makes them part of the log); a failed batch takes the
    /// events back. Then they are indexed (above the head, so no reader sees them
    /// before they are durable) and become part of the commit.
    pub(super) fn apply(&self, eb: EventBatch, commit: &mut Commit) -> Result<(), StoreError> {
        let mark = self.shared.segments.append(&eb.records)?;
        if let Err(e) = self.shared.tree.apply_batch(eb.batch) {
            if let Some(mark) = mark {
                self.shared.segments.abandon(mark);
            }
            return Err(e.into());
        }
        // the topic is read back from each record's head: no copy of it per event
        self.shared.index.extend(
            eb.records
                .iter()
                .filter_map(|(seq, rec)| decode_head(rec).ok().map(|h| (h.topic, *seq))),
        );
        if !eb.wanted.is_empty() {
            self.shared.receipts.note_wanted(eb.wanted);
        }
        commit.records.extend(eb.records);
        commit.topics.extend(eb.metas);
        Ok(())
    }

    fn stage_publishes(
        &mut self,
        publishes: Vec<(Vec<NewEvent>, Reply<Vec<EventId>>)>,
        commit: &mut Commit,
    ) {
        let time_ms = self.now();
        let first_seq = self.next_seq;
        let mut eb = EventBatch::default();
        let mut ids_per_request = Vec::with_capacity(publishes.len());
        for (events, _) in &publishes {
            let ids: Vec<EventId> = events
                .iter()
                .map(|ev| {
                    self.stage_event(
                        &mut eb,
                        &ev.topic,
                        &ev.kind,
                        &ev.data_json,
                        time_ms,
                        ev.receipt,
                    )
                })
                .collect();
            ids_per_request.push(ids);
        }
        self.seal(&mut eb);
        let n = eb.records.len() as u64;
        if let Err(e) = self.apply(eb, commit) {
            // Nothing of the batch was applied: the seqs can be reused.
            self.next_seq = first_seq;
            tracing::error!(error = %e, "publish failed: cannot write to the database");
            self.shared
                .metrics
                .publish_errors
                .inc_by(publishes.len() as u64);
            for (_, reply) in publishes {
                let _ = reply.send(Err(e.for_waiter()));
            }
            return;
        }
        self.shared.metrics.events_published.inc_by(n);
        for ((_, reply), ids) in publishes.into_iter().zip(ids_per_request) {
            commit.reply_after_flush(reply, ids);
        }
    }

    /// Blocks until the flusher has flushed and made visible every group sent to it.
    fn wait_flushed(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.to_flusher.send(FlushCmd::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// Flushes applied groups, then makes them visible in order.
pub(super) struct Flusher {
    shared: Arc<Shared>,
    max_per_topic: u64,
}

impl Flusher {
    fn run(&self, rx: mpsc::Receiver<FlushCmd>) {
        while let Ok(first) = rx.recv() {
            let mut commits = Vec::new();
            let mut barriers = Vec::new();
            for cmd in std::iter::once(first).chain(rx.try_iter()) {
                match cmd {
                    FlushCmd::Commit(c) => commits.push(c),
                    FlushCmd::Barrier(b) => barriers.push(b),
                }
            }
            if !commits.is_empty() {
                self.finish(commits);
            }
            for b in barriers {
                let _ = b.send(());
            }
        }
    }

    /// One flush for all these groups, then each made visible in order: ring, head,
    /// replies, wake-ups.
    fn finish(&self, commits: Vec<Commit>) {
        let shared = &self.shared;
        let started = Instant::now();
        let synced = shared.sync();
        shared
            .metrics
            .storage_flush_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = synced {
            tracing::error!(error = %e, "cannot flush the database to disk");
            shared.metrics.publish_errors.inc();
            for reply in commits.into_iter().flat_map(|c| c.replies) {
                reply(Some(&e));
            }
            return;
        }
        // one observation per flush: how many events shared it
        let events: usize = commits.iter().map(|c| c.records.len()).sum();
        if events > 0 {
            shared.metrics.commit_group_events.observe(events as f64);
        }
        for commit in commits {
            self.make_visible(commit);
        }
    }

    fn make_visible(&self, commit: Commit) {
        let shared = &self.shared;
        if let Ok(mut recent) = shared.recent.write() {
            for (s, rec) in &commit.records {
                match decode_record(*s, shared.epoch, rec) {
                    Ok(ev) => recent.push(Arc::new(ev)),
                    Err(e) => tracing::error!(error = %e, "cannot encode a fresh event"),
                }
            }
        }
        // flagged before anyone is answered: a retention pass the caller starts next sees it
        if self.max_per_topic > 0 {
            let over: Vec<String> = commit
                .topics
                .iter()
                .filter(|(_, m)| m.count > self.max_per_topic)
                .map(|(t, _)| t.to_string())
                .collect();
            if !over.is_empty() {
                if let Ok(mut set) = shared.over_limit.lock() {
                    set.extend(over);
                }
            }
        }
        shared.head.fetch_max(commit.head, Ordering::Release);
        for reply in commit.replies {
            reply(None);
        }
        shared.hub.notify(commit.topics.keys());
        for q in &commit.queues {
            shared.wake_queue(q);
        }
    }
}
