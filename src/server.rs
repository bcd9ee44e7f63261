//! Building the server: state, listener, TLS, background tasks, graceful shutdown, and
//! telling systemd about it (READY=1 once listening, STOPPING=1 on the way out).

use std::any::Any;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Extensions;
use actix_web::{web, App, HttpServer};
use thiserror::Error;
use tokio::sync::watch;

use crate::admin::{Admin, UserError};
use crate::auth::{Authenticator, KeyError};
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{ConnLimiter, RateLimiter};
use crate::metrics::Metrics;
use crate::stall::StallWatch;
use crate::store::{blocking, now_ms, EventLog, StoreError};
use crate::subscribers::Registry;
use crate::systemd::Notifier;
use crate::tls::{self, TlsError};

/// sysexits.h EX_TEMPFAIL: a temporary failure; running again may succeed.
pub const EX_TEMPFAIL: u8 = 75;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot load the token keys: {0}")]
    Keys(#[from] KeyError),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot set up the admin users: {0}")]
    AdminUsers(#[from] UserError),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    /// Storage probes failed for `storage.fatal_after_secs`: only a fresh process, which
    /// re-opens the database, can heal (sled keeps failing once an IO error happened).
    #[error(
        "storage has failed for {failing_secs} s without a successful probe (last error: \
         {last_error}); exiting with code 75 so that the service manager restarts surepush \
         on a freshly opened database"
    )]
    StorageFatal {
        failing_secs: u64,
        last_error: String,
    },
    #[error("the storage health task failed: {0}")]
    Health(String),
}

impl ServerError {
    /// The process exit code for this error: 75 (EX_TEMPFAIL) when a restart may heal
    /// it, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::StorageFatal { .. } => EX_TEMPFAIL,
            _ => 1,
        }
    }
}

/// Everything a handler needs, built once and cloned cheaply.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub log: Arc<EventLog>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub stalls: Arc<StallWatch>,
    pub conns: Arc<ConnLimiter>,
    pub publish_rate: Arc<RateLimiter>,
    /// Becomes true when the server is shutting down: streams say goodbye and end.
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
    /// Open SSE streams and waiting long polls, for the admin UI.
    pub subscribers: Arc<Registry>,
    pub admin: Arc<Admin>,
}

impl AppState {
    /// Open subscriptions allowed per client address and in all: the connection limits,
    /// applied to streams and long polls whatever the HTTP version.
    pub fn subscription_caps(&self) -> crate::subscribers::Caps {
        crate::subscribers::Caps {
            per_ip: self.config.limits.max_connections_per_ip,
            total: self.config.limits.max_connections,
        }
    }
}

/// Per-connection facts captured when the connection is accepted.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub fd: RawFd,
}

/// Prepares the data directory: database dir, certificate (self-signed on first run when
/// the default paths are used) and signing key.
pub fn prepare_data_dir(config: &Config) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    if !config.insecure_http
        && tls::ensure_self_signed(
            &config.cert_path(),
            &config.key_path(),
            &tls::default_names(),
        )?
    {
        tracing::info!(cert = %config.cert_path().display(), "created a self-signed certificate");
    }
    if config.auth.key_file.is_none() {
        tls::ensure_signing_key(&config.signing_key_path())?;
    }
    if config.admin.enabled && crate::admin::users::ensure_first_admin(&config.data_dir)?.is_some()
    {
        tracing::info!(
            password_file = %config.data_dir.join(crate::admin::users::INITIAL_PASSWORD_FILE).display(),
            "created the first admin user \"admin\"; its password is in the password file"
        );
    }
    Ok(())
}

fn on_connect(
    socket_send_buffer: usize,
    conns: Arc<ConnLimiter>,
) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    move |conn, ext| {
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        let tcp = if let Some(tls) = conn.downcast_ref::<Tls>() {
            Some(tls.get_ref().0)
        } else {
            conn.downcast_ref::<actix_web::rt::net::TcpStream>()
        };
        if let Some(tcp) = tcp {
            // Small writes (events, heartbeats, job answers) go out at once, not after
            // Nagle's ~40 ms wait for an ACK.
            let _ = tcp.set_nodelay(true);
            if socket_send_buffer > 0 {
                let _ = socket2::SockRef::from(tcp).set_send_buffer_size(socket_send_buffer);
            }
            ext.insert(ConnInfo {
                fd: tcp.as_raw_fd(),
            });
            if let Ok(peer) = tcp.peer_addr() {
                ext.insert(conns.open(peer.ip()));
            }
        }
    }
}

