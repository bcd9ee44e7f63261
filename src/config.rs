//! The one configuration struct, its defaults, and the layering
//! default -> TOML file -> `SUREPUSH_*` environment -> command-line flags.
//!
//! Environment variables name a config key in upper case with `__` between table and key:
//! `SUREPUSH_LISTEN`, `SUREPUSH_STORAGE__DURABILITY`, `SUREPUSH_PUSH__HEARTBEAT_SECS`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the database, certificate and signing key live.
    pub data_dir: PathBuf,
    /// Serve plain HTTP instead of TLS (only behind a TLS-terminating load balancer).
    pub insecure_http: bool,
    /// Log format: "text" or "json".
    pub log_format: String,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub push: PushConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub cors: CorsConfig,
    pub jobs: JobsConfig,
    pub admin: AdminConfig,
    pub server: ServerConfig,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Reverse proxies (CIDR blocks or single addresses, e.g. ["10.0.0.0/8", "::1"])
    /// whose forwarded client address is believed. Requests from other peers are taken
    /// at their TCP address. Per-address limits, the admin lockout and the logs then
    /// see the client behind the proxy; connections from a listed proxy are not held to
    /// `limits.max_connections_per_ip`.
    pub trusted_proxies: Vec<crate::cidr::Cidr>,
    /// The header those proxies put the client in: "x-forwarded-for" or "forwarded"
    /// (RFC 7239). Only this one is read.
    pub client_ip_header: ClientIpHeader,
}

/// Where trusted proxies put the client's address.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    Forwarded,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin web UI under /admin/.
    pub enabled: bool,
    /// A session ends after this long without a request.
    pub session_idle_secs: u64,
    /// A session ends this long after login, active or not.
    pub session_max_secs: u64,
    /// Failed logins (per user name, and per client address) before a lockout.
    pub lockout_failures: u32,
    /// How long a lockout lasts; failures older than this are forgotten.
    pub lockout_secs: u64,
    /// How often the dashboard's statistics are pushed while someone watches it.
    pub stats_interval_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            session_idle_secs: 3600,
            session_max_secs: 12 * 3600,
            lockout_failures: 5,
            lockout_secs: 900,
            stats_interval_ms: 2000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Attempts when the enqueue does not say, and the most it may ask for.
    pub default_max_attempts: u32,
    pub max_attempts_limit: u32,
    /// Largest payload, and largest result, as JSON text.
    pub max_payload_bytes: usize,
    /// Lease length when the worker does not say, and the longest allowed.
    pub lease_secs_default: u64,
    pub lease_secs_max: u64,
    /// Longest a lease request may wait for jobs.
    pub wait_secs_max: u64,
    /// Most jobs one lease request may take.
    pub max_lease_batch: usize,
    /// Retry delay: base * 2^(attempt-1), capped.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            default_max_attempts: 5,
            max_attempts_limit: 100,
            max_payload_bytes: 256 << 10,
            lease_secs_default: 30,
            lease_secs_max: 3600,
            wait_secs_max: 60,
            max_lease_batch: 100,
            backoff_base_ms: 1000,
            backoff_max_ms: 300_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins whose pages may call the push and publish endpoints with the caller's
    /// cookie, e.g. ["https://app.example.com"]. "*" lets any other page read what needs
    /// no credentials (public topics, or a token it sends itself in `Authorization`),
    /// never with cookies; "null" (sandboxed frames, file://) is never credentialed.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}

/// What CORS grants a page of some origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorsGrant {
    /// Listed by name: the page may call with the caller's cookie.
    Credentialed,
    /// Only through "*": the page may read answers, without credentials.
    Anonymous,
}

impl CorsConfig {
    /// Listed by name ("null" never is): cookies may come along.
    pub fn lists(&self, origin: &str) -> bool {
        origin != "null" && self.allowed_origins.iter().any(|o| o == origin)
    }

