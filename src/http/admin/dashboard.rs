//! The dashboard. Its figures come from one snapshot (`Stats`), rendered into the page
//! and then pushed: while anyone subscribes to `surepush.admin/stats`, the server
//! publishes a snapshot there every `admin.stats_interval_ms`, and the page follows that
//! topic with `/surepush.js` (history for its chart comes from the same durable topic).

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Serialize;

use super::{bytes, group, html, require_session, AdminError, Chrome};
use crate::auth::{now_secs, Claims, Grants};
use crate::model::Topic;
use crate::server::AppState;
use crate::store::jobs::JobState;
use crate::store::NewEvent;

pub const STATS_TOPIC: &str = "surepush.admin/stats";
pub const STATS_TYPE: &str = "stats";
/// Snapshots shown by the chart (at the default 2 s interval: five minutes).
const HISTORY: usize = 150;
const STREAM_TOKEN_SECS: u64 = 900;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/").route(web::get().to(dashboard)))
        .service(web::resource("/admin/api/stats").route(web::get().to(stats_json)))
        .service(web::resource("/admin/api/stream-token").route(web::get().to(stream_token)));
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnCount {
    pub transport: String,
    pub http: String,
    pub count: u64,
}

impl ConnCount {
    pub fn transport_name(&self) -> &str {
        super::transport_name(&self.transport)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueRow {
    pub queue: String,
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub time_ms: u64,
    pub uptime_secs: u64,
    pub connections: Vec<ConnCount>,
    pub connections_total: u64,
    pub fallbacks: Vec<ReasonCount>,
    /// Events clients published and deliveries of them (the dashboard's own snapshots
    /// are not counted; their deliveries are estimated as one per watcher).
    pub published: u64,
    pub delivered: u64,
    pub queues: Vec<QueueRow>,
    pub storage_bytes: u64,
    /// Event segment files (retention frees disk a file at a time).
    pub storage_segments: u64,
    /// Free bytes on the data disk (None when it cannot be read).
    pub disk_free_bytes: Option<u64>,
    /// retention_max_disk_bytes cannot be met by deleting old events.
    pub budget_unmet: bool,
    pub head_id: String,
    pub retention_deleted: u64,
    pub retention_max_age_secs: u64,
    pub retention_max_events_per_topic: u64,
    pub retention_max_disk_bytes: u64,
    pub slow_consumer_disconnects: u64,
    pub lease_expiries: u64,
    pub subscribers: u64,
}

pub async fn snapshot(st: &AppState) -> Result<Stats, AdminError> {
    let log = st.log.clone();
    let storage_bytes = crate::store::blocking(move || Ok(log.size_on_disk())).await?;
    let disk_free_bytes = crate::store::space::available_bytes(&st.config.data_dir).ok();
    let mut budget_unmet = false;
    st.metrics.storage_bytes.set(storage_bytes as i64);
    let mut connections = Vec::new();
    let mut fallbacks = Vec::new();
    let (mut published, mut delivered) = (0u64, 0u64);
    let (mut retention_deleted, mut slow, mut expiries) = (0u64, 0u64, 0u64);
    for s in st.metrics.samples() {
        let v = s.value.max(0.0) as u64;
        match s.name.as_str() {
            "surepush_connections" if v > 0 => connections.push(ConnCount {
                transport: s.label("transport").unwrap_or("?").to_string(),
                http: s.label("http").unwrap_or("?").to_string(),
                count: v,
            }),
            "surepush_fallbacks_total" => fallbacks.push(ReasonCount {
                reason: s.label("reason").unwrap_or("?").to_string(),
                count: v,
            }),
            "surepush_events_published_total" => published = v,
            "surepush_events_delivered_total" => delivered += v,
            "surepush_retention_deleted_events_total" => retention_deleted = v,
            "surepush_slow_consumer_disconnects_total" => slow = v,
            "surepush_job_lease_expiries_total" => expiries = v,
            "surepush_storage_budget_unmet" => budget_unmet = v > 0,
            _ => {}
        }
    }
    connections.sort_by(|a, b| (&a.transport, &a.http).cmp(&(&b.transport, &b.http)));
    fallbacks.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    let queues = st
        .log
        .queues()
        .await?
        .into_iter()
        .map(|(queue, c)| {
            let a = c.as_array();
            let n = |state: JobState| {
                JobState::ALL
                    .iter()
                    .position(|s| *s == state)
                    .map_or(0, |i| a[i])
            };
            QueueRow {
                queue,
                queued: n(JobState::Queued),
                leased: n(JobState::Leased),
                succeeded: n(JobState::Succeeded),
                failed: n(JobState::Failed),
                dead: n(JobState::Dead),
            }
        })
        .collect();
    let storage = &st.config.storage;
    Ok(Stats {
        time_ms: crate::store::now_ms(),
        uptime_secs: st.started.elapsed().as_secs(),
        connections_total: connections.iter().map(|c| c.count).sum(),
        connections,
        fallbacks,
        published: published.saturating_sub(st.admin.internal_events.load(Ordering::Relaxed)),
        delivered: delivered.saturating_sub(st.admin.internal_deliveries.load(Ordering::Relaxed)),
        queues,
        storage_bytes,
        storage_segments: st.log.segment_count() as u64,
        disk_free_bytes,
        budget_unmet,
        head_id: st.log.id(st.log.head()).to_string(),
        retention_deleted,
        retention_max_age_secs: storage.retention_max_age_secs,
        retention_max_events_per_topic: storage.retention_max_events_per_topic,
        retention_max_disk_bytes: storage.retention_max_disk_bytes,
        slow_consumer_disconnects: slow,
        lease_expiries: expiries,
        subscribers: st.subscribers.len() as u64,
    })
}

/// Publishes a snapshot to `surepush.admin/stats` while someone follows it.
pub async fn stats_loop(st: AppState) {
    if !st.config.admin.enabled {
        return;
    }
    let Ok(topic) = Topic::parse(STATS_TOPIC) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(st.config.admin.stats_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if *st.shutdown.borrow() {
            return;
        }
        let watchers = st.subscribers.watchers(STATS_TOPIC);
        if watchers == 0 {
            continue;
        }
        let stats = match snapshot(&st).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard statistics unavailable");
                continue;
            }
        };
        let Ok(data_json) = serde_json::to_string(&stats) else {
            continue;
        };
        st.admin.internal_events.fetch_add(1, Ordering::Relaxed);
        st.admin
            .internal_deliveries
            .fetch_add(watchers as u64, Ordering::Relaxed);
        let event = NewEvent {
            topic: topic.clone(),
            kind: STATS_TYPE.to_string(),
            data_json,
            receipt: false,
        };
        if let Err(e) = st.log.publish(vec![event]).await {
            tracing::warn!(error = %e, "cannot publish dashboard statistics");
        }
    }
}

