//! Soak (issue 14's steady-state measurement): a long-running install with retention
//! active while keep-alive publishers keep publishing over TLS. Every `--sample-secs`, one
//! line: events acknowledged, the rate and the publish latency (per batch request) in the
//! interval, size and file count of the data dir's `db/`, server RSS and the retention
//! deletions counter from `/metrics`. At the end a summary (rate into an empty log vs
//! the steady state, db size vs the volume retention keeps) and, two retention intervals
//! after publishing stopped, a read-back check of every topic (`soak/check.rs`).

mod check;
mod publisher;

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::Client;
use crate::dirsize::{self, Usage};
use crate::stats::pct;
use crate::target::Proto;
use crate::{child, surepush_target};

use publisher::{Counters, Load};

#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// surepush binary to start (default: `surepush` next to this binary).
    #[arg(long = "binary", alias = "bin", value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Data directory, kept at the end (default: a temporary one, removed).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long publishers publish.
    #[arg(long, default_value_t = 300)]
    secs: u64,
    /// One sample line every this many seconds.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Topics published to, round robin [default: 100; --big: 1].
    #[arg(long)]
    topics: Option<usize>,
    /// Keep-alive publishers over TLS, each waiting for its 201.
    #[arg(long, default_value_t = 6)]
    publishers: usize,
    /// Events per publish request [default: 50; --big: 4].
    #[arg(long)]
    batch: Option<usize>,
    /// Size of one published event's JSON [default: 320; --big: 204800].
    #[arg(long)]
    event_bytes: Option<usize>,
    /// storage.retention_max_events_per_topic (0 = no count limit).
    #[arg(long, default_value_t = 2000)]
    max_events_per_topic: u64,
    /// storage.retention_max_disk_bytes (default: the server's).
    #[arg(long)]
    max_disk_bytes: Option<u64>,
    /// storage.retention_max_age_secs (default: the server's).
    #[arg(long)]
    max_age_secs: Option<u64>,
    /// storage.retention_interval_secs.
    #[arg(long, default_value_t = 1)]
    retention_interval_secs: u64,
    /// Also write the samples to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The blob case: events of 200 KiB, 4 per batch, one topic.
    #[arg(long)]
    big: bool,
}

/// The arguments with the defaults of the chosen mode filled in.
struct Plan {
    topics: usize,
    batch: usize,
    event_bytes: usize,
}

impl SoakArgs {
    fn plan(&self) -> io::Result<Plan> {
        let (topics, batch, event_bytes) = if self.big {
            (1, 4, 200 << 10)
        } else {
            (100, 50, 320)
        };
        let p = Plan {
            topics: self.topics.unwrap_or(topics),
            batch: self.batch.unwrap_or(batch),
            event_bytes: self.event_bytes.unwrap_or(event_bytes),
        };
        if p.topics == 0 || p.batch == 0 || self.publishers == 0 {
            return Err(bad("--topics, --batch and --publishers must be at least 1"));
        }
        if self.secs == 0 || self.sample_secs == 0 || self.retention_interval_secs == 0 {
            return Err(bad(
                "--secs, --sample-secs and --retention-interval-secs must be at least 1",
            ));
        }
        Ok(p)
    }

    /// The server's settings: retention as asked, limits wide enough for the batches.
    fn server_env(&self, p: &Plan) -> Vec<(&'static str, String)> {
        let body = (p.batch * (p.event_bytes + 64) + 4096).max(1 << 20);
        let mut env = vec![
            (
                "SUREPUSH_STORAGE__RETENTION_MAX_EVENTS_PER_TOPIC",
                self.max_events_per_topic.to_string(),
            ),
            (
                "SUREPUSH_STORAGE__RETENTION_INTERVAL_SECS",
                self.retention_interval_secs.to_string(),
            ),
            ("SUREPUSH_LIMITS__MAX_BODY_BYTES", body.to_string()),
            (
                "SUREPUSH_LIMITS__MAX_EVENT_DATA_BYTES",
                (p.event_bytes + 1024).max(256 << 10).to_string(),
            ),
            (
                "SUREPUSH_LIMITS__MAX_BATCH_LEN",
                p.batch.max(1000).to_string(),
            ),
        ];
        if let Some(b) = self.max_disk_bytes {
            env.push(("SUREPUSH_STORAGE__RETENTION_MAX_DISK_BYTES", b.to_string()));
        }
        if let Some(a) = self.max_age_secs {
            env.push(("SUREPUSH_STORAGE__RETENTION_MAX_AGE_SECS", a.to_string()));
        }
        env
    }
}

fn bad(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m.to_string())
}

