//! Fan-out: N subscribers on one channel, M events published one at a time (lockstep:
//! the next one after the previous reached every subscriber, plus a gap; or steady: at a
//! fixed rate). Latency is from just before the publish request is written to the
//! subscriber parsing the event; "last" is, per event, when the last subscriber had it.
//!
//! Subscribers are futures grouped into a few tasks (`FuturesUnordered` per shard), not a
//! task each; over HTTP/2 they share connections, `streams_per_conn` streams each.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use crate::client::{self, Client};
use crate::stats::pct;
use crate::subscriber::{self, Ctx, SubResult};
use crate::target::{Cursor, Kind, Proto, Target, Transport};

#[derive(Clone, Debug)]
pub struct Spec {
    pub subs: usize,
    pub events: u32,
    pub transport: Transport,
    /// Lockstep pause after an event reached everyone.
    pub gap: Duration,
    /// Steady publishing at this many events/s instead of lockstep.
    pub rate: Option<f64>,
    pub streams_per_conn: usize,
    /// Pause between "all connected" and the first publish.
    pub settle: Duration,
}

impl Spec {
    pub fn new(subs: usize, events: u32, transport: Transport) -> Spec {
        Spec {
            subs,
            events,
            transport,
            gap: Duration::from_millis(10),
            rate: None,
            streams_per_conn: 100,
            settle: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub label: String,
    pub transport: &'static str,
    pub proto: &'static str,
    pub subs: usize,
    pub connected: usize,
    pub failed: usize,
    pub events: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub last_p50_ms: f64,
    pub last_p99_ms: f64,
    pub last_max_ms: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub requests: u64,
    pub connect_secs: f64,
    pub publish_secs: f64,
    pub h2_connections: usize,
}

impl Outcome {
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.failed == 0
            && self.connected == self.subs
    }

    pub fn line(&self) -> String {
        format!(
            "{} {} {}: {}/{} subscribers, {} events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; last-subscriber p50 {:.1} p99 {:.1} max {:.1} ms; {} lost, {} duplicated, {} out of order, {} failed, {} errors{}; connect {:.1} s{}",
            self.label,
            self.proto,
            self.transport,
            self.connected,
            self.subs,
            self.events,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.last_p50_ms,
            self.last_p99_ms,
            self.last_max_ms,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.failed,
            self.errors,
            self.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
            self.connect_secs,
            if self.h2_connections > 0 {
                format!(" ({} streams over {} HTTP/2 connections)", self.connected, self.h2_connections)
            } else {
                String::new()
            }
        )
    }
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(target: &Target, spec: &Spec) -> io::Result<Outcome> {
    let ch: Arc<str> = format!("bench{}", rand::random::<u32>()).into();
    let mut publisher = target.publisher();
    let start = Cursor {
        id: match target.kind {
            // Subscribers start after this event, so connecting never races publishing.
            Kind::Surepush => target.publish(&mut publisher, &ch, None).await?,
            _ => None,
        },
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx::new(spec.events, stop_rx, 50));
    let target = Arc::new(target.clone());
    let t_connect = Instant::now();
    let (tasks, h2_connections) = start_subscribers(
        &target,
        spec.transport,
        &ch,
        &start,
        spec.subs,
        spec.streams_per_conn,
        &ctx,
    )
    .await?;
    let connected = wait_connected(&ctx, spec.subs).await;
    let connect_secs = t_connect.elapsed().as_secs_f64();
    ctx.connected.store(connected as u32, Ordering::Release);
    tokio::time::sleep(spec.settle).await;
    // a fresh connection: the one of the first publish may have idled out while connecting
    publisher.reset();

    let mut t_pub = vec![0u64; spec.events as usize];
    let t0 = Instant::now();
    let mut publish_error = None;
    for k in 0..spec.events {
        if let Some(rate) = spec.rate {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(f64::from(k) / rate)).into())
                .await;
        }
        t_pub[k as usize] = ctx.now_ns();
        if let Err(e) = target.publish(&mut publisher, &ch, Some(k)).await {
            publish_error = Some(e);
            break;
        }
        if spec.rate.is_none() {
            let until = Instant::now() + EVENT_TIMEOUT;
            while ctx.received[k as usize].load(Ordering::Acquire) < connected as u32 {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero()
                    || tokio::time::timeout(left, ctx.complete.notified())
                        .await
                        .is_err()
                {
                    break;
                }
            }
            tokio::time::sleep(spec.gap).await;
        }
    }
    let publish_secs = t0.elapsed().as_secs_f64();

