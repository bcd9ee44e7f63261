//! Jobs: `POST /v1/jobs` answers 202 at once; workers lease, heartbeat, complete or
//! fail; the outcome reaches the requester as an event on its reply topic.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::body::read_limited;
use super::resource;
use crate::auth::{AuthError, Principal};
use crate::config::JobsConfig;
use crate::error::ApiError;
use crate::model::{Pattern, Topic};
use crate::server::AppState;
use crate::store::job_ops::{Backoff, Holder, JobOp, JobReply, NewJob};
use crate::store::jobs::{job_id, parse_job_id, valid_queue, JobRecord};
use crate::store::now_ms;
use crate::store::record::{minify_json, rfc3339};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/jobs").route(web::post().to(enqueue)))
        .service(resource("/v1/jobs/{id}").route(web::get().to(get_job)))
        .service(resource("/v1/jobs/{id}/heartbeat").route(web::post().to(heartbeat)))
        .service(resource("/v1/jobs/{id}/complete").route(web::post().to(complete)))
        .service(resource("/v1/jobs/{id}/fail").route(web::post().to(fail)))
        .service(resource("/v1/jobs/{id}/requeue").route(web::post().to(requeue)))
        .service(resource("/v1/jobs/{id}/discard").route(web::post().to(discard)))
        .service(resource("/v1/queues").route(web::get().to(list_queues)))
        .service(resource("/v1/queues/{queue}/lease").route(web::post().to(lease)))
        .service(resource("/v1/queues/{queue}/dead").route(web::get().to(dead_letters)));
}

/// The longest a job may be delayed.
const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;

/// Which claim a request needs on a queue.
#[derive(Clone, Copy)]
enum Right {
    Enqueue,
    Work,
}

fn allowed(list: &[String], queue: &str) -> bool {
    list.iter().any(|q| q == "*" || q == queue)
}

use super::auth::caller;

fn require(who: &Option<Principal>, queue: &str, right: Right) -> Result<(), ApiError> {
    let Some(p) = who else { return Ok(()) }; // auth disabled
    let ok = match right {
        Right::Enqueue => allowed(&p.jobs, queue),
        Right::Work => allowed(&p.work, queue),
    };
    if ok {
        Ok(())
    } else {
        let what = match right {
            Right::Enqueue => "enqueueing to",
            Right::Work => "working",
        };
        Err(AuthError::Forbidden(format!("{what} queue {queue}")).into())
    }
}

fn check_queue(q: &str) -> Result<(), ApiError> {
    if valid_queue(q) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_queue",
            format!("queue name {q:?}: 1-64 bytes of A-Z a-z 0-9 _ . ~ -"),
        ))
    }
}

/// The lease length a worker asked for (or the default), within the configured maximum.
fn lease_ms(requested: Option<u64>, cfg: &JobsConfig) -> Result<u64, ApiError> {
    let secs = requested.unwrap_or(cfg.lease_secs_default);
    if secs == 0 || secs > cfg.lease_secs_max {
        return Err(ApiError::unprocessable(
            "invalid_lease_secs",
            format!("lease_secs must be 1..={}", cfg.lease_secs_max),
        ));
    }
    Ok(secs * 1000)
}

/// Payloads and results share one size limit, as JSON text.
fn check_size(json: &str, limit: usize, code: &'static str, what: &str) -> Result<(), ApiError> {
    if json.len() > limit {
        return Err(ApiError::too_large(
            code,
            format!("{what} is {} bytes; the limit is {limit}", json.len()),
        ));
    }
    Ok(())
}

fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::unprocessable("invalid_body", format!("invalid request: {e}")),
        _ => ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")),
    }
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    parse_job_id(raw).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_job_id",
            format!("{raw:?} is not a job id (like \"j42\")"),
        )
    })
}

fn ms(v: Option<u64>) -> Value {
    v.map_or(Value::Null, |m| Value::String(rfc3339(m)))
}