/// One sample: the interval (start, end] in seconds since publishing began.
struct Sample {
    start: f64,
    end: f64,
    acked: u64,
    events: u64,
    /// Publish request latencies in the interval, µs, sorted.
    lat: Vec<u64>,
    db: Usage,
    rss_kib: u64,
    retention_deleted: Option<u64>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.events as f64 / (self.end - self.start).max(1e-9)
    }

    fn line(&self) -> String {
        format!(
            "sample t={:.0}s acked={} rate={:.0}/s p50={} p99={} db={} files={} rss={} retention_deleted={}",
            self.end,
            self.acked,
            self.rate(),
            ms(pct(&self.lat, 50.0)),
            ms(pct(&self.lat, 99.0)),
            mib(self.db.bytes),
            self.db.files,
            mib(self.rss_kib * 1024),
            self.retention_deleted
                .map_or_else(|| "-".to_string(), |d| d.to_string())
        )
    }

    fn csv(&self) -> String {
        format!(
            "{:.1},{},{:.0},{:.3},{:.3},{},{},{},{}",
            self.end,
            self.acked,
            self.rate(),
            pct(&self.lat, 50.0) as f64 / 1000.0,
            pct(&self.lat, 99.0) as f64 / 1000.0,
            self.db.bytes,
            self.db.files,
            self.rss_kib,
            self.retention_deleted
                .map_or_else(String::new, |d| d.to_string())
        )
    }
}

const CSV_HEADER: &str =
    "elapsed_s,acked_total,events_per_s,p50_ms,p99_ms,db_bytes,db_files,rss_kib,retention_deleted";

fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}

/// The retention deletions counter in a `/metrics` text (None when there is none).
fn retention_deleted(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("surepush_retention_deleted"))
        .find_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn fetch_metrics(c: &mut Client) -> Option<u64> {
    match c.call("GET", "/metrics", &[], None).await {
        Ok((h, body)) if h.status == 200 => retention_deleted(&String::from_utf8_lossy(&body)),
        Ok(_) => None,
        Err(_) => {
            c.reset();
            None
        }
    }
}

async fn db_usage(db: &Path) -> Usage {
    let db = db.to_path_buf();
    tokio::task::spawn_blocking(move || dirsize::usage(&db))
        .await
        .unwrap_or_default()
}

pub async fn run(a: &SoakArgs) -> io::Result<bool> {
    let plan = a.plan()?;
    let bin = a.binary.clone().unwrap_or_else(child::default_bin);
    let env = a.server_env(&plan);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = match &a.data_dir {
        Some(d) => child::spawn_in(&bin, d, true, true, &env_refs)?,
        None => child::spawn(&bin, &std::env::temp_dir(), true, &env_refs)?,
    };
    let db = server.data_dir().join("db");
    let target = surepush_target(&server, Proto::TlsH1);
    let mut csv = match &a.csv {
        Some(path) => {
            let mut f = std::fs::File::create(path)?;
            writeln!(f, "{CSV_HEADER}")?;
            Some(f)
        }
        None => None,
    };
    println!(
        "soak: {} topics, {} publishers x batch {}, {}-byte events, retention {} events/topic{}{} every {} s, {} s, sample every {} s (surepush {}, data {})",
        plan.topics,
        a.publishers,
        plan.batch,
        plan.event_bytes,
        a.max_events_per_topic,
        a.max_disk_bytes.map_or_else(String::new, |b| format!(", {b} bytes on disk")),
        a.max_age_secs.map_or_else(String::new, |s| format!(", {s} s old")),
        a.retention_interval_secs,
        a.secs,
        a.sample_secs,
        bin.display(),
        server.data_dir().display()
    );

    let counters = Arc::new(Counters::default());
    let load = Load {
        topics: plan.topics,
        publishers: a.publishers,
        batch: plan.batch,
        event_bytes: plan.event_bytes,
    };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.secs);
    let tasks = publisher::start(&target, &load, &counters, deadline);

    let mut metrics_client = target.publisher();
    let mut samples: Vec<Sample> = Vec::new();
    let mut k = 1u64;
    loop {
        let due = t0 + Duration::from_secs((k * a.sample_secs).min(a.secs));
        tokio::time::sleep_until(due.into()).await;
        let end = t0.elapsed().as_secs_f64();
        let acked = counters.acked.load(Ordering::Relaxed);
        let mut lat = counters.take_latencies();
        lat.sort_unstable();
        let (start, before) = samples.last().map_or((0.0, 0), |s| (s.end, s.acked));
        let s = Sample {
            start,
            end,
            acked,
            events: acked - before,
            lat,
            db: db_usage(&db).await,
            rss_kib: child::rss_kib(server.pid),
            retention_deleted: fetch_metrics(&mut metrics_client).await,
        };
        println!("{}", s.line());
        if let Some(f) = csv.as_mut() {
            writeln!(f, "{}", s.csv())?;
        }
        samples.push(s);
        if due >= deadline {
            break;
        }
        k += 1;
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.map_err(|e| io::Error::other(e.to_string()))?);
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    let total = counters.acked.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    if let Some(e) = counters.first_error() {
        println!("publish errors: {errors}, the first: {e}");
    }

    // Retention catches up with the last publishes, then the database is as it stays.
    tokio::time::sleep(Duration::from_secs(2 * a.retention_interval_secs)).await;
    let final_db = db_usage(&db).await;
    let final_deleted = fetch_metrics(&mut metrics_client).await;
    print!(
        "{}",
        summary(
            a,
            &plan,
            &samples,
            total,
            errors,
            publish_secs,
            final_db,
            final_deleted
        )
    );

    let expect = check::Expect::new(
        &load,
        &results,
        a.max_events_per_topic,
        a.max_disk_bytes.is_none() && a.max_age_secs.is_none(),
    );
    let mismatches = check::run(&target, &expect).await?;
    if mismatches.is_empty() {
        println!("{}", expect.ok_line());
        Ok(true)
    } else {
        println!("correctness: MISMATCH in {} topics", mismatches.len());
        for m in mismatches.iter().take(20) {
            println!("  {m}");
        }
        Ok(false)
    }
}

