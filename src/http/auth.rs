//! Finding and verifying the caller's token.

use actix_web::http::{header, Method};
use actix_web::HttpRequest;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::server::AppState;

/// Where a request's token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    /// The `surepush_token` cookie: the browser sends it by itself, also on requests
    /// another site makes, so writes with it need an allowed origin (`check_origin`).
    Cookie,
    Query,
}

/// `Bearer <token>` (the scheme case-insensitive, RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    let t = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !t.is_empty()).then_some(t)
}

/// The token from `Authorization: Bearer`, the `surepush_token` cookie, or the
/// `access_token` query parameter (EventSource cannot set headers), in that order.
pub fn token(req: &HttpRequest) -> Option<(String, TokenSource)> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        if let Some(t) = v.to_str().ok().and_then(bearer) {
            return Some((t.to_string(), TokenSource::Header));
        }
    }
    for h in req.headers().get_all(header::COOKIE) {
        let Ok(text) = h.to_str() else { continue };
        for pair in text.split(';') {
            if let Some(v) = pair.trim().strip_prefix("surepush_token=") {
                return Some((v.trim_matches('"').to_string(), TokenSource::Cookie));
            }
        }
    }
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| (v.into_owned(), TokenSource::Query))
}

/// The verified caller, None when no token was sent. A token that was sent but does
/// not verify is an error even where none is needed (a client should learn it is broken).
/// A write (any method but GET and HEAD) authenticated by the cookie must come from a
/// page of this server or of an origin `cors.allowed_origins` names.
pub fn principal(req: &HttpRequest, st: &AppState) -> Result<Option<Principal>, ApiError> {
    if !st.auth.enabled() {
        return Ok(None);
    }
    match token(req) {
        Some((t, source)) => {
            let p = st.auth.verify(&t)?;
            let write = !matches!(*req.method(), Method::GET | Method::HEAD);
            if write && source == TokenSource::Cookie {
                check_origin(req, st)?;
            }
            Ok(Some(p))
        }
        None => Ok(None),
    }
}

/// The caller, required whenever auth is on (None only with auth off).
pub fn caller(req: &HttpRequest, st: &AppState) -> Result<Option<Principal>, ApiError> {
    let who = principal(req, st)?;
    if st.auth.enabled() && who.is_none() {
        return Err(crate::auth::AuthError::Missing.into());
    }
    Ok(who)
}

/// The page's origin (`Origin`, else the scheme and host of `Referer`, which IE11
/// sends where it sends no `Origin`) is this server's own or one listed by name.
fn check_origin(req: &HttpRequest, st: &AppState) -> Result<(), ApiError> {
    let header_text = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let origin = header_text(header::ORIGIN)
        .map(str::to_string)
        .or_else(|| header_text(header::REFERER).and_then(origin_of_url));
    let refuse = |why: String| {
        ApiError::Forbidden {
        code: "cross_site_write",
        message: format!(
            "{why}: a write authenticated by the surepush_token cookie must come from a page of this server or of an origin in cors.allowed_origins (or send Authorization: Bearer)"
        ),
    }
    };
    let Some(origin) = origin else {
        return Err(refuse("the request names no Origin or Referer".into()));
    };
    if same_host(&origin, req) || st.config.cors.lists(&origin) {
        Ok(())
    } else {
        Err(refuse(format!("origin {origin:?} is not allowed")))
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| {
        format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        )
    })
}

/// The origin names the host (and port) the request was addressed to. The scheme is
/// not compared: behind a proxy that ends TLS the server sees plain HTTP for an https
/// page, and a page on this very host and port is this server's own.
fn same_host(origin: &str, req: &HttpRequest) -> bool {
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    match (super::request_host(req), origin_host) {
        (Some(h), Some(o)) => h.eq_ignore_ascii_case(o),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin_of_url("https://App.example:8443/x?y#z").as_deref(),
            Some("https://app.example:8443")
        );
        assert_eq!(origin_of_url("http://h").as_deref(), Some("http://h"));
        assert_eq!(origin_of_url("nonsense"), None);
        assert_eq!(origin_of_url("https:///path"), None);
    }
}
