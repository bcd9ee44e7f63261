//! The event log: open, read by cursor and pattern, resume points. All writes go
//! through the single writer thread (`writer.rs`), which makes them durable before
//! anything becomes visible to readers. Events are read from the segment files
//! (`segments.rs`), leaving out what retention removed (`stored::Trimmed`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::index::{IndexBuilder, TopicIndex};
use super::job_ops::{JobOp, JobReply};
use super::jobs::{self, JobRecord, QueueCounts};
use super::meta::{self, TopicMeta};
use super::record::{decode_head, decode_record, EncodedEvent};
use super::retention::{RetentionPolicy, RetentionReport};
use super::segments::Segments;
use super::stored::{self, Trimmed};
use super::writer::{self, WriteCmd};
use super::{backup, blocking, keys, migrate, StoreError};
use crate::config::StorageConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::model::{any_match, EventId, Pattern, Since, Topic};

/// Most records examined by one read of the log before it returns what it found.
const SCAN_BUDGET: usize = 20_000;

/// An event accepted for publishing, validated and with its data minified.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub topic: Topic,
    pub kind: String,
    pub data_json: String,
    /// Record who gets it and who acknowledges it (`receipts`).
    pub receipt: bool,
}

/// Events after a cursor, and how far the log was examined: the next read starts after
/// `scanned_to`, which may be past the last returned event when others did not match.
pub struct ReadBatch {
    pub events: Vec<Arc<EncodedEvent>>,
    pub scanned_to: u64,
}

/// Where a subscription starts and whether the client must reload its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    pub cursor: u64,
    pub reset: bool,
}

/// A topic as listed for operators.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TopicInfo {
    pub topic: String,
    pub events: u64,
    pub last_id: String,
    pub last_time_ms: u64,
}

/// State shared by readers and the writer thread.
pub(super) struct Shared {
    pub db: sled::Db,
    /// sled's data file, opened again to fsync it (see `Shared::sync`); None if it
    /// could not be opened, and then only sled's own flush is done.
    pub data_file: Option<std::fs::File>,
    pub tree: sled::Tree,
    /// The events, in segment files.
    pub segments: Arc<Segments>,
    /// Which seqs each topic has (in memory, built at open).
    pub index: TopicIndex,
    /// What retention removed: readers leave it out.
    pub trimmed: RwLock<Trimmed>,
    /// Free space on the data disk against `storage.flood_free_disk_bytes`.
    pub space: super::space::FreeSpace,
    pub epoch: u32,
    /// Highest seq that is durable and visible.
    pub head: AtomicU64,
    /// Highest seq retention has removed from any topic.
    pub max_trimmed: AtomicU64,
    pub recent: RwLock<Recent>,
    pub over_limit: Mutex<std::collections::HashSet<String>>,
    /// The per-topic limit the writer flags `over_limit` topics by (0: it flags none).
    pub flag_threshold: u64,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Workers waiting to lease, per queue.
    pub job_waiters: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Seq ranges `[from, to)` a restore skipped (see `meta::RESTORE_GAP_PREFIX`).
    pub restore_gaps: Vec<(u64, u64)>,
    /// Delivery receipts of the events that asked for them.
    pub receipts: super::receipts::Receipts,
    /// Backups copying events right now: retention deletes nothing while above zero.
    pub retention_hold: std::sync::atomic::AtomicU32,
}

impl Shared {
    /// Makes everything written so far durable. sled's `flush` writes its buffers with
    /// `sync_file_range` on Linux, which survives a process crash but neither commits
    /// the file's metadata nor flushes the disk's write cache (sled fsyncs only every
    /// `flush_every_ms`); the `fdatasync` after it makes an acknowledged event survive
    /// a power cut too. (The file stays open: this runs once per commit group.)
    pub fn sync(&self) -> Result<(), StoreError> {
        // the events before the index and metadata that point at them
        self.segments.sync()?;
        self.db.flush()?;
        if let Some(f) = &self.data_file {
            f.sync_data()
                .map_err(|e| StoreError::Db(sled::Error::Io(e)))?;
        }
        Ok(())
    }

    pub fn trimmed(&self) -> std::sync::RwLockReadGuard<'_, Trimmed> {
        self.trimmed.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored records of these seqs that retention left alive, decoded, ascending.
    pub fn events_at(&self, seqs: &[u64]) -> Result<Vec<EncodedEvent>, StoreError> {
        let found = self.segments.get_many(seqs)?;
        let trimmed = self.trimmed();
        let mut out = Vec::with_capacity(found.len());
        for (seq, rec) in found {
            if trimmed.alive_record(seq, &rec) {
                out.push(decode_record(seq, self.epoch, &rec)?);
            }
        }
        Ok(out)
    }