/// JSON text safe inside a `<script type="application/json">` element.
pub fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[derive(Template)]
#[template(path = "admin/dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
    stats: Stats,
    stats_json: String,
    history_json: String,
    storage: String,
    published: String,
    delivered: String,
    max_disk: String,
    disk_free: String,
}

async fn dashboard(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let stats = snapshot(&st).await?;
    let mut history: Vec<String> = st
        .log
        .topic_page(STATS_TOPIC, None, HISTORY)
        .await?
        .iter()
        .map(|e| String::from_utf8_lossy(&e.json()).into_owned())
        .collect();
    history.reverse();
    let stats_json =
        serde_json::to_string(&stats).map_err(|e| AdminError::Internal(e.to_string()))?;
    let page = DashboardPage {
        chrome: Chrome::new(&session, "dashboard"),
        storage: bytes(stats.storage_bytes),
        published: group(stats.published),
        delivered: group(stats.delivered),
        max_disk: bytes(stats.retention_max_disk_bytes),
        disk_free: stats
            .disk_free_bytes
            .map_or_else(|| "unknown".to_string(), bytes),
        stats_json: script_json(&stats_json),
        history_json: script_json(&format!("[{}]", history.join(","))),
        stats,
    };
    Ok(html(page.render()?))
}

async fn stats_json(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, AdminError> {
    require_session(&req, &st)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(snapshot(&st).await?))
}

/// A short-lived token that may only subscribe to the statistics topic, for the
/// dashboard's own push connection. `mode: "poll"` when this server cannot mint tokens
/// (RS256/ES256): the page then fetches `/admin/api/stats` instead.
async fn stream_token(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let body = if !st.auth.enabled() {
        serde_json::json!({"mode": "push", "token": null, "topic": STATS_TOPIC})
    } else {
        let now = now_secs();
        let claims = Claims {
            sub: format!("admin:{}", session.user),
            exp: now + STREAM_TOKEN_SECS,
            nbf: None,
            iat: Some(now),
            surepush: Grants {
                subscribe: vec![STATS_TOPIC.to_string()],
                ..Default::default()
            },
        };
        match st.auth.mint(&claims) {
            Ok(token) => serde_json::json!({
                "mode": "push",
                "token": token,
                "topic": STATS_TOPIC,
                "expires_in": STREAM_TOKEN_SECS,
            }),
            Err(_) => serde_json::json!({"mode": "poll", "token": null, "topic": STATS_TOPIC}),
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(body))
}
