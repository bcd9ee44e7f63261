//! Prometheus metrics, one registry per server, rendered at `/metrics`.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub transport: &'static str,
    pub http: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnLabels, Gauge>,
    pub events_published: Counter,
    pub events_delivered: Family<TransportLabel, Counter>,
    pub fallbacks: Family<ReasonLabel, Counter>,
    pub slow_consumer_disconnects: Counter,
    pub retention_deleted: Counter,
    pub storage_bytes: Gauge,
    pub storage_budget_unmet: Gauge,
    pub storage_segments: Gauge,
    pub index_entries: Gauge,
    /// 1 while the storage probe (src/health.rs) succeeds, 0 while it fails.
    pub storage_healthy: Gauge,
    pub commit_group_events: Histogram,
    pub storage_flush_seconds: Histogram,
    pub publish_errors: Counter,
    pub job_attempts: Counter,
    pub lease_expiries: Counter,
    pub job_latency_seconds: Histogram,
    pub receipt_ack_seconds: Histogram,
    pub receipt_events: Gauge,
    pub receipt_unacknowledged: Gauge,
    pub queue_jobs: Family<QueueStateLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueStateLabels {
    pub queue: String,
    pub state: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("surepush");
        let connections = Family::<ConnLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open subscriber connections by transport and HTTP version",
            connections.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Events acknowledged by the log",
            events_published.clone(),
        );
        let events_delivered = Family::<TransportLabel, Counter>::default();
        registry.register(
            "events_delivered",
            "Events written to subscribers, by transport",
            events_delivered.clone(),
        );
        let fallbacks = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "fallbacks",
            "Transport fallbacks reported by clients, by reason",
            fallbacks.clone(),
        );
        let slow_consumer_disconnects = Counter::default();
        registry.register(
            "slow_consumer_disconnects",
            "Streams closed because the client stopped reading",
            slow_consumer_disconnects.clone(),
        );
        let retention_deleted = Counter::default();
        registry.register(
            "retention_deleted_events",
            "Events deleted by retention",
            retention_deleted.clone(),
        );
        let storage_bytes = Gauge::default();
        registry.register(
            "storage_bytes",
            "Size of the database on disk",
            storage_bytes.clone(),
        );
        let storage_budget_unmet = Gauge::default();
        registry.register(
            "storage_budget_unmet",
            "1 when retention_max_disk_bytes cannot be met by deleting old events",
            storage_budget_unmet.clone(),
        );
        let storage_segments = Gauge::default();
        registry.register(
            "storage_segments",
            "Event segment files on disk",
            storage_segments.clone(),
        );
        let index_entries = Gauge::default();
        registry.register(
            "index_entries",
            "Events in the in-memory per-topic index (about 4 bytes of memory each)",
            index_entries.clone(),
        );
        let storage_healthy = Gauge::default();
        // Healthy until a probe says otherwise: the server only starts on an open database.
        storage_healthy.set(1);
        registry.register(
            "storage_healthy",
            "1 while the periodic storage probe (the write /readyz makes) succeeds, 0 while it fails",
            storage_healthy.clone(),
        );
        let commit_group_events =
            Histogram::new([1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0]);
        registry.register(
            "commit_group_events",
            "Events made durable by one flush (group commit size)",
            commit_group_events.clone(),
        );
        let storage_flush_seconds = Histogram::new([
            0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "storage_flush_seconds",
            "Time of one durable flush of a commit group (sled flush + fdatasync)",
            storage_flush_seconds.clone(),
        );
        let publish_errors = Counter::default();
        registry.register(
            "publish_errors",
            "Publishes that failed in storage",
            publish_errors.clone(),
        );
        let job_attempts = Counter::default();
        registry.register(
            "job_attempts",
            "Job attempts started (leases given out)",
            job_attempts.clone(),
        );
        let lease_expiries = Counter::default();
        registry.register(
            "job_lease_expiries",
            "Leases that expired without completion (jobs returned or dead-lettered)",
            lease_expiries.clone(),
        );
        let job_latency_seconds = Histogram::new([
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]);
        registry.register(
            "job_latency_seconds",
            "Time from enqueue to outcome (succeeded, failed or dead)",
            job_latency_seconds.clone(),
        );
        let receipt_ack_seconds = Histogram::new([
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
        ]);
        registry.register(
            "receipt_ack_seconds",
            "Time from publish to a subscriber's first acknowledgement, for events published with receipt",
            receipt_ack_seconds.clone(),
        );
        let receipt_events = Gauge::default();
        registry.register(
            "receipt_events",
            "Events kept that asked for delivery receipts",
            receipt_events.clone(),
        );
        let receipt_unacknowledged = Gauge::default();
        registry.register(
            "receipt_unacknowledged",
            "Deliveries of such events (per subject) not acknowledged yet",
            receipt_unacknowledged.clone(),
        );
        let queue_jobs = Family::<QueueStateLabels, Gauge>::default();
        registry.register("queue_jobs", "Jobs per queue and state", queue_jobs.clone());
        Metrics {
            registry,
            job_attempts,
            lease_expiries,
            job_latency_seconds,
            receipt_ack_seconds,
            receipt_events,
            receipt_unacknowledged,
            queue_jobs,
            connections,
            events_published,
            events_delivered,
            fallbacks,
            slow_consumer_disconnects,
            retention_deleted,
            storage_bytes,
            storage_budget_unmet,
            storage_segments,
            index_entries,
            storage_healthy,
            commit_group_events,
            storage_flush_seconds,
            publish_errors,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.push_str("# metrics encoding failed\n");
        }
        out
    }

    /// Every sample as (name, labels, value), read back from the rendered text so the
    /// admin UI shows exactly what Prometheus scrapes.
    pub fn samples(&self) -> Vec<Sample> {
        parse_samples(&self.render())
    }

    pub fn delivered(&self, transport: &'static str, n: usize) {
        if n > 0 {
            self.delivered_counter(transport).inc_by(n as u64);
        }
    }

    /// `events_delivered{transport}`, to keep for a stream's life (a clone shares it).
    pub fn delivered_counter(&self, transport: &'static str) -> Counter {
        self.events_delivered
            .get_or_create(&TransportLabel { transport })
            .clone()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus/OpenMetrics text lines `name{k="v",...} value`; comments skipped.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (head, Vec::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    out
}

/// Counts a connection in `surepush_connections` while alive.
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl ConnectionGuard {
    pub fn new(metrics: &Metrics, transport: &'static str, http: &'static str) -> Self {
        let gauge = metrics
            .connections
            .get_or_create(&ConnLabels { transport, http })
            .clone();
        gauge.inc();
        ConnectionGuard { gauge }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_back_what_is_rendered() {
        let m = Metrics::new();
        let _c = ConnectionGuard::new(&m, "sse_stream", "2");
        m.fallbacks
            .get_or_create(&ReasonLabel {
                reason: "sse \"canary\"".into(),
            })
            .inc_by(3);
        m.events_published.inc_by(7);
        let s = m.samples();
        let conn = s
            .iter()
            .find(|s| s.name == "surepush_connections")
            .expect("connections");
        assert_eq!(conn.label("transport"), Some("sse_stream"));
        assert_eq!(conn.label("http"), Some("2"));
        assert_eq!(conn.value, 1.0);
        let fb = s
            .iter()
            .find(|s| s.name == "surepush_fallbacks_total")
            .expect("fallbacks");
        assert_eq!(fb.label("reason"), Some("sse \"canary\""));
        assert_eq!(fb.value, 3.0);
        assert!(s
            .iter()
            .any(|s| s.name == "surepush_events_published_total" && s.value == 7.0));
        let healthy = |m: &Metrics| {
            m.samples()
                .into_iter()
                .find(|s| s.name == "surepush_storage_healthy")
                .map(|s| s.value)
        };
        assert_eq!(healthy(&m), Some(1.0));
        m.storage_healthy.set(0);
        assert_eq!(healthy(&m), Some(0.0));
    }
}
