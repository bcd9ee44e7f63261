//! What an admin form post must show before its body is read: the admin UI enabled, and
//! a live session (or, for the login form, its double-submit cookie). Without them the
//! answer comes at once and the body is never waited for, so a client that sends a
//! Content-Length and then nothing holds no connection without a credential.

use actix_web::HttpRequest;

use super::{require_enabled, require_session, AdminError};
use crate::server::AppState;

/// `Ok` when the form's body is worth reading.
pub fn before_body(req: &HttpRequest, st: &AppState) -> Result<(), AdminError> {
    if req.path() == "/admin/login" {
        require_enabled(req, st)?;
        if req.cookie(super::login::LOGIN_COOKIE).is_none() {
            return Err(AdminError::Csrf);
        }
        return Ok(());
    }
    require_session(req, st).map(drop)
}