/// Runs the server on an already bound listener until `shutdown` resolves, then stops
/// gracefully: streams are told to reconnect, in-flight requests finish, the log is flushed.
pub async fn run(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    prepare_data_dir(&config)?;
    let auth = Arc::new(Authenticator::from_config(&config)?);
    if !auth.enabled() {
        tracing::warn!(
            "auth.enabled = false: anyone who reaches this port may publish and subscribe"
        );
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new();
    let log = {
        let (path, storage, hub, metrics) = (
            config.db_path(),
            config.storage.clone(),
            hub.clone(),
            metrics.clone(),
        );
        Arc::new(blocking(move || EventLog::open(&path, &storage, hub, metrics)).await?)
    };
    let stalls = StallWatch::new(metrics.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        config: config.clone(),
        auth,
        log: log.clone(),
        hub,
        metrics,
        stalls: stalls.clone(),
        conns: ConnLimiter::new(
            config.limits.max_connections_per_ip,
            config.server.trusted_proxies.clone(),
        ),
        publish_rate: Arc::new(RateLimiter::new(
            config.limits.publish_rate_per_sec,
            config.limits.publish_burst,
        )),
        shutdown: shutdown_rx,
        started: Instant::now(),
        subscribers: Registry::new(),
        admin: Admin::new(&config.data_dir, &config.admin),
    };

    let notifier = Arc::new(Notifier::from_env());
    let health_state = state.clone();
    let background = vec![
        tokio::spawn(stalls.run()),
        tokio::spawn(retention_loop(state.clone())),
        tokio::spawn(receipts_loop(state.clone())),
        tokio::spawn(lease_expiry_loop(state.clone())),
        tokio::spawn(crate::http::admin::stats_loop(state.clone())),
    ];

    let local = listener.local_addr().map_err(ServerError::Listen)?;
    let server = build_http_server(&config, listener, web::Data::new(state))?;
    let handle = server.handle();
    // The server future processes the stop command itself, so it runs as its own task.
    let mut server = tokio::spawn(server);
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    notifier.ready(&format!("serving on {scheme}://{local}"));
    // Ends only when storage has failed for storage.fatal_after_secs.
    let mut health = tokio::spawn(crate::health::watch(health_state, notifier.clone()));

    let result = tokio::select! {
        r = &mut server => match r {
            Ok(r) => r.map_err(ServerError::Http),
            Err(e) => Err(ServerError::Http(std::io::Error::other(e.to_string()))),
        },
        fatal = &mut health => {
            let e = fatal.unwrap_or_else(|e| ServerError::Health(e.to_string()));
            tracing::error!("{e}");
            notifier.stopping("storage failed; exiting with code 75 for a restart");
            stop_http(&shutdown_tx, &handle, server).await;
            Err(e)
        }
        _ = shutdown => {
            tracing::info!("shutting down: telling streams to reconnect");
            notifier.stopping("shutting down");
            stop_http(&shutdown_tx, &handle, server).await;
            Ok(())
        }
    };
    health.abort();
    for task in background {
        task.abort();
    }
    let closed = log.close().await;
    match (result, closed) {
        (Ok(()), Ok(())) => {
            tracing::info!("stopped; the log is flushed");
            Ok(())
        }
        (Ok(()), Err(e)) => Err(e.into()),
        (Err(e), closed) => {
            if let Err(c) = closed {
                tracing::error!(error = %c, "the log could not be flushed while stopping");
            }
            Err(e)
        }
    }
}

/// Graceful HTTP stop: streams are told to reconnect and get to write their goodbye,
/// in-flight requests finish (up to the shutdown timeout), then the server task ends.
async fn stop_http(
    shutdown_tx: &watch::Sender<bool>,
    handle: &actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let _ = shutdown_tx.send(true);
    // Let streams write their goodbye before connections are closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.stop(true).await;
    let _ = server.await;
}

/// Builds the actix server (kept out of `run` so no builder lives across an await).
fn build_http_server(
    config: &Config,
    listener: std::net::TcpListener,
    data: web::Data<AppState>,
) -> Result<actix_web::dev::Server, ServerError> {
    let conns = data.conns.clone();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let limits = &config.limits;
    // one HTTP/2 connection cannot open streams without bound (vendor/actix-http patch)
    actix_http::h2::set_max_concurrent_streams(limits.h2_max_streams_per_connection);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(crate::http::guard::guard))
            .configure(crate::http::configure)
    })
    .workers(workers)
    .on_connect(on_connect(config.push.socket_send_buffer_bytes, conns))
    .backlog(4096)
    .max_connections(limits.max_connections.div_ceil(workers))
    .max_connection_rate(limits.max_pending_handshakes)
    .keep_alive(Duration::from_secs(limits.keep_alive_secs))
    .client_request_timeout(Duration::from_millis(limits.header_timeout_ms))
    // A client that closes its side has gone (browsers, EventSource and proxies never
    // half-close and then wait for a response), so its stream ends at once, as nginx
    // does, instead of holding its socket and subscription until the next heartbeat
    // write fails.
    .h1_allow_half_closed(false)
    .tls_handshake_timeout(Duration::from_millis(limits.tls_handshake_timeout_ms))
    .shutdown_timeout(5)
    .disable_signals();
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    let server = if config.insecure_http {
        server.listen(listener).map_err(ServerError::Listen)?
    } else {
        let certs = tls::CertStore::load(&config.cert_path(), &config.key_path())?;
        tokio::spawn(reload_on_sighup(certs.clone()));
        let tls = tls::server_config(certs)?;
        server
            .listen_rustls_0_23(listener, tls)
            .map_err(ServerError::Listen)?
    };
    for addr in server.addrs() {
        tracing::info!("listening on {scheme}://{addr}");
    }
    Ok(server.run())
}

