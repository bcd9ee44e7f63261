//! Admin sessions (random ids in an HttpOnly cookie, each with its own CSRF token) and the
//! login throttle that locks an address out, for one name or for all, after repeated
//! failures. In memory: a restart logs admins out, which is the safe direction.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "surepush_admin";

/// Most sessions kept; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub csrf: String,
    /// The user's password hash at login: a changed password or a removed user ends
    /// the session.
    pub credential: String,
    created: Instant,
    last_seen: Instant,
}

pub struct SessionStore {
    idle: Duration,
    max_age: Duration,
    sessions: Mutex<HashMap<String, Session>>,
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Equal-time comparison for secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl SessionStore {
    pub fn new(idle: Duration, max_age: Duration) -> SessionStore {
        SessionStore {
            idle,
            max_age,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(&self, user: &str, credential: &str) -> Session {
        let now = Instant::now();
        let s = Session {
            id: random_hex(32),
            user: user.to_string(),
            csrf: random_hex(32),
            credential: credential.to_string(),
            created: now,
            last_seen: now,
        };
        let mut map = self.lock();
        self.expire(&mut map, now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .values()
                .min_by_key(|s| s.last_seen)
                .map(|s| s.id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    /// The live session with this id, touched; None if unknown or expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let live = match map.get(id) {
            Some(s) => self.alive(s, now),
            None => return None,
        };
        if !live {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Logs a user out everywhere (password changed or user removed).
    pub fn remove_user(&self, user: &str) {
        self.lock().retain(|_, s| s.user != user);
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) < self.idle && now.duration_since(s.created) < self.max_age
    }

    fn expire(&self, map: &mut HashMap<String, Session>, now: Instant) {
        map.retain(|_, s| self.alive(s, now));
    }
}

/// Failed logins counted per (address, name) pair and per address. After `max_failures`
/// for one pair, that address may not try that name until `lockout` has passed; after
/// four times as many from one address (guessing names), it may try none. A name is never
/// locked for everyone (seen: five bad logins from anywhere locked `admin` out): failures
/// from many addresses slow every failed login down instead ([`LoginThrottle::delay`]).
pub struct LoginThrottle {
    max_failures: u32,
    lockout: Duration,
    entries: Mutex<HashMap<String, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, lockout: Duration) -> LoginThrottle {
        LoginThrottle {
            max_failures: max_failures.max(1),
            lockout,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// (key, failures that lock it) for a login attempt.
    fn keys(&self, user: &str, ip: Option<IpAddr>) -> Vec<(String, u32)> {
        let addr = ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
        vec![
            (format!("pair:{addr}/{user}"), self.max_failures),
            (format!("ip:{addr}"), self.max_failures.saturating_mul(4)),
        ]
    }

    /// How long the caller must still wait, if locked out.
    pub fn locked(&self, user: &str, ip: Option<IpAddr>) -> Option<Duration> {
        let now = Instant::now();
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.keys(user, ip)
            .iter()
            .filter_map(|(k, _)| map.get(k).and_then(|f| f.locked_until))
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// How long to hold a failed login's answer: nothing while failures are few; with
    /// more than `10 x max_failures` failed logins in the last `lockout` (from anywhere),
    /// 100 ms more per failure beyond that, at most 2 s. Guessing slows for all, and no
    /// one is locked out by others' failures.
    pub fn delay(&self) -> Duration {
        let now = Instant::now();
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let recent: u32 = map
            .iter()
            .filter(|(k, f)| k.starts_with("ip:") && now.duration_since(f.first) < self.lockout)
            .map(|(_, f)| f.count)
            .sum();
        let over = recent.saturating_sub(self.max_failures.saturating_mul(10));
        Duration::from_millis(100 * u64::from(over)).min(Duration::from_secs(2))
    }

    pub fn failed(&self, user: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, f| now.duration_since(f.first) < self.lockout);
        }
        for (k, max) in self.keys(user, ip) {
            let f = map.entry(k).or_insert(Failures {
                count: 0,
                first: now,
                locked_until: None,
            });
            if now.duration_since(f.first) >= self.lockout {
                *f = Failures {
                    count: 0,
                    first: now,
                    locked_until: None,
                };
            }
            f.count += 1;
            if f.count >= max {
                f.locked_until = Some(now + self.lockout);
            }
        }
    }

    pub fn succeeded(&self, user: &str, ip: Option<IpAddr>) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // the pair only: an address that also guessed other names stays counted
        if let Some((pair, _)) = self.keys(user, ip).into_iter().next() {
            map.remove(&pair);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_removed() {
        let store = SessionStore::new(Duration::from_millis(50), Duration::from_secs(60));
        let s = store.create("alice", "h");
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert_eq!(store.get(&s.id).unwrap().user, "alice");
        assert!(store.get("nope").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(store.get(&s.id).is_none(), "idle session must expire");
        let a = store.create("bob", "h");
        let b = store.create("bob", "h");
        store.remove_user("bob");
        assert!(store.get(&a.id).is_none() && store.get(&b.id).is_none());
    }

    #[test]
    fn throttle_locks_after_failures_and_success_clears() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            t.failed("alice", Some(ip));
        }
        assert!(t.locked("alice", Some(ip)).is_none());
        t.succeeded("alice", Some(ip));
        for _ in 0..3 {
            t.failed("alice", Some(ip));
        }
        assert!(t.locked("alice", Some(ip)).is_some(), "the pair is locked");
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(
            t.locked("alice", Some(other)).is_none(),
            "the name is not locked for everyone"
        );
        assert!(t.locked("bob", Some(ip)).is_none());
        // an address guessing names: locked for all of them after 4 x 3 failures
        for i in 0..9 {
            t.failed(&format!("n{i}"), Some(ip));
        }
        assert!(
            t.locked("carol", Some(ip)).is_some(),
            "the address is locked"
        );
        assert!(t.locked("carol", Some(other)).is_none());
    }

    #[test]
    fn many_failures_from_anywhere_slow_every_failure_down() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        assert_eq!(t.delay(), Duration::ZERO);
        for i in 0..20u8 {
            t.failed("admin", Some(IpAddr::from([10, 0, 1, i])));
        }
        assert_eq!(t.delay(), Duration::ZERO, "20 = 10 x max_failures: not yet");
        for i in 0..5u8 {
            t.failed("admin", Some(IpAddr::from([10, 0, 2, i])));
        }
        assert_eq!(t.delay(), Duration::from_millis(500));
        for i in 0..100u8 {
            t.failed("admin", Some(IpAddr::from([10, 0, 3, i])));
        }
        assert_eq!(t.delay(), Duration::from_secs(2));
        // and none of those addresses locked the name out for a new one
        assert!(t
            .locked("admin", Some(IpAddr::from([10, 9, 9, 9])))
            .is_none());
    }

    #[test]
    fn secret_comparison() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
