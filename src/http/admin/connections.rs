//! Connections: every open SSE stream and waiting long poll, and a button to end one
//! (its client reconnects and resumes from its last id, so nothing is lost).

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::{ago, group, html, require_form, require_session, see_other, when, AdminError, Chrome};
use crate::server::AppState;

const SHOWN: usize = 500;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/connections").route(web::get().to(list)))
        .service(
            web::resource("/admin/connections/{id}/disconnect").route(web::post().to(disconnect)),
        );
}

pub struct ConnRow {
    pub id: u64,
    pub peer: String,
    pub subject: String,
    pub transport: &'static str,
    pub http: &'static str,
    pub topics: String,
    pub since: String,
    pub age: String,
    pub delivered: String,
    pub fallback: String,
}

#[derive(Template)]
#[template(path = "admin/connections.html")]
struct ConnectionsPage {
    chrome: Chrome,
    rows: Vec<ConnRow>,
    total: usize,
    shown: usize,
    notice: Option<String>,
}

#[derive(Deserialize)]
struct Notice {
    #[serde(default)]
    ended: Option<u64>,
    #[serde(default)]
    gone: Option<u64>,
}

async fn list(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<Notice>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let (entries, total) = st.subscribers.list(SHOWN);
    let now = crate::store::now_ms();
    let rows: Vec<ConnRow> = entries
        .iter()
        .map(|e| ConnRow {
            id: e.id,
            peer: e
                .info
                .client
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            subject: e
                .info
                .subject
                .clone()
                .unwrap_or_else(|| "(no token)".into()),
            transport: super::transport_name(e.info.transport),
            http: e.info.http,
            topics: e.info.topics.join(" "),
            since: when(e.info.since_ms),
            age: ago(now.saturating_sub(e.info.since_ms) / 1000),
            delivered: group(e.delivered()),
            fallback: e.info.fallback.clone().unwrap_or_default(),
        })
        .collect();
    let notice = match (q.ended, q.gone) {
        (Some(id), _) => Some(format!(
            "Connection {id} was ended. Its client reconnects and resumes from its last event."
        )),
        (_, Some(id)) => Some(format!("Connection {id} had already ended.")),
        _ => None,
    };
    let page = ConnectionsPage {
        chrome: Chrome::new(&session, "connections"),
        shown: rows.len(),
        rows,
        total,
        notice,
    };
    Ok(html(page.render()?))
}

async fn disconnect(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<super::CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    let session = require_form(&req, &st, &form.csrf)?;
    let id: u64 = path
        .parse()
        .map_err(|_| AdminError::BadRequest(format!("{path:?} is not a connection id")))?;
    if st.subscribers.disconnect(id) {
        tracing::info!(target: "audit", user = %session.user, connection = id, "admin ended a connection");
        Ok(see_other(&format!("/admin/connections?ended={id}")))
    } else {
        Ok(see_other(&format!("/admin/connections?gone={id}")))
    }
}
