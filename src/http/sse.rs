//! `GET /v1/stream`: Server-Sent Events, `mode=stream` (stays open) or `mode=close`
//! (ends after a batch so buffering proxies must deliver it; EventSource reconnects with
//! Last-Event-ID). HTTP/1.0 requests get close mode without chunked encoding.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::params::{self, SseMode};
use super::{http_version, resource};
use crate::auth::now_secs;
use crate::error::ApiError;
use crate::hub::Subscription;
use crate::metrics::{ConnectionGuard, ReasonLabel};
use crate::model::Pattern;
use crate::server::{AppState, ConnInfo};
use crate::stall::StallGuard;
use crate::store::{now_ms, record::rfc3339};
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
    heartbeat: Interval,
    /// Close mode: when the response ends even without events.
    deadline: Option<Instant>,
    /// When the subscriber's token expires.
    token_ends: Option<Instant>,
    batch_window: Duration,
    done: bool,
    transport: &'static str,
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
    let registered = st.subscribers.register(SubscriberInfo {
        peer: req.peer_addr(),
        subject: who.as_ref().map(|w| w.sub.clone()),
        transport,
        http,
        topics: p.patterns.iter().map(|p| p.to_string()).collect(),
        fallback: p.fallback.clone(),
        since_ms: now_ms(),
    });
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
    let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let timeout = Duration::from_secs(p.timeout.unwrap_or(cfg.poll_timeout_default_secs));
    let fd = req.conn_data::<ConnInfo>().map(|c| c.fd);
    let stall_after = hb + Duration::from_secs(cfg.slow_consumer_timeout_secs);
    let state = SseState {
        patterns: p.patterns,
        sub,
        cursor: resume.cursor,
        mode,
        out,
        heartbeat,
        deadline: (mode == SseMode::Close).then(|| Instant::now() + timeout),
        token_ends,
        batch_window: Duration::from_millis(cfg.batch_window_ms),
        done: false,
        transport,
        untyped: p.untyped,
        stall: st.stalls.register(fd, stall_after),
        registered,
        _conn: ConnectionGuard::new(&st.metrics, transport, http),
        st,
    };
    let body = futures_util::stream::unfold(state, next_chunk);
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

/// The next piece of the response, or None when it ends.
async fn next_chunk(mut s: SseState) -> Option<(Result<Bytes, Infallible>, SseState)> {
    loop {
        if let Some(b) = s.out.pop_front() {
            s.stall.progress();
            return Some((Ok(b), s));
        }
        if s.done {
            return None;
        }
        s.stall.progress();
        match s.st.log.read(s.cursor, &s.patterns, READ_CHUNK).await {
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
                    s.st.metrics.delivered(s.transport, n);
                    s.registered.delivered(n);
                    if s.mode == SseMode::Close && s.cursor >= s.st.log.head() {
                        s.done = true;
                    }
                    continue;
                }
                if s.cursor < s.st.log.head() {
                    continue; // scanned part of the log without a match: keep going
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream ends: cannot read the log");
                s.done = true;
                continue;
            }
        }
        let mut shutdown = s.st.shutdown.clone();
        let deadline = s.deadline;
        let token_ends = s.token_ends;
        tokio::select! {
            _ = s.sub.notified() => {
                if s.mode == SseMode::Close {
                    tokio::time::sleep(s.batch_window).await;
                }
            }
            _ = s.heartbeat.tick() => s.out.push_back(ping()),
            _ = shutdown.wait_for(|v| *v) => {
                s.out.push_back(Bytes::from_static(
                    b"event: surepush.shutdown\ndata: {\"reconnect\":true}\n\n",
                ));
                s.done = true;
            }
            _ = sleep_until_opt(deadline) => s.done = true,
            _ = s.registered.kicked() => {
                s.out.push_back(Bytes::from_static(
                    b"event: surepush.disconnected\ndata: {\"reconnect\":true}\n\n",
                ));
                s.done = true;
            }
            _ = sleep_until_opt(token_ends) => {
                s.out.push_back(Bytes::from_static(
                    b"event: surepush.token_expired\ndata: {\"renew\":true}\n\n",
                ));
                s.done = true;
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
