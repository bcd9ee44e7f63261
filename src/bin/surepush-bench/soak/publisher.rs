//! The soak's publishers: keep-alive HTTP/1.1 over TLS, one batch in flight each, until a
//! deadline. Each event's data says who published it and its number (`{"p":P,"n":N}`,
//! padded to the event size), so the read-back can tell which one came last. With at
//! least as many topics as publishers each topic has one publisher (topic t belongs to
//! publisher t mod P); otherwise every publisher writes every topic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::target::Target;

/// The shape of the load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub topics: usize,
    pub publishers: usize,
    pub batch: usize,
    pub event_bytes: usize,
}

impl Load {
    /// The topics publisher `p` writes.
    pub fn topics_of(&self, p: usize) -> Vec<usize> {
        if self.topics >= self.publishers {
            (p..self.topics).step_by(self.publishers).collect()
        } else {
            (0..self.topics).collect()
        }
    }
}

pub fn topic_name(t: usize) -> String {
    format!("soak/{t}")
}

/// Shared between the publishers and the sampler.
#[derive(Default)]
pub struct Counters {
    pub acked: AtomicU64,
    /// Failed publish requests.
    pub errors: AtomicU64,
    /// Latency of each acknowledged request since the last sample, µs.
    latencies: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    pub fn take_latencies(&self) -> Vec<u64> {
        self.latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    fn failed(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.first_error.lock() {
            e.get_or_insert(why);
        }
    }
}

/// What one publisher had acknowledged, per topic (indexed by topic number).
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Events acknowledged.
    pub acked: Vec<u64>,
    /// The number of its last acknowledged event.
    pub last: Vec<Option<u64>>,
}

/// One event object of about `bytes` bytes of JSON.
fn event(topic: &str, p: usize, n: u64, bytes: usize, pad: &str) -> String {
    let head = format!(
        "{{\"topic\":\"{topic}\",\"type\":\"soak\",\"data\":{{\"p\":{p},\"n\":{n},\"pad\":\""
    );
    let tail = "\"}}";
    let fill = bytes.saturating_sub(head.len() + tail.len()).min(pad.len());
    let mut s = String::with_capacity(head.len() + fill + tail.len());
    s.push_str(&head);
    s.push_str(&pad[..fill]);
    s.push_str(tail);
    s
}

/// Starts the publishers; each returns what it had acknowledged.
pub fn start(
    target: &Target,
    load: &Load,
    counters: &Arc<Counters>,
    deadline: Instant,
) -> Vec<JoinHandle<Published>> {
    let pad: Arc<str> = "x".repeat(load.event_bytes).into();
    (0..load.publishers)
        .map(|p| {
            let mut c = target.publisher();
            let (load, counters, pad) = (*load, counters.clone(), pad.clone());
            tokio::spawn(async move {
                let mine = load.topics_of(p);
                let names: Vec<String> = mine.iter().map(|&t| topic_name(t)).collect();
                let mut out = Published {
                    acked: vec![0; load.topics],
                    last: vec![None; load.topics],
                };
                let (mut next, mut cursor) = (0u64, 0usize);
                let mut body = String::new();
                while Instant::now() < deadline {
                    body.clear();
                    body.push('[');
                    for i in 0..load.batch {
                        if i > 0 {
                            body.push(',');
                        }
                        let k = (cursor + i) % mine.len();
                        body.push_str(&event(
                            &names[k],
                            p,
                            next + i as u64,
                            load.event_bytes,
                            &pad,
                        ));
                    }
                    body.push(']');
                    let t = Instant::now();
                    let r = c
                        .call(
                            "POST",
                            "/v1/publish",
                            &[("Content-Type", "application/json")],
                            Some(body.as_bytes()),
                        )
                        .await;
                    match r {
                        Ok((h, _)) if h.status == 201 => {
                            let us = t.elapsed().as_micros() as u64;
                            if let Ok(mut l) = counters.latencies.lock() {
                                l.push(us);
                            }
                            counters
                                .acked
                                .fetch_add(load.batch as u64, Ordering::Relaxed);
                            for i in 0..load.batch {
                                let t = mine[(cursor + i) % mine.len()];
                                out.acked[t] += 1;
                                out.last[t] = Some(next + i as u64);
                            }
                        }
                        Ok((h, b)) => {
                            counters.failed(format!(
                                "{} {}",
                                h.status,
                                String::from_utf8_lossy(&b)
                                    .chars()
                                    .take(200)
                                    .collect::<String>()
                            ));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => {
                            counters.failed(e.to_string());
                            c.reset();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    // Numbers of a failed batch are not reused: it may have been stored.
                    next += load.batch as u64;
                    cursor = (cursor + load.batch) % mine.len();
                }
                out
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_asked_size_and_topics_their_owner() {
        let pad = "x".repeat(400);
        let e = event("soak/7", 3, 12345, 320, &pad);
        assert_eq!(e.len(), 320);
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["data"]["n"], 12345);
        let load = Load {
            topics: 10,
            publishers: 3,
            batch: 5,
            event_bytes: 320,
        };
        assert_eq!(load.topics_of(1), vec![1, 4, 7]);
        let shared = Load { topics: 1, ..load };
        assert_eq!(shared.topics_of(2), vec![0]);
    }
}