    // Subscribers end by themselves once they have every event; give stragglers a bound.
    let mut all = std::pin::pin!(futures_util::future::join_all(tasks));
    let results = tokio::select! {
        r = &mut all => r,
        _ = tokio::time::sleep(Duration::from_secs(15)) => {
            let _ = stop_tx.send(true);
            all.await
        }
    };
    let _ = stop_tx.send(true);
    if let Some(e) = publish_error {
        return Err(e);
    }
    let mut out = Outcome {
        label: target.label.clone(),
        transport: spec.transport.name(),
        proto: target.proto.name(),
        subs: spec.subs,
        connected,
        failed: ctx.failed.load(Ordering::Acquire),
        events: spec.events,
        errors: ctx.errors.load(Ordering::Relaxed),
        first_error: ctx.first_error.lock().ok().and_then(|e| e.clone()),
        requests: ctx.requests.load(Ordering::Relaxed),
        connect_secs,
        publish_secs,
        h2_connections,
        ..Outcome::default()
    };
    let m = spec.events as usize;
    let mut all_lat = Vec::with_capacity(connected * m);
    let mut last = vec![0u64; m];
    for r in results {
        let subs = r.map_err(|e| io::Error::other(e.to_string()))?;
        for s in subs.into_iter().filter(|s| s.ready) {
            let mut seen = vec![false; m];
            let mut prev: Option<u32> = None;
            for &(k, t) in &s.receipts {
                let Some(slot) = seen.get_mut(k as usize) else {
                    out.duplicated += 1; // not a published event
                    continue;
                };
                if *slot {
                    out.duplicated += 1;
                    continue;
                }
                *slot = true;
                if prev.is_some_and(|p| k < p) {
                    out.out_of_order += 1;
                }
                prev = Some(k);
                let lat = t.saturating_sub(t_pub[k as usize]);
                all_lat.push(lat);
                last[k as usize] = last[k as usize].max(lat);
            }
            out.lost += seen.iter().filter(|s| !**s).count() as u64;
        }
    }
    all_lat.sort_unstable();
    last.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    out.p50_ms = ms(pct(&all_lat, 50.0));
    out.p99_ms = ms(pct(&all_lat, 99.0));
    out.max_ms = ms(all_lat.last().copied().unwrap_or(0));
    out.last_p50_ms = ms(pct(&last, 50.0));
    out.last_p99_ms = ms(pct(&last, 99.0));
    out.last_max_ms = ms(last.last().copied().unwrap_or(0));
    Ok(out)
}

pub type Shard = tokio::task::JoinHandle<Vec<SubResult>>;

/// Starts `n` subscribers in a few shard tasks; returns the shards and how many HTTP/2
/// connections they share (0 over HTTP/1.1: one connection each).
pub async fn start_subscribers(
    target: &Arc<Target>,
    transport: Transport,
    ch: &Arc<str>,
    start: &Cursor,
    n: usize,
    streams_per_conn: usize,
    ctx: &Arc<Ctx>,
) -> io::Result<(Vec<Shard>, usize)> {
    let tls = target.sub_tls();
    let per_conn = streams_per_conn.max(1);
    let mut h2 = Vec::new();
    if target.proto == Proto::TlsH2 {
        let tls = tls.clone().expect("h2 is over TLS");
        for _ in 0..n.div_ceil(per_conn) {
            h2.push(client::h2_connect(target.addr, &tls).await?);
        }
    }
    let shards = 4.min(n.max(1));
    let mut tasks = Vec::with_capacity(shards);
    for s in 0..shards {
        let futs = FuturesUnordered::new();
        for i in (s..n).step_by(shards) {
            let c = match h2.get(i / per_conn) {
                Some(send) => Client::h2(send.clone(), target.addr),
                None => Client::h1(target.addr, tls.clone()),
            };
            futs.push(subscriber::run(
                target.clone(),
                transport,
                ch.clone(),
                start.clone(),
                c,
                ctx.clone(),
            ));
        }
        tasks.push(tokio::spawn(futs.collect::<Vec<SubResult>>()));
    }
    Ok((tasks, h2.len()))
}

/// Waits until every subscriber is connected or gave up, within a bound; returns how
/// many are connected.
pub async fn wait_connected(ctx: &Ctx, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30 + n as u64 / 100);
    while ctx.ready.load(Ordering::Acquire) + ctx.failed.load(Ordering::Acquire) < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.ready.load(Ordering::Acquire)
}
