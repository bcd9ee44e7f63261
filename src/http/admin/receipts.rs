//! One event's delivery receipts: who got it (when, over which transport) and who has not
//! acknowledged it yet. Linked from the topic page's rows of events that asked.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::{html, require_session, AdminError, Chrome};
use crate::model::EventId;
use crate::server::AppState;
use crate::store::receipts::EventReceipts;
use crate::store::record::rfc3339;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/receipts").route(web::get().to(page)));
}

/// The link to an event's receipts page.
pub fn link(id: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("id", id)
        .finish();
    format!("/admin/receipts?{q}")
}

/// "delivered to 3, acknowledged by 2" for a topic page row.
pub fn summary(r: &EventReceipts) -> String {
    let delivered = r
        .marks
        .iter()
        .filter(|(_, m)| m.delivered_ms.is_some())
        .count();
    let acknowledged = r
        .marks
        .iter()
        .filter(|(_, m)| m.acknowledged_ms.is_some())
        .count();
    format!("delivered to {delivered}, acknowledged by {acknowledged}")
}

pub struct ReceiptRow {
    pub subject: String,
    pub delivered: String,
    pub transport: String,
    pub acknowledged: String,
    pub waiting: bool,
}

#[derive(Template)]
#[template(path = "admin/receipts.html")]
struct ReceiptsPage {
    chrome: Chrome,
    id: String,
    topic: String,
    topic_link: String,
    summary: String,
    rows: Vec<ReceiptRow>,
}

#[derive(Deserialize)]
struct Query {
    #[serde(default)]
    id: String,
}

async fn page(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<Query>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let id = EventId::parse(&q.id).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let log = st.log.clone();
    let found = crate::store::blocking(move || log.receipts().of_event(id.seq))
        .await?
        .filter(|_| id.epoch == st.log.epoch())
        .ok_or_else(|| {
            AdminError::NotFound(format!(
                "receipts of event {id}: it did not ask for receipts, or retention removed it"
            ))
        })?;
    let when = |ms: Option<u64>| ms.map_or_else(|| "-".to_string(), rfc3339);
    let rows = found
        .marks
        .iter()
        .map(|(subject, m)| ReceiptRow {
            subject: subject.clone(),
            delivered: when(m.delivered_ms),
            transport: m
                .transport
                .as_deref()
                .map_or("-", super::transport_name)
                .to_string(),
            acknowledged: when(m.acknowledged_ms),
            waiting: m.acknowledged_ms.is_none(),
        })
        .collect();
    let page = ReceiptsPage {
        chrome: Chrome::new(&session, "topics"),
        id: id.to_string(),
        topic_link: super::topics::topic_link(&found.topic),
        summary: summary(&found),
        topic: found.topic,
        rows,
    };
    Ok(html(page.render()?))
}
