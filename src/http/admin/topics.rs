//! Topics: the list with counts and last activity, one topic's recent events (newest
//! first, paged), and a form to publish a test event.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::{group, html, require_form, require_session, see_other, when, AdminError, Chrome};
use crate::model::{is_reserved_topic, validate_type, EventId, Topic};
use crate::server::AppState;
use crate::store::record::minify_json;
use crate::store::{NewEvent, TopicInfo};

const TOPICS_PER_PAGE: usize = 100;
const EVENTS_PER_PAGE: usize = 25;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/topics").route(web::get().to(list)))
        .service(web::resource("/admin/topic").route(web::get().to(topic)))
        .service(web::resource("/admin/topics/publish").route(web::post().to(publish)));
}

pub struct TopicRow {
    pub name: String,
    pub events: String,
    pub last_id: String,
    pub last_time: String,
    pub link: String,
}

pub(super) fn topic_link(name: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("name", name)
        .finish();
    format!("/admin/topic?{q}")
}

#[derive(Template)]
#[template(path = "admin/topics.html")]
struct TopicsPage {
    chrome: Chrome,
    rows: Vec<TopicRow>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    after: String,
}

async fn list(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let topics: Vec<TopicInfo> = st.log.topics(q.after.clone(), TOPICS_PER_PAGE + 1).await?;
    let more = topics.len() > TOPICS_PER_PAGE;
    let rows: Vec<TopicRow> = topics
        .into_iter()
        .take(TOPICS_PER_PAGE)
        .map(|t| TopicRow {
            link: topic_link(&t.topic),
            events: group(t.events),
            last_id: t.last_id,
            last_time: when(t.last_time_ms),
            name: t.topic,
        })
        .collect();
    let next = more.then(|| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("after", &rows[rows.len() - 1].name)
            .finish();
        format!("/admin/topics?{q}")
    });
    let page = TopicsPage {
        chrome: Chrome::new(&session, "topics"),
        rows,
        next,
    };
    Ok(html(page.render()?))
}

pub struct EventRow {
    pub id: String,
    pub kind: String,
    pub time: String,
    pub data: String,
    /// Events that asked for receipts: the summary and the link to them.
    pub receipts: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "admin/topic.html")]
struct TopicPage {
    chrome: Chrome,
    name: String,
    reserved: bool,
    events: Vec<EventRow>,
    older: Option<String>,
    newest: Option<String>,
    published: Option<String>,
    error: Option<String>,
    form_type: String,
    form_data: String,
}

#[derive(Deserialize)]
struct TopicQuery {
    #[serde(default)]
    name: String,
    /// Show events older than this event id.
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    published: Option<String>,
}

async fn topic(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<TopicQuery>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let q = q.into_inner();
    render_topic(
        &st,
        session,
        &q.name,
        q.before.as_deref(),
        q.published,
        None,
        None,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn render_topic(
    st: &AppState,
    session: crate::admin::Session,
    name: &str,
    before: Option<&str>,
    published: Option<String>,
    error: Option<String>,
    form: Option<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let topic = Topic::parse(name).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let before_seq = match before.filter(|b| !b.is_empty()) {
        Some(b) => Some(
            EventId::parse(b)
                .map_err(|e| AdminError::BadRequest(e.to_string()))?
                .seq,
        ),
        None => None,
    };
    let events = st
        .log
        .topic_page(topic.as_str(), before_seq, EVENTS_PER_PAGE + 1)
        .await?;
    let more = events.len() > EVENTS_PER_PAGE;
    let log = st.log.clone();
    let asked: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let receipts = crate::store::blocking(move || {
        let r = log.receipts();
        Ok(asked
            .into_iter()
            .filter_map(|seq| r.of_event(seq).ok().flatten().map(|x| (seq, x)))
            .collect::<std::collections::HashMap<_, _>>())
    })
    .await?;
    let rows: Vec<EventRow> = events
        .iter()
        .take(EVENTS_PER_PAGE)
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&e.json()).unwrap_or(serde_json::Value::Null);
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let receipts = receipts.get(&e.seq).map(|r| {
                (
                    super::receipts::summary(r),
                    super::receipts::link(&field("id")),
                )
            });
            EventRow {
                receipts,
                id: field("id"),
                kind: field("type"),
                time: field("time"),
                data: v
                    .get("data")
                    .map(|d| serde_json::to_string_pretty(d).unwrap_or_default())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let older = if more {
        rows.last().map(|r| {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("name", topic.as_str())
                .append_pair("before", &r.id)
                .finish();
            format!("/admin/topic?{q}")
        })
    } else {
        None
    };
    let (form_type, form_data) =
        form.unwrap_or_else(|| ("test".to_string(), "{\"hello\": \"world\"}".to_string()));
    let page = TopicPage {
        chrome: Chrome::new(&session, "topics"),
        name: topic.as_str().to_string(),
        reserved: is_reserved_topic(topic.as_str()),
        events: rows,
        older,
        newest: before_seq.map(|_| topic_link(topic.as_str())),
        published,
        error: error.clone(),
        form_type,
        form_data,
    };
    let mut resp = html(page.render()?);
    if error.is_some() {
        *resp.status_mut() = actix_web::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct PublishForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    topic: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    data: String,
}

async fn publish(
    req: HttpRequest,
    st: web::Data<AppState>,
    form: web::Form<PublishForm>,
) -> Result<HttpResponse, AdminError> {
    let form = form.into_inner();
    let session = require_form(&req, &st, &form.csrf)?;
    let topic =
        Topic::parse(form.topic.trim()).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let kind = if form.kind.trim().is_empty() {
        "message".to_string()
    } else {
        form.kind.trim().to_string()
    };
    let problem = if is_reserved_topic(topic.as_str()) {
        Some(format!("{topic} is reserved for the server's own events."))
    } else if let Err(e) = validate_type(&kind) {
        Some(e.to_string())
    } else if let Err(e) = serde_json::from_str::<serde_json::Value>(&form.data) {
        Some(format!("The data is not valid JSON: {e}."))
    } else if let Err(e) = crate::json_check::check(&form.data) {
        Some(format!("The data is refused: {e}."))
    } else if form.data.len() > st.config.limits.max_event_data_bytes {
        Some(format!(
            "The data is {} bytes; the limit is {}.",
            form.data.len(),
            st.config.limits.max_event_data_bytes
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        return render_topic(
            &st,
            session,
            topic.as_str(),
            None,
            None,
            Some(problem),
            Some((kind, form.data)),
        )
        .await;
    }
    let ids = st
        .log
        .publish(vec![NewEvent {
            topic: topic.clone(),
            kind: kind.clone(),
            data_json: minify_json(&form.data),
            receipt: false,
        }])
        .await?;
    let id = ids.first().map(|i| i.to_string()).unwrap_or_default();
    tracing::info!(target: "audit", user = %session.user, topic = %topic, r#type = %kind, id = %id, "admin published a test event");
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("name", topic.as_str())
        .append_pair("published", &id)
        .finish();
    Ok(see_other(&format!("/admin/topic?{q}")))
}
