//! Connection and rate limits: concurrent connections per client IP and in total, and
//! a token bucket for publishing per token subject.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Counts open connections per client IP. A connection over the limit is still
/// accepted by the kernel, but every request on it is answered 429 and it is closed.
/// Trusted reverse proxies (`server.trusted_proxies`) carry many clients' connections
/// and are counted but never over the limit.
pub struct ConnLimiter {
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    max_per_ip: u32,
    exempt: Vec<crate::cidr::Cidr>,
}

/// Held in the connection's extensions for its lifetime.
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
    pub over_limit: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.limiter.per_ip.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl ConnLimiter {
    pub fn new(max_per_ip: u32, exempt: Vec<crate::cidr::Cidr>) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            exempt,
        })
    }

    pub fn open(self: &Arc<Self>, ip: IpAddr) -> ConnSlot {
        let n = match self.per_ip.lock() {
            Ok(mut m) => {
                let n = m.entry(ip).or_insert(0);
                *n += 1;
                *n
            }
            Err(_) => 0,
        };
        ConnSlot {
            limiter: self.clone(),
            ip,
            over_limit: self.max_per_ip > 0
                && n > self.max_per_ip
                && !crate::cidr::any_contains(&self.exempt, ip),
        }
    }

    pub fn open_for(&self, ip: IpAddr) -> u32 {
        self.per_ip
            .lock()
            .ok()
            .and_then(|m| m.get(&ip).copied())
            .unwrap_or(0)
    }
}

/// Token buckets keyed by subject: `rate` tokens a second, up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u64, burst: u64) -> RateLimiter {
        RateLimiter {
            rate: rate_per_sec as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens; on refusal, the seconds until they would be available.
    pub fn take(&self, key: &str, cost: u64, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let cost = cost as f64;
        let Ok(mut b) = self.buckets.lock() else {
            return Ok(());
        };
        if b.len() > 100_000 {
            // forget idle subjects: a full bucket is the same as no bucket
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let entry = b.entry(key.to_string()).or_insert((self.burst, now));
        let refill = now.duration_since(entry.1).as_secs_f64() * self.rate;
        entry.0 = (entry.0 + refill).min(self.burst);
        entry.1 = now;
        // A batch larger than the burst passes on a full bucket and leaves a debt.
        if cost <= entry.0 || entry.0 >= self.burst {
            entry.0 -= cost;
            Ok(())
        } else {
            let wait = (cost.min(self.burst) - entry.0) / self.rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_ip_slots() {
        let l = ConnLimiter::new(2, vec!["10.0.0.0/8".parse().unwrap()]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let a = l.open(ip);
        let b = l.open(ip);
        let c = l.open(ip);
        assert!(!a.over_limit && !b.over_limit && c.over_limit);
        assert!(!l.open(other).over_limit);
        drop(c);
        drop(b);
        assert!(!l.open(ip).over_limit);
        assert_eq!(l.open_for(ip), 1);
    }

    #[test]
    fn trusted_proxies_are_counted_but_never_over() {
        let l = ConnLimiter::new(1, vec!["10.0.0.0/8".parse().unwrap()]);
        let proxy: IpAddr = "10.9.9.9".parse().unwrap();
        let slots: Vec<ConnSlot> = (0..5).map(|_| l.open(proxy)).collect();
        assert!(slots.iter().all(|s| !s.over_limit));
        assert_eq!(l.open_for(proxy), 5);
    }

    #[test]
    fn bucket_refills() {
        let r = RateLimiter::new(10, 5);
        let t = Instant::now();
        assert!(r.take("a", 5, t).is_ok());
        assert_eq!(r.take("a", 1, t), Err(1));
        assert!(r.take("b", 1, t).is_ok(), "subjects are independent");
        assert!(r.take("a", 1, t + Duration::from_millis(150)).is_ok());
        let later = t + Duration::from_secs(10);
        assert!(
            r.take("a", 50, later).is_ok(),
            "a big batch passes on a full bucket"
        );
        assert_eq!(r.take("a", 1, later), Err(5), "and leaves a debt");
        assert!(
            RateLimiter::new(0, 0).take("x", 1_000_000, t).is_ok(),
            "0 = unlimited"
        );
    }
}
