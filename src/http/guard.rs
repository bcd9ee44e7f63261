//! Middleware run before every handler: refuses requests on connections over the
//! per-IP limit, answers CORS preflights and adds CORS headers for allowed origins.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, ConnectionType, Method};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse, ResponseError};

use crate::error::ApiError;
use crate::limits::ConnSlot;
use crate::server::AppState;

/// Paths monitoring must always reach.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    if req.conn_data::<ConnSlot>().is_some_and(|s| s.over_limit) && !exempt(req.path()) {
        let mut resp = ApiError::TooMany {
            code: "too_many_connections",
            message: "too many open connections from your address; retry later".into(),
            retry_after_secs: 5,
        }
        .error_response();
        resp.head_mut().set_connection_type(ConnectionType::Close);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    let allowed_origin = req.app_data::<web::Data<AppState>>().and_then(|st| {
        let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
        (req.path().starts_with("/v1/") && st.config.cors.allows(origin))
            .then(|| (origin.to_string(), st.config.cors.max_age_secs))
    });
    if let Some((origin, max_age)) = &allowed_origin {
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let resp = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
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
    if let Some((origin, _)) = allowed_origin {
        let h = res.headers_mut();
        if let Ok(v) = header::HeaderValue::from_str(&origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::HeaderValue::from_static("Retry-After"),
        );
        h.append(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    Ok(res.map_into_left_body())
}