    pub fn grant(&self, origin: &str) -> Option<CorsGrant> {
        if self.lists(origin) {
            Some(CorsGrant::Credentialed)
        } else if self.allowed_origins.iter().any(|o| o == "*") {
            Some(CorsGrant::Anonymous)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require tokens. `false` is for development only: anyone who reaches the port
    /// may publish and subscribe (a warning is logged at start).
    pub enabled: bool,
    /// "HS256" (shared secret; `surepush token` mints with it), "RS256" or "ES256"
    /// (verify with a public key; tokens are minted elsewhere).
    pub algorithm: String,
    /// HS256 secret; unset = `<data_dir>/signing.key`, generated on first run.
    pub key_file: Option<PathBuf>,
    /// RS256/ES256 public key (PEM).
    pub public_key_file: Option<PathBuf>,
    /// Keys still accepted during a rotation (same algorithm), e.g. the previous secret.
    pub previous_key_files: Vec<PathBuf>,
    /// Tolerance for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Patterns anyone may subscribe to without a token, e.g. ["news/**"].
    pub public_topics: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            algorithm: "HS256".into(),
            key_file: None,
            public_key_file: None,
            previous_key_files: Vec::new(),
            leeway_secs: 30,
            public_topics: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; empty = `<data_dir>/tls/cert.pem`, self-signed on first run.
    pub cert_file: Option<PathBuf>,
    /// PEM private key; empty = `<data_dir>/tls/key.pem`.
    pub key_file: Option<PathBuf>,
    /// `Strict-Transport-Security: max-age` sent over TLS; 0 sends none. Browsers keep
    /// it only from a certificate they trust (not after clicking through a warning for
    /// the self-signed one).
    pub hsts_max_age_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            // 180 days
            hsts_max_age_secs: 15_552_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every acknowledged publish has been fsynced; concurrent publishes share one flush.
    FlushEveryWrite,
    /// Publishes are gathered for up to `group_commit_ms`, flushed together, then acknowledged.
    GroupCommit,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub durability: Durability,
    /// Gathering window for `group_commit` durability.
    pub group_commit_ms: u64,
    /// Events older than this are deleted (0 = keep forever).
    pub retention_max_age_secs: u64,
    /// At most this many events are kept per topic (0 = no limit).
    pub retention_max_events_per_topic: u64,
    /// Oldest events are deleted while the database is larger than this (0 = no limit).
    pub retention_max_disk_bytes: u64,
    /// How often retention runs.
    pub retention_interval_secs: u64,
    /// sled page cache size: sled holds the index, topic metadata and jobs (events are in
    /// segment files, read through the OS page cache), so an appliance needs little.
    pub cache_bytes: u64,
    /// Size at which the event log starts a new segment file; retention frees disk a
    /// whole segment at a time (0 = 1/64 of `retention_max_disk_bytes`, within 1-4 MiB).
    pub segment_bytes: u64,
    /// Retention deletes the oldest events (whole segments) while less than this is free
    /// on the data disk, to keep headroom (0 = no such rule).
    pub min_free_disk_bytes: u64,
    /// New events and jobs are refused (507) while less than this is free on the data
    /// disk; they resume once space is freed (0 = no mark: only a full disk refuses).
    pub flood_free_disk_bytes: u64,
    /// Recent events kept in memory, pre-encoded, for fan-out without disk reads.
    pub recent_events_in_memory: usize,
    /// After this many seconds of continuously failing storage probes the server exits
    /// with code 75 (EX_TEMPFAIL) so its supervisor restarts it on a freshly opened
    /// database (0 = never exit).
    pub fatal_after_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Heartbeat (`surepush.ping`) interval on SSE streams.
    pub heartbeat_secs: u64,
    /// `retry:` sent on streams, randomised per connection in this range.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// `retry:` sent in close mode, where reconnecting is the normal path.
    pub close_retry_min_ms: u64,
    pub close_retry_max_ms: u64,
    /// Size of the padding comment at the start of an SSE response.
    pub padding_bytes: usize,
    /// After the first event is ready, wait this long to batch more (close mode, long poll).
    pub batch_window_ms: u64,
    /// Default and maximum `timeout` for long polling and close mode.
    pub poll_timeout_default_secs: u64,
    pub poll_timeout_max_secs: u64,
    /// Default and maximum `limit` of events per poll response.
    pub poll_limit_default: usize,
    pub poll_limit_max: usize,
    /// Maximum `topic` parameters per subscription.
    pub max_topics_per_subscription: usize,
    /// A stream the client has not read from for this long (its buffers full) is closed.
    pub slow_consumer_timeout_secs: u64,
    /// Kernel send buffer per connection (0 = system default). Bounds what a slow client holds.
    pub socket_send_buffer_bytes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_event_data_bytes: usize,
    pub max_batch_len: usize,
    /// Open connections from one client IP (0 = no limit). Offices behind one NAT
    /// address share it: size it for the largest site.
    pub max_connections_per_ip: u32,
    /// Open connections in total; beyond it the server stops accepting until some close.
    /// Both limits also cap open SSE streams and long polls, whatever the HTTP version.
    pub max_connections: usize,
    /// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS;
    /// process-wide: the last server started in a process sets it for all).
    pub h2_max_streams_per_connection: u32,
    /// Events a second each token subject may publish (0 = no limit), and the burst.
    pub publish_rate_per_sec: u64,
    pub publish_burst: u64,
    /// A client must send its request head within this time (slowloris).
    pub header_timeout_ms: u64,
    /// A request body must arrive within this time in all (1 MiB at 256 kbit/s: ~33 s),
    pub body_timeout_ms: u64,
    /// and with no pause longer than this; else 408 and the connection is closed.
    pub body_idle_timeout_ms: u64,
    pub tls_handshake_timeout_ms: u64,
    /// TLS handshakes in progress per worker thread. Silent connections hold a slot until
    /// the handshake timeout: keep this high so they cannot crowd out real clients.
    pub max_pending_handshakes: usize,
    /// Idle keep-alive connections are closed after this.
    pub keep_alive_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("./surepush-data"),
            insecure_http: false,
            log_format: "text".into(),
            tls: TlsConfig::default(),
            storage: StorageConfig::default(),
            push: PushConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            cors: CorsConfig::default(),
            jobs: JobsConfig::default(),
            admin: AdminConfig::default(),
            server: ServerConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::FlushEveryWrite,
            group_commit_ms: 2,
            retention_max_age_secs: 7 * 24 * 3600,
            retention_max_events_per_topic: 10_000,
            retention_max_disk_bytes: 4 << 30,
            retention_interval_secs: 60,
            cache_bytes: 64 << 20,
            segment_bytes: 0,
            min_free_disk_bytes: 256 << 20,
            flood_free_disk_bytes: 64 << 20,
            recent_events_in_memory: 8192,
            fatal_after_secs: 60,
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            heartbeat_secs: 15,
            retry_min_ms: 1000,
            retry_max_ms: 5000,
            close_retry_min_ms: 50,
            close_retry_max_ms: 250,
            padding_bytes: 2048,
            batch_window_ms: 20,
            poll_timeout_default_secs: 25,
            poll_timeout_max_secs: 120,
            poll_limit_default: 100,
            poll_limit_max: 1000,
            max_topics_per_subscription: 32,
            slow_consumer_timeout_secs: 30,
            socket_send_buffer_bytes: 0,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1 << 20,
            max_event_data_bytes: 256 << 10,
            max_batch_len: 1000,
            max_connections_per_ip: 1000,
            max_connections: 25_000,
            h2_max_streams_per_connection: 100,
            publish_rate_per_sec: 10_000,
            publish_burst: 20_000,
            header_timeout_ms: 5000,
            body_timeout_ms: 60_000,
            body_idle_timeout_ms: 10_000,
            tls_handshake_timeout_ms: 3000,
            max_pending_handshakes: 4096,
            keep_alive_secs: 30,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub insecure_http: bool,
    pub log_format: Option<String>,
}

const ENV_PREFIX: &str = "SUREPUSH_";
/// Longer than a day of failing storage is no different from never: use 0.
const MAX_FATAL_AFTER_SECS: u64 = 86_400;
/// `SUREPUSH_*` variables that belong to the command line, not to the config.
const CLI_ENV: [&str; 4] = ["CONFIG", "LOG", "TOKEN", "TEST_VERBOSE"];

impl Config {
    /// Builds the effective configuration from all layers. Returns it with warnings
    /// (unknown `SUREPUSH_*` variables) for the caller to log once logging is up.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let known = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut warnings = Vec::new();
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if CLI_ENV.contains(&key) {
                continue; // read by the CLI itself, not config keys
            }
            let path: Vec<String> = key.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if !key_known(&known, &path) {
                warnings.push(format!(
                    "ignoring unknown environment variable {name} (no config key {})",
                    path.join(".")
                ));
                continue;
            }
            let v = if key_is_array(&known, &path) {
                env_list(&name, &value)?
            } else {
                env_value(&value)
            };
            set_path(&mut tree, &path, v);
        }
        let mut config: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if overrides.insecure_http {
            config.insecure_http = true;
        }
        if let Some(f) = &overrides.log_format {
            config.log_format = f.clone();
        }
        config.validate()?;
        Ok((config, warnings))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let a = &self.admin;
        if a.session_idle_secs == 0 || a.session_max_secs == 0 || a.lockout_failures == 0 {
            return bad("admin session lengths and lockout_failures must be at least 1");
        }
        if a.stats_interval_ms < 100 {
            return bad("admin.stats_interval_ms must be at least 100");
        }
        let p = &self.push;
        if p.heartbeat_secs == 0 {
            return bad("push.heartbeat_secs must be at least 1");
        }
        if p.retry_min_ms > p.retry_max_ms || p.close_retry_min_ms > p.close_retry_max_ms {
            return bad("push retry ranges must have min <= max");
        }
        if p.poll_timeout_default_secs > p.poll_timeout_max_secs {
            return bad("push.poll_timeout_default_secs must not exceed poll_timeout_max_secs");
        }
        if p.poll_limit_default == 0 || p.poll_limit_default > p.poll_limit_max {
            return bad("push.poll_limit_default must be 1..=poll_limit_max");
        }
        if p.max_topics_per_subscription == 0 {
            return bad("push.max_topics_per_subscription must be at least 1");
        }
        if self.limits.max_batch_len == 0 || self.limits.max_body_bytes < 64 {
            return bad("limits.max_batch_len must be >= 1 and limits.max_body_bytes >= 64");
        }
        if self.limits.header_timeout_ms == 0 || self.limits.max_connections == 0 {
            return bad("limits.header_timeout_ms and limits.max_connections must be at least 1");
        }
        if self.limits.h2_max_streams_per_connection == 0 {
            return bad("limits.h2_max_streams_per_connection must be at least 1");
        }
        if self.limits.body_timeout_ms == 0 || self.limits.body_idle_timeout_ms == 0 {
            return bad(
                "limits.body_timeout_ms and limits.body_idle_timeout_ms must be at least 1",
            );
        }
        let j = &self.jobs;
        if j.default_max_attempts == 0
            || j.default_max_attempts > j.max_attempts_limit
            || j.lease_secs_default == 0
            || j.lease_secs_default > j.lease_secs_max
            || j.max_lease_batch == 0
        {
            return bad("jobs: attempts, lease and batch settings must be positive and defaults within their maxima");
        }
        if self.storage.retention_interval_secs == 0 {
            return bad("storage.retention_interval_secs must be at least 1");
        }
        if self.storage.fatal_after_secs > MAX_FATAL_AFTER_SECS {
            return bad("storage.fatal_after_secs must be 0 (never exit) or at most 86400 (a day)");
        }
        if !matches!(self.auth.algorithm.as_str(), "HS256" | "RS256" | "ES256") {
            return bad("auth.algorithm must be \"HS256\", \"RS256\" or \"ES256\"");
        }
        if self.auth.algorithm != "HS256" && self.auth.public_key_file.is_none() {
            return bad("auth.public_key_file is required for RS256 and ES256");
        }
        for p in &self.auth.public_topics {
            if let Err(e) = crate::model::Pattern::parse(p) {
                return Err(ConfigError::Invalid(format!("auth.public_topics: {e}")));
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be \"text\" or \"json\"");
        }
        Ok(())
    }

    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls").join("cert.pem"))
    }

    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls").join("key.pem"))
    }

    /// The HS256 secret file.
    pub fn signing_key_path(&self) -> PathBuf {
        self.auth
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing.key"))
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// The effective configuration as TOML (this config has no secrets of its own yet;
    /// key material lives in files and is referred to by path).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn key_known(known: &toml::Table, path: &[String]) -> bool {
    let mut table = known;
    for (i, part) in path.iter().enumerate() {
        match table.get(part) {
            Some(toml::Value::Table(t)) if i + 1 < path.len() => table = t,
            Some(toml::Value::Table(_)) => return false,
            Some(_) => return i + 1 == path.len(),
            // Option fields serialise to nothing when None; accept known optional leaves.
            None => return i + 1 == path.len() && optional_leaf(&path[..i], part),
        }
    }
    false
}

