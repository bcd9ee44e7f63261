//! Liveness, readiness and metrics.

use actix_web::{web, HttpResponse};

use super::resource;
use crate::error::ApiError;
use crate::server::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/readyz").route(web::get().to(readyz)))
        .service(resource("/metrics").route(web::get().to(metrics)));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({"status": "ok"}))
}

/// Ready when the database accepts and flushes a write (the probe the health task,
/// src/health.rs, runs, with the same timeout) and the data disk is above its free-space
/// mark (below it, new events are refused with 507 until space is freed).
async fn readyz(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    crate::health::probe(&st.log).await?;
    // storage works, but new events would be refused: not ready for them
    if let Some(low) = st.log.low_disk() {
        return Err(low.into());
    }
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({"status": "ready", "head": st.log.id(st.log.head()).to_string()})))
}

async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    let log = st.log.clone();
    let size = tokio::task::spawn_blocking(move || log.size_on_disk())
        .await
        .unwrap_or(0);
    st.metrics.storage_bytes.set(size as i64);
    st.metrics
        .storage_segments
        .set(st.log.segment_count() as i64);
    st.metrics.index_entries.set(st.log.index_entries() as i64);
    if let Ok(queues) = st.log.queues().await {
        use crate::metrics::QueueStateLabels;
        use crate::store::jobs::JobState;
        for (queue, counts) in queues {
            for (state, n) in JobState::ALL.iter().zip(counts.as_array()) {
                st.metrics
                    .queue_jobs
                    .get_or_create(&QueueStateLabels {
                        queue: queue.clone(),
                        state: state.as_str(),
                    })
                    .set(n as i64);
            }
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(st.metrics.render())
}
