//! The soak's read-back: every topic read with `GET /v1/events?topic=T&since=0`, page by
//! page. With a count limit (and no age or disk limit) each topic must hold exactly
//! `min(max_events_per_topic, acknowledged)` events; the last event each publisher had
//! acknowledged on it must be there, the newest one readable must be one of those (or a
//! later one whose answer was lost), and each publisher's events come in the order sent.

use std::collections::HashMap;
use std::io;

use serde_json::Value;

use super::publisher::{topic_name, Load, Published};
use crate::client::Client;
use crate::target::Target;

/// Read pages of at most this many bytes (and the server's 1 000 events).
const PAGE_BYTES: usize = 8 << 20;

pub struct Expect {
    topics: usize,
    event_bytes: usize,
    max_events_per_topic: u64,
    /// Only the count limit can remove events: the count must be exact.
    exact: bool,
    /// Per topic: events acknowledged (all publishers).
    acked: Vec<u64>,
    /// Per topic, per publisher: its last acknowledged event.
    last: Vec<Vec<Option<u64>>>,
}

impl Expect {
    pub fn new(
        load: &Load,
        published: &[Published],
        max_events_per_topic: u64,
        exact: bool,
    ) -> Self {
        let acked = (0..load.topics)
            .map(|t| published.iter().map(|p| p.acked[t]).sum())
            .collect();
        let last = (0..load.topics)
            .map(|t| published.iter().map(|p| p.last[t]).collect())
            .collect();
        Expect {
            topics: load.topics,
            event_bytes: load.event_bytes,
            max_events_per_topic,
            exact,
            acked,
            last,
        }
    }

    fn expected_count(&self, t: usize) -> Option<u64> {
        (self.max_events_per_topic > 0 && self.exact)
            .then(|| self.max_events_per_topic.min(self.acked[t]))
    }

    pub fn ok_line(&self) -> String {
        let counts = if self.max_events_per_topic == 0 {
            "no count limit".to_string()
        } else if self.exact {
            format!(
                "each holds min({}, acknowledged) events",
                self.max_events_per_topic
            )
        } else {
            format!("each holds at most {} events", self.max_events_per_topic)
        };
        format!(
            "correctness: OK ({} topics read back: {counts}, the last event published to each readable)",
            self.topics
        )
    }
}

/// (publisher, number) of every event of a topic, oldest first.
async fn read_topic(c: &mut Client, topic: &str, limit: usize) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut since = "0".to_string();
    loop {
        let path = format!("/v1/events?topic={topic}&since={since}&limit={limit}");
        let (h, body) = match c.call("GET", &path, &[], None).await {
            Ok(r) => r,
            Err(e) => {
                c.reset();
                return Err(e);
            }
        };
        if h.status != 200 {
            return Err(io::Error::other(format!(
                "GET {path} answered {}: {}",
                h.status,
                String::from_utf8_lossy(&body)
            )));
        }
        let v: Value = serde_json::from_slice(&body).map_err(io::Error::other)?;
        let events = v["events"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for e in events {
            let d = &e["data"];
            match (d["p"].as_u64(), d["n"].as_u64()) {
                (Some(p), Some(n)) => out.push((p, n)),
                _ => return Err(io::Error::other(format!("{topic}: foreign event {e}"))),
            }
        }
        let next = v["last_id"].as_str().unwrap_or_default().to_string();
        if events.is_empty() || next.is_empty() || next == since {
            return Ok(out);
        }
        since = next;
    }
}

/// What is wrong with one topic's events, if anything.
fn judge(x: &Expect, t: usize, events: &[(u64, u64)]) -> Option<String> {
    let name = topic_name(t);
    let n = events.len() as u64;
    if let Some(want) = x.expected_count(t) {
        if n != want {
            return Some(format!(
                "{name}: {n} events, expected {want} ({} acknowledged)",
                x.acked[t]
            ));
        }
    } else if x.max_events_per_topic > 0 && n > x.max_events_per_topic {
        return Some(format!(
            "{name}: {n} events, more than {}",
            x.max_events_per_topic
        ));
    }
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for &(p, k) in events {
        if let Some(prev) = seen.insert(p, k) {
            if k <= prev {
                return Some(format!(
                    "{name}: publisher {p}'s event {k} after its event {prev}"
                ));
            }
        }
    }
    for (p, last) in x.last[t].iter().enumerate() {
        let Some(last) = *last else { continue };
        if !events.contains(&(p as u64, last)) {
            return Some(format!(
                "{name}: publisher {p}'s last acknowledged event {last} is not readable"
            ));
        }
    }
    match events.last() {
        None if x.acked[t] > 0 => Some(format!("{name}: no events readable")),
        Some(&(p, k)) => {
            let newest_acked = x.last[t].get(p as usize).copied().flatten();
            match newest_acked {
                Some(a) if k >= a => None,
                _ => Some(format!(
                    "{name}: newest readable event is publisher {p}'s {k}, not the last it published"
                )),
            }
        }
        None => None,
    }
}

/// Reads back every topic; the mismatches, one line each (empty = OK).
pub async fn run(target: &Target, x: &Expect) -> io::Result<Vec<String>> {
    let limit = (PAGE_BYTES / x.event_bytes.max(1)).clamp(1, 1000);
    let mut c = target.publisher();
    let mut bad = Vec::new();
    for t in 0..x.topics {
        let events = read_topic(&mut c, &topic_name(t), limit).await?;
        if let Some(m) = judge(x, t, &events) {
            bad.push(m);
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        let load = Load {
            topics: 1,
            publishers: 2,
            batch: 1,
            event_bytes: 320,
        };
        let published = [
            Published {
                acked: vec![10],
                last: vec![Some(9)],
            },
            Published {
                acked: vec![10],
                last: vec![Some(19)],
            },
        ];
        Expect::new(&load, &published, 3, true)
    }

    #[test]
    fn judges_counts_and_the_last_events() {
        let x = expect();
        assert_eq!(judge(&x, 0, &[(0, 8), (1, 19), (0, 9)]), None);
        assert!(judge(&x, 0, &[(1, 19), (0, 9)])
            .unwrap()
            .contains("2 events"));
        assert!(judge(&x, 0, &[(0, 7), (0, 8), (1, 19)])
            .unwrap()
            .contains("publisher 0's last"));
        assert!(judge(&x, 0, &[(0, 9), (0, 8), (1, 19)])
            .unwrap()
            .contains("after its event"));
    }
}
