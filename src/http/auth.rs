//! Finding and verifying the caller's token.

use actix_web::HttpRequest;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::server::AppState;

/// The token from `Authorization: Bearer`, the `surepush_token` cookie, or the
/// `access_token` query parameter (EventSource cannot set headers), in that order.
pub fn token(req: &HttpRequest) -> Option<String> {
    if let Some(v) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        if let Some(t) = v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
            return Some(t.trim().to_string());
        }
    }
    for header in req.headers().get_all(actix_web::http::header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some(v) = pair.trim().strip_prefix("surepush_token=") {
                return Some(v.trim_matches('"').to_string());
            }
        }
    }
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// The verified caller, None when no token was sent. A token that was sent but does
/// not verify is an error even where none is needed (a client should learn it is broken).
pub fn principal(req: &HttpRequest, st: &AppState) -> Result<Option<Principal>, ApiError> {
    if !st.auth.enabled() {
        return Ok(None);
    }
    match token(req) {
        Some(t) => Ok(Some(st.auth.verify(&t)?)),
        None => Ok(None),
    }
}
