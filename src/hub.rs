//! In-memory wake-ups for subscribers, after a durable write.
//!
//! The hub carries no event data: a wake-up only tells a subscriber to re-read the log
//! from its cursor, so a missed or extra wake-up can delay, never lose or duplicate.
//! Subscribers are indexed by pattern shape, so a publish to `users/42` wakes only the
//! subscribers of `users/42`, `users/*`, `users/**` and `**`: an idle subscriber is
//! never woken by other topics' traffic.
//!
//! Wake-ups are handed out per worker thread: the writer thread does not wake thousands
//! of subscriber tasks one by one (each a cross-thread schedule with an eventfd write on
//! a current-thread runtime), it gives each worker's dispatcher task the list of its
//! subscribers to wake, with one cross-thread wake per worker; the dispatcher then wakes
//! them locally. A subscription made outside a runtime is woken directly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::ThreadId;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::model::{Pattern, Topic};

/// A subscriber's wake-up and, when it was made on a runtime, its thread's dispatcher.
#[derive(Clone)]
struct Waiter {
    notify: Arc<Notify>,
    dispatcher: Option<Arc<Dispatcher>>,
}

type Waiters = HashMap<String, HashMap<u64, Waiter>>;

/// Wakes, on its own worker thread, the subscribers the writer hands it.
#[derive(Default)]
struct Dispatcher {
    pending: Mutex<Vec<Arc<Notify>>>,
    wake: Notify,
}

impl Dispatcher {
    async fn run(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            self.wake.notified().await;
            if let Ok(mut p) = self.pending.lock() {
                std::mem::swap(&mut *p, &mut batch);
            }
            // several publishes may have named one subscriber before this ran: wake once
            dedup(&mut batch);
            for n in batch.drain(..) {
                n.notify_one();
            }
        }
    }
}

#[derive(Default)]
struct Registry {
    exact: Waiters,
    one_level: Waiters,
    any_depth: Waiters,
}

impl Registry {
    fn map_for<'a>(&'a mut self, p: &'a Pattern) -> (&'a mut Waiters, &'a str) {
        match p {
            Pattern::Exact(t) => (&mut self.exact, t),
            Pattern::OneLevel(t) => (&mut self.one_level, t),
            Pattern::AnyDepth(t) => (&mut self.any_depth, t),
        }
    }
}

#[derive(Default)]
pub struct Hub {
    registry: RwLock<Registry>,
    next_id: AtomicU64,
    /// One per thread that subscribed from inside a tokio runtime.
    dispatchers: Mutex<HashMap<ThreadId, Arc<Dispatcher>>>,
}

