//! The HTTP edge of every error: one enum, one mapping to status + JSON body
//! `{"error": "<stable code>", "message": "<sentence>"}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthError;
use crate::health::ProbeError;
use crate::store::jobs::JobError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: query parameters, ids, JSON syntax (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// Well-formed but unacceptable content (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// Over a size limit (413).
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// Missing, invalid or expired token (401).
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// Valid token without the right (403).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// Over a rate or connection limit (429, with Retry-After).
    #[error("{message}")]
    TooMany {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    /// The request conflicts with the resource's state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The request body did not arrive in time (408; the connection is closed).
    #[error("{message}")]
    BodyTimeout { message: String },
    #[error("no such resource: {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// Temporarily unable to serve (503, with Retry-After).
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    /// The server's disk is full (507, with Retry-After): nothing of the request was
    /// stored; reads go on.
    #[error("{message}")]
    InsufficientStorage {
        message: String,
        retry_after_secs: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// JSON that the server's own clients could not read (`json_check`), in `what`.
    pub fn unreadable_json(e: crate::json_check::Unreadable, what: &str) -> Self {
        ApiError::Unprocessable {
            code: e.code(),
            message: format!("{what} is refused: {e}"),
        }
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::TooLarge {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::TooLarge { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::TooMany { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::InsufficientStorage { .. } => "disk_full",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<crate::subscribers::OverCap> for ApiError {
    fn from(e: crate::subscribers::OverCap) -> Self {
        ApiError::TooMany {
            code: "too_many_connections",
            message: format!("{e}; retry later"),
            retry_after_secs: 5,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::Missing => ApiError::Unauthorized {
                code: "token_required",
                message,
            },
            AuthError::Expired => ApiError::Unauthorized {
                code: "token_expired",
                message,
            },
            AuthError::Invalid(_) => ApiError::Unauthorized {
                code: "invalid_token",
                message,
            },
            AuthError::Forbidden(_) => ApiError::Forbidden {
                code: "forbidden",
                message,
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Job(JobError::NotFound(id)) => ApiError::NotFound(format!("job {id}")),
            StoreError::Job(JobError::Conflict(message)) => ApiError::Conflict {
                code: "lease_conflict",
                message,
            },
            StoreError::Closed => ApiError::Unavailable {
                code: "shutting_down",
                message: "the server is shutting down; retry shortly".into(),
                retry_after_secs: 2,
            },
            StoreError::LowDisk { free, min } => {
                tracing::warn!(
                    free,
                    min,
                    "refusing new events and jobs: the data disk is almost full"
                );
                ApiError::InsufficientStorage {
                    message: format!(
                        "the server's data disk is almost full ({free} bytes free, below the \
                         {min} kept free): nothing of this request was stored and everything \
                         accepted before is safe; retry later"
                    ),
                    retry_after_secs: 30,
                }
            }
            // Clients get a sentence; the details go to the log.
            other if other.is_disk_full() => {
                tracing::error!(error = %other, "storage error: the disk is full");
                ApiError::InsufficientStorage {
                    message: "the server's disk is full: nothing of this request was stored \
                              and everything accepted before is safe; retry later"
                        .into(),
                    retry_after_secs: 30,
                }
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::Unavailable {
                    code: "storage_unavailable",
                    message: "the server cannot write to its storage right now; retry shortly"
                        .into(),
                    retry_after_secs: 5,
                }
            }
        }
    }
}

impl From<ProbeError> for ApiError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Store(e) => e.into(),
            ProbeError::Slow => ApiError::Unavailable {
                code: "storage_slow",
                message: e.to_string(),
                retry_after_secs: 5,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        resp.insert_header((header::CACHE_CONTROL, "no-store"));
        match self {
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::InsufficientStorage {
                retry_after_secs, ..
            }
            | ApiError::TooMany {
                retry_after_secs, ..
            } => {
                resp.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Unauthorized { .. } => {
                resp.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"surepush\""));
            }
            ApiError::BodyTimeout { .. } => {
                // the rest of the body may still come: this connection is done
                resp.insert_header((header::CONNECTION, "close"));
            }
            _ => {}
        }
        resp.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn maps_to_status_and_json() {
        let e = ApiError::too_large("body_too_large", "too big");
        let r = e.error_response();
        assert_eq!(r.status(), 413);
        let body = r.into_body().try_into_bytes().unwrap();
        assert_eq!(
            &body[..],
            br#"{"error":"body_too_large","message":"too big"}"#
        );
        let r = ApiError::from(StoreError::Closed).error_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers().get("retry-after").unwrap(), "2");
    }

    fn body_of(e: StoreError) -> (u16, Option<String>, serde_json::Value) {
        let r = ApiError::from(e).error_response();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.into_body().try_into_bytes().unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    /// Issue 14: a full disk answered 503 with `Os { code: 28, kind: StorageFull, .. }`.
    #[test]
    fn storage_errors_reach_clients_as_a_sentence() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        for e in [
            StoreError::Db(sled::Error::Io(enospc())),
            StoreError::DiskFull,
            StoreError::DiskFull.for_waiter(),
        ] {
            let (status, retry, body) = body_of(e);
            assert_eq!(status, 507);
            assert_eq!(retry.as_deref(), Some("30"));
            assert_eq!(body["error"], "disk_full");
            assert!(body["message"].as_str().unwrap().contains("disk is full"));
        }
        let eio = StoreError::Db(sled::Error::Io(std::io::Error::from_raw_os_error(
            libc::EIO,
        )));
        let (status, retry, body) = body_of(eio.for_waiter());
        assert_eq!(status, 503);
        assert_eq!(retry.as_deref(), Some("5"));
        assert_eq!(body["error"], "storage_unavailable");
        let message = body["message"].as_str().unwrap();
        assert!(
            !message.contains("Os {") && !message.contains("code:"),
            "{message}"
        );
    }
}
