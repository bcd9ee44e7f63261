//! The single writer thread. It takes every publish waiting in its queue (and, with
//! `group_commit`, what arrives within the gathering window), writes them in one atomic
//! sled batch, flushes once, and only then makes them visible: recent-events ring,
//! head, replies, hub wake-ups. Concurrent publishes therefore share one fsync.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::log::{NewEvent, Shared};
use super::meta::{self, TopicMeta};
use super::record::{decode_record, encode_record, event_json};
use super::retention::{self, RetentionPolicy, RetentionReport};
use super::{keys, now_ms, StoreError};
use crate::config::{Durability, StorageConfig};
use crate::model::{EventId, Topic};

/// Upper bound on the events one commit group takes, so one flush stays short.
const MAX_GROUP_EVENTS: usize = 50_000;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum WriteCmd {
    Publish {
        events: Vec<NewEvent>,
        reply: Reply<Vec<EventId>>,
    },
    Retain {
        policy: RetentionPolicy,
        now_ms: u64,
        reply: Reply<RetentionReport>,
    },
    Probe {
        reply: Reply<()>,
    },
}

struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
    last_time_ms: u64,
    max_per_topic: u64,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<WriteCmd>,
    next_seq: u64,
    config: &StorageConfig,
) -> Result<JoinHandle<()>, StoreError> {
    let window = match config.durability {
        Durability::FlushEveryWrite => None,
        Durability::GroupCommit => Some(Duration::from_millis(config.group_commit_ms)),
    };
    let mut writer = Writer {
        shared,
        next_seq,
        last_time_ms: 0,
        max_per_topic: config.retention_max_events_per_topic,
    };
    std::thread::Builder::new()
        .name("surepush-writer".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let group = gather(first, &rx, window);
                writer.run_group(group);
            }
        })
        .map_err(|e| StoreError::Task(e.to_string()))
}

/// Everything already queued, plus what arrives within the window (group commit).
fn gather(
    first: WriteCmd,
    rx: &mpsc::Receiver<WriteCmd>,
    window: Option<Duration>,
) -> Vec<WriteCmd> {
    let deadline = window.map(|w| Instant::now() + w);
    let mut n_events = events_in(&first);
    let mut group = vec![first];
    while n_events < MAX_GROUP_EVENTS {
        let next = match rx.try_recv() {
            Ok(cmd) => Some(cmd),
            Err(mpsc::TryRecvError::Disconnected) => None,
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

impl Writer {
    fn run_group(&mut self, group: Vec<WriteCmd>) {
        let mut publishes = Vec::new();
        let mut others = Vec::new();
        for cmd in group {
            match cmd {
                WriteCmd::Publish { events, reply } => publishes.push((events, reply)),
                other => others.push(other),
            }
        }
        if !publishes.is_empty() {
            self.publish_group(publishes);
        }
        for cmd in others {
            match cmd {
                WriteCmd::Retain {
                    policy,
                    now_ms,
                    reply,
                } => {
                    let r = retention::run(&self.shared, &policy, now_ms);
                    let _ = reply.send(r);
                }
                WriteCmd::Probe { reply } => {
                    let r = self
                        .shared
                        .tree
                        .insert(keys::meta(meta::PROBE), &now_ms().to_be_bytes())
                        .and_then(|_| self.shared.db.flush())
                        .map(|_| ())
                        .map_err(StoreError::from);
                    let _ = reply.send(r);
                }
                WriteCmd::Publish { .. } => {}
            }
        }
    }

    fn publish_group(&mut self, publishes: Vec<(Vec<NewEvent>, Reply<Vec<EventId>>)>) {
        let shared = self.shared.clone();
        let first_seq = self.next_seq;
        // Wall clock, but never backwards, so event times follow id order.
        let time_ms = now_ms().max(self.last_time_ms);
        let mut batch = sled::Batch::default();
        let mut metas: HashMap<Topic, TopicMeta> = HashMap::new();
        let mut records = Vec::new();
        let mut ids_per_request = Vec::with_capacity(publishes.len());
        let mut seq = first_seq;
        for (events, _) in &publishes {
            let mut ids = Vec::with_capacity(events.len());
            for ev in events {
                let id = EventId {
                    seq,
                    epoch: shared.epoch,
                };
                let json = event_json(id, ev.topic.as_str(), &ev.kind, &ev.data_json, time_ms);
                let rec = encode_record(time_ms, ev.topic.as_str(), &ev.kind, &json);
                batch.insert(&keys::event(seq), rec.as_slice());
                batch.insert(keys::index(ev.topic.as_str(), seq), &[]);
                if !metas.contains_key(&ev.topic) {
                    let m = TopicMeta::load(&shared.tree, ev.topic.as_str()).unwrap_or_default();
                    metas.insert(ev.topic.clone(), m);
                }
                if let Some(m) = metas.get_mut(&ev.topic) {
                    m.count += 1;
                    m.last_seq = seq;
                    m.last_time_ms = time_ms;
                }
                records.push((seq, rec));
                ids.push(id);
                seq += 1;
            }
            ids_per_request.push(ids);
        }
        for (topic, m) in &metas {
            batch.insert(keys::topic(topic.as_str()), &m.encode());
        }
        batch.insert(keys::meta(meta::NEXT_SEQ), &seq.to_be_bytes());

        let written = shared.tree.apply_batch(batch);
        if let Err(e) = written {
            // Nothing of the batch was applied: the seqs can be reused.
            tracing::error!(error = %e, "publish failed: cannot write to the database");
            fail_all(publishes, &e.to_string(), &shared);
            return;
        }
        self.next_seq = seq;
        self.last_time_ms = time_ms;
        if let Err(e) = shared.db.flush() {
            tracing::error!(error = %e, "publish failed: cannot flush the database to disk");
            fail_all(publishes, &e.to_string(), &shared);
            return;
        }
        let n = (seq - first_seq) as usize;
        shared.metrics.commit_group_events.observe(n as f64);
        shared.metrics.events_published.inc_by(n as u64);

        // Durable: now visible, in order: ring, head, replies, wake-ups.
        if let Ok(mut recent) = shared.recent.write() {
            for (s, rec) in &records {
                match decode_record(*s, shared.epoch, rec) {
                    Ok(ev) => recent.push(Arc::new(ev)),
                    Err(e) => tracing::error!(error = %e, "cannot encode a fresh event"),
                }
            }
        }
        shared.head.store(seq - 1, Ordering::Release);
        for ((_, reply), ids) in publishes.into_iter().zip(ids_per_request) {
            let _ = reply.send(Ok(ids));
        }
        shared.hub.notify(metas.keys());
        if self.max_per_topic > 0 {
            let over: Vec<String> = metas
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
    }
}

fn fail_all(publishes: Vec<(Vec<NewEvent>, Reply<Vec<EventId>>)>, message: &str, shared: &Shared) {
    shared.metrics.publish_errors.inc_by(publishes.len() as u64);
    for (_, reply) in publishes {
        let _ = reply.send(Err(StoreError::Task(format!(
            "storage write failed: {message}"
        ))));
    }
}
