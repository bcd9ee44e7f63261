//! Slow consumers. A stream is pulled by the HTTP layer only when the connection can
//! take more bytes, so a client that stops reading costs a bounded buffer (the kernel
//! socket buffer, rustls' and actix's write buffers) and never a growing queue: events
//! stay in the log. A stream that has not been pulled for longer than its heartbeat plus
//! `slow_consumer_timeout_secs` belongs to such a client; the watch then shuts its socket
//! down, and the client resumes from its last id, losing nothing.
//!
//! The watch holds its own duplicate of each stream's socket descriptor (taken while
//! the request is live), so it can never shut down a descriptor reused by another
//! connection.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

pub struct StallWatch {
    started: Instant,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

struct Entry {
    last_progress_ms: AtomicU64,
    limit_ms: u64,
    socket: Option<OwnedFd>,
}

/// A registered stream; dropping it unregisters.
pub struct StallGuard {
    watch: Arc<StallWatch>,
    id: u64,
    entry: Arc<Entry>,
}

impl StallGuard {
    /// The client took bytes (or the stream was polled): not stalled.
    pub fn progress(&self) {
        self.entry
            .last_progress_ms
            .store(self.watch.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        if let Ok(mut e) = self.watch.entries.lock() {
            e.remove(&self.id);
        }
    }
}

impl StallWatch {
    pub fn new(metrics: Arc<Metrics>) -> Arc<StallWatch> {
        Arc::new(StallWatch {
            started: Instant::now(),
            entries: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            metrics,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Registers a stream on the connection whose socket is `fd` (None: not watchable,
    /// e.g. in-memory test connections). `fd` must belong to the live request's connection.
    pub fn register(self: &Arc<Self>, fd: Option<RawFd>, limit: Duration) -> StallGuard {
        // SAFETY: the caller passes the descriptor of the connection serving the current
        // request, which stays open while the request is being handled (now).
        let socket = fd.and_then(|fd| {
            unsafe { BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .ok()
        });
        let entry = Arc::new(Entry {
            last_progress_ms: AtomicU64::new(self.now_ms()),
            limit_ms: limit.as_millis() as u64,
            socket,
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.entries.lock() {
            e.insert(id, entry.clone());
        }
        StallGuard {
            watch: self.clone(),
            id,
            entry,
        }
    }

    /// Shuts down the sockets of stalled streams; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let stalled: Vec<Arc<Entry>> = match self.entries.lock() {
            Ok(mut entries) => {
                let ids: Vec<u64> = entries
                    .iter()
                    .filter(|(_, e)| {
                        e.socket.is_some()
                            && now.saturating_sub(e.last_progress_ms.load(Ordering::Relaxed))
                                > e.limit_ms
                    })
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter().filter_map(|id| entries.remove(id)).collect()
            }
            Err(_) => return 0,
        };
        for e in &stalled {
            if let Some(sock) = &e.socket {
                // SAFETY: plain libc call on a descriptor we own.
                unsafe {
                    libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR);
                }
            }
        }
        if !stalled.is_empty() {
            tracing::info!(
                count = stalled.len(),
                "closed streams of clients that stopped reading"
            );
            self.metrics
                .slow_consumer_disconnects
                .inc_by(stalled.len() as u64);
        }
        stalled.len()
    }

    /// Sweeps every second until the future is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    pub fn watched(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}
