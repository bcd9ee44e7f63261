//! Idle capacity: open N SSE streams (at most ~50 connecting at once), let them sit, and
//! read the server's RSS (the process and its descendants) from /proc before and after.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::child::{rss_kib, tree_rss_kib};
use crate::fanout::{start_subscribers, wait_connected};
use crate::subscriber::Ctx;
use crate::target::{Cursor, Target, Transport};

#[derive(Clone, Debug, Default)]
pub struct IdleOutcome {
    pub label: String,
    pub proto: &'static str,
    pub conns: usize,
    pub held: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// The bench's own growth per connection (how light the subscriber side is).
    pub bench_kib_per_conn: f64,
    pub connect_secs: f64,
    pub errors: u64,
}

impl IdleOutcome {
    pub fn kib_per_conn(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.held.max(1) as f64
    }

    pub fn line(&self) -> String {
        format!(
            "idle {} {}: {}/{} connections held, server RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection (bench side {:.1} KiB); connect {:.1} s, {} errors",
            self.label,
            self.proto,
            self.held,
            self.conns,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.kib_per_conn(),
            self.bench_kib_per_conn,
            self.connect_secs,
            self.errors
        )
    }
}

pub async fn run(target: &Target, conns: usize) -> io::Result<IdleOutcome> {
    let target = Arc::new(target.clone());
    let ch: Arc<str> = format!("idle{}", rand::random::<u32>()).into();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx::new(0, stop_rx, 50));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_kib = tree_rss_kib(&target.pids);
    let bench_before = rss_kib(std::process::id());
    let t0 = Instant::now();
    let (tasks, _) = start_subscribers(
        &target,
        Transport::Sse,
        &ch,
        &Cursor::default(),
        conns,
        100,
        &ctx,
    )
    .await?;
    let held = wait_connected(&ctx, conns).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = tree_rss_kib(&target.pids);
    let bench_after = rss_kib(std::process::id());
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // let the server release them before the next phase measures
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(IdleOutcome {
        label: target.label.clone(),
        proto: target.proto.name(),
        conns,
        held,
        rss_before_kib,
        rss_after_kib,
        bench_kib_per_conn: bench_after.saturating_sub(bench_before) as f64 / held.max(1) as f64,
        connect_secs,
        errors: ctx.errors.load(Ordering::Relaxed),
    })
}

/// One fresh server, connections added in steps and all held: the RSS at each step
/// (`checkpoints` ascending), each measured against the RSS before the first connection.
pub async fn ramp(target: &Target, checkpoints: &[usize]) -> io::Result<Vec<IdleOutcome>> {
    let target = Arc::new(target.clone());
    let ch: Arc<str> = format!("idle{}", rand::random::<u32>()).into();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx::new(0, stop_rx, 50));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_kib = tree_rss_kib(&target.pids);
    let bench_before = rss_kib(std::process::id());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let mut out = Vec::new();
    let mut opened = 0;
    for &n in checkpoints {
        let (more, _) = start_subscribers(
            &target,
            Transport::Sse,
            &ch,
            &Cursor::default(),
            n.saturating_sub(opened),
            100,
            &ctx,
        )
        .await?;
        tasks.extend(more);
        opened = opened.max(n);
        let held = wait_connected(&ctx, n).await;
        let connect_secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let o = IdleOutcome {
            label: target.label.clone(),
            proto: target.proto.name(),
            conns: n,
            held,
            rss_before_kib,
            rss_after_kib: tree_rss_kib(&target.pids),
            bench_kib_per_conn: rss_kib(std::process::id()).saturating_sub(bench_before) as f64
                / held.max(1) as f64,
            connect_secs,
            errors: ctx.errors.load(Ordering::Relaxed),
        };
        println!("{}", o.line());
        out.push(o);
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(out)
}