/// Events/s over the samples (by their durations).
fn rate_of<'a>(samples: impl Iterator<Item = &'a Sample>) -> f64 {
    let (events, secs) = samples.fold((0u64, 0f64), |(e, t), s| {
        (e + s.events, t + s.end - s.start)
    });
    if secs > 0.0 {
        events as f64 / secs
    } else {
        f64::NAN
    }
}

fn merged_p99<'a>(samples: impl Iterator<Item = &'a Sample>) -> (u64, usize) {
    let mut all: Vec<u64> = samples.flat_map(|s| s.lat.iter().copied()).collect();
    all.sort_unstable();
    (pct(&all, 99.0), all.len())
}

#[allow(clippy::too_many_arguments)]
fn summary(
    a: &SoakArgs,
    plan: &Plan,
    samples: &[Sample],
    total: u64,
    errors: u64,
    publish_secs: f64,
    final_db: Usage,
    final_deleted: Option<u64>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "summary: {total} events acknowledged in {publish_secs:.0} s ({errors} failed requests)"
    );
    let _ = writeln!(
        s,
        "average rate: {:.0} events/s",
        total as f64 / publish_secs
    );
    if let Some(first) = samples.first() {
        let _ = writeln!(
            s,
            "rate into an empty log (first sample, 0-{:.0} s): {:.0} events/s",
            first.end,
            first.rate()
        );
    }
    let half = a.secs as f64 / 2.0;
    let second_half: Vec<&Sample> = samples.iter().filter(|x| x.start >= half - 0.5).collect();
    let (steady, from) = if second_half.is_empty() {
        let last = samples.last();
        (rate_of(last.into_iter()), last.map_or(0.0, |l| l.start))
    } else {
        (rate_of(second_half.iter().copied()), second_half[0].start)
    };
    let _ = writeln!(
        s,
        "steady-state rate (second half, samples from {from:.0} s): {steady:.0} events/s"
    );
    // Latency while retention had nothing to delete yet, vs the whole run.
    let idle: Vec<&Sample> = samples
        .iter()
        .take_while(|x| x.retention_deleted == Some(0))
        .collect();
    let (idle_label, idle_p99) = if samples.iter().all(|x| x.retention_deleted.is_none()) {
        (
            "in the first sample (no retention counter in /metrics)".to_string(),
            merged_p99(samples.first().into_iter()),
        )
    } else if idle.is_empty() {
        (
            "in the first sample (retention already deleting in it)".to_string(),
            merged_p99(samples.first().into_iter()),
        )
    } else {
        (
            format!(
                "while retention was idle (no deletions yet, first {} samples)",
                idle.len()
            ),
            merged_p99(idle.iter().copied()),
        )
    };
    let overall = merged_p99(samples.iter());
    let _ = writeln!(
        s,
        "publish p99 per batch: {} {idle_label}; {} overall ({} requests)",
        ms(idle_p99.0),
        ms(overall.0),
        overall.1
    );
    let _ = writeln!(
        s,
        "final db size (two retention intervals after the last publish): {} in {} files ({} bytes){}",
        mib(final_db.bytes),
        final_db.files,
        final_db.bytes,
        final_deleted.map_or_else(String::new, |d| format!(", {d} events deleted by retention"))
    );
    let retained = match a.max_disk_bytes {
        Some(b) => {
            let _ = writeln!(s, "retained volume estimate: {} (--max-disk-bytes)", mib(b));
            Some(b)
        }
        None if a.max_events_per_topic > 0 => {
            let r = plan.topics as u64 * a.max_events_per_topic * plan.event_bytes as u64;
            let _ = writeln!(
                s,
                "retained volume estimate: {} ({} topics x {} events x {} bytes)",
                mib(r),
                plan.topics,
                a.max_events_per_topic,
                plan.event_bytes
            );
            Some(r)
        }
        None => {
            let _ = writeln!(s, "retained volume estimate: n/a (no count or disk limit)");
            None
        }
    };
    match retained {
        Some(r) if r > 0 => {
            let _ = writeln!(
                s,
                "ratio db size / retained: {:.2}",
                final_db.bytes as f64 / r as f64
            );
        }
        _ => {
            let _ = writeln!(s, "ratio db size / retained: n/a");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_retention_counter() {
        let m = "# HELP surepush_retention_deleted_events Events deleted by retention.\n\
                 # TYPE surepush_retention_deleted_events counter\n\
                 surepush_retention_deleted_events_total 1234\n";
        assert_eq!(retention_deleted(m), Some(1234));
        assert_eq!(
            retention_deleted("surepush_events_published_total 5\n"),
            None
        );
    }
}
