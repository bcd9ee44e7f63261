#![allow(dead_code)]
//! Shared test harness: the real server in-process (or as a child process), real
//! TLS clients, SSE parsing, and the hostile proxy.

pub mod admin;
pub mod browser;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use surepush::config::Config;
use tokio::sync::oneshot;

pub fn init() {
    surepush::tls::install_crypto_provider();
}

/// A config for tests: loopback, port 0, the given data dir, short heartbeats.
pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.push.heartbeat_secs = 1;
    c.push.batch_window_ms = 5;
    // Suites about delivery run open; tests/auth.rs turns auth on.
    c.auth.enabled = false;
    c.limits.publish_rate_per_sec = 0;
    c
}

/// The real server, in this process, on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub data_dir: PathBuf,
    _dir: Option<Arc<tempfile::TempDir>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut s = Self::start_in(dir.path(), f).await;
        s._dir = Some(dir);
        s
    }

    /// Starts on an existing data dir (to restart a server on the same data).
    pub async fn start_in(data_dir: &Path, f: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_at(data_dir, "127.0.0.1:0".parse().unwrap(), f).await
    }

    /// Starts on a given address (to restart a server where a proxy expects it).
    pub async fn start_at(
        data_dir: &Path,
        addr: SocketAddr,
        f: impl FnOnce(&mut Config),
    ) -> TestServer {
        init();
        let mut config = test_config(data_dir);
        f(&mut config);
        let listener = bind_retrying(addr);
        let addr = listener.local_addr().unwrap();
        let scheme = if config.insecure_http {
            "http"
        } else {
            "https"
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let r = surepush::server::run(config, listener, async {
                let _ = rx.await;
            })
            .await;
            if let Err(e) = r {
                panic!("server failed: {e}");
            }
        });
        let s = TestServer {
            addr,
            base_url: format!("{scheme}://{addr}"),
            data_dir: data_dir.to_path_buf(),
            _dir: None,
            stop: Some(tx),
            task: Some(task),
        };
        s.wait_healthy().await;
        s
    }

    pub async fn wait_healthy(&self) {
        let c = client();
        for _ in 0..200 {
            if let Ok(r) = c.get(self.url("/healthz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server at {} never became healthy", self.base_url);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Graceful stop; returns when the server has flushed and exited.
    pub async fn stop(mut self) -> Option<Arc<tempfile::TempDir>> {
        self.shutdown().await;
        self._dir.take()
    }

    async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("server did not stop within 20 s")
                .expect("server task panicked");
        }
    }

    pub async fn publish(&self, topic: &str, data: Value) -> String {
        publish_to(&self.base_url, topic, data).await
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn bind_retrying(addr: SocketAddr) -> std::net::TcpListener {
    for _ in 0..100 {
        if let Ok(l) = std::net::TcpListener::bind(addr) {
            return l;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot bind {addr}");
}

/// Sum of `surepush_connections{transport="..."}` over HTTP versions.
pub async fn connections(base: &str, transport: &str) -> u64 {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("transport=\"{transport}\"");
    text.lines()
        .filter(|l| l.starts_with("surepush_connections{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A raw TLS connection over `tcp`, trusting any certificate, offering the ALPN
/// protocols given (none: no ALPN).
pub async fn tls_over(
    tcp: tokio::net::TcpStream,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    init();
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CertRecorder::default()))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// A raw TLS connection over `tcp` offering only HTTP/1.1, trusting any certificate.
pub async fn tls_h1(
    tcp: tokio::net::TcpStream,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_over(tcp, &[b"http/1.1"]).await
}

/// HTTPS client trusting the self-signed certificate; ALPN offers h2 and http/1.1.
pub fn client() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// HTTP/1.1 only.
pub fn client_h1() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub async fn publish_to(base: &str, topic: &str, data: Value) -> String {
    let r = client()
        .post(format!("{base}/v1/publish"))
        .json(&serde_json::json!({"topic": topic, "type": "test", "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "publish failed: {:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    v["ids"][0].as_str().unwrap().to_string()
}

/// Every retained event of `pattern` after `since`, paging through `/v1/events`.
pub async fn read_events(base: &str, pattern: &str, since: &str) -> Vec<Value> {
    let c = client();
    let mut since = since.to_string();
    let mut out = Vec::new();
    loop {
        let v: Value = c
            .get(format!(
                "{base}/v1/events?topic={pattern}&since={since}&limit=1000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = v["events"].as_array().unwrap();
        if events.is_empty() {
            return out;
        }
        out.extend(events.iter().cloned());
        since = v["last_id"].as_str().unwrap().to_string();
    }
}

/// Reads SSE events from a response, with per-event timeouts.
pub struct SseReader {
    inner: std::pin::Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> SseReader {
        let s = resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        SseReader { inner: Box::pin(s) }
    }

    /// The next event of any type; None at end of stream or after `wait`.
    pub async fn next_any(&mut self, wait: Duration) -> Option<Event> {
        match tokio::time::timeout(wait, self.inner.next()).await {
            Ok(Some(Ok(e))) => Some(e),
            _ => None,
        }
    }

    /// The next application event (skips surepush.* control events).
    pub async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next_any(left).await?;
            if !e.event.starts_with("surepush.") {
                return Some(e);
            }
        }
    }

    /// Reads until the end of the response (close mode), collecting application events.
    pub async fn until_end(&mut self, wait: Duration) -> (Vec<Event>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inner.next()).await {
                Ok(Some(Ok(e))) => {
                    if !e.event.starts_with("surepush.") {
                        out.push(e);
                    }
                }
                Ok(Some(Err(_))) | Ok(None) => return (out, true),
                Err(_) => return (out, false),
            }
        }
    }
}

/// The real binary as a child process, killed on drop.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub base_url: String,
    /// The last `LOG_LINES_KEPT` lines the server wrote to stderr.
    pub log: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

const LOG_LINES_KEPT: usize = 2000;

impl ChildServer {
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> ChildServer {
        Self::spawn_env(data_dir, extra, &[])
    }

    pub fn spawn_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ChildServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_surepush"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .env_remove("SUREPUSH_CONFIG")
            .env("SUREPUSH_AUTH__ENABLED", "false")
            .env("SUREPUSH_LIMITS__PUBLISH_RATE_PER_SEC", "0")
            // Not the notify socket of whatever runs the tests: tests/notify.rs sets its own.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn surepush");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == LOG_LINES_KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                if !sent {
                    if let Some(i) = line.find("listening on ") {
                        let url = line[i + "listening on ".len()..].trim().to_string();
                        let _ = tx.send(url);
                        sent = true;
                    }
                }
                if std::env::var_os("SUREPUSH_TEST_VERBOSE").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let base_url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not report its address");
        let addr = base_url.rsplit("//").next().unwrap().parse().unwrap();
        ChildServer {
            child,
            addr,
            base_url,
            log,
        }
    }

    /// What the server has written to stderr so far (its last lines), one string.
    pub fn log_text(&self) -> String {
        let lines = self.log.lock().unwrap();
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn sigterm(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for exit up to `wait`; returns the exit status if it exited.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the id sequence number (the part before '-').
pub fn seq_of(id: &str) -> u64 {
    id.split('-').next().unwrap().parse().unwrap()
}

/// A rustls verifier for tests: accepts any server certificate and records the
/// end-entity certificates it was shown.
#[derive(Debug, Default)]
pub struct CertRecorder(pub std::sync::Mutex<Vec<Vec<u8>>>);

impl rustls::client::danger::ServerCertVerifier for CertRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
