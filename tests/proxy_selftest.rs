//! Self-test of the hostile proxy in `tests/support/proxy.rs`: a tiny upstream
//! (TLS or plain) with known timing, raw-socket clients, and timing assertions
//! for every mode.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use support::proxy::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

// ---------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------

/// What the upstream saw for one request.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    alpn: Option<String>,
}

impl Seen {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    fn header_values(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn seen_for(&self, path: &str) -> Seen {
        self.seen()
            .into_iter()
            .find(|s| s.request_line().split(' ').nth(1) == Some(path))
            .unwrap_or_else(|| panic!("upstream never saw {path}: {:?}", self.seen()))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_acceptor() -> TlsAcceptor {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

async fn start_upstream(tls: bool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.then(tls_acceptor);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(sock).await {
                            let alpn = stream
                                .get_ref()
                                .1
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned());
                            serve_upstream(stream, alpn, seen).await;
                        }
                    }
                    None => serve_upstream(sock, None, seen).await,
                }
            });
        }
    });
    Upstream { addr, seen, task }
}

const CHUNKED_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";

async fn send<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) {
    let _ = s.write_all(data).await;
    let _ = s.flush().await;
}

async fn serve_upstream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    alpn: Option<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end..].to_vec();
    let record = Seen { head, alpn };
    let content_length: usize = record
        .header_values("content-length")
        .first()
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    while body.len() < content_length {
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    let path = record
        .request_line()
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .to_string();
    seen.lock().unwrap().push(record);

    let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));
    match path.as_str() {
        "/chunked" => {
            send(&mut s, format!("{CHUNKED_HEAD}6\r\nhello\n\r\n").as_bytes()).await;
            sleep(1500).await;
            send(&mut s, b"6\r\nworld\n\r\n0\r\n\r\n").await;
            // Behave like a keep-alive server that ignores `Connection: close`:
            // the proxy must notice the end of the response by its framing.
            sleep(3000).await;
        }
        "/chunked-ext" => {
            // Chunk extensions, a trailer, and framing split at awkward places.
            send(
                &mut s,
                format!("{CHUNKED_HEAD}6;name=\"v\"\r\nhel").as_bytes(),
            )
            .await;
            sleep(100).await;
            send(&mut s, b"lo\n\r\n6\r").await;
            sleep(100).await;
            send(&mut s, b"\nworld\n\r").await;
            sleep(100).await;
            send(&mut s, b"\n0\r\nX-Checksum: abc\r\n\r\n").await;
        }
        "/len" => {
            send(&mut s, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello\nworld\n").await;
        }
        "/len-slow" => {
            send(
                &mut s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello\n",
            )
            .await;
            sleep(1500).await;
            send(&mut s, b"world\n").await;
        }
        "/slow-idle" => {
            send(&mut s, format!("{CHUNKED_HEAD}6\r\nhello\n\r\n").as_bytes()).await;
            sleep(5000).await;
            send(&mut s, b"0\r\n\r\n").await;
        }
        "/big" => {
            let mut first = format!("{CHUNKED_HEAD}{:x}\r\n", 5000).into_bytes();
            first.extend_from_slice(&[b'a'; 5000]);
            first.extend_from_slice(b"\r\n");
            send(&mut s, &first).await;
            sleep(1500).await;
            send(&mut s, b"6\r\nworld\n\r\n0\r\n\r\n").await;
        }
        "/echo" => {
            let mut resp =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            resp.extend_from_slice(&body);
            send(&mut s, &resp).await;
        }
        _ => {
            send(
                &mut s,
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            )
            .await
        }
    }
    let _ = s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Raw client with timing
// ---------------------------------------------------------------------------

/// Every byte a client received, with when it arrived.
#[derive(Debug)]
struct Timeline {
    /// (time since the request was written, total bytes received so far)
    events: Vec<(Duration, usize)>,
    data: Vec<u8>,
    /// When EOF (or a read error) was seen; `None` if the read timed out.
    closed_at: Option<Duration>,
}

impl Timeline {
    /// When the received bytes first contained `needle`.
    fn time_of(&self, needle: &[u8]) -> Option<Duration> {
        self.events
            .iter()
            .find(|(_, len)| self.data[..*len].windows(needle.len()).any(|w| w == needle))
            .map(|(t, _)| *t)
    }

    fn head_len(&self) -> usize {
        self.data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .expect("no complete response head")
    }

    fn head(&self) -> String {
        String::from_utf8_lossy(&self.data[..self.head_len()]).into_owned()
    }

    fn head_lower(&self) -> String {
        self.head().to_ascii_lowercase()
    }

    fn body(&self) -> &[u8] {
        &self.data[self.head_len()..]
    }

    /// Body bytes received by time `t`.
    fn body_bytes_by(&self, t: Duration) -> usize {
        let head = self.head_len();
        self.events
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |(_, len)| len.saturating_sub(head))
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\nUser-Agent: selftest\r\n\r\n")
}

async fn read_timeline(mut s: TcpStream, start: Instant, limit: Duration) -> Timeline {
    let mut tl = Timeline {
        events: Vec::new(),
        data: Vec::new(),
        closed_at: None,
    };
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                tl.closed_at = Some(start.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                tl.data.extend_from_slice(&buf[..n]);
                tl.events.push((start.elapsed(), tl.data.len()));
            }
            Err(_) => break,
        }
    }
    tl
}