/// SIGHUP re-reads the certificate and key; open connections are untouched.
async fn reload_on_sighup(certs: Arc<tls::CertStore>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: certificate reload failed; keeping the current one")
            }
        }
    }
}

/// Returns jobs whose lease expired (with backoff) or dead-letters them, every second.
async fn lease_expiry_loop(state: AppState) {
    use crate::store::job_ops::{Backoff, JobOp, JobReply};
    let backoff = Backoff {
        base_ms: state.config.jobs.backoff_base_ms,
        max_ms: state.config.jobs.backoff_max_ms,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        loop {
            match state.log.job(JobOp::ExpireLeases { backoff }).await {
                Ok(JobReply::Expired { returned, dead }) => {
                    if returned + dead > 0 {
                        tracing::info!(returned, dead, "job leases expired");
                    }
                    if returned + dead < 1000 {
                        break;
                    }
                }
                Ok(_) => break,
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!(error = %e, "lease expiry failed");
                    break;
                }
            }
        }
    }
}

/// Writes delivered marks every 200 ms and lets receipts go with their events.
async fn receipts_loop(state: AppState) {
    const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
    let max_age_ms = match state.config.storage.retention_max_age_secs {
        0 => WEEK_MS,
        secs => secs.saturating_mul(1000),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        match state.log.tend_receipts(max_age_ms, now_ms()).await {
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "cannot write delivery receipts"),
        }
    }
}

async fn retention_loop(state: AppState) {
    let policy = crate::store::RetentionPolicy::from_config(&state.config.storage);
    let every = Duration::from_secs(state.config.storage.retention_interval_secs);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        loop {
            match state.log.retain(policy, now_ms()).await {
                Ok(report) => {
                    if report.deleted() > 0 {
                        tracing::info!(?report, "retention deleted events");
                    }
                    if !report.more {
                        break;
                    }
                }
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!(error = %e, "retention failed");
                    break;
                }
            }
        }
    }
}