fn key_is_array(known: &toml::Table, path: &[String]) -> bool {
    let mut table = known;
    for (i, part) in path.iter().enumerate() {
        match table.get(part) {
            Some(toml::Value::Table(t)) if i + 1 < path.len() => table = t,
            Some(toml::Value::Array(_)) => return i + 1 == path.len(),
            _ => return false,
        }
    }
    false
}

fn optional_leaf(table: &[String], key: &str) -> bool {
    (table == ["tls"] && matches!(key, "cert_file" | "key_file"))
        || (table == ["auth"] && matches!(key, "key_file" | "public_key_file"))
}

/// A list-valued environment variable: `a, b` (comma-separated), or a TOML/JSON list
/// `["a", "b"]`. Seen: `["http://x"]` silently became the one literal origin `["http://x"]`.
fn env_list(name: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    let trimmed = raw.trim();
    if trimmed.starts_with('[') {
        let table: toml::Table = toml::from_str(&format!("v = {trimmed}")).map_err(|e| {
            ConfigError::Invalid(format!(
                "{name} is not a list: write a, b or [\"a\", \"b\"] ({})",
                e.message()
            ))
        })?;
        let list = table
            .get("v")
            .cloned()
            .unwrap_or(toml::Value::Array(Vec::new()));
        if let toml::Value::Array(items) = &list {
            if let Some(other) = items.iter().find(|v| !v.is_str()) {
                return Err(ConfigError::Invalid(format!(
                    "{name}: list items must be strings, found {other}"
                )));
            }
        }
        return Ok(list);
    }
    if trimmed.contains(['"', '\'']) {
        return Err(ConfigError::Invalid(format!(
            "{name} has quotes outside a [...] list: write a, b or [\"a\", \"b\"]"
        )));
    }
    Ok(toml::Value::Array(
        trimmed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| toml::Value::String(s.to_string()))
            .collect(),
    ))
}

