//! Jobs: queues with their depth per state, one job's detail, and dead letters with
//! requeue / discard (a confirmation page, CSRF-checked, audit-logged).

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::dashboard::{snapshot, QueueRow};
use super::{html, require_form, require_session, see_other, when, AdminError, Chrome};
use crate::server::AppState;
use crate::store::job_ops::JobOp;
use crate::store::jobs::{job_id, parse_job_id, JobRecord, JobState};

const DEAD_SHOWN: usize = 100;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/jobs").route(web::get().to(queues)))
        .service(web::resource("/admin/jobs/dead").route(web::get().to(dead)))
        .service(web::resource("/admin/jobs/find").route(web::get().to(find)))
        .service(web::resource("/admin/jobs/{id}").route(web::get().to(detail)))
        .service(
            web::resource("/admin/jobs/{id}/{action}")
                .route(web::get().to(confirm))
                .route(web::post().to(act)),
        );
}

#[derive(Template)]
#[template(path = "admin/jobs.html")]
struct QueuesPage {
    chrome: Chrome,
    queues: Vec<QueueRow>,
}

async fn queues(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let stats = snapshot(&st).await?;
    let page = QueuesPage {
        chrome: Chrome::new(&session, "jobs"),
        queues: stats.queues,
    };
    Ok(html(page.render()?))
}

pub struct JobRow {
    pub id: String,
    pub queue: String,
    pub state: &'static str,
    pub attempts: String,
    pub created: String,
    pub updated: String,
    pub error: String,
}

impl JobRow {
    fn of(j: &JobRecord) -> JobRow {
        JobRow {
            id: job_id(j.seq),
            queue: j.queue.clone(),
            state: j.state.as_str(),
            attempts: format!("{}/{}", j.attempts, j.max_attempts),
            created: when(j.created_ms),
            updated: when(j.updated_ms),
            error: j.last_error.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "admin/dead.html")]
struct DeadPage {
    chrome: Chrome,
    queue: String,
    jobs: Vec<JobRow>,
    notice: Option<String>,
}

#[derive(Deserialize)]
struct DeadQuery {
    #[serde(default)]
    queue: String,
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    job: Option<String>,
}

async fn dead(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<DeadQuery>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    if !crate::store::jobs::valid_queue(&q.queue) {
        return Err(AdminError::BadRequest(format!(
            "{:?} is not a queue name",
            q.queue
        )));
    }
    let jobs = st.log.dead_letters(&q.queue, DEAD_SHOWN).await?;
    let notice = match (&q.done, &q.job) {
        (Some(done), Some(job)) if done == "requeue" => {
            Some(format!("Job {job} was requeued; a worker will take it."))
        }
        (Some(done), Some(job)) if done == "discard" => Some(format!("Job {job} was discarded.")),
        _ => None,
    };
    let page = DeadPage {
        chrome: Chrome::new(&session, "jobs"),
        queue: q.queue.clone(),
        jobs: jobs.iter().map(JobRow::of).collect(),
        notice,
    };
    Ok(html(page.render()?))
}

#[derive(Deserialize)]
struct FindQuery {
    #[serde(default)]
    id: String,
}

async fn find(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<FindQuery>,
) -> Result<HttpResponse, AdminError> {
    require_session(&req, &st)?;
    let id = q.id.trim();
    let seq = parse_job_id(id)
        .or_else(|| id.parse().ok())
        .ok_or_else(|| AdminError::BadRequest(format!("{id:?} is not a job id (j<number>)")))?;
    Ok(see_other(&format!("/admin/jobs/{}", job_id(seq))))
}

#[derive(Template)]
#[template(path = "admin/job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobRow,
    given_up: bool,
    payload: String,
    result: String,
    reply_topic: String,
    owner: String,
    worker: String,
    lease_until: String,
    run_at: String,
    finished: String,
}

fn pretty(json_text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json_text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json_text.to_string())
}

async fn load(st: &AppState, raw: &str) -> Result<JobRecord, AdminError> {
    let seq = parse_job_id(raw)
        .ok_or_else(|| AdminError::BadRequest(format!("{raw:?} is not a job id (j<number>)")))?;
    st.log
        .get_job(seq)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("job {raw}")))
}

fn given_up(j: &JobRecord) -> bool {
    matches!(j.state, JobState::Dead | JobState::Failed)
}

async fn detail(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let j = load(&st, &path).await?;
    let page = JobPage {
        chrome: Chrome::new(&session, "jobs"),
        given_up: given_up(&j),
        payload: pretty(&j.payload),
        result: j.result.as_deref().map(pretty).unwrap_or_default(),
        reply_topic: j.reply_topic.clone().unwrap_or_default(),
        owner: j.owner.clone().unwrap_or_default(),
        worker: j.worker.clone().unwrap_or_default(),
        lease_until: j.lease_until_ms.map(when).unwrap_or_default(),
        run_at: when(j.run_at_ms),
        finished: j.finished_ms.map(when).unwrap_or_default(),
        job: JobRow::of(&j),
    };
    Ok(html(page.render()?))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Requeue,
    Discard,
}

impl Action {
    fn parse(s: &str) -> Result<Action, AdminError> {
        match s {
            "requeue" => Ok(Action::Requeue),
            "discard" => Ok(Action::Discard),
            _ => Err(AdminError::NotFound(format!("action {s:?}"))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Requeue => "requeue",
            Action::Discard => "discard",
        }
    }
}

#[derive(Template)]
#[template(path = "admin/confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    job: JobRow,
    action: &'static str,
    question: String,
    cancel: String,
}

async fn confirm(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let (raw, action) = path.into_inner();
    let action = Action::parse(&action)?;
    let j = load(&st, &raw).await?;
    if !given_up(&j) {
        return Err(AdminError::Conflict(format!(
            "job {raw} is {}: only dead or failed jobs can be requeued or discarded",
            j.state.as_str()
        )));
    }
    let question = match action {
        Action::Requeue => format!(
            "Requeue job {raw}? It runs again from its first attempt on queue {}.",
            j.queue
        ),
        Action::Discard => format!("Discard job {raw}? It is deleted for good."),
    };
    let page = ConfirmPage {
        chrome: Chrome::new(&session, "jobs"),
        cancel: format!("/admin/jobs/{raw}"),
        job: JobRow::of(&j),
        action: action.as_str(),
        question,
    };
    Ok(html(page.render()?))
}

async fn act(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
    form: web::Form<super::CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    let session = require_form(&req, &st, &form.csrf)?;
    let (raw, action) = path.into_inner();
    let action = Action::parse(&action)?;
    let j = load(&st, &raw).await?;
    let op = match action {
        Action::Requeue => JobOp::Requeue { seq: j.seq },
        Action::Discard => JobOp::Discard { seq: j.seq },
    };
    st.log.job(op).await?;
    tracing::info!(target: "audit", user = %session.user, job = %raw, queue = %j.queue, action = action.as_str(), "admin {}d a {} job", action.as_str(), j.state.as_str());
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("queue", &j.queue)
        .append_pair("done", action.as_str())
        .append_pair("job", &raw)
        .finish();
    Ok(see_other(&format!("/admin/jobs/dead?{q}")))
}