fn raw_json(text: &Option<String>) -> Value {
    text.as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

fn view(j: &JobRecord) -> Value {
    json!({
        "job_id": job_id(j.seq),
        "queue": j.queue,
        "status": j.state.as_str(),
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "reply_topic": j.reply_topic,
        "created": rfc3339(j.created_ms),
        "updated": rfc3339(j.updated_ms),
        "run_at": rfc3339(j.run_at_ms),
        "lease_until": ms(j.lease_until_ms),
        "worker": j.worker,
        "finished": ms(j.finished_ms),
        "result": raw_json(&j.result),
        "error": j.last_error,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBody<'a> {
    queue: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    reply_topic: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    /// RFC 3339 time before which the job is not leased.
    #[serde(default)]
    run_at: Option<String>,
    /// Or: seconds from now.
    #[serde(default)]
    delay_secs: Option<u64>,
}

async fn enqueue(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &st)?;
    let cfg = &st.config.jobs;
    let body = read_limited(&req, payload, cfg.max_payload_bytes + 4096).await?;
    let b: EnqueueBody = serde_json::from_slice(&body).map_err(json_error)?;
    check_queue(&b.queue)?;
    require(&who, &b.queue, Right::Enqueue)?;
    let payload = b
        .payload
        .map_or_else(|| "null".to_string(), |r| minify_json(r.get()));
    check_size(
        &payload,
        cfg.max_payload_bytes,
        "payload_too_large",
        "payload",
    )?;
    crate::json_check::check(&payload).map_err(|e| ApiError::unreadable_json(e, "payload"))?;
    let reply_topic = match &b.reply_topic {
        Some(t) => {
            let topic = Topic::parse(t).map_err(|e| {
                ApiError::unprocessable("invalid_topic", format!("reply_topic: {e}"))
            })?;
            if crate::model::is_reserved_topic(topic.as_str()) {
                return Err(ApiError::unprocessable(
                    "reserved_topic",
                    format!("reply_topic {topic} is reserved for the server's own events"),
                ));
            }
            // Results go only where the requester may listen (or publish).
            if let Some(p) = &who {
                let exact = Pattern::Exact(topic.to_string());
                if !p.subscribe.iter().any(|g| g.covers(&exact)) && !p.may_publish(&topic) {
                    return Err(AuthError::Forbidden(format!("replying to {topic}")).into());
                }
            }
            Some(topic)
        }
        None => None,
    };
    let max_attempts = b.max_attempts.unwrap_or(cfg.default_max_attempts);
    if max_attempts == 0 || max_attempts > cfg.max_attempts_limit {
        return Err(ApiError::unprocessable(
            "invalid_max_attempts",
            format!("max_attempts must be 1..={}", cfg.max_attempts_limit),
        ));
    }
    let run_at_ms = match (&b.run_at, b.delay_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "invalid_run_at",
                "give run_at or delay_secs, not both",
            ))
        }
        (Some(t), None) => {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| ApiError::unprocessable("invalid_run_at", format!("run_at: {e}")))?;
            Some((at.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        }
        (None, Some(d)) => Some(now_ms().saturating_add(d.saturating_mul(1000))),
        (None, None) => None,
    };
    if run_at_ms.is_some_and(|at| at > now_ms().saturating_add(MAX_DELAY_MS)) {
        return Err(ApiError::unprocessable(
            "invalid_run_at",
            "a job may be delayed by at most 365 days",
        ));
    }
    let idempotency_key = match req.headers().get("Idempotency-Key") {
        Some(v) => {
            let k = v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be text")
            })?;
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1-200 characters",
                ));
            }
            Some(k.to_string())
        }
        None => None,
    };
    let reply = st
        .log
        .job(JobOp::Enqueue(NewJob {
            queue: b.queue,
            payload,
            reply_topic,
            max_attempts,
            run_at_ms,
            idempotency_key,
            owner: who.map(|p| p.sub),
        }))
        .await?;
    let JobReply::Enqueued { job, created } = reply else {
        return Err(ApiError::Internal("unexpected reply to enqueue".into()));
    };
    Ok(HttpResponse::Accepted()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Location", format!("/v1/jobs/{}", job_id(job.seq))))
        .json(json!({
            "job_id": job_id(job.seq),
            "status": job.state.as_str(),
            "duplicate": !created,
        })))
}

/// Loads a job and checks the caller may see it (its owner, or a worker of its queue).
async fn visible_job(
    req: &HttpRequest,
    st: &AppState,
    raw: &str,
    right: Option<Right>,
) -> Result<(JobRecord, Option<Principal>), ApiError> {
    let who = caller(req, st)?;
    let seq = parse_id(raw)?;
    let job = st
        .log
        .get_job(seq)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {raw}")))?;
    match right {
        Some(r) => require(&who, &job.queue, r)?,
        None => {
            if let Some(p) = &who {
                // Its owner and the queue's workers; not every enqueuer of the queue.
                let mine = job.owner.as_deref() == Some(p.sub.as_str());
                if !mine && !allowed(&p.work, &job.queue) {
                    return Err(AuthError::Forbidden(format!("reading job {raw}")).into());
                }
            }
        }
    }
    Ok((job, who))
}