/// An environment value as TOML: booleans and numbers keep their type, anything else is a string.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    toml::Value::String(raw.to_string())
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = match path.split_last() {
        Some(x) => x,
        None => return,
    };
    let mut table = tree;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return,
        };
    }
    table.insert(last.clone(), value);
}

/// The commented configuration `surepush init` writes; a test parses it, so it cannot drift.
pub const EXAMPLE_CONFIG: &str = include_str!("../packaging/surepush.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_file() {
        let (c, w) = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
    }

    #[test]
    fn precedence_flag_over_env_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:1000\"\ndata_dir = \"/file\"\n[push]\nheartbeat_secs = 7\n",
        )
        .unwrap();
        let (c, _) = Config::load(Some(&f), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 1000);
        assert_eq!(c.push.heartbeat_secs, 7);
        let e = env(&[
            ("SUREPUSH_LISTEN", "127.0.0.1:2000"),
            ("SUREPUSH_DATA_DIR", "/env"),
            ("SUREPUSH_PUSH__HEARTBEAT_SECS", "9"),
            ("SUREPUSH_STORAGE__DURABILITY", "group_commit"),
            ("OTHER", "x"),
        ]);
        let (c, w) = Config::load(Some(&f), e.clone(), &Overrides::default()).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(c.push.heartbeat_secs, 9);
        assert_eq!(c.storage.durability, Durability::GroupCommit);
        let o = Overrides {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            data_dir: None,
            insecure_http: true,
            log_format: None,
        };
        let (c, _) = Config::load(Some(&f), e, &o).unwrap();
        assert_eq!(c.listen.port(), 3000);
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert!(c.insecure_http);
    }

    #[test]
    fn unknown_env_warns_unknown_file_key_fails() {
        let (_, w) = Config::load(
            None,
            env(&[("SUREPUSH_NOPE", "1"), ("SUREPUSH_PUSH__NOPE", "1")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(Some(&f), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        std::fs::write(&f, "listen = [").unwrap();
        assert!(matches!(
            Config::load(Some(&f), env(&[]), &Overrides::default()),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn tls_paths_from_env() {
        let (c, w) = Config::load(
            None,
            env(&[("SUREPUSH_TLS__CERT_FILE", "/etc/c.pem")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(w.is_empty());
        assert_eq!(c.cert_path(), PathBuf::from("/etc/c.pem"));
    }

    #[test]
    fn list_variables_take_commas_or_a_list() {
        let load = |v: &str| {
            Config::load(
                None,
                env(&[("SUREPUSH_CORS__ALLOWED_ORIGINS", v)]),
                &Overrides::default(),
            )
            .map(|(c, _)| c.cors.allowed_origins)
        };
        let both = vec![
            "http://a.example".to_string(),
            "https://b.example".to_string(),
        ];
        assert_eq!(load("http://a.example, https://b.example").unwrap(), both);
        assert_eq!(
            load("[\"http://a.example\", \"https://b.example\"]").unwrap(),
            both
        );
        assert_eq!(
            load(" ['http://a.example','https://b.example'] ").unwrap(),
            both
        );
        assert_eq!(load("[]").unwrap(), Vec::<String>::new());
        // seen: the JSON list became the one literal origin `["http://a.example"]`
        for bad in ["[\"http://a.example\"", "\"http://a.example\"", "[1, 2]"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(
                e.contains("SUREPUSH_CORS__ALLOWED_ORIGINS") || e.contains("allowed_origins"),
                "{bad}: {e}"
            );
        }
        let e = Config::load(
            None,
            env(&[(
                "SUREPUSH_SERVER__TRUSTED_PROXIES",
                "[\"10.0.0.0/8\", \"::1\"]",
            )]),
            &Overrides::default(),
        )
        .unwrap()
        .0;
        assert_eq!(e.server.trusted_proxies.len(), 2);
    }

    #[test]
    fn invalid_values_are_refused() {
        let e = env(&[("SUREPUSH_PUSH__HEARTBEAT_SECS", "0")]);
        assert!(Config::load(None, e, &Overrides::default()).is_err());
        let e = env(&[("SUREPUSH_STORAGE__DURABILITY", "sometimes")]);
        assert!(Config::load(None, e, &Overrides::default()).is_err());
        let e = env(&[("SUREPUSH_STORAGE__FATAL_AFTER_SECS", "86401")]);
        let err = Config::load(None, e, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("fatal_after_secs"), "{err}");
        for ok in ["0", "3", "86400"] {
            let e = env(&[("SUREPUSH_STORAGE__FATAL_AFTER_SECS", ok)]);
            let (c, _) = Config::load(None, e, &Overrides::default()).unwrap();
            assert_eq!(c.storage.fatal_after_secs.to_string(), ok);
        }
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let parsed: Config = toml::from_str(EXAMPLE_CONFIG).unwrap();
        assert_eq!(parsed, Config::default());
    }
}
