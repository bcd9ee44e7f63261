//! The admin UI's errors, answered as small HTML pages (or JSON under /admin/api/).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("please log in")]
    LoginRequired { next: String, api: bool },
    #[error("the form's CSRF token is missing or wrong; reload the page and try again")]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot render the page: {0}")]
    Template(#[from] askama::Error),
    #[error("{0}")]
    Internal(String),
}

#[derive(Template)]
#[template(path = "admin/error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: String,
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::LoginRequired { api: false, .. } => StatusCode::SEE_OTHER,
            AdminError::LoginRequired { api: true, .. } => StatusCode::UNAUTHORIZED,
            AdminError::Csrf => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Store(StoreError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Store(StoreError::Job(_)) => StatusCode::CONFLICT,
            AdminError::Store(_) | AdminError::Template(_) | AdminError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            AdminError::LoginRequired { next, api: false } => {
                let q: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", next)
                    .finish();
                return super::see_other(&format!("/admin/login?{q}"));
            }
            AdminError::LoginRequired { api: true, .. } => {
                return HttpResponse::Unauthorized().json(serde_json::json!({
                    "error": "login_required",
                    "message": "an admin session is required",
                }));
            }
            _ => {}
        }
        if status.is_server_error() {
            tracing::error!(error = %self, "admin page failed");
        }
        let title = match status {
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Conflict",
            _ => "Something went wrong",
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title,
            message: self.to_string(),
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("{} {}", status.as_u16(), self));
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body)
    }
}