/// Sends `request` through the proxy and records the response until the
/// connection closes (or `limit` passes).
async fn fetch(proxy: &HostileProxy, request: &str, limit: Duration) -> Timeline {
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let start = Instant::now();
    s.write_all(request.as_bytes()).await.unwrap();
    read_timeline(s, start, limit).await
}

/// Connects, sends `request` and reads until `needle` arrived; returns the
/// still-open stream.
async fn open_until(proxy: &HostileProxy, request: &str, needle: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(2), async {
        while !data.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&data));
            data.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("needle did not arrive in time");
    s
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
const WHOLE_CHUNKED: &[u8] = b"6\r\nhello\n\r\n6\r\nworld\n\r\n0\r\n\r\n";

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_streams_first_chunk_at_once() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::Pass, up.addr, true).await;
    assert!(proxy.base_url().starts_with("http://127.0.0.1:"));

    let tl = fetch(&proxy, &get("/chunked"), secs(6.0)).await;
    let hello = tl.time_of(b"hello").expect("hello never arrived");
    assert!(hello < secs(1.0), "first chunk took {hello:?}");
    assert!(tl.head().starts_with("HTTP/1.1 200"), "{}", tl.head());
    let head = tl.head_lower();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(head.matches("connection:").count(), 1, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(tl.body(), WHOLE_CHUNKED);
    // The upstream keeps its socket open 3 s after the terminator: the proxy
    // must end the response by its chunked framing.
    let closed = tl.closed_at.expect("proxy never closed the connection");
    assert!(
        closed >= secs(1.4) && closed < secs(2.8),
        "closed at {closed:?}"
    );

    let seen = up.seen_for("/chunked");
    assert_eq!(seen.request_line(), "GET /chunked HTTP/1.1");
    assert_eq!(seen.header_values("connection"), vec!["close"]);
    assert_eq!(seen.header_values("host"), vec!["localhost"]);
    assert_eq!(seen.header_values("user-agent"), vec!["selftest"]);
    assert_eq!(seen.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(proxy.connections_accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_until_close_holds_chunked_body() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::BufferUntilClose, up.addr, true).await;

    let tl = fetch(&proxy, &get("/chunked"), secs(6.0)).await;
    let head_at = tl.time_of(b"\r\n\r\n").expect("no head");
    assert!(head_at < secs(1.0), "head took {head_at:?}");
    assert_eq!(tl.body_bytes_by(secs(1.3)), 0, "body leaked early: {tl:?}");
    let hello = tl.time_of(b"hello").expect("hello never arrived");
    assert!(hello >= secs(1.4), "hello arrived at {hello:?}");
    assert_eq!(tl.body(), WHOLE_CHUNKED);
    // Everything arrived at once, at the end of the upstream response.
    assert_eq!(tl.time_of(b"hello"), tl.time_of(b"0\r\n\r\n"));
    let closed = tl.closed_at.expect("never closed");
    assert!(closed < secs(2.8), "closed at {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_until_close_passes_content_length() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::BufferUntilClose, up.addr, true).await;

    let tl = fetch(&proxy, &get("/len"), secs(3.0)).await;
    assert!(tl.head().starts_with("HTTP/1.1 200"));
    assert!(tl.head_lower().contains("content-length: 12"));
    assert_eq!(tl.body(), b"hello\nworld\n");
    assert!(tl.closed_at.is_some());

    let tl = fetch(&proxy, &get("/len-slow"), secs(4.0)).await;
    let hello = tl.time_of(b"hello").expect("hello never arrived");
    assert!(hello < secs(1.0), "Content-Length body was held: {hello:?}");
    assert_eq!(tl.body(), b"hello\nworld\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_kb_holds_small_bodies_and_flushes_big_ones() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::BufferKb(4), up.addr, true).await;

    let (small_req, big_req) = (get("/chunked"), get("/big"));
    let (small, big) = tokio::join!(
        fetch(&proxy, &small_req, secs(6.0)),
        fetch(&proxy, &big_req, secs(6.0))
    );

    assert!(small.time_of(b"\r\n\r\n").unwrap() < secs(1.0));
    assert_eq!(
        small.body_bytes_by(secs(1.3)),
        0,
        "small body leaked: {small:?}"
    );
    assert!(small.time_of(b"hello").unwrap() >= secs(1.4));
    assert_eq!(small.body(), WHOLE_CHUNKED);

    let early = big.body_bytes_by(secs(1.3));
    assert!(
        early >= 4096,
        "only {early} bytes before the 4 KiB threshold flush"
    );
    assert!(big.time_of(b"world").unwrap() >= secs(1.4));
    assert!(big.body().ends_with(b"6\r\nworld\n\r\n0\r\n\r\n"));
    assert_eq!(
        big.body().len(),
        4 + 2 + 5000 + 2 + WHOLE_CHUNKED.len() - 11
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kill_closes_silent_connections() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(
        ProxyMode::IdleKill(Duration::from_millis(500)),
        up.addr,
        true,
    )
    .await;

    let tl = fetch(&proxy, &get("/slow-idle"), secs(6.0)).await;
    assert!(tl.time_of(b"hello").unwrap() < secs(1.0));
    let closed = tl.closed_at.expect("idle connection was never closed");
    assert!(
        closed >= secs(0.45) && closed < secs(2.0),
        "closed at {closed:?}"
    );
    assert!(!tl.body().ends_with(b"0\r\n\r\n"));

    // Traffic more often than the idle limit keeps the connection alive.
    let lenient =
        HostileProxy::start(ProxyMode::IdleKill(Duration::from_secs(3)), up.addr, true).await;
    let tl = fetch(&lenient, &get("/chunked"), secs(6.0)).await;
    assert_eq!(tl.body(), WHOLE_CHUNKED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_dechunks_and_closes() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::Http10, up.addr, true).await;

    let tl = fetch(&proxy, &get("/chunked"), secs(6.0)).await;
    let head = tl.head();
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    let lower = tl.head_lower();
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert!(!lower.contains("content-length"), "{head}");
    assert!(lower.contains("connection: close"), "{head}");
    assert_eq!(tl.body(), b"hello\nworld\n");
    let hello = tl.time_of(b"hello").unwrap();
    assert!(hello < secs(1.0), "not streamed: {hello:?}");
    let closed = tl.closed_at.expect("never closed");
    assert!(closed < secs(2.8), "closed at {closed:?}");
    assert_eq!(
        up.seen_for("/chunked").request_line(),
        "GET /chunked HTTP/1.0"
    );
    assert_eq!(
        up.seen_for("/chunked").header_values("connection"),
        vec!["close"]
    );

    let tl = fetch(&proxy, &get("/chunked-ext"), secs(3.0)).await;
    assert_eq!(tl.body(), b"hello\nworld\n", "{tl:?}");
    assert!(!tl.head_lower().contains("x-checksum"));

    let tl = fetch(&proxy, &get("/len"), secs(3.0)).await;
    assert!(tl.head().starts_with("HTTP/1.0 200"));
    assert!(tl.head_lower().contains("content-length: 12"));
    assert_eq!(tl.body(), b"hello\nworld\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_connections_cuts_open_streams() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::Pass, up.addr, true).await;

    let s = open_until(&proxy, &get("/slow-idle"), b"hello").await;
    let cut_at = Instant::now();
    proxy.drop_connections();
    let tl = read_timeline(s, cut_at, secs(3.0)).await;
    let closed = tl.closed_at.expect("stream survived drop_connections");
    assert!(closed < secs(1.0), "closed at {closed:?}");

    // New connections are still served.
    let tl = fetch(&proxy, &get("/len"), secs(3.0)).await;
    assert_eq!(tl.body(), b"hello\nworld\n");
    assert_eq!(proxy.connections_accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_stops_everything() {
    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::Pass, up.addr, true).await;
    let addr = proxy.addr();

    let s = open_until(&proxy, &get("/slow-idle"), b"hello").await;
    let cut_at = Instant::now();
    drop(proxy);
    let tl = read_timeline(s, cut_at, secs(3.0)).await;
    assert!(tl.closed_at.expect("stream survived the proxy") < secs(1.0));

    tokio::time::sleep(Duration::from_millis(100)).await;
    // The listener is gone: connecting fails, or is closed without an answer.
    if let Ok(mut s) = TcpStream::connect(addr).await {
        let _ = s.write_all(get("/len").as_bytes()).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(secs(1.0), s.read_to_end(&mut buf)).await;
        assert!(buf.is_empty(), "dropped proxy still answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_upstream() {
    let up = start_upstream(false).await;
    let proxy = HostileProxy::start(ProxyMode::Pass, up.addr, false).await;

    let tl = fetch(&proxy, &get("/chunked"), secs(6.0)).await;
    assert!(tl.time_of(b"hello").unwrap() < secs(1.0));
    assert_eq!(tl.body(), WHOLE_CHUNKED);

    let post = "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nping=1&x=yz";
    let tl = fetch(&proxy, post, secs(3.0)).await;
    assert!(tl.head().starts_with("HTTP/1.1 200"));
    assert_eq!(tl.body(), b"ping=1&x=yz");
    let seen = up.seen_for("/echo");
    assert_eq!(seen.request_line(), "POST /echo HTTP/1.1");
    assert_eq!(seen.alpn, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_answered_not_panicked() {
    // Nothing listens on this port any more.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let proxy = HostileProxy::start(ProxyMode::Pass, dead, true).await;
    let tl = fetch(&proxy, &get("/len"), secs(3.0)).await;
    assert!(tl.head().starts_with("HTTP/1.1 502"), "{}", tl.head());
    assert!(!tl.body().is_empty());

    let up = start_upstream(true).await;
    let proxy = HostileProxy::start(ProxyMode::Pass, up.addr, true).await;
    let chunked_post =
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let tl = fetch(&proxy, chunked_post, secs(3.0)).await;
    assert!(tl.head().starts_with("HTTP/1.1 501"), "{}", tl.head());

    let tl = fetch(&proxy, "garbage\r\n\r\n", secs(3.0)).await;
    assert!(tl.head().starts_with("HTTP/1.1 400"), "{}", tl.head());

    // Works through reqwest too (what higher-level tests are likely to use).
    let client = reqwest::Client::builder().build().unwrap();
    let text = client
        .get(format!("{}/len", proxy.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "hello\nworld\n");
}
