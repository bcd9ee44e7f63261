//! Liveness, readiness and metrics.

use std::time::Duration;

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

/// Ready when the database accepts and flushes a write.
async fn readyz(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match tokio::time::timeout(Duration::from_secs(5), st.log.probe()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({"status": "ready", "head": st.log.id(st.log.head()).to_string()}))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Unavailable {
            code: "storage_slow",
            message: "the database did not complete a write within 5 s".into(),
            retry_after_secs: 5,
        }),
    }
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
