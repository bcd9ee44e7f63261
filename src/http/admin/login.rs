//! `GET/POST /admin/login`, `POST /admin/logout`.
//!
//! The login form is protected against login CSRF with a double-submit token: a random
//! value in a SameSite=Strict cookie scoped to the login path and in a hidden field.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::{html, require_form, see_other, session_cookie, AdminError};
use crate::admin::sessions::{random_hex, same_secret};
use crate::server::AppState;

pub(super) const LOGIN_COOKIE: &str = "surepush_login";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/admin/login")
            .route(web::get().to(login_page))
            .route(web::post().to(login)),
    )
    .service(web::resource("/admin/logout").route(web::post().to(logout)));
}

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    css_url: String,
    csrf: String,
    next: String,
    user: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: String,
}

/// Where a login goes on to: a local admin path (no open redirect), else the dashboard.
/// Only visible ASCII (a CR/LF would not fit in the `Location` header, and a space or a
/// non-ASCII byte has no business in a path the admin UI builds).
fn safe_next(next: &str) -> String {
    let visible = next.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if visible && next.starts_with("/admin") && !next.starts_with("//") && !next.contains('\\') {
        next.to_string()
    } else {
        "/admin/".to_string()
    }
}

fn login_cookie(value: &str) -> Cookie<'static> {
    Cookie::build(LOGIN_COOKIE, value.to_string())
        .path("/admin/login")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .finish()
}

fn render_login(
    status: actix_web::http::StatusCode,
    next: &str,
    user: &str,
    error: Option<String>,
) -> Result<HttpResponse, AdminError> {
    let csrf = random_hex(16);
    let page = LoginPage {
        css_url: crate::http::assets::versioned("/admin/static/admin.css"),
        csrf: csrf.clone(),
        next: safe_next(next),
        user: user.to_string(),
        error,
    };
    let mut resp = html(page.render()?);
    *resp.status_mut() = status;
    resp.add_cookie(&login_cookie(&csrf))
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(resp)
}

async fn login_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<NextQuery>,
) -> Result<HttpResponse, AdminError> {
    super::require_enabled(&req, &st)?;
    if super::require_session(&req, &st).is_ok() {
        return Ok(see_other(&safe_next(&q.next)));
    }
    render_login(actix_web::http::StatusCode::OK, &q.next, "", None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

async fn login(
    req: HttpRequest,
    st: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AdminError> {
    super::require_enabled(&req, &st)?;
    let form = form.into_inner();
    let cookie = req.cookie(LOGIN_COOKIE).map(|c| c.value().to_string());
    if form.csrf.is_empty() || !cookie.is_some_and(|c| same_secret(&c, &form.csrf)) {
        return Err(AdminError::Csrf);
    }
    let ip = crate::http::client_ip::client_ip(&req, &st);
    let user = form.user.trim().to_string();
    if let Some(wait) = st.admin.throttle.locked(&user, ip) {
        tracing::warn!(target: "audit", user = %user, ip = ?ip, "login refused: locked out");
        return render_login(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            &form.next,
            &user,
            Some(format!(
                "Too many failed logins. Try again in {}.",
                super::ago(wait.as_secs().max(1))
            )),
        );
    }
    let users = st
        .admin
        .users
        .current()
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    let credential = users.find(&user).map(|u| u.hash.clone());
    let (name, password) = (user.clone(), form.password);
    let ok = crate::store::blocking(move || Ok(users.verify(&name, &password))).await?;
    let Some(credential) = credential.filter(|_| ok) else {
        st.admin.throttle.failed(&user, ip);
        tracing::warn!(target: "audit", user = %user, ip = ?ip, "login failed");
        tokio::time::sleep(st.admin.throttle.delay()).await;
        return render_login(
            actix_web::http::StatusCode::UNAUTHORIZED,
            &form.next,
            &user,
            Some("Wrong user name or password.".into()),
        );
    };
    st.admin.throttle.succeeded(&user, ip);
    let session = st.admin.sessions.create(&user, &credential);
    tracing::info!(target: "audit", user = %user, ip = ?ip, "admin logged in");
    let mut resp = see_other(&safe_next(&form.next));
    resp.add_cookie(&session_cookie(&session.id, None))
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    let mut gone = login_cookie("");
    gone.make_removal();
    resp.add_cookie(&gone)
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(resp)
}

async fn logout(
    req: HttpRequest,
    st: web::Data<AppState>,
    form: web::Form<super::CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    let session = require_form(&req, &st, &form.csrf)?;
    st.admin.sessions.remove(&session.id);
    tracing::info!(target: "audit", user = %session.user, "admin logged out");
    let mut resp = see_other("/admin/login");
    resp.add_cookie(&session_cookie("", Some(0)))
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_is_local_admin_only() {
        assert_eq!(safe_next("/admin/jobs?q=1"), "/admin/jobs?q=1");
        assert_eq!(safe_next("https://evil.example/"), "/admin/");
        assert_eq!(safe_next("//evil.example/admin"), "/admin/");
        assert_eq!(safe_next("/admin\\@evil"), "/admin/");
        assert_eq!(safe_next(""), "/admin/");
        // seen: 500 "failed to parse header value", with the session cookie already set
        assert_eq!(safe_next("/admin/x\r\nSet-Cookie: a=b"), "/admin/");
        assert_eq!(safe_next("/admin/x\ny"), "/admin/");
        assert_eq!(safe_next("/admin/\u{0}"), "/admin/");
        assert_eq!(safe_next("/admin/caf\u{e9}"), "/admin/");
    }
}
