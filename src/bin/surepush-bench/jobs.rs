//! Jobs round trip against surepush: enqueuers `POST /v1/jobs` (payload = the marker,
//! reply topic = a channel one SSE subscriber follows), workers lease (long-polling) and
//! complete each job with its payload as result, and the subscriber receives the
//! `job.completed` event. Latency is enqueue -> result event received.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::Client;
use crate::stats::pct;
use crate::subscriber::{self, Ctx};
use crate::target::{Cursor, Target, Transport};

#[derive(Clone, Debug, Default)]
pub struct JobsOutcome {
    pub jobs: u32,
    pub workers: usize,
    pub enqueuers: usize,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub jobs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl JobsOutcome {
    pub fn correct(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.received == u64::from(self.jobs)
    }

    pub fn line(&self) -> String {
        format!(
            "jobs: {} jobs, {} enqueuers, {} workers: {:.0} jobs/s; enqueue -> result event p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} lost, {} duplicated, {} errors{}",
            self.jobs,
            self.enqueuers,
            self.workers,
            self.jobs_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.lost,
            self.duplicated,
            self.errors,
            self.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        )
    }
}

async fn post(c: &mut Client, path: &str, body: &str) -> io::Result<(u16, Vec<u8>)> {
    let (h, b) = c
        .call(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .await?;
    Ok((h.status, b))
}

async fn worker(
    target: Arc<Target>,
    queue: String,
    name: String,
    mut stop: watch::Receiver<bool>,
    errors: Arc<AtomicU64>,
) {
    let mut c = target.publisher();
    let lease = format!("{{\"worker\":\"{name}\",\"max\":20,\"lease_secs\":60,\"wait_secs\":1}}");
    let path = format!("/v1/queues/{queue}/lease");
    while !*stop.borrow() {
        let r = tokio::select! {
            r = post(&mut c, &path, &lease) => r,
            _ = stop.changed() => break,
        };
        let jobs = match r {
            Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("jobs").and_then(|j| j.as_array()).cloned())
                .unwrap_or_default(),
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
                c.reset();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        for j in jobs {
            let id = j["job_id"].as_str().unwrap_or_default();
            let done = format!(
                "{{\"worker\":\"{name}\",\"attempt\":{},\"result\":{}}}",
                j["attempt"].as_u64().unwrap_or(1),
                j["payload"]
            );
            match post(&mut c, &format!("/v1/jobs/{id}/complete"), &done).await {
                Ok((200, _)) => {}
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    c.reset();
                }
            }
        }
    }
}

pub async fn run(
    target: &Target,
    jobs: u32,
    workers: usize,
    enqueuers: usize,
) -> io::Result<JobsOutcome> {
    let tag = rand::random::<u32>();
    let ch: Arc<str> = format!("jobs{tag}").into();
    let queue = format!("q{tag}");
    let target = Arc::new(target.clone());
    let mut publisher = target.publisher();
    let start = Cursor {
        id: target.publish(&mut publisher, &ch, None).await?,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx::new(jobs, stop_rx.clone(), 1));
    ctx.connected.store(1, Ordering::Release);
    let sub = tokio::spawn(subscriber::run(
        target.clone(),
        Transport::Sse,
        ch.clone(),
        start,
        Client::h1(target.addr, target.sub_tls()),
        ctx.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctx.ready.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let errors = Arc::new(AtomicU64::new(0));
    let worker_tasks: Vec<_> = (0..workers)
        .map(|i| {
            tokio::spawn(worker(
                target.clone(),
                queue.clone(),
                format!("w{i}"),
                stop_rx.clone(),
                errors.clone(),
            ))
        })
        .collect();
    let t_enq: Arc<Vec<AtomicU64>> = Arc::new((0..jobs).map(|_| AtomicU64::new(0)).collect());
    let t0 = ctx.now_ns();
    let enq_tasks: Vec<_> = (0..enqueuers)
        .map(|e| {
            let (target, ctx, t_enq, errors, queue, ch) = (
                target.clone(),
                ctx.clone(),
                t_enq.clone(),
                errors.clone(),
                queue.clone(),
                ch.clone(),
            );
            tokio::spawn(async move {
                let mut c = target.publisher();
                for k in (e as u32..jobs).step_by(enqueuers) {
                    let body = format!(
                        "{{\"queue\":\"{queue}\",\"payload\":\"SPB{k};\",\"reply_topic\":\"{ch}\"}}"
                    );
                    t_enq[k as usize].store(ctx.now_ns(), Ordering::Release);
                    match post(&mut c, "/v1/jobs", &body).await {
                        Ok((202, _)) => {}
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok((s, b)) = other {
                                eprintln!("enqueue answered {s}: {}", String::from_utf8_lossy(&b));
                            }
                            c.reset();
                        }
                    }
                }
            })
        })
        .collect();
    for t in enq_tasks {
        let _ = t.await;
    }
    let mut sub = sub;
    let result = tokio::select! {
        r = &mut sub => r,
        _ = tokio::time::sleep(Duration::from_secs(30 + u64::from(jobs) / 100)) => {
            let _ = stop_tx.send(true);
            (&mut sub).await
        }
    }
    .map_err(|e| io::Error::other(e.to_string()))?;
    let _ = stop_tx.send(true);
    for t in worker_tasks {
        let _ = t.await;
    }
    let mut out = JobsOutcome {
        jobs,
        workers,
        enqueuers,
        received: result.receipts.len() as u64,
        errors: errors.load(Ordering::Relaxed) + ctx.errors.load(Ordering::Relaxed),
        first_error: ctx.first_error.lock().ok().and_then(|e| e.clone()),
        ..JobsOutcome::default()
    };
    let mut seen = vec![false; jobs as usize];
    let mut lat = Vec::with_capacity(jobs as usize);
    let mut last = 0;
    for &(k, t) in &result.receipts {
        match seen.get_mut(k as usize) {
            Some(s) if !*s => {
                *s = true;
                lat.push(t.saturating_sub(t_enq[k as usize].load(Ordering::Acquire)));
                last = last.max(t);
            }
            _ => out.duplicated += 1,
        }
    }
    out.lost = seen.iter().filter(|s| !**s).count() as u64;
    lat.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    out.p50_ms = ms(pct(&lat, 50.0));
    out.p99_ms = ms(pct(&lat, 99.0));
    out.max_ms = ms(lat.last().copied().unwrap_or(0));
    out.jobs_per_sec = f64::from(jobs) / ((last.saturating_sub(t0)) as f64 / 1e9).max(1e-9);
    Ok(out)
}