    pub fn queue_notify(&self, queue: &str) -> Arc<tokio::sync::Notify> {
        match self.job_waiters.lock() {
            Ok(mut m) => m.entry(queue.to_string()).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn wake_queue(&self, queue: &str) {
        if let Ok(m) = self.job_waiters.lock() {
            if let Some(n) = m.get(queue) {
                n.notify_waiters();
            }
        }
    }
}

/// The most recent events, encoded, in seq order: every retained event with a seq
/// above `floor` is here.
pub(super) struct Recent {
    pub events: VecDeque<Arc<EncodedEvent>>,
    pub floor: u64,
    pub capacity: usize,
}

impl Recent {
    pub fn push(&mut self, ev: Arc<EncodedEvent>) {
        if self.capacity == 0 {
            self.floor = ev.seq;
            return;
        }
        if self.events.len() == self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.floor = old.seq;
            }
        }
        self.events.push_back(ev);
    }
}

pub struct EventLog {
    shared: Arc<Shared>,
    /// One retention pass at a time (plan, apply, reclaim).
    retention: tokio::sync::Mutex<()>,
    writer: RwLock<Option<mpsc::Sender<WriteCmd>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EventLog {
    pub fn open(
        path: &Path,
        config: &StorageConfig,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<EventLog, StoreError> {
        let db = open_db(path, config)?;
        let tree = db.open_tree("log")?;
        // New database: markers; older schema: migrated; newer: refused.
        migrate::upgrade(&db, &tree)?;
        let epoch = meta::get_u64(&tree, meta::EPOCH)?.unwrap_or(0) as u32;
        let next_seq = meta::next_seq(&tree)?;
        let trimmed = Trimmed::load(&tree)?;
        // Opening reads every record to check it: the index is built on the way.
        let mut index = IndexBuilder::default();
        let segments = Segments::open_reading(
            path,
            stored::segment_bytes(config),
            next_seq,
            true,
            &mut |seq, topic| stored::index_topic(&mut index, &trimmed, seq, topic),
        )?;
        stored::absorb_sled_events(&db, &tree, &segments, next_seq, &mut index, &trimmed)?;
        stored::drop_sled_index(&db, &tree)?;
        let index = index.build();
        let restore_gaps = meta::restore_gaps(&tree)?;
        let max_trimmed = meta::get_u64(&tree, meta::MAX_TRIMMED)?.unwrap_or(0);
        let recent = load_recent(
            &segments,
            &trimmed,
            epoch,
            next_seq - 1,
            config.recent_events_in_memory,
        )?;
        let over_limit = topics_over(&tree, config.retention_max_events_per_topic)?;
        let data_file = std::fs::File::open(path.join(super::SLED_DATA_FILE))
            .map_err(|e| tracing::warn!(error = %e, "cannot open sled's data file to fsync it"))
            .ok();
        let receipts = super::receipts::Receipts::open(&tree)?;
        let shared = Arc::new(Shared {
            db,
            data_file,
            tree,
            segments: Arc::new(segments),
            index,
            trimmed: RwLock::new(trimmed),
            space: super::space::FreeSpace::new(path, config.flood_free_disk_bytes),
            epoch,
            head: AtomicU64::new(next_seq - 1),
            max_trimmed: AtomicU64::new(max_trimmed),
            recent: RwLock::new(recent),
            over_limit: Mutex::new(over_limit),
            flag_threshold: config.retention_max_events_per_topic,
            hub,
            metrics,
            job_waiters: Mutex::new(std::collections::HashMap::new()),
            restore_gaps,
            receipts,
            retention_hold: std::sync::atomic::AtomicU32::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let thread = writer::spawn(shared.clone(), rx, next_seq, config)?;
        Ok(EventLog {
            shared,
            retention: tokio::sync::Mutex::new(()),
            writer: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn epoch(&self) -> u32 {
        self.shared.epoch
    }

    /// Delivery receipts: marking deliveries and reading them back.
    pub fn receipts(&self) -> &super::receipts::Receipts {
        &self.shared.receipts
    }

    /// Records acknowledgements of `subject` and makes them durable before returning the
    /// seqs that asked for receipts.
    pub async fn acknowledge(
        &self,
        seqs: Vec<u64>,
        subject: String,
    ) -> Result<Vec<u64>, StoreError> {
        let shared = self.shared.clone();
        blocking(move || {
            let (known, latencies) = shared.receipts.acknowledge(&seqs, &subject)?;
            for ms in latencies {
                shared
                    .metrics
                    .receipt_ack_seconds
                    .observe(ms as f64 / 1000.0);
            }
            if !known.is_empty() {
                shared.db.flush()?;
                if let Some(f) = &shared.data_file {
                    f.sync_data()
                        .map_err(|e| StoreError::Db(sled::Error::Io(e)))?;
                }
                shared.receipts.acknowledged().notify_waiters();
            }
            Ok(known)
        })
        .await
    }

    /// Writes the delivered marks gathered in memory; forgets receipts of events
    /// retention removed or older than `max_age_ms`.
    pub async fn tend_receipts(&self, max_age_ms: u64, now_ms: u64) -> Result<usize, StoreError> {
        let m = &self.shared.metrics;
        m.receipt_events.set(self.shared.receipts.events() as i64);
        m.receipt_unacknowledged
            .set(self.shared.receipts.unacknowledged() as i64);
        if !self.shared.receipts.any() {
            return Ok(0);
        }
        let shared = self.shared.clone();
        blocking(move || {
            let written = shared.receipts.write_marks()?;
            // oldest first: an event retention removed, or older than max_age, takes
            // its receipts along (at most 1 000 events per call)
            for _ in 0..1000 {
                let Some(first) = shared.receipts.first() else {
                    break;
                };
                let topic = shared.receipts.topic_of(first).unwrap_or_default();
                let alive = shared.trimmed().alive(first, &topic);
                let record = if alive {
                    shared.segments.get_many(&[first])?.pop()
                } else {
                    None
                };
                let stale = match record {
                    None => true,
                    Some((_, rec)) => super::record::decode_head(&rec)
                        .map(|h| now_ms.saturating_sub(h.time_ms) > max_age_ms)
                        .unwrap_or(true),
                };
                if !stale {
                    break;
                }
                shared.receipts.forget_upto(first)?;
            }
            Ok(written)
        })
        .await
    }

    pub fn head(&self) -> u64 {
        self.shared.head.load(Ordering::Acquire)
    }

    pub fn id(&self, seq: u64) -> EventId {
        EventId {
            seq,
            epoch: self.shared.epoch,
        }
    }

    /// `Some(free bytes)` while the data disk has less free than
    /// `storage.flood_free_disk_bytes` (new events and jobs are refused meanwhile).
    pub fn low_disk(&self) -> Option<StoreError> {
        let free = self.shared.space.low()?;
        Some(StoreError::LowDisk {
            free,
            min: self.shared.space.min_free(),
        })
    }

    /// Event segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.shared.segments.count()
    }

    /// Events in the in-memory per-topic index.
    pub fn index_entries(&self) -> u64 {
        self.shared.index.total()
    }

    /// Bytes of the database: event segments and sled's files.
    pub fn size_on_disk(&self) -> u64 {
        self.shared.segments.bytes() + self.shared.db.size_on_disk().unwrap_or(0)
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteCmd,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.writer.read().map_err(|_| StoreError::Closed)?;
            let tx = guard.as_ref().ok_or(StoreError::Closed)?;
            tx.send(make(reply)).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends events atomically; resolves once they are durable, with their ids.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<EventId>, StoreError> {
        self.send(|reply| WriteCmd::Publish { events, reply }).await
    }

    /// One retention pass of bounded size; call again while `more` is true. What to
    /// remove is worked out and the files are freed off the writer; the writer only
    /// records the new marks (one small batch), so publishing goes on meanwhile.
    pub async fn retain(
        &self,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<RetentionReport, StoreError> {
        let _one = self.retention.lock().await;
        let shared = self.shared.clone();
        let plan = blocking(move || super::retention::plan(&shared, &policy, now_ms)).await?;
        let mut report = plan.report;
        if !plan.is_empty() {
            self.send(|reply| WriteCmd::Trim { plan, reply }).await?;
        }
        let shared = self.shared.clone();
        report.freed_bytes = blocking(move || super::retention::reclaim(&shared)).await?;
        self.shared
            .metrics
            .retention_deleted
            .inc_by(report.deleted());
        Ok(report)
    }

    /// Writes and flushes a marker: proves the database is open and writable.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.send(|reply| WriteCmd::Probe { reply }).await
    }

    /// Writes a consistent snapshot of every tree (and `files`, read at the same cut) to
    /// a new file at `path`, on the writer while no other write runs.
    pub async fn backup(
        &self,
        path: std::path::PathBuf,
        files: Vec<(String, std::path::PathBuf)>,
    ) -> Result<backup::Summary, StoreError> {
        // Events are immutable once written and only retention deletes them: while it is
        // held off, the events up to the cut can be copied while the server writes on.
        struct Hold(Arc<Shared>);
        impl Drop for Hold {
            fn drop(&mut self) {
                self.0.retention_hold.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.shared.retention_hold.fetch_add(1, Ordering::AcqRel);
        let hold = Hold(self.shared.clone());
        let cut = self
            .send(|reply| WriteCmd::Backup { path, files, reply })
            .await?;
        let shared = self.shared.clone();
        let summary = blocking(move || {
            let events = stored::BackupEvents {
                legacy: None,
                segments: shared.segments.clone(),
                trimmed: shared.trimmed().clone(),
            };
            cut.finish(&events)
        })
        .await;
        drop(hold);
        summary
    }

    /// Runs one job operation on the writer; resolves once it is durable.
    pub async fn job(&self, op: JobOp) -> Result<JobReply, StoreError> {
        self.send(|reply| WriteCmd::Job { op, reply }).await
    }

    /// Woken when the queue gets jobs to lease.
    pub fn queue_notify(&self, queue: &str) -> Arc<tokio::sync::Notify> {
        self.shared.queue_notify(queue)
    }

    pub async fn get_job(&self, seq: u64) -> Result<Option<JobRecord>, StoreError> {
        let shared = self.shared.clone();
        blocking(move || {
            Ok(match shared.tree.get(jobs::job_key(seq))? {
                Some(v) => serde_json::from_slice(&v).ok(),
                None => None,
            })
        })
        .await
    }

    /// Every queue with its counts per state.
    pub async fn queues(&self) -> Result<Vec<(String, QueueCounts)>, StoreError> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut out = Vec::new();
            for kv in shared.tree.scan_prefix([jobs::COUNTS]) {
                let (k, v) = kv?;
                out.push((
                    String::from_utf8_lossy(&k[1..]).into_owned(),
                    QueueCounts::decode(&v),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Dead letters of a queue, oldest first.
    pub async fn dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let shared = self.shared.clone();
        let prefix = jobs::dead_prefix(queue);
        blocking(move || {
            let mut out = Vec::new();
            for kv in shared.tree.scan_prefix(prefix).take(limit) {
                let (k, _) = kv?;
                let seq = keys::be_u64(&k[k.len() - 8..]);
                if let Some(v) = shared.tree.get(jobs::job_key(seq))? {
                    if let Ok(job) = serde_json::from_slice(&v) {
                        out.push(job);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Stops the writer after the commands already queued, and flushes.
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Ok(mut w) = self.writer.write() {
            w.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let shared = self.shared.clone();
        blocking(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            shared.receipts.write_marks()?;
            shared.sync()?;
            Ok(())
        })
        .await
    }

    /// Where a subscription with these patterns starts.
    pub async fn resume(&self, since: Since, patterns: &[Pattern]) -> Result<Resume, StoreError> {
        let head = self.head();
        let seq = match since {
            Since::Now => {
                return Ok(Resume {
                    cursor: head,
                    reset: false,
                })
            }
            Since::Beginning => 0,
            Since::Seq(s) => s,
            Since::Id(id) if id.epoch != self.shared.epoch => {
                return Ok(Resume {
                    cursor: head,
                    reset: true,
                })
            }
            Since::Id(id) => id.seq,
        };
        if seq == 0 {
            return Ok(Resume {
                cursor: 0,
                reset: false,
            });
        }
        if seq > head {
            // never issued by this database
            return Ok(Resume {
                cursor: head,
                reset: true,
            });
        }
        if let Some(&(_, to)) = self
            .shared
            .restore_gaps
            .iter()
            .find(|(from, to)| (*from..*to).contains(&seq))
        {
            // issued by the server this database was restored from, after its backup:
            // those events are gone; go on with everything issued since the restore
            return Ok(Resume {
                cursor: to - 1,
                reset: true,
            });
        }
        if seq >= self.shared.max_trimmed.load(Ordering::Acquire) {
            return Ok(Resume {
                cursor: seq,
                reset: false,
            });
        }
        let shared = self.shared.clone();
        let patterns = patterns.to_vec();
        let trimmed = blocking(move || trimmed_after(&shared.tree, &patterns, seq)).await?;
        Ok(Resume {
            cursor: seq,
            reset: trimmed,
        })
    }

    /// Durable events with seq in `(after, head]` matching the patterns, at most `limit`.
    pub async fn read(
        &self,
        after: u64,
        patterns: &[Pattern],
        limit: usize,
    ) -> Result<ReadBatch, StoreError> {
        if let Some(batch) = self.read_cached(after, patterns, limit) {
            return Ok(batch);
        }
        let upto = self.head();
        let shared = self.shared.clone();
        let patterns = patterns.to_vec();
        blocking(move || read_stored(&shared, after, upto, &patterns, limit)).await
    }

    /// `read` when it needs no storage access (nothing new, or all of it in the ring of
    /// recent events); None when the events must be read from the database.
    pub fn read_cached(&self, after: u64, patterns: &[Pattern], limit: usize) -> Option<ReadBatch> {
        let upto = self.head();
        if after >= upto || limit == 0 {
            return Some(ReadBatch {
                events: Vec::new(),
                scanned_to: after,
            });
        }
        self.read_recent(after, upto, patterns, limit)
    }

    fn read_recent(
        &self,
        after: u64,
        upto: u64,
        patterns: &[Pattern],
        limit: usize,
    ) -> Option<ReadBatch> {
        let recent = self.shared.recent.read().ok()?;
        if after < recent.floor {
            return None;
        }
        let start = recent.events.partition_point(|e| e.seq <= after);
        let mut events = Vec::new();
        for ev in recent.events.range(start..) {
            if ev.seq > upto {
                break;
            }
            if any_match(patterns, &ev.topic) {
                events.push(ev.clone());
                if events.len() == limit {
                    let scanned_to = ev.seq;
                    return Some(ReadBatch { events, scanned_to });
                }
            }
        }
        Some(ReadBatch {
            events,
            scanned_to: upto,
        })
    }

    /// Topics with their counts, in name order, starting after `after`.
    pub async fn topics(&self, after: String, limit: usize) -> Result<Vec<TopicInfo>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        blocking(move || {
            let mut start = keys::topic(&after);
            if !after.is_empty() {
                start.push(0);
            }
            let end = [keys::TOPIC + 1];
            let mut out = Vec::new();
            for kv in shared.tree.range(start..end[..].to_vec()) {
                let (k, v) = kv?;
                let m = TopicMeta::decode(&v);
                out.push(TopicInfo {
                    topic: String::from_utf8_lossy(&k[1..]).into_owned(),
                    events: m.count,
                    last_id: EventId {
                        seq: m.last_seq,
                        epoch: shared.epoch,
                    }
                    .to_string(),
                    last_time_ms: m.last_time_ms,
                });
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}

impl EventLog {
    /// A page of one topic's events, newest first: those with seq below `before` (all
    /// when None), at most `limit`. For browsing (the admin UI), not for delivery.
    pub async fn topic_page(
        &self,
        topic: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<EncodedEvent>, StoreError> {
        let shared = self.shared.clone();
        let topic = topic.to_string();
        blocking(move || {
            let mut out = Vec::new();
            let mut below = before;
            // an index run may outlive some of its events for a moment (retention):
            // read on until `limit` events are found or the index ends
            while out.len() < limit {
                let seqs = shared.index.seqs_before(&topic, below, limit - out.len());
                let Some(&oldest) = seqs.last() else { break };
                // newest first, as the index gave them
                out.extend(shared.events_at(&seqs)?.into_iter().rev());
                below = Some(oldest);
            }
            Ok(out)
        })
        .await
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.write() {
            w.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        let _ = self.shared.sync();
    }
}

/// Opens sled, waiting a little for the file lock: sled releases it in the background
/// after the previous handle in this process is dropped (a restart in place).
pub(super) fn open_db(path: &Path, config: &StorageConfig) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000))
            .open();
        match opened {
            // sled reports the lock as "could not acquire lock on ...: WouldBlock",
            // wrapped in an io::Error of another kind.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

fn load_recent(
    segments: &Segments,
    trimmed: &Trimmed,
    epoch: u32,
    head: u64,
    capacity: usize,
) -> Result<Recent, StoreError> {
    if capacity == 0 {
        return Ok(Recent {
            events: VecDeque::new(),
            floor: head,
            capacity,
        });
    }
    let tail = segments.tail(capacity, head, |seq, rec| trimmed.alive_record(seq, rec))?;
    // every live event above the floor is in the ring
    let floor = match tail.first() {
        Some((seq, _)) if tail.len() == capacity => seq - 1,
        _ => 0,
    };
    let mut events = VecDeque::with_capacity(capacity);
    for (seq, rec) in tail {
        events.push_back(Arc::new(decode_record(seq, epoch, &rec)?));
    }
    Ok(Recent {
        events,
        floor,
        capacity,
    })
}

pub(super) fn topics_over(
    tree: &sled::Tree,
    max_per_topic: u64,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut set = std::collections::HashSet::new();
    if max_per_topic == 0 {
        return Ok(set);
    }
    for kv in tree.scan_prefix([keys::TOPIC]) {
        let (k, v) = kv?;
        if TopicMeta::decode(&v).count > max_per_topic {
            set.insert(String::from_utf8_lossy(&k[1..]).into_owned());
        }
    }
    Ok(set)
}

/// True when retention removed, after `seq`, an event from a topic the patterns match.
fn trimmed_after(tree: &sled::Tree, patterns: &[Pattern], seq: u64) -> Result<bool, StoreError> {
    for p in patterns {
        if let Pattern::Exact(t) = p {
            if TopicMeta::load(tree, t)?.trimmed_through > seq {
                return Ok(true);
            }
            continue;
        }
        for kv in tree.scan_prefix(keys::topic(&p.scan_prefix())) {
            let (k, v) = kv?;
            let topic = String::from_utf8_lossy(&k[1..]);
            if p.matches(&topic) && TopicMeta::decode(&v).trimmed_through > seq {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn read_stored(
    shared: &Shared,
    after: u64,
    upto: u64,
    patterns: &[Pattern],
    limit: usize,
) -> Result<ReadBatch, StoreError> {
    let exact: Option<Vec<&str>> = patterns
        .iter()
        .map(|p| match p {
            Pattern::Exact(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    match exact {
        Some(topics) => read_by_index(shared, after, upto, &topics, limit),
        None => read_by_scan(shared, after, upto, patterns, limit),
    }
}

/// Exact topics: walk each topic's index, so a quiet topic costs little however busy
/// the rest of the log is.
fn read_by_index(
    shared: &Shared,
    after: u64,
    upto: u64,
    topics: &[&str],
    limit: usize,
) -> Result<ReadBatch, StoreError> {
    let mut seqs = Vec::new();
    for t in topics {
        // the index may still list what retention removed: start past it
        let from = after.max(shared.trimmed().through(t));
        seqs.extend(shared.index.seqs_after(t, from, upto, limit));
    }
    seqs.sort_unstable();
    seqs.dedup();
    seqs.truncate(limit);
    let scanned_to = if seqs.len() == limit {
        seqs[limit - 1]
    } else {
        upto
    };
    let events = shared.events_at(&seqs)?.into_iter().map(Arc::new).collect();
    Ok(ReadBatch { events, scanned_to })
}

/// Wildcards: walk the log in order, matching topics from the record head only.
fn read_by_scan(
    shared: &Shared,
    after: u64,
    upto: u64,
    patterns: &[Pattern],
    limit: usize,
) -> Result<ReadBatch, StoreError> {
    let mut events = Vec::new();
    let mut scanned_to = upto;
    let mut n = 0usize;
    let mut failed = None;
    let trimmed = shared.trimmed();
    shared.segments.scan(after + 1, upto, |seq, v| {
        n += 1;
        let matched = match decode_head(&v) {
            Ok(h) => trimmed.alive(seq, h.topic) && any_match(patterns, h.topic),
            Err(e) => {
                failed = Some(e);
                return false;
            }
        };
        if matched {
            match decode_record(seq, shared.epoch, &v) {
                Ok(ev) => events.push(Arc::new(ev)),
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            }
            if events.len() == limit {
                scanned_to = seq;
                return false;
            }
        }
        if n >= SCAN_BUDGET {
            scanned_to = seq;
            return false;
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(ReadBatch { events, scanned_to })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;

    /// `Shared::sync` fdatasyncs sled's data file: the file must be found, or acks would
    /// silently rest on `sync_file_range` alone (a sled upgrade that renames it fails here).
    #[test]
    fn the_data_file_is_found_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(
            &dir.path().join("db"),
            &StorageConfig::default(),
            Hub::new(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        assert!(
            log.shared.data_file.is_some(),
            "sled's data file was not found"
        );
        log.shared.sync().unwrap();
    }
}
