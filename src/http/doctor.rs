//! The network doctor a person opens in their own browser (`GET /doctor`, no login):
//! it tries SSE streaming, SSE close mode and long polling through whatever sits between
//! that browser and this server, and says in plain words what works and what surepush's
//! client will use there.
//!
//! The probes live under the real push paths (`/v1/stream/probe`, `/v1/poll/probe`) so a
//! proxy configured per path treats them like real traffic. They touch no topic and no
//! log: each sends the canary at once and a probe event one second later (the stream
//! probe then stays open a while, as a real stream would), which is exactly what a
//! buffering proxy delays.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use bytes::Bytes;
use serde::Deserialize;

use super::{http_version, resource};
use crate::server::AppState;
use crate::store::now_ms;

/// When the probe event is sent after the canary.
const PROBE_DELAY: Duration = Duration::from_millis(1000);
/// How long the stream probe stays open after its probe event.
const STREAM_HOLD: Duration = Duration::from_millis(3000);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/doctor").route(web::get().to(page)))
        .service(resource("/v1/stream/probe").route(web::get().to(stream_probe)))
        .service(resource("/v1/poll/probe").route(web::get().to(poll_probe)));
}

#[derive(Template)]
#[template(path = "doctor.html")]
struct DoctorPage {
    css_url: String,
    js_url: String,
    server_version: &'static str,
}

async fn page() -> Result<HttpResponse, crate::error::ApiError> {
    let page = DoctorPage {
        css_url: super::assets::versioned("/admin/static/admin.css"),
        js_url: super::assets::versioned("/doctor.js"),
        server_version: env!("CARGO_PKG_VERSION"),
    };
    let body = page
        .render()
        .map_err(|e| crate::error::ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body))
}

#[derive(Deserialize)]
struct ProbeQuery {
    #[serde(default)]
    mode: String,
}

fn hello(transport: &str, http: &str) -> String {
    serde_json::json!({
        "probe": true,
        "transport": transport,
        "http": http,
        "server_ms": now_ms(),
    })
    .to_string()
}

async fn stream_probe(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<ProbeQuery>,
) -> HttpResponse {
    let close = q.mode == "close";
    let http = http_version(&req);
    let padding = st.config.push.padding_bytes;
    let mut head = String::with_capacity(padding + 256);
    if padding > 0 {
        head.push(':');
        head.extend(std::iter::repeat_n(' ', padding));
        head.push('\n');
    }
    head.push_str("retry: 60000\n\n");
    head.push_str(&format!(
        "event: surepush.hello\ndata: {}\n\n",
        hello(if close { "sse-close" } else { "sse" }, http)
    ));
    let steps: Vec<(Duration, Option<Bytes>)> = {
        let mut v = vec![
            (Duration::ZERO, Some(Bytes::from(head))),
            (
                PROBE_DELAY,
                None, // the probe event, built when sent (it carries the send time)
            ),
        ];
        if !close {
            v.push((STREAM_HOLD, Some(Bytes::from_static(b": end of probe\n\n"))));
        }
        v
    };
    let body = futures_util::stream::unfold(steps.into_iter(), |mut it| async move {
        let (wait, bytes) = it.next()?;
        tokio::time::sleep(wait).await;
        let bytes = bytes.unwrap_or_else(|| {
            Bytes::from(format!(
                "event: probe\ndata: {{\"sent_ms\":{}}}\n\n",
                now_ms()
            ))
        });
        Some((Ok::<_, Infallible>(bytes), it))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache, no-transform"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

async fn poll_probe(req: HttpRequest) -> HttpResponse {
    tokio::time::sleep(PROBE_DELAY).await;
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "probe": true,
            "http": http_version(&req),
            "sent_ms": now_ms(),
        }))
}
