//! Who is subscribed right now: one entry per open SSE stream or waiting long poll, for
//! the admin UI's connections page, with a way to end one. Entries are removed when the
//! request ends (the guard drops).
//!
//! The registry is also where open subscriptions are capped, per client address and in
//! all (`limits.max_connections_per_ip`, `limits.max_connections`): the connection limits
//! count TCP connections, and one HTTP/2 connection carries many streams (seen: 2 000
//! `/v1/stream` streams on one connection with a cap of 10 per address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct SubscriberInfo {
    /// The client's address (behind a trusted proxy, the one it forwarded).
    pub client: Option<IpAddr>,
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
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Arc<Entry>>,
    per_ip: HashMap<IpAddr, u32>,
}

/// How many subscriptions may be open (0: no cap).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    pub per_ip: u32,
    pub total: usize,
}

/// A subscription refused by a cap.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverCap {
    #[error("{0} subscriptions are open from your address, the most allowed (limits.max_connections_per_ip)")]
    PerIp(u32),
    #[error("{0} subscriptions are open, the most this server allows (limits.max_connections)")]
    Total(usize),
}

/// A registered subscriber; dropping it unregisters.
pub struct SubscriberGuard {
    registry: Arc<Registry>,
    entry: Arc<Entry>,
}

impl SubscriberGuard {
    /// Who, how, since when.
    pub fn info(&self) -> &SubscriberInfo {
        &self.entry.info
    }

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
        let mut inner = self.registry.lock();
        inner.entries.remove(&self.entry.id);
        if let Some(ip) = self.entry.info.client {
            if let Some(n) = inner.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a subscription, unless one of the caps is reached.
    pub fn register(
        self: &Arc<Self>,
        info: SubscriberInfo,
        caps: Caps,
    ) -> Result<SubscriberGuard, OverCap> {
        let ip = info.client;
        let mut inner = self.lock();
        if caps.total > 0 && inner.entries.len() >= caps.total {
            return Err(OverCap::Total(inner.entries.len()));
        }
        if let Some(ip) = ip {
            let n = inner.per_ip.get(&ip).copied().unwrap_or(0);
            if caps.per_ip > 0 && n >= caps.per_ip {
                return Err(OverCap::PerIp(n));
            }
            inner.per_ip.insert(ip, n + 1);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            info,
            delivered: AtomicU64::new(0),
            kick: Notify::new(),
        });
        inner.entries.insert(id, entry.clone());
        drop(inner);
        Ok(SubscriberGuard {
            registry: self.clone(),
            entry,
        })
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` subscribers, oldest first, and how many there are in all.
    pub fn list(&self, limit: usize) -> (Vec<Arc<Entry>>, usize) {
        let inner = self.lock();
        let total = inner.entries.len();
        let mut all: Vec<Arc<Entry>> = inner.entries.values().cloned().collect();
        drop(inner);
        all.sort_by_key(|e| e.id);
        all.truncate(limit);
        (all, total)
    }

    /// How many subscribers follow a topic given exactly (as the dashboard does).
    pub fn watchers(&self, topic: &str) -> usize {
        self.lock()
            .entries
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
        match self.lock().entries.get(&id) {
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
        from(topic, None)
    }

    fn from(topic: &str, peer: Option<&str>) -> SubscriberInfo {
        SubscriberInfo {
            client: peer.map(|p| p.parse().unwrap()),
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
        let a = r.register(info("a"), Caps::default()).unwrap();
        let b = r.register(info("b"), Caps::default()).unwrap();
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

    #[test]
    fn caps_per_address_and_in_all_free_up_on_drop() {
        let r = Registry::new();
        let caps = Caps {
            per_ip: 2,
            total: 3,
        };
        let a1 = r.register(from("t", Some("10.0.0.1")), caps).unwrap();
        let _a2 = r.register(from("t", Some("10.0.0.1")), caps).unwrap();
        assert_eq!(
            r.register(from("t", Some("10.0.0.1")), caps).err(),
            Some(OverCap::PerIp(2))
        );
        let _b = r.register(from("t", Some("10.0.0.2")), caps).unwrap();
        assert_eq!(
            r.register(from("t", Some("10.0.0.3")), caps).err(),
            Some(OverCap::Total(3))
        );
        drop(a1);
        let _a3 = r.register(from("t", Some("10.0.0.1")), caps).unwrap();
        assert_eq!(r.lock().per_ip.len(), 2);
    }
}
