//! `GET /v1/poll` (long polling) and `GET /v1/events` (polling): complete JSON responses
//! with Content-Length, which every proxy passes on at once.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::time::Instant;

use super::params;
use super::{http_version, resource};
use crate::error::ApiError;
use crate::metrics::{ConnectionGuard, ReasonLabel};
use crate::server::AppState;
use crate::store::EncodedEvent;
use crate::subscribers::SubscriberInfo;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/poll").route(web::get().to(long_poll)))
        .service(resource("/v1/events").route(web::get().to(poll)));
}

/// `{"events":[...],"last_id":"...","reset":false}`, assembled from the events' stored
/// JSON without copying it.
fn events_response(events: &[Arc<EncodedEvent>], last_id: String, reset: bool) -> HttpResponse {
    let mut chunks: Vec<Bytes> = Vec::with_capacity(events.len() * 2 + 2);
    chunks.push(Bytes::from_static(b"{\"events\":["));
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            chunks.push(Bytes::from_static(b","));
        }
        chunks.push(e.json());
    }
    chunks.push(Bytes::from(format!(
        "],\"last_id\":\"{last_id}\",\"reset\":{reset}}}"
    )));
    let len: usize = chunks.iter().map(Bytes::len).sum();
    let stream =
        futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(SizedStream::new(len as u64, stream))
}

fn count_fallback(st: &AppState, fallback: Option<String>) {
    if let Some(reason) = fallback {
        st.metrics
            .fallbacks
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

async fn long_poll(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let cfg = &st.config.push;
    let p = params::parse(&req, cfg)?;
    let who = super::auth::principal(&req, &st)?;
    st.auth.authorize_subscribe(who.as_ref(), &p.patterns)?;
    let http = http_version(&req);
    let _conn = ConnectionGuard::new(&st.metrics, "longpoll", http);
    let registered = st.subscribers.register(
        SubscriberInfo {
            client: super::client_ip::client_ip(&req, &st),
            subject: who.as_ref().map(|w| w.sub.clone()),
            transport: "longpoll",
            http,
            topics: p.patterns.iter().map(|p| p.to_string()).collect(),
            fallback: p.fallback.clone(),
            since_ms: crate::store::now_ms(),
        },
        st.subscription_caps(),
    )?;
    count_fallback(&st, p.fallback);
    let sub = st.hub.subscribe(&p.patterns);
    let resume = st.log.resume(p.since, &p.patterns).await?;
    let timeout = Duration::from_secs(p.timeout.unwrap_or(cfg.poll_timeout_default_secs));
    let deadline = Instant::now() + timeout;
    let mut cursor = resume.cursor;
    let mut shutdown = st.shutdown.clone();
    loop {
        let batch = st.log.read(cursor, &p.patterns, p.limit).await?;
        cursor = batch.scanned_to;
        if !batch.events.is_empty() {
            st.metrics.delivered("longpoll", batch.events.len());
            registered.delivered(batch.events.len());
            super::receipts::mark_delivered(
                &st,
                &batch.events,
                who.as_ref().map(|w| w.sub.as_str()),
                "longpoll",
            );
            return Ok(events_response(
                &batch.events,
                st.log.id(cursor).to_string(),
                resume.reset,
            ));
        }
        if cursor < st.log.head() {
            continue;
        }
        tokio::select! {
            _ = sub.notified() => {
                tokio::time::sleep(Duration::from_millis(cfg.batch_window_ms)).await;
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = shutdown.wait_for(|v| *v) => break,
            _ = registered.kicked() => break,
        }
    }
    Ok(events_response(
        &[],
        st.log.id(cursor).to_string(),
        resume.reset,
    ))
}

async fn poll(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = params::parse(&req, &st.config.push)?;
    let who = super::auth::principal(&req, &st)?;
    st.auth.authorize_subscribe(who.as_ref(), &p.patterns)?;
    let _conn = ConnectionGuard::new(&st.metrics, "poll", http_version(&req));
    count_fallback(&st, p.fallback);
    let resume = st.log.resume(p.since, &p.patterns).await?;
    let mut cursor = resume.cursor;
    // A scan may stop at its budget without a match; keep going up to the head.
    loop {
        let batch = st.log.read(cursor, &p.patterns, p.limit).await?;
        cursor = batch.scanned_to;
        if !batch.events.is_empty() || cursor >= st.log.head() {
            st.metrics.delivered("poll", batch.events.len());
            super::receipts::mark_delivered(
                &st,
                &batch.events,
                who.as_ref().map(|w| w.sub.as_str()),
                "poll",
            );
            return Ok(events_response(
                &batch.events,
                st.log.id(cursor).to_string(),
                resume.reset,
            ));
        }
    }
}
