//! HTTP handlers. Each module registers its routes; handlers stay thin.

pub mod admin;
mod assets;
mod auth;
mod backup;
mod body;
mod body_deadline;
pub mod client_ip;
mod doctor;
pub mod guard;
mod jobs;
mod ops;
pub mod params;
mod poll;
mod publish;
pub mod receipts;
pub use publish::parse_publish;
mod sse;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    ops::configure(cfg);
    publish::configure(cfg);
    receipts::configure(cfg);
    sse::configure(cfg);
    poll::configure(cfg);
    jobs::configure(cfg);
    backup::configure(cfg);
    assets::configure(cfg);
    doctor::configure(cfg);
    admin::configure(cfg);
    cfg.default_service(web::to(not_found));
}

/// The host (and port) the request was addressed to: `Host`, or HTTP/2's `:authority`.
/// Never `X-Forwarded-Host` or `Forwarded`, which any client can send.
pub fn request_host(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty())
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(req.path().to_string()))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()))
}

/// A resource that answers 405 (JSON) to methods it has no route for.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// "1.0", "1.1" or "2", for metrics and the hello event.
pub fn http_version(req: &HttpRequest) -> &'static str {
    match req.version() {
        actix_web::http::Version::HTTP_2 => "2",
        actix_web::http::Version::HTTP_11 => "1.1",
        actix_web::http::Version::HTTP_3 => "3",
        _ => "1.0",
    }
}
