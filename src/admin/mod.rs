//! The admin side: users (argon2 hashes in a file), sessions with CSRF tokens, and the
//! login throttle. The web pages are in `http::admin`.

pub mod sessions;
pub mod users;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::config::AdminConfig;

pub use sessions::{LoginThrottle, Session, SessionStore};
pub use users::{UserError, UserStore, UsersFile};

/// The admin UI's state, shared by its handlers.
pub struct Admin {
    pub users: UserStore,
    pub sessions: SessionStore,
    pub throttle: LoginThrottle,
    /// Events the server published to its own topics (the dashboard's statistics), so
    /// the dashboard can show clients' events apart from them.
    pub internal_events: AtomicU64,
    /// Deliveries of those events (one per watching subscriber).
    pub internal_deliveries: AtomicU64,
}

impl Admin {
    pub fn new(data_dir: &Path, cfg: &AdminConfig) -> Arc<Admin> {
        Arc::new(Admin {
            users: UserStore::new(data_dir),
            sessions: SessionStore::new(
                Duration::from_secs(cfg.session_idle_secs),
                Duration::from_secs(cfg.session_max_secs),
            ),
            throttle: LoginThrottle::new(
                cfg.lockout_failures,
                Duration::from_secs(cfg.lockout_secs),
            ),
            internal_events: AtomicU64::new(0),
            internal_deliveries: AtomicU64::new(0),
        })
    }
}
