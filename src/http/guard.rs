//! Middleware run before every handler: refuses requests on connections over the
//! per-IP limit, refuses admin form posts without a session before their body is read,
//! puts request bodies behind their deadlines (`body_deadline`), answers
//! CORS preflights, adds CORS headers for allowed origins (credentials only for origins
//! listed by name) and the security headers every answer carries.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, ConnectionType, Method};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse, ResponseError};

use crate::config::CorsGrant;
use crate::error::ApiError;
use crate::limits::ConnSlot;
use crate::server::AppState;

/// Paths monitoring must always reach.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let hsts = req
        .app_data::<web::Data<AppState>>()
        .map_or(0, |st| st.config.tls.hsts_max_age_secs)
        .min(u64::from(u32::MAX));
    let hsts = (req.app_config().secure() && hsts > 0).then_some(hsts);
    if req.conn_data::<ConnSlot>().is_some_and(|s| s.over_limit) && !exempt(req.path()) {
        let mut resp = ApiError::TooMany {
            code: "too_many_connections",
            message: "too many open connections from your address; retry later".into(),
            retry_after_secs: 5,
        }
        .error_response();
        resp.head_mut().set_connection_type(ConnectionType::Close);
        security_headers(resp.headers_mut(), hsts);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    if req.method() == Method::POST && req.path().starts_with("/admin/") {
        if let Some(st) = req.app_data::<web::Data<AppState>>() {
            if let Err(e) = crate::http::admin::form_precheck(req.request(), st) {
                // the body stays unread: close rather than wait for it
                let mut resp = e.error_response();
                resp.head_mut().set_connection_type(ConnectionType::Close);
                security_headers(resp.headers_mut(), hsts);
                return Ok(req.into_response(resp).map_into_right_body());
            }
        }
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        let limits = req.app_data::<web::Data<AppState>>().map(|st| {
            (
                st.config.limits.body_idle_timeout_ms,
                st.config.limits.body_timeout_ms,
            )
        });
        if let Some((idle, total)) = limits {
            use std::time::Duration;
            let (idle, total) = (Duration::from_millis(idle), Duration::from_millis(total));
            crate::http::body_deadline::apply(&mut req, idle, total);
        }
    }
    let allowed_origin = req.app_data::<web::Data<AppState>>().and_then(|st| {
        let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
        if !req.path().starts_with("/v1/") {
            return None;
        }
        let grant = st.config.cors.grant(origin)?;
        // "*" answers `*` itself: browsers then send and expose no credentials
        let allow = match grant {
            CorsGrant::Credentialed => origin.to_string(),
            CorsGrant::Anonymous => "*".to_string(),
        };
        Some((allow, grant, st.config.cors.max_age_secs))
    });
    if let Some((origin, grant, max_age)) = &allowed_origin {
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let mut resp = HttpResponse::NoContent();
            resp.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str()));
            if *grant == CorsGrant::Credentialed {
                resp.insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"));
            }
            let resp = resp
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "Authorization, Content-Type, Last-Event-ID, Idempotency-Key",
                ))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, max_age.to_string()))
                .insert_header((header::VARY, "Origin"))
                .finish();
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    let mut res = next.call(req).await?;
    security_headers(res.headers_mut(), hsts);
    if let Some((origin, grant, _)) = allowed_origin {
        let h = res.headers_mut();
        if let Ok(v) = header::HeaderValue::from_str(&origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        if grant == CorsGrant::Credentialed {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::HeaderValue::from_static("true"),
            );
        }
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::HeaderValue::from_static("Retry-After"),
        );
        h.append(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    Ok(res.map_into_left_body())
}

/// What every response gets unless its handler chose otherwise: `nosniff`; HSTS over
/// TLS (`tls.hsts_max_age_secs`); for HTML (admin and error pages, the doctor) no
/// framing and the admin UI's content policy.
fn security_headers(h: &mut header::HeaderMap, hsts_max_age: Option<u64>) {
    if !h.contains_key(header::X_CONTENT_TYPE_OPTIONS) {
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        );
    }
    if let Some(secs) = hsts_max_age {
        if let Ok(v) = header::HeaderValue::from_str(&format!("max-age={secs}")) {
            h.insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
    }
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    if html && !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::X_FRAME_OPTIONS,
            header::HeaderValue::from_static("DENY"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(crate::http::admin::PAGE_POLICY),
        );
    }
}