async fn get_job(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (job, _) = visible_job(&req, &st, &path, None).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(view(&job)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    worker: String,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    lease_secs: Option<u64>,
    #[serde(default)]
    wait_secs: Option<u64>,
}

async fn lease(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let queue = path.into_inner();
    check_queue(&queue)?;
    let who = caller(&req, &st)?;
    require(&who, &queue, Right::Work)?;
    let cfg = &st.config.jobs;
    let body = read_limited(&req, payload, 4096).await?;
    let b: LeaseBody = serde_json::from_slice(&body).map_err(json_error)?;
    if b.worker.is_empty() || b.worker.len() > 128 {
        return Err(ApiError::unprocessable(
            "invalid_worker",
            "worker must be 1-128 characters",
        ));
    }
    let max = b.max.unwrap_or(1);
    if max == 0 || max > cfg.max_lease_batch {
        return Err(ApiError::unprocessable(
            "invalid_max",
            format!("max must be 1..={}", cfg.max_lease_batch),
        ));
    }
    let lease_ms = lease_ms(b.lease_secs, cfg)?;
    let wait = b.wait_secs.unwrap_or(0);
    if wait > cfg.wait_secs_max {
        return Err(ApiError::unprocessable(
            "invalid_wait_secs",
            format!("wait_secs must be 0..={}", cfg.wait_secs_max),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    let notify = st.log.queue_notify(&queue);
    let mut shutdown = st.shutdown.clone();
    loop {
        // Registered before looking, so a job enqueued in between wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let reply = st
            .log
            .job(JobOp::Lease {
                queue: queue.clone(),
                worker: b.worker.clone(),
                subject: who.as_ref().map(|p| p.sub.clone()),
                max,
                lease_ms,
            })
            .await?;
        let JobReply::Leased { jobs, next_due_ms } = reply else {
            return Err(ApiError::Internal("unexpected reply to lease".into()));
        };
        let now = Instant::now();
        if !jobs.is_empty() || now >= deadline || *shutdown.borrow() {
            let list: Vec<Value> = jobs
                .iter()
                .map(|j| {
                    json!({
                        "job_id": job_id(j.seq),
                        "queue": j.queue,
                        "payload": raw_json(&Some(j.payload.clone())),
                        "attempt": j.attempts,
                        "max_attempts": j.max_attempts,
                        "lease_until": ms(j.lease_until_ms),
                    })
                })
                .collect();
            return Ok(HttpResponse::Ok()
                .insert_header(("Cache-Control", "no-store"))
                .json(json!({ "jobs": list })));
        }
        let mut wake = deadline;
        if let Some(due) = next_due_ms {
            let in_ms = due.saturating_sub(now_ms());
            wake = wake.min(now + Duration::from_millis(in_ms));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.wait_for(|v| *v) => {}
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HolderBody<'a> {
    #[serde(default)]
    worker: Option<String>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    lease_secs: Option<u64>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retry: Option<bool>,
}

async fn holder_body(
    req: &HttpRequest,
    payload: web::Payload,
    st: &AppState,
) -> Result<web::Bytes, ApiError> {
    read_limited(req, payload, st.config.jobs.max_payload_bytes + 4096).await
}

fn parse_holder(body: &[u8]) -> Result<HolderBody<'_>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(HolderBody::default());
    }
    serde_json::from_slice(body).map_err(json_error)
}

/// Marks an answer to a lease action that named neither `worker` nor `attempt`: still
/// accepted from the token that took the lease, refused from any other (README, Jobs).
fn deprecated_if(mut resp: HttpResponse, anonymous: bool) -> HttpResponse {
    if anonymous {
        let h = resp.headers_mut();
        h.insert(
            actix_web::http::header::HeaderName::from_static("deprecation"),
            actix_web::http::header::HeaderValue::from_static("true"),
        );
        h.insert(
            actix_web::http::header::WARNING,
            actix_web::http::header::HeaderValue::from_static(
                "299 surepush \"send worker and attempt as the lease gave them; without them only the leasing token is accepted\"",
            ),
        );
    }
    resp
}

fn updated(reply: JobReply) -> Result<HttpResponse, ApiError> {
    match reply {
        JobReply::Updated(job) => Ok(HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(view(&job))),
        JobReply::Discarded => Ok(HttpResponse::Ok().json(json!({"status": "discarded"}))),
        _ => Err(ApiError::Internal("unexpected reply".into())),
    }
}

async fn heartbeat(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (job, who) = visible_job(&req, &st, &path, Some(Right::Work)).await?;
    let body = holder_body(&req, payload, &st).await?;
    let b = parse_holder(&body)?;
    let anonymous = b.worker.is_none() && b.attempt.is_none();
    let lease_ms = lease_ms(b.lease_secs, &st.config.jobs)?;
    let reply = st
        .log
        .job(JobOp::Heartbeat {
            seq: job.seq,
            holder: Holder {
                worker: b.worker,
                attempt: b.attempt,
                subject: who.as_ref().map(|p| p.sub.clone()),
            },
            lease_ms,
        })
        .await?;
    updated(reply).map(|r| deprecated_if(r, anonymous))
}

async fn complete(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (job, who) = visible_job(&req, &st, &path, Some(Right::Work)).await?;
    let body = holder_body(&req, payload, &st).await?;
    let b = parse_holder(&body)?;
    let anonymous = b.worker.is_none() && b.attempt.is_none();
    let result = b
        .result
        .map_or_else(|| "null".to_string(), |r| minify_json(r.get()));
    check_size(
        &result,
        st.config.jobs.max_payload_bytes,
        "result_too_large",
        "result",
    )?;
    crate::json_check::check(&result).map_err(|e| ApiError::unreadable_json(e, "result"))?;
    let reply = st
        .log
        .job(JobOp::Complete {
            seq: job.seq,
            holder: Holder {
                worker: b.worker,
                attempt: b.attempt,
                subject: who.as_ref().map(|p| p.sub.clone()),
            },
            result,
        })
        .await?;
    updated(reply).map(|r| deprecated_if(r, anonymous))
}

fn backoff(st: &AppState) -> Backoff {
    Backoff {
        base_ms: st.config.jobs.backoff_base_ms,
        max_ms: st.config.jobs.backoff_max_ms,
    }
}

async fn fail(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (job, who) = visible_job(&req, &st, &path, Some(Right::Work)).await?;
    let body = holder_body(&req, payload, &st).await?;
    let b = parse_holder(&body)?;
    let anonymous = b.worker.is_none() && b.attempt.is_none();
    let mut error = b.error.unwrap_or_else(|| "failed".to_string());
    if error.len() > 16 * 1024 {
        let mut cut = 16 * 1024;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    let reply = st
        .log
        .job(JobOp::Fail {
            seq: job.seq,
            holder: Holder {
                worker: b.worker,
                attempt: b.attempt,
                subject: who.as_ref().map(|p| p.sub.clone()),
            },
            error,
            retry: b.retry.unwrap_or(true),
            backoff: backoff(&st),
        })
        .await?;
    updated(reply).map(|r| deprecated_if(r, anonymous))
}

async fn requeue(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    dead_letter_action(&req, &path, &st, "requeued", |seq| JobOp::Requeue { seq }).await
}

async fn discard(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    dead_letter_action(&req, &path, &st, "discarded", |seq| JobOp::Discard { seq }).await
}

/// Requeue or discard a dead (or failed) job: a worker's right, audit-logged.
async fn dead_letter_action(
    req: &HttpRequest,
    raw_id: &str,
    st: &AppState,
    done: &str,
    op: impl FnOnce(u64) -> JobOp,
) -> Result<HttpResponse, ApiError> {
    let (job, who) = visible_job(req, st, raw_id, Some(Right::Work)).await?;
    let reply = st.log.job(op(job.seq)).await?;
    tracing::info!(
        job = %job_id(job.seq),
        queue = %job.queue,
        by = who.as_ref().map_or("-", |p| p.sub.as_str()),
        "{done} a {} job",
        job.state.as_str()
    );
    updated(reply)
}

async fn list_queues(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &st)?;
    let queues = st.log.queues().await?;
    let list: Vec<Value> = queues
        .into_iter()
        .filter(|(q, _)| match &who {
            Some(p) => allowed(&p.jobs, q) || allowed(&p.work, q),
            None => true,
        })
        .map(|(q, c)| {
            json!({"queue": q, "queued": c.queued, "leased": c.leased,
                   "succeeded": c.succeeded, "failed": c.failed, "dead": c.dead})
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "queues": list })))
}

async fn dead_letters(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let queue = path.into_inner();
    check_queue(&queue)?;
    let who = caller(&req, &st)?;
    require(&who, &queue, Right::Work)?;
    let jobs = st.log.dead_letters(&queue, 1000).await?;
    let list: Vec<Value> = jobs.iter().map(view).collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "jobs": list })))
}
