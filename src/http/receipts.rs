//! Delivery receipts over HTTP: subscribers' clients acknowledge the events that asked for
//! receipts (`POST /v1/receipts`), publishers and admins read who got an event and who
//! acknowledged it (`GET /v1/events/{id}/receipts`); fan-out marks deliveries
//! (`mark_delivered`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::body::read_limited;
use super::resource;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::model::{EventId, Pattern, Topic};
use crate::server::AppState;
use crate::store::record::rfc3339;
use crate::store::EncodedEvent;

/// The subject receipts name for a subscriber without a token (auth off, public topics).
pub const ANONYMOUS: &str = "anonymous";

/// Ids one acknowledgement may carry.
pub const MAX_ACK_IDS: usize = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/receipts")
            .route(web::post().to(acknowledge))
            .route(web::get().to(of_subject)),
    )
    .service(resource("/v1/events/{id}/receipts").route(web::get().to(of_event)));
}

/// Marks `events` delivered to `subject` over `transport`, if any event asks for receipts
/// (one atomic load when none does).
pub fn mark_delivered<'a>(
    st: &AppState,
    events: impl IntoIterator<Item = &'a std::sync::Arc<EncodedEvent>>,
    subject: Option<&str>,
    transport: &str,
) {
    let receipts = st.log.receipts();
    if receipts.any() {
        receipts.delivered(
            events.into_iter().map(|e| e.seq),
            subject.unwrap_or(ANONYMOUS),
            transport,
        );
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    ids: Vec<String>,
}

fn seq_of(st: &AppState, id: &str) -> Result<u64, ApiError> {
    let id =
        EventId::parse(id).map_err(|e| ApiError::unprocessable("invalid_id", format!("{e}")))?;
    if id.epoch != st.log.epoch() {
        return Err(ApiError::NotFound(format!(
            "event {id} (it is from another database)"
        )));
    }
    Ok(id.seq)
}

/// `{"ids": ["5-1a2b3c4d", ...]}`: the caller's client handed these events to the app.
/// Answers the ids that asked for receipts; they are durable when answered.
async fn acknowledge(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = super::auth::caller(&req, &st)?;
    let body = read_limited(&req, payload, st.config.limits.max_body_bytes).await?;
    let ack: Ack = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("body must be {{\"ids\": [\"<event id>\", ...]}}: {e}"),
        )
    })?;
    if ack.ids.len() > MAX_ACK_IDS {
        return Err(ApiError::too_large(
            "too_many_ids",
            format!(
                "{} ids; one acknowledgement carries at most {MAX_ACK_IDS}",
                ack.ids.len()
            ),
        ));
    }
    let mut seqs = Vec::with_capacity(ack.ids.len());
    let receipts = st.log.receipts();
    for id in &ack.ids {
        let parsed = EventId::parse(id)
            .map_err(|e| ApiError::unprocessable("invalid_id", format!("{e}")))?;
        if parsed.epoch != st.log.epoch() {
            continue; // another database's event (a client from before a restore): nothing to mark
        }
        let seq = parsed.seq;
        // only what the caller may receive can be acknowledged by it
        if let Some(topic) = receipts.topic_of(seq) {
            let pattern = Pattern::parse(&topic)
                .map_err(|e| ApiError::Internal(format!("stored topic {topic:?}: {e}")))?;
            st.auth.authorize_subscribe(who.as_ref(), &[pattern])?;
            seqs.push(seq);
        }
    }
    let subject = subject_of(who.as_ref()).to_string();
    let known = st.log.acknowledge(seqs, subject).await?;
    let ids: Vec<String> = known.iter().map(|s| st.log.id(*s).to_string()).collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "acknowledged": ids })))
}

#[derive(Deserialize)]
struct SubjectQuery {
    subject: Option<String>,
    limit: Option<usize>,
}

/// Most events one subject query answers.
const MAX_SUBJECT_ROWS: usize = 1000;

