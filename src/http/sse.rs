//! `GET /v1/stream`: Server-Sent Events, `mode=stream` (stays open) or `mode=close`
//! (ends after a batch so buffering proxies must deliver it; EventSource reconnects with
//! Last-Event-ID). HTTP/1.0 requests get close mode without chunked encoding.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::params::{self, SseMode};
use super::{http_version, resource};
use crate::auth::now_secs;
use crate::error::ApiError;
use crate::hub::Subscription;
use crate::metrics::{ConnectionGuard, ReasonLabel};
use crate::model::Pattern;
use crate::server::{AppState, ConnInfo};
use crate::stall::StallGuard;
use crate::store::{now_ms, record::rfc3339, ReadBatch, StoreError};
use crate::subscribers::{SubscriberGuard, SubscriberInfo};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/stream").route(web::get().to(stream)));
}

/// Most events written per read of the log, so a long replay interleaves with the socket.
const READ_CHUNK: usize = 500;

struct SseState {
    st: AppState,
    patterns: Vec<Pattern>,
    sub: Subscription,
    cursor: u64,
    mode: SseMode,
    out: VecDeque<Bytes>,
    heartbeat_every: Duration,
    /// Close mode: when the response ends even without events.
    deadline: Option<Instant>,
    /// When the subscriber's token expires.
    token_ends: Option<Instant>,
    batch_window: Duration,
    done: bool,
    /// `events_delivered{transport}`, looked up once.
    delivered: Counter,
    untyped: bool,
    stall: StallGuard,
    registered: SubscriberGuard,
    _conn: ConnectionGuard,
}

fn sse_headers(resp: &mut actix_web::HttpResponseBuilder) {
    resp.content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache, no-transform"))
        .insert_header(("X-Accel-Buffering", "no"));
}