/// A registration; dropping it unregisters.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    patterns: Vec<Pattern>,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Resolves when a matching topic was written since the last call (a stored permit
    /// means a wake-up that happened between two reads is not missed).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// The same wake-up as an owned future, to keep armed across polls of a stream.
    pub fn notified_owned(&self) -> OwnedNotified {
        self.notify.clone().notified_owned()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut reg = match self.hub.registry.write() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        for p in &self.patterns {
            let (map, key) = reg.map_for(p);
            if let Some(waiters) = map.get_mut(key) {
                waiters.remove(&self.id);
                if waiters.is_empty() {
                    let key = key.to_string();
                    map.remove(&key);
                }
            }
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    pub fn subscribe(self: &Arc<Self>, patterns: &[Pattern]) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let waiter = Waiter {
            notify: notify.clone(),
            dispatcher: self.dispatcher(),
        };
        let mut unique: Vec<Pattern> = Vec::with_capacity(patterns.len());
        for p in patterns {
            if !unique.contains(p) {
                unique.push(p.clone());
            }
        }
        {
            let mut reg = match self.registry.write() {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            for p in &unique {
                let (map, key) = reg.map_for(p);
                map.entry(key.to_string())
                    .or_default()
                    .insert(id, waiter.clone());
            }
        }
        Subscription {
            hub: self.clone(),
            id,
            patterns: unique,
            notify,
        }
    }

    /// This thread's dispatcher, started on first use; None outside a runtime.
    fn dispatcher(&self) -> Option<Arc<Dispatcher>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let mut map = match self.dispatchers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let d = map
            .entry(std::thread::current().id())
            .or_insert_with(|| {
                let d = Arc::new(Dispatcher::default());
                rt.spawn(d.clone().run());
                d
            })
            .clone();
        Some(d)
    }

    /// Wakes every subscriber whose patterns match one of these topics.
    pub fn notify<'a>(&self, topics: impl IntoIterator<Item = &'a Topic>) {
        let reg = match self.registry.read() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Per dispatcher (by address), the subscribers to wake.
        let mut batches: Vec<(Arc<Dispatcher>, Vec<Arc<Notify>>)> = Vec::new();
        let mut wake = |w: Option<&HashMap<u64, Waiter>>| {
            for waiter in w.into_iter().flat_map(|m| m.values()) {
                match &waiter.dispatcher {
                    None => waiter.notify.notify_one(),
                    Some(d) => match batches.iter_mut().find(|(b, _)| Arc::ptr_eq(b, d)) {
                        Some((_, list)) => list.push(waiter.notify.clone()),
                        None => batches.push((d.clone(), vec![waiter.notify.clone()])),
                    },
                }
            }
        };
        for topic in topics {
            wake(reg.exact.get(topic.as_str()));
            wake(reg.one_level.get(topic.parent()));
            for ancestor in topic.ancestors() {
                wake(reg.any_depth.get(ancestor));
            }
        }
        drop(reg);
        for (d, mut list) in batches {
            // a subscriber matching several of the topics is woken once
            dedup(&mut list);
            match d.pending.lock() {
                Ok(mut p) => p.extend(list),
                Err(_) => list.iter().for_each(|n| n.notify_one()),
            }
            d.wake.notify_one();
        }
    }

    /// Number of live subscriptions (for tests and the admin UI).
    pub fn subscriber_count(&self) -> usize {
        let reg = match self.registry.read() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut ids = std::collections::HashSet::new();
        for map in [&reg.exact, &reg.one_level, &reg.any_depth] {
            for w in map.values() {
                ids.extend(w.keys().copied());
            }
        }
        ids.len()
    }
}

/// Removes repeated wake-ups of one subscriber.
fn dedup(list: &mut Vec<Arc<Notify>>) {
    if list.len() > 1 {
        list.sort_unstable_by_key(|n| Arc::as_ptr(n) as usize);
        list.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pats(ps: &[&str]) -> Vec<Pattern> {
        ps.iter().map(|p| Pattern::parse(p).unwrap()).collect()
    }

    async fn woken(s: &Subscription) -> bool {
        tokio::time::timeout(Duration::from_millis(20), s.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn wakes_only_matching_subscribers() {
        let hub = Hub::new();
        let exact = hub.subscribe(&pats(&["users/42"]));
        let other = hub.subscribe(&pats(&["users/43"]));
        let one = hub.subscribe(&pats(&["users/*"]));
        let deep = hub.subscribe(&pats(&["users/**"]));
        let all = hub.subscribe(&pats(&["**"]));
        let root_one = hub.subscribe(&pats(&["*"]));
        hub.notify([&Topic::parse("users/42").unwrap()]);
        assert!(woken(&exact).await);
        assert!(!woken(&other).await);
        assert!(woken(&one).await);
        assert!(woken(&deep).await);
        assert!(woken(&all).await);
        assert!(!woken(&root_one).await);
        hub.notify([&Topic::parse("users/42/x").unwrap()]);
        assert!(!woken(&exact).await);
        assert!(!woken(&one).await);
        assert!(woken(&deep).await);
        hub.notify([&Topic::parse("users").unwrap()]);
        assert!(woken(&root_one).await);
        assert!(!woken(&deep).await);
    }

    #[tokio::test]
    async fn permit_is_kept_and_drop_unregisters() {
        let hub = Hub::new();
        let s = hub.subscribe(&pats(&["a", "a", "b/**"]));
        assert_eq!(hub.subscriber_count(), 1);
        hub.notify([&Topic::parse("a").unwrap()]);
        hub.notify([&Topic::parse("a").unwrap()]);
        assert!(woken(&s).await, "permit stored while not waiting");
        assert!(!woken(&s).await, "permits do not accumulate");
        drop(s);
        assert_eq!(hub.subscriber_count(), 0);
        assert!(hub.registry.read().unwrap().exact.is_empty());
    }
}
