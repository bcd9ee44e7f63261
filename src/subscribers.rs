//! Who is subscribed right now: one entry per open SSE stream or waiting long poll, for
//! the admin UI's connections page, with a way to end one. Entries are removed when the
//! request ends (the guard drops).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct SubscriberInfo {
    pub peer: Option<SocketAddr>,
    pub subject: Option<String>,
    pub transport: &'static str,
    pub http: &'static str,
    pub topics: Vec<String>,
    pub fallback: Option<String>,
    pub since_ms: u64,
}

#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub info: SubscriberInfo,
    delivered: AtomicU64,
    kick: Notify,
}

impl Entry {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// A registered subscriber; dropping it unregisters.
pub struct SubscriberGuard {
    registry: Arc<Registry>,
    entry: Arc<Entry>,
}

impl SubscriberGuard {
    pub fn delivered(&self, n: usize) {
        self.entry.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Resolves when an operator asked to disconnect this subscriber.
    pub async fn kicked(&self) {
        self.entry.kick.notified().await
    }

    /// `kicked` as a future that owns what it waits on.
    pub fn kicked_owned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let entry = self.entry.clone();
        async move { entry.kick.notified().await }
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.entry.id);
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(self: &Arc<Self>, info: SubscriberInfo) -> SubscriberGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            info,
            delivered: AtomicU64::new(0),
            kick: Notify::new(),
        });
        self.lock().insert(id, entry.clone());
        SubscriberGuard {
            registry: self.clone(),
            entry,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` subscribers, oldest first, and how many there are in all.
    pub fn list(&self, limit: usize) -> (Vec<Arc<Entry>>, usize) {
        let map = self.lock();
        let total = map.len();
        let mut all: Vec<Arc<Entry>> = map.values().cloned().collect();
        drop(map);
        all.sort_by_key(|e| e.id);
        all.truncate(limit);
        (all, total)
    }

    /// How many subscribers follow a topic given exactly (as the dashboard does).
    pub fn watchers(&self, topic: &str) -> usize {
        self.lock()
            .values()
            .filter(|e| e.info.topics.iter().any(|t| t == topic))
            .count()
    }

    pub fn watches(&self, topic: &str) -> bool {
        self.watchers(topic) > 0
    }

    /// Ends one subscriber's request. Its client reconnects as it would after any
    /// network cut, resuming from its last id; nothing is lost.
    pub fn disconnect(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(e) => {
                e.kick.notify_one();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(topic: &str) -> SubscriberInfo {
        SubscriberInfo {
            peer: None,
            subject: Some("u1".into()),
            transport: "sse_stream",
            http: "1.1",
            topics: vec![topic.into()],
            fallback: None,
            since_ms: 1,
        }
    }

    #[tokio::test]
    async fn register_list_kick_and_drop() {
        let r = Registry::new();
        let a = r.register(info("a"));
        let b = r.register(info("b"));
        a.delivered(3);
        let (list, total) = r.list(10);
        assert_eq!(total, 2);
        assert_eq!(list[0].delivered(), 3);
        assert!(r.watches("b") && !r.watches("c"));
        let id = list[1].id;
        assert!(r.disconnect(id));
        tokio::time::timeout(std::time::Duration::from_secs(1), b.kicked())
            .await
            .expect("kick wakes the subscriber (stored permit)");
        drop(b);
        assert!(!r.disconnect(id));
        assert_eq!(r.len(), 1);
        drop(a);
        assert!(r.is_empty());
    }
}