async fn stream(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let st: AppState = st.get_ref().clone();
    let cfg = &st.config.push;
    let p = params::parse(&req, cfg)?;
    let who = super::auth::principal(&req, &st)?;
    st.auth.authorize_subscribe(who.as_ref(), &p.patterns)?;
    // A stream ends when its token does; the client renews and reconnects.
    let token_ends = who.as_ref().map(|w| {
        let left = w.exp.saturating_sub(now_secs()) + st.config.auth.leeway_secs;
        Instant::now() + Duration::from_secs(left)
    });
    if *st.shutdown.borrow() {
        return Err(shutting_down());
    }
    let http = http_version(&req);
    let http10 = http == "1.0";
    let mode = if http10 {
        SseMode::Close
    } else {
        p.mode.unwrap_or(SseMode::Stream)
    };
    // Register for wake-ups before reading, so nothing published in between is missed.
    let sub = st.hub.subscribe(&p.patterns);
    let resume = st.log.resume(p.since, &p.patterns).await?;
    let transport = match mode {
        SseMode::Stream => "sse_stream",
        SseMode::Close => "sse_close",
    };
    let registered = st.subscribers.register(
        SubscriberInfo {
            client: super::client_ip::client_ip(&req, &st),
            subject: who.as_ref().map(|w| w.sub.clone()),
            transport,
            http,
            topics: p.patterns.iter().map(|p| p.to_string()).collect(),
            fallback: p.fallback.clone(),
            since_ms: now_ms(),
        },
        st.subscription_caps(),
    )?;
    if let Some(reason) = p.fallback {
        st.metrics
            .fallbacks
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    let (retry_min, retry_max) = match mode {
        SseMode::Stream => (cfg.retry_min_ms, cfg.retry_max_ms),
        SseMode::Close => (cfg.close_retry_min_ms, cfg.close_retry_max_ms),
    };
    let retry = rand::random_range(retry_min..=retry_max);
    let mut out = VecDeque::new();
    let mut head = String::with_capacity(cfg.padding_bytes + 256);
    if cfg.padding_bytes > 0 {
        head.push(':');
        head.extend(std::iter::repeat_n(' ', cfg.padding_bytes));
        head.push('\n');
    }
    head.push_str(&format!("retry: {retry}\n\n"));
    let hello = serde_json::json!({
        "transport": "sse",
        "mode": match mode { SseMode::Stream => "stream", SseMode::Close => "close" },
        "http": http,
        "last_id": st.log.id(resume.cursor).to_string(),
        "reset": resume.reset,
        "heartbeat_secs": cfg.heartbeat_secs,
        "retry_ms": retry,
    });
    head.push_str(&format!("event: surepush.hello\ndata: {hello}\n\n"));
    out.push_back(Bytes::from(head));

    let hb = Duration::from_secs(cfg.heartbeat_secs);
    let timeout = Duration::from_secs(p.timeout.unwrap_or(cfg.poll_timeout_default_secs));
    let fd = req.conn_data::<ConnInfo>().map(|c| c.fd);
    let stall_after = hb + Duration::from_secs(cfg.slow_consumer_timeout_secs);
    let shutdown = st.shutdown.clone();
    let state = SseState {
        patterns: p.patterns,
        sub,
        cursor: resume.cursor,
        mode,
        out,
        heartbeat_every: hb,
        deadline: (mode == SseMode::Close).then(|| Instant::now() + timeout),
        token_ends,
        batch_window: Duration::from_millis(cfg.batch_window_ms),
        done: false,
        delivered: st.metrics.delivered_counter(transport),
        untyped: p.untyped,
        stall: st.stalls.register(fd, stall_after),
        registered,
        _conn: ConnectionGuard::new(&st.metrics, transport, http),
        st,
    };
    let body = SseBody::new(state, shutdown);
    let mut builder = HttpResponse::Ok();
    sse_headers(&mut builder);
    let mut resp = builder.streaming(body);
    if http10 {
        // HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
        resp.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        resp.head_mut().no_chunking(true);
    }
    Ok(resp)
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable {
        code: "shutting_down",
        message: "the server is shutting down; reconnect shortly".into(),
        retry_after_secs: 2,
    }
}

fn ping() -> Bytes {
    Bytes::from(format!(
        "event: surepush.ping\ndata: {{\"time\":\"{}\"}}\n\n",
        rfc3339(now_ms())
    ))
}

/// Why a stream ends before its client leaves.
enum Stop {
    Shutdown,
    Kicked,
}

type EndFrame = Option<&'static [u8]>;
type StoredRead = Pin<Box<dyn Future<Output = Result<ReadBatch, StoreError>> + Send>>;

/// The response body. Its wake-ups stay armed across polls: the hub's is re-armed only
/// after it fired, the rare ones (shutdown, operator disconnect) and the timers are made
/// once, so an event costs a subscriber one wake-up, one read of the ring of recent
/// events and one write (bench/proposals/sse-fanout.md).
struct SseBody {
    s: SseState,
    /// Woken after a durable write to a matching topic.
    hub: Pin<Box<OwnedNotified>>,
    stop: Pin<Box<dyn Future<Output = Stop> + Send>>,
    heartbeat: Pin<Box<Sleep>>,
    /// The earliest of the close-mode deadline and the token's expiry, with the frame
    /// that says which (None: the deadline, which ends the response silently).
    ends: Option<(Pin<Box<Sleep>>, EndFrame)>,
    /// Close mode: the batch window running after a wake-up.
    batch: Option<Pin<Box<Sleep>>>,
    /// A read that needs the database (a replay older than the ring of recent events).
    reading: Option<StoredRead>,
    need_read: bool,
}

impl SseBody {
    fn new(s: SseState, stop_on_shutdown: watch::Receiver<bool>) -> SseBody {
        let mut shutdown = stop_on_shutdown;
        let kicked = s.registered.kicked_owned();
        let stop = Box::pin(async move {
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => Stop::Shutdown,
                _ = kicked => Stop::Kicked,
            }
        });
        let ends = match (s.deadline, s.token_ends) {
            (Some(d), Some(t)) if t < d => Some((t, Some(TOKEN_EXPIRED))),
            (Some(d), _) => Some((d, None)),
            (None, Some(t)) => Some((t, Some(TOKEN_EXPIRED))),
            (None, None) => None,
        }
        .map(|(at, frame)| (Box::pin(tokio::time::sleep_until(at)), frame));
        SseBody {
            hub: Box::pin(s.sub.notified_owned()),
            heartbeat: Box::pin(tokio::time::sleep(s.heartbeat_every)),
            stop,
            ends,
            batch: None,
            reading: None,
            need_read: true,
            s,
        }
    }

    /// Takes a read's events into the output, or asks for another read when it scanned
    /// part of the log without a match.
    fn take(&mut self, read: Result<ReadBatch, StoreError>) {
        let s = &mut self.s;
        match read {
            Ok(batch) => {
                s.cursor = batch.scanned_to;
                let n = batch.events.len();
                if n > 0 {
                    if s.untyped {
                        for e in &batch.events {
                            let (id, data) = e.untyped_parts();
                            s.out.push_back(id);
                            s.out.push_back(data);
                        }
                    } else {
                        s.out.extend(batch.events.iter().map(|e| e.sse.clone()));
                    }
                    s.delivered.inc_by(n as u64);
                    s.registered.delivered(n);
                    let info = s.registered.info();
                    super::receipts::mark_delivered(
                        &s.st,
                        &batch.events,
                        info.subject.as_deref(),
                        info.transport,
                    );
                    if s.mode == SseMode::Close && s.cursor >= s.st.log.head() {
                        s.done = true;
                    }
                } else if s.cursor < s.st.log.head() {
                    self.need_read = true; // scanned part of the log without a match
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream ends: cannot read the log");
                s.done = true;
            }
        }
    }
}

const TOKEN_EXPIRED: &[u8] = b"event: surepush.token_expired\ndata: {\"renew\":true}\n\n";

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.s.out.pop_front() {
                this.s.stall.progress();
                return Poll::Ready(Some(Ok(b)));
            }
            if this.s.done {
                return Poll::Ready(None);
            }
            if let Some(reading) = this.reading.as_mut() {
                let read = ready!(reading.as_mut().poll(cx));
                this.reading = None;
                this.take(read);
                continue;
            }
            if this.need_read {
                this.need_read = false;
                this.s.stall.progress();
                let s = &this.s;
                match s.st.log.read_cached(s.cursor, &s.patterns, READ_CHUNK) {
                    Some(batch) => this.take(Ok(batch)),
                    None => {
                        let log = s.st.log.clone();
                        let (cursor, patterns) = (s.cursor, s.patterns.clone());
                        this.reading = Some(Box::pin(async move {
                            log.read(cursor, &patterns, READ_CHUNK).await
                        }));
                    }
                }
                continue;
            }
            // Nothing to send: wait for a wake-up, a timer or the end.
            match this.batch.as_mut() {
                Some(window) => {
                    if window.as_mut().poll(cx).is_ready() {
                        this.batch = None;
                        this.need_read = true;
                        continue;
                    }
                }
                None => {
                    if this.hub.as_mut().poll(cx).is_ready() {
                        this.hub.set(this.s.sub.notified_owned());
                        if this.s.mode == SseMode::Close {
                            this.batch = Some(Box::pin(tokio::time::sleep(this.s.batch_window)));
                        } else {
                            this.need_read = true;
                        }
                        continue;
                    }
                }
            }
            if this.heartbeat.as_mut().poll(cx).is_ready() {
                this.s.out.push_back(ping());
                let next = Instant::now() + this.s.heartbeat_every;
                this.heartbeat.as_mut().reset(next);
                continue;
            }
            if let Poll::Ready(stop) = this.stop.as_mut().poll(cx) {
                this.s.out.push_back(Bytes::from_static(match stop {
                    Stop::Shutdown => b"event: surepush.shutdown\ndata: {\"reconnect\":true}\n\n",
                    Stop::Kicked => b"event: surepush.disconnected\ndata: {\"reconnect\":true}\n\n",
                }));
                this.s.done = true;
                continue;
            }
            if let Some((end, frame)) = this.ends.as_mut() {
                if end.as_mut().poll(cx).is_ready() {
                    if let Some(frame) = frame {
                        this.s.out.push_back(Bytes::from_static(frame));
                    }
                    this.s.done = true;
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}
