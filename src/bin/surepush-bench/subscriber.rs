//! One subscriber: connects (through the shared gate, at most ~50 connecting at once),
//! reads its transport's responses, records every marker with its arrival time, resumes
//! from the last id when a response ends (close mode, long poll), and stops once it has
//! as many events as were published, or when told to.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};

use crate::client::Client;
use crate::sse::{scan_markers, SseParser};
use crate::target::{Cursor, Kind, Target, Transport};

/// What all subscribers of one run share.
pub struct Ctx {
    pub base: Instant,
    /// Events that will be published (a subscriber is done once it has this many).
    pub expected: u32,
    /// Per event: how many subscribers have it.
    pub received: Vec<AtomicU32>,
    /// Subscribers connected when publishing began: an event is complete at this count.
    pub connected: AtomicU32,
    /// Woken when an event reaches every connected subscriber.
    pub complete: Notify,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub connect_gate: Semaphore,
    pub stop: watch::Receiver<bool>,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl Ctx {
    pub fn new(expected: u32, stop: watch::Receiver<bool>, gate: usize) -> Ctx {
        Ctx {
            base: Instant::now(),
            expected,
            received: (0..expected).map(|_| AtomicU32::new(0)).collect(),
            connected: AtomicU32::new(u32::MAX),
            complete: Notify::new(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            connect_gate: Semaphore::new(gate),
            stop,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert(e);
        }
    }
}

#[derive(Default)]
pub struct SubResult {
    /// (event number, arrival in ns since `Ctx::base`), in arrival order.
    pub receipts: Vec<(u32, u64)>,
    pub ready: bool,
}

const MAX_ATTEMPTS: u32 = 6;

pub async fn run(
    target: Arc<Target>,
    transport: Transport,
    ch: Arc<str>,
    mut cursor: Cursor,
    mut client: Client,
    ctx: Arc<Ctx>,
) -> SubResult {
    let mut res = SubResult::default();
    let mut parser = SseParser::default();
    let mut stop = ctx.stop.clone();
    let mut failures = 0;
    let record = |res: &mut SubResult, k: u32| {
        res.receipts.push((k, ctx.now_ns()));
        if let Some(c) = ctx.received.get(k as usize) {
            let n = c.fetch_add(1, Ordering::AcqRel) + 1;
            if n == ctx.connected.load(Ordering::Acquire) {
                ctx.complete.notify_one();
            }
        }
    };
    'outer: loop {
        if res.receipts.len() as u32 >= ctx.expected && res.ready && ctx.expected > 0 {
            break;
        }
        if *stop.borrow() {
            break;
        }
        let (path, headers) = target.subscribe(transport, &ch, &cursor);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut permit = if res.ready {
            None
        } else {
            Some(ctx.connect_gate.acquire().await.expect("gate open"))
        };
        let mark_ready = |res: &mut SubResult| {
            if !res.ready {
                res.ready = true;
                ctx.ready.fetch_add(1, Ordering::Release);
            }
        };
        if transport == Transport::LongPoll && permit.is_some() {
            // The answer waits for events: the gate covers connecting, and the cursor
            // (since=) makes the subscription complete once the request is on its way.
            let connected = tokio::select! {
                r = client.connect() => r,
                _ = stop.changed() => break,
            };
            if connected.is_ok() {
                permit = None;
                mark_ready(&mut res);
            }
        }
        ctx.requests.fetch_add(1, Ordering::Relaxed);
        let head = tokio::select! {
            r = client.request("GET", &path, &headers, None) => r,
            _ = stop.changed() => break,
        };
        let fail = match head {
            Ok(h) if h.status == 200 => None,
            Ok(h) => {
                let _ = client.read_all().await;
                Some(format!("subscribe answered {}", h.status))
            }
            Err(e) => Some(format!("subscribe failed: {e}")),
        };
        if let Some(e) = fail {
            ctx.error(e);
            client.reset();
            failures += 1;
            drop(permit);
            if failures >= MAX_ATTEMPTS && !res.ready {
                ctx.failed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
            continue;
        }
        failures = 0;
        match transport {
            Transport::Sse | Transport::Close => {
                // Others are subscribed once the head arrives; surepush says so in its canary.
                if target.kind != Kind::Surepush {
                    mark_ready(&mut res);
                    permit = None;
                }
                loop {
                    let piece = tokio::select! {
                        r = client.next() => r,
                        _ = stop.changed() => break 'outer,
                    };
                    match piece {
                        Ok(Some(b)) => {
                            parser.feed(&b, |k| record(&mut res, k));
                            if parser.saw_hello {
                                mark_ready(&mut res);
                                permit = None;
                            }
                            if res.receipts.len() as u32 >= ctx.expected && ctx.expected > 0 {
                                break 'outer;
                            }
                        }
                        Ok(None) => {
                            if transport == Transport::Sse {
                                ctx.error("an SSE stream ended".into());
                            }
                            break;
                        }
                        Err(e) => {
                            ctx.error(format!("stream read failed: {e}"));
                            client.reset();
                            break;
                        }
                    }
                }
                if let Some(id) = parser.last_id.take() {
                    cursor.id = Some(id);
                }
                parser = SseParser::default();
            }
            Transport::LongPoll => {
                mark_ready(&mut res);
                permit = None;
                let body = tokio::select! {
                    r = client.read_all() => r,
                    _ = stop.changed() => break 'outer,
                };
                match body {
                    Ok(body) => {
                        scan_markers(&body, |k| record(&mut res, k));
                        if let Some(id) = Target::poll_cursor(&body) {
                            cursor.id = Some(id);
                        }
                    }
                    Err(e) => {
                        ctx.error(format!("poll read failed: {e}"));
                        client.reset();
                    }
                }
            }
        }
        drop(permit);
    }
    res
}
