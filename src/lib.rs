//! surepush: server-to-browser push that always arrives.
//!
//! A durable event log (sled) behind an HTTPS endpoint (actix-web + rustls) that
//! delivers through SSE, SSE close-after-batch, long polling and polling.

pub mod admin;
pub mod auth;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod http;
pub mod hub;
pub mod json_check;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod server;
pub mod stall;
pub mod store;
pub mod subscribers;
pub mod systemd;
pub mod tls;

/// Shared by the crate's property tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// Cases per property: `PROPTEST_CASES` for long runs, else the given CI default.
    pub fn proptest_cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}
