//! The admin web UI under `/admin/`: server-rendered askama pages, a session cookie, a
//! CSRF token in every form, and a dashboard kept live by surepush's own push.

mod connections;
mod dashboard;
mod error;
mod jobs;
mod login;
mod precheck;
mod receipts;
mod settings;
mod tokens;
mod topics;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

pub use dashboard::{stats_loop, STATS_TOPIC};
pub use error::AdminError;
pub use precheck::before_body as form_precheck;

use crate::admin::sessions::{same_secret, Session, COOKIE};
use crate::server::AppState;

/// Routes are always registered; with `admin.enabled = false` every one answers 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin").route(web::get().to(to_dashboard)));
    login::configure(cfg);
    dashboard::configure(cfg);
    topics::configure(cfg);
    receipts::configure(cfg);
    connections::configure(cfg);
    jobs::configure(cfg);
    tokens::configure(cfg);
    settings::configure(cfg);
}

async fn to_dashboard(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    require_enabled(&req, &st)?;
    Ok(see_other("/admin/"))
}

pub(crate) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// What every page's layout needs.
pub struct Chrome {
    pub user: String,
    pub csrf: String,
    pub css_url: String,
    pub js_url: String,
    pub client_js_url: String,
    pub active: &'static str,
    pub version: &'static str,
}

impl Chrome {
    pub fn new(session: &Session, active: &'static str) -> Chrome {
        Chrome {
            user: session.user.clone(),
            csrf: session.csrf.clone(),
            css_url: super::assets::versioned("/admin/static/admin.css"),
            js_url: super::assets::versioned("/admin/static/admin.js"),
            client_js_url: super::assets::versioned("/surepush.js"),
            active,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// The nav entries as (path, label, is-current).
    pub fn nav(&self) -> Vec<(&'static str, &'static str, bool)> {
        [
            ("/admin/", "Dashboard", "dashboard"),
            ("/admin/topics", "Topics", "topics"),
            ("/admin/connections", "Connections", "connections"),
            ("/admin/jobs", "Jobs", "jobs"),
            ("/admin/tokens", "Tokens", "tokens"),
            ("/admin/settings", "Settings", "settings"),
            ("/doctor", "Network doctor", "doctor"),
        ]
        .into_iter()
        .map(|(p, l, k)| (p, l, k == self.active))
        .collect()
    }
}

pub fn require_enabled(req: &HttpRequest, st: &AppState) -> Result<(), AdminError> {
    if st.config.admin.enabled {
        Ok(())
    } else {
        Err(AdminError::NotFound(req.path().to_string()))
    }
}

fn session_id(req: &HttpRequest) -> Option<String> {
    req.cookie(COOKIE).map(|c| c.value().to_string())
}

/// The caller's live admin session, or a redirect to the login page (pages) / 401 (API).
pub fn require_session(req: &HttpRequest, st: &AppState) -> Result<Session, AdminError> {
    require_enabled(req, st)?;
    session_id(req)
        .and_then(|id| st.admin.sessions.get(&id))
        .filter(|s| still_valid(st, s))
        .ok_or_else(|| AdminError::LoginRequired {
            next: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/admin/".into()),
            api: req.path().starts_with("/admin/api/"),
        })
}

/// The session's user still exists with the password it logged in with; otherwise the
/// session ends (a password change or removal by `surepush admin` takes effect at once).
fn still_valid(st: &AppState, s: &Session) -> bool {
    let ok = match st.admin.users.current() {
        Ok(users) => users.find(&s.user).is_some_and(|u| u.hash == s.credential),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the admin users file");
            false
        }
    };
    if !ok {
        st.admin.sessions.remove(&s.id);
    }
    ok
}

/// A form post: a live session and the session's CSRF token in the `csrf` field.
pub fn require_form(req: &HttpRequest, st: &AppState, csrf: &str) -> Result<Session, AdminError> {
    let session = require_session(req, st)?;
    if csrf.is_empty() || !same_secret(csrf, &session.csrf) {
        tracing::warn!(target: "audit", user = %session.user, path = %req.path(), "form refused: CSRF token missing or wrong");
        return Err(AdminError::Csrf);
    }
    Ok(session)
}

/// A form whose only field is the CSRF token (logout, disconnect, requeue, discard).
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub fn session_cookie(value: &str, max_age_secs: Option<i64>) -> Cookie<'static> {
    let mut c = Cookie::build(COOKIE, value.to_string())
        .path("/admin")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .finish();
    if let Some(secs) = max_age_secs {
        c.set_max_age(actix_web::cookie::time::Duration::seconds(secs));
    }
    c
}

/// The content policy of the admin pages (and every HTML page that sets none itself).
pub const PAGE_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'; form-action 'self'";

/// Renders a template as an HTML page that is never cached.
pub fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_POLICY))
        .body(body)
}

/// A transport's metric label as people say it.
pub fn transport_name(label: &str) -> &str {
    match label {
        "sse_stream" => "SSE stream",
        "sse_close" => "SSE close",
        "longpoll" => "long poll",
        "poll" => "poll",
        other => other,
    }
}

/// `1234567` -> "1 234 567" (thin grouping for tables).
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A time in ms since the epoch as "2026-11-25 16:04:05 UTC" ("-" for 0).
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = crate::store::record::rfc3339(ms);
    format!(
        "{} UTC",
        t.replace('T', " ")
            .split('.')
            .next()
            .unwrap_or(&t)
            .trim_end_matches('Z')
    )
}

/// 93784 s -> "1 d 2 h", 125 s -> "2 min 5 s".
pub fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86399 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d {} h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// Bytes as "1.5 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_helpers() {
        assert_eq!(group(1234567), "1 234 567");
        assert_eq!(group(12), "12");
        assert_eq!(ago(125), "2 min 5 s");
        assert_eq!(ago(93784), "1 d 2 h");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10), "10 B");
        assert_eq!(when(0), "-");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