/// `?subject=alice&limit=100`: what that subject got and acknowledged, newest first.
/// A subject reads its own (the default); admins read anyone's.
async fn of_subject(
    req: HttpRequest,
    q: web::Query<SubjectQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = super::auth::caller(&req, &st)?;
    let own = subject_of(who.as_ref()).to_string();
    let subject = q.subject.clone().unwrap_or_else(|| own.clone());
    if st.auth.enabled() && subject != own && !who.as_ref().is_some_and(|w| w.admin) {
        return Err(ApiError::Forbidden {
            code: "forbidden",
            message: format!("only admins read the receipts of another subject ({subject})"),
        });
    }
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_SUBJECT_ROWS);
    let log = st.log.clone();
    let who_for = subject.clone();
    let rows = crate::store::blocking(move || log.receipts().of_subject(&who_for, limit)).await?;
    let events: Vec<serde_json::Value> = rows
        .iter()
        .map(|(seq, topic, m)| {
            serde_json::json!({
                "id": st.log.id(*seq).to_string(),
                "topic": topic,
                "delivered_at": m.delivered_ms.map(rfc3339),
                "transport": m.transport,
                "acknowledged_at": m.acknowledged_ms.map(rfc3339),
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "subject": subject, "events": events })))
}

fn subject_of(who: Option<&Principal>) -> &str {
    who.map_or(ANONYMOUS, |w| w.sub.as_str())
}

/// Who got the event and who acknowledged it, per token subject. For publishers of its
/// topic and admins.
#[derive(Deserialize)]
struct WaitQuery {
    /// Answer once at least this many subjects acknowledged (or at `timeout`).
    acknowledged: Option<usize>,
    /// Seconds to wait for that (default and maximum: `push.poll_timeout_*`).
    timeout: Option<u64>,
}

async fn of_event(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<WaitQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = super::auth::principal(&req, &st)?;
    let raw = path.into_inner();
    let seq = seq_of(&st, &raw)?;
    let not_asked = || {
        ApiError::NotFound(format!(
            "receipts of event {raw}: it did not ask for receipts (publish it with \"receipt\": true), or retention removed it"
        ))
    };
    if st.auth.enabled() && who.is_none() {
        return Err(crate::auth::AuthError::Missing.into());
    }
    let topic = st.log.receipts().topic_of(seq).ok_or_else(not_asked)?;
    if let Some(who) = &who {
        let may = who.admin || Topic::parse(&topic).is_ok_and(|t| who.may_publish(&t));
        if !may {
            return Err(ApiError::Forbidden {
                code: "forbidden",
                message: format!(
                    "the receipts of event {raw} are for publishers of its topic and admins"
                ),
            });
        }
    }
    // `?acknowledged=N`: a backend waits (like a long poll) until N subjects confirmed
    let cfg = &st.config.push;
    let want = q.acknowledged.unwrap_or(0);
    let wait = std::time::Duration::from_secs(
        q.timeout
            .unwrap_or(cfg.poll_timeout_default_secs)
            .min(cfg.poll_timeout_max_secs),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut shutdown = st.shutdown.clone();
    let found = loop {
        let notified = st.log.receipts().acknowledged().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let log = st.log.clone();
        let found = crate::store::blocking(move || log.receipts().of_event(seq))
            .await?
            .ok_or_else(not_asked)?;
        let acked = found
            .marks
            .iter()
            .filter(|(_, m)| m.acknowledged_ms.is_some())
            .count();
        if acked >= want || tokio::time::Instant::now() >= deadline {
            break found;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.wait_for(|v| *v) => break found,
        }
    };
    let rows: Vec<serde_json::Value> = found
        .marks
        .iter()
        .map(|(subject, m)| {
            serde_json::json!({
                "subject": subject,
                "delivered_at": m.delivered_ms.map(rfc3339),
                "transport": m.transport,
                "acknowledged_at": m.acknowledged_ms.map(rfc3339),
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({
            "id": st.log.id(seq).to_string(),
            "topic": found.topic,
            "delivered": found.marks.iter().filter(|(_, m)| m.delivered_ms.is_some()).count(),
            "acknowledged": found.marks.iter().filter(|(_, m)| m.acknowledged_ms.is_some()).count(),
            "receipts": rows,
        })))
}
