//! A real, hostile HTTP/1.1 reverse proxy for integration tests.
//!
//! surepush exists because the boxes sitting between a server and a browser
//! (corporate reverse proxies, antivirus gateways, old load balancers) break
//! Server-Sent Events in a handful of well-known ways. This module reproduces
//! those ways on real sockets so tests can prove that every transport still
//! delivers events through them.
//!
//! The proxy accepts plain HTTP/1.1 from clients on `127.0.0.1:0` and forwards
//! each request to one upstream address, over TLS (any certificate accepted,
//! ALPN `http/1.1` only) or plain TCP. It handles one request per client
//! connection: the request goes upstream with `Connection: close`, the response
//! comes back with `Connection: close`, then both connections are closed.
//!
//! Modes ([`ProxyMode`]):
//!
//! * [`ProxyMode::Pass`]: forwards response bytes the moment they arrive. The
//!   well-behaved baseline; SSE works through it.
//! * [`ProxyMode::BufferUntilClose`]: responses without `Content-Length`
//!   (chunked, or delimited by EOF) get their status line and headers at once,
//!   but the body is held until the upstream response ends, then written whole
//!   (chunked framing kept). This is the classic buffering proxy that makes an
//!   endless SSE stream deliver nothing at all; "SSE close-after-batch" and
//!   long polling must still work through it. Responses with a
//!   `Content-Length` pass through unchanged.
//! * [`ProxyMode::BufferKb`]: holds response body bytes (every response) until
//!   N KiB have piled up, then forwards them; the remainder goes out when the
//!   response ends. Models proxies (nginx `proxy_buffering`, some antivirus
//!   scanners) that release data in blocks, so a small event sits stuck.
//! * [`ProxyMode::IdleKill`]: pass-through, but a connection on which no byte
//!   moved in either direction for the given duration has both sides closed.
//!   Models idle timeouts of load balancers; heartbeats must beat it.
//! * [`ProxyMode::DelayWrites`]: pass-through, but each write of a streamed body (chunked
//!   or delimited by EOF) goes out only after the given delay, as HAProxy without
//!   `option http-no-delay` holds small writes (~200 ms each). Bodies with a
//!   `Content-Length` pass at once.
//! * [`ProxyMode::Http10`]: speaks HTTP/1.0 on both sides. The request goes
//!   upstream as `HTTP/1.0`; the client gets an `HTTP/1.0` status line, no
//!   `Transfer-Encoding` (chunked bodies are de-chunked on the fly), no added
//!   `Content-Length`, `Connection: close`, and a body delimited by closing the
//!   connection. Streaming still works but there is no chunked framing.
//!
//! [`HostileProxy::drop_connections`] cuts every open connection (clients see
//! EOF or a reset) to simulate a proxy restart or a network blip;
//! [`HostileProxy::set_down`] makes an outage of it: open connections are cut and
//! new ones closed at once until it is set up again. Dropping the
//! [`HostileProxy`] stops the accept loop and every connection task.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::TlsConnector;

/// Largest request or response head (start line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Size of the read buffer used when relaying bytes.
const READ_BUF: usize = 16 * 1024;
/// Longest accepted chunk-size or trailer line in a chunked body.
const MAX_CHUNK_LINE: usize = 64 * 1024;
/// Bound on connecting (TCP + TLS handshake) to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the response is written, how long to wait for the client to close
/// before closing ourselves (lingering close avoids resetting the client while
/// it still reads).
const LINGER: Duration = Duration::from_secs(2);

/// How the proxy mistreats traffic. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes as they arrive, both directions.
    Pass,
    /// Responses without Content-Length: send status + headers at once, hold
    /// the whole body until the upstream response ends, then send it whole.
    /// Responses with Content-Length pass through unchanged.
    BufferUntilClose,
    /// Hold response body bytes until N KiB are accumulated, then forward the
    /// accumulated bytes; at the end of the response forward the remainder.
    /// Applies to all responses.
    BufferKb(usize),
    /// Pass-through, but close both sides of a connection when no byte moved
    /// in either direction for this long.
    IdleKill(Duration),
    /// Speak HTTP/1.0 on both sides: no chunked encoding, no keep-alive, body
    /// delimited by closing the connection.
    Http10,
    /// Pass-through, but each write of a streamed (not Content-Length) body waits this
    /// long first.
    DelayWrites(Duration),
}

/// A reverse proxy on `127.0.0.1` that forwards to one upstream, misbehaving
/// according to its [`ProxyMode`].
pub struct HostileProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    conns: Arc<ConnRegistry>,
    accept_task: JoinHandle<()>,
}

impl HostileProxy {
    /// Bind `127.0.0.1:0` and start proxying to `upstream` (over TLS when
    /// `upstream_tls`, plain TCP otherwise).
    pub async fn start(mode: ProxyMode, upstream: SocketAddr, upstream_tls: bool) -> HostileProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind hostile proxy listener");
        let addr = listener.local_addr().expect("hostile proxy local addr");
        let tls = upstream_tls.then(|| TlsConnector::from(Arc::new(insecure_client_config())));
        let ctx = Arc::new(Ctx {
            mode,
            upstream,
            tls,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(ConnRegistry::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            ctx,
            Arc::clone(&accepted),
            Arc::clone(&down),
            Arc::clone(&conns),
        ));
        HostileProxy {
            addr,
            accepted,
            down,
            conns,
            accept_task,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Abort every connection currently open; clients see EOF or a reset.
    /// New connections are still accepted.
    pub fn drop_connections(&self) {
        self.conns.abort_all();
    }

    /// An outage while `down`: open connections are cut, new ones closed at once.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.conns.abort_all();
        }
    }

    /// Number of client connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for HostileProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.conns.abort_all();
    }
}

impl std::fmt::Debug for HostileProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileProxy")
            .field("addr", &self.addr)
            .field("accepted", &self.connections_accepted())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Accept loop and connection bookkeeping
// ---------------------------------------------------------------------------

struct Ctx {
    mode: ProxyMode,
    upstream: SocketAddr,
    tls: Option<TlsConnector>,
}

/// Abort handles of the live connection tasks, keyed by connection id.
#[derive(Default)]
struct ConnRegistry {
    map: Mutex<HashMap<u64, AbortHandle>>,
}

impl ConnRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn abort_all(&self) {
        // Take the handles out first: aborting must not run under the lock,
        // since a task's guard removes itself from the map when dropped.
        let taken = std::mem::take(&mut *self.lock());
        for handle in taken.into_values() {
            handle.abort();
        }
    }
}

/// Removes its connection from the registry when the task ends or is aborted.
struct ConnGuard {
    id: u64,
    registry: Arc<ConnRegistry>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    accepted: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    conns: Arc<ConnRegistry>,
) {
    let mut next_id: u64 = 0;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if down.load(Ordering::SeqCst) {
            drop(sock);
            continue;
        }
        accepted.fetch_add(1, Ordering::SeqCst);
        let _ = sock.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        let guard = ConnGuard {
            id,
            registry: Arc::clone(&conns),
        };
        let ctx = Arc::clone(&ctx);
        // Hold the lock across spawn + insert so a task that finishes at once
        // cannot remove itself before it was inserted.
        let mut map = conns.lock();
        let handle = tokio::spawn(async move {
            let _guard = guard;
            serve_connection(sock, &ctx).await;
        });
        map.insert(id, handle.abort_handle());
    }
}

async fn serve_connection(sock: TcpStream, ctx: &Ctx) {
    let activity = Arc::new(Activity::new());
    let work = handle_connection(sock, ctx, &activity);
    match ctx.mode {
        ProxyMode::IdleKill(idle) => {
            // Whichever ends first wins; dropping `work` closes both sockets.
            tokio::select! {
                _ = work => {}
                _ = idle_watch(&activity, idle) => {}
            }
        }
        _ => work.await,
    }
}

/// Resolves once no byte moved for `idle`.
async fn idle_watch(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        if std::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

// ---------------------------------------------------------------------------
// One proxied exchange
// ---------------------------------------------------------------------------

async fn handle_connection(sock: TcpStream, ctx: &Ctx, activity: &Arc<Activity>) {
    let (read_half, write_half) = sock.into_split();
    let mut client_r = Tracked::new(read_half, Arc::clone(activity));
    let mut client_w = Tracked::new(write_half, Arc::clone(activity));
    if let Ok(true) = exchange(&mut client_r, &mut client_w, ctx, activity).await {
        // Lingering close: send FIN, then let the client close first so that
        // unread bytes on our side cannot turn the close into a reset that
        // destroys the tail of the response.
        let _ = client_w.shutdown().await;
        let _ = tokio::time::timeout(LINGER, wait_client_gone(&mut client_r)).await;
    }
}

type ClientR = Tracked<tokio::net::tcp::OwnedReadHalf>;
type ClientW = Tracked<tokio::net::tcp::OwnedWriteHalf>;

/// One request/response exchange. `Ok(true)` when a complete response was
/// written to the client, `Ok(false)` when the client went away.
async fn exchange(
    client_r: &mut ClientR,
    client_w: &mut ClientW,
    ctx: &Ctx,
    activity: &Arc<Activity>,
) -> io::Result<bool> {
    let version = if ctx.mode == ProxyMode::Http10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };

    let (head, leftover) = match read_head(client_r, Vec::new()).await {
        Ok(x) => x,
        Err(HeadError::TooLarge) => {
            return simple_response(
                client_w,
                version,
                "431 Request Header Fields Too Large",
                "request head too large\n",
            )
            .await
            .map(|()| true);
        }
        Err(_) => return Ok(false),
    };
    let Some(req) = parse_request(&head) else {
        return simple_response(client_w, version, "400 Bad Request", "malformed request\n")
            .await
            .map(|()| true);
    };
    if find_header(&req.headers, "transfer-encoding").is_some() {
        return simple_response(
            client_w,
            version,
            "501 Not Implemented",
            "chunked request bodies are not supported by this proxy\n",
        )
        .await
        .map(|()| true);
    }
    let Ok(body_len) = content_length(&req.headers) else {
        return simple_response(client_w, version, "400 Bad Request", "bad content-length\n")
            .await
            .map(|()| true);
    };
    let body_len = body_len.unwrap_or(0);
    let expects_continue = find_header(&req.headers, "expect")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && ctx.mode != ProxyMode::Http10 && body_len > leftover.len() as u64 {
        // We read the body before talking upstream, so answer the expectation
        // ourselves (the Expect header is not forwarded).
        client_w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        client_w.flush().await?;
    }

    let upstream = match connect_upstream(ctx).await {
        Ok(u) => u,
        Err(e) => {
            let body = format!(
                "hostile proxy: upstream {} unreachable: {e}\n",
                ctx.upstream
            );
            return simple_response(client_w, version, "502 Bad Gateway", &body)
                .await
                .map(|()| true);
        }
    };
    let mut up = Tracked::new(upstream, Arc::clone(activity));

    // Request head, then the body (by Content-Length).
    up.write_all(&build_request_head(&req, ctx.mode)).await?;
    let from_leftover = leftover
        .len()
        .min(usize::try_from(body_len).unwrap_or(usize::MAX));
    up.write_all(&leftover[..from_leftover]).await?;
    let mut remaining = body_len - from_leftover as u64;
    if remaining > 0 {
        let mut buf = vec![0u8; READ_BUF];
        while remaining > 0 {
            let want = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = client_r.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(false); // client gave up mid-body
            }
            up.write_all(&buf[..n]).await?;
            remaining -= n as u64;
        }
    }
    up.flush().await?;

    // Relay the response; meanwhile watch the client so that a client going
    // away closes the upstream too (like a real proxy would).
    let finished = {
        let relay = relay_response(&mut up, client_w, req.method == "HEAD", ctx.mode);
        let gone = wait_client_gone(client_r);
        tokio::select! {
            r = relay => Some(r),
            _ = gone => None,
        }
    };
    Ok(matches!(finished, Some(Ok(()))))
}

/// Reads (and discards) from the client until EOF or an error.
async fn wait_client_gone<R: AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn simple_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    version: &str,
    status: &str,
    body: &str,
) -> io::Result<()> {
    let msg = format!(
        "{version} {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    w.write_all(msg.as_bytes()).await?;
    w.flush().await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body at all (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    UntilEof,
}

async fn relay_response<U, W>(
    up: &mut U,
    client: &mut W,
    is_head: bool,
    mode: ProxyMode,
) -> io::Result<()>
where
    U: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client_version = if mode == ProxyMode::Http10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    // Read the final response head, skipping interim 1xx responses.
    let mut carry = Vec::new();
    let (resp, pending) = loop {
        let (head, rest) = match read_head(up, carry).await {
            Ok(x) => x,
            Err(e) => {
                let body = format!("hostile proxy: bad upstream response: {e:?}\n");
                return simple_response(client, client_version, "502 Bad Gateway", &body).await;
            }
        };
        let Some(resp) = parse_response(&head) else {
            return simple_response(
                client,
                client_version,
                "502 Bad Gateway",
                "hostile proxy: malformed upstream status line\n",
            )
            .await;
        };
        if (100..200).contains(&resp.code) && resp.code != 101 {
            carry = rest;
            continue;
        }
        break (resp, rest);
    };

    let chunked = is_chunked(&resp.headers);
    let framing = if is_head || resp.code == 204 || resp.code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match content_length(&resp.headers) {
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => Framing::UntilEof,
            Err(()) => {
                return simple_response(
                    client,
                    client_version,
                    "502 Bad Gateway",
                    "hostile proxy: bad upstream content-length\n",
                )
                .await;
            }
        }
    };

    // Response head to the client.
    let mut out = Vec::with_capacity(512);
    let status_version = if mode == ProxyMode::Http10 {
        "HTTP/1.0"
    } else {
        resp.version.as_str()
    };
    out.extend_from_slice(format!("{status_version} {}", resp.code).as_bytes());
    if !resp.reason.is_empty() {
        out.push(b' ');
        out.extend_from_slice(resp.reason.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    for h in &resp.headers {
        if is_hop_by_hop(&h.name) {
            continue;
        }
        if mode == ProxyMode::Http10 {
            if h.is("transfer-encoding") {
                continue;
            }
            if chunked && h.is("content-length") {
                continue; // invalid alongside chunked; we de-chunk instead
            }
        }
        h.write_to(&mut out);
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    client.write_all(&out).await?;
    client.flush().await?;

    // Body.
    let threshold: Option<usize> = match mode {
        ProxyMode::Pass
        | ProxyMode::IdleKill(_)
        | ProxyMode::Http10
        | ProxyMode::DelayWrites(_) => Some(0),
        ProxyMode::BufferUntilClose => match framing {
            Framing::Length(_) => Some(0),
            _ => None,
        },
        ProxyMode::BufferKb(kb) => Some(kb.saturating_mul(1024)),
    };
    let dechunk = mode == ProxyMode::Http10 && framing == Framing::Chunked;
    let mut framer = BodyFramer::new(framing, dechunk);
    let mut held: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    framer.feed(&pending, &mut held);
    let write_delay = match (mode, framing) {
        (ProxyMode::DelayWrites(_), Framing::Length(_) | Framing::Empty) => None,
        (ProxyMode::DelayWrites(d), _) => Some(d),
        _ => None,
    };
    loop {
        if let Some(t) = threshold {
            if !held.is_empty() && held.len() >= t {
                if let Some(d) = write_delay {
                    tokio::time::sleep(d).await;
                }
                client.write_all(&held).await?;
                client.flush().await?;
                held.clear();
            }
        }
        if framer.done {
            break;
        }
        let n = match up.read(&mut buf).await {
            Ok(0) | Err(_) => break, // upstream ended (or broke) the response
            Ok(n) => n,
        };
        framer.feed(&buf[..n], &mut held);
    }
    if !held.is_empty() {
        client.write_all(&held).await?;
    }
    client.flush().await
}

/// Finds where a response body ends and produces the bytes to forward (raw, or
/// de-chunked when `dechunk`).
struct BodyFramer {
    framing: Framing,
    remaining: u64,
    decoder: ChunkedDecoder,
    dechunk: bool,
    scratch: Vec<u8>,
    done: bool,
}

impl BodyFramer {
    fn new(framing: Framing, dechunk: bool) -> Self {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyFramer {
            framing,
            remaining,
            decoder: ChunkedDecoder::default(),
            dechunk,
            scratch: Vec::new(),
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done || data.is_empty() {
            return;
        }
        match self.framing {
            Framing::Empty => self.done = true,
            Framing::Length(_) => {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                out.extend_from_slice(&data[..take]);
                self.remaining -= take as u64;
                self.done = self.remaining == 0;
            }
            Framing::UntilEof => out.extend_from_slice(data),
            Framing::Chunked if self.dechunk => {
                if self.decoder.feed(data, out).is_err() {
                    self.done = true;
                }
                self.done |= self.decoder.is_done();
            }
            Framing::Chunked => {
                self.scratch.clear();
                match self.decoder.feed(data, &mut self.scratch) {
                    Ok(used) => out.extend_from_slice(&data[..used]),
                    Err(()) => {
                        // Not valid chunked framing: stay transparent and let
                        // the upstream's EOF end the response.
                        out.extend_from_slice(data);
                        self.framing = Framing::UntilEof;
                    }
                }
                self.done |= self.decoder.is_done();
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Incremental decoder for `Transfer-Encoding: chunked`: input may be split
/// anywhere; chunk extensions and trailers are accepted and discarded.
#[derive(Debug, Default)]
struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

impl ChunkedDecoder {
    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Appends decoded data to `out`; returns how many input bytes belong to
    /// the chunked body (less than `input.len()` only once the body ended).
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ()> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data(n) => {
                    let take = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    match input[i..].iter().position(|&b| b == b'\n') {
                        None => {
                            self.line.extend_from_slice(&input[i..]);
                            i = input.len();
                            if self.line.len() > MAX_CHUNK_LINE {
                                return Err(());
                            }
                        }
                        Some(p) => {
                            self.line.extend_from_slice(&input[i..i + p]);
                            i += p + 1;
                            let mut line = std::mem::take(&mut self.line);
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                            self.on_line(&line)?;
                        }
                    }
                }
            }
        }
        Ok(i)
    }

    fn on_line(&mut self, line: &[u8]) -> Result<(), ()> {
        self.state = match self.state {
            ChunkState::Size => {
                let size_part = match line.iter().position(|&b| b == b';') {
                    Some(p) => &line[..p],
                    None => line,
                };
                let size_part = size_part.trim_ascii();
                if size_part.is_empty() || !size_part.iter().all(u8::is_ascii_hexdigit) {
                    return Err(());
                }
                let text = std::str::from_utf8(size_part).map_err(|_| ())?;
                match u64::from_str_radix(text, 16).map_err(|_| ())? {
                    0 => ChunkState::Trailer,
                    n => ChunkState::Data(n),
                }
            }
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err(()),
            ChunkState::Trailer if line.is_empty() => ChunkState::Done,
            ChunkState::Trailer => ChunkState::Trailer,
            other => other,
        };
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Upstream connection
// ---------------------------------------------------------------------------

trait UpstreamIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpstreamIo for T {}

async fn connect_upstream(ctx: &Ctx) -> io::Result<Box<dyn UpstreamIo>> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "timed out");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ctx.upstream))
        .await
        .map_err(|_| timed_out())??;
    let _ = tcp.set_nodelay(true);
    match &ctx.tls {
        None => Ok(Box::new(tcp)),
        Some(connector) => {
            let name = ServerName::try_from("localhost")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| timed_out())??;
            Ok(Box::new(tls))
        }
    }
}

fn insecure_client_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Accepts any server certificate (tests use self-signed ones); handshake
/// signatures are still checked so the TLS session itself is sound.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------
// HTTP head parsing and rewriting
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum HeadError {
    Eof,
    TooLarge,
    // Only read through Debug when reporting a 502.
    #[allow(dead_code)]
    Io(io::Error),
}

/// Reads until CRLFCRLF. `buf` holds bytes already read. Returns the head
/// (including the blank line) and whatever followed it.
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    mut buf: Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut tmp = vec![0u8; 8192];
    let mut searched: usize = 0;
    loop {
        let from = searched.saturating_sub(3);
        if let Some(p) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + p + 4;
            if end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        searched = buf.len();
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let n = r.read(&mut tmp).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[derive(Debug)]
struct Header {
    name: String,
    value: Vec<u8>,
}

impl Header {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&self.value);
        out.extend_from_slice(b"\r\n");
    }
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<Header>,
}

struct Response {
    version: String,
    code: u16,
    reason: String,
    headers: Vec<Header>,
}

/// Splits a head into its start line and parsed header fields.
fn split_head(head: &[u8]) -> Option<(&str, Vec<Header>)> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = std::str::from_utf8(lines.next()?).ok()?;
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let name = std::str::from_utf8(&line[..colon]).ok()?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        headers.push(Header {
            name: name.to_string(),
            value: line[colon + 1..].trim_ascii().to_vec(),
        });
    }
    Some((start, headers))
}

fn parse_request(head: &[u8]) -> Option<Request> {
    let (start, headers) = split_head(head)?;
    let mut parts = start.split_ascii_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let version = parts.next()?.to_string();
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some(Request {
        method,
        target,
        version,
        headers,
    })
}

fn parse_response(head: &[u8]) -> Option<Response> {
    let (start, headers) = split_head(head)?;
    let mut parts = start.splitn(3, ' ');
    let version = parts.next()?.to_string();
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code_text = parts.next()?;
    if code_text.len() != 3 {
        return None;
    }
    let code: u16 = code_text.parse().ok()?;
    let reason = parts.next().unwrap_or("").trim().to_string();
    Some(Response {
        version,
        code,
        reason,
        headers,
    })
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.is(name))
        .map(|h| h.value.as_slice())
}

/// `Ok(None)` without Content-Length; `Err` if unparsable or conflicting.
fn content_length(headers: &[Header]) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for h in headers.iter().filter(|h| h.is("content-length")) {
        for part in h.value.split(|&b| b == b',') {
            let text = std::str::from_utf8(part.trim_ascii()).map_err(|_| ())?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: u64 = text.parse().map_err(|_| ())?;
            match found {
                Some(prev) if prev != n => return Err(()),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// True when the last transfer coding is `chunked`.
fn is_chunked(headers: &[Header]) -> bool {
    headers
        .iter()
        .filter(|h| h.is("transfer-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|c| c.trim_ascii())
        .rfind(|c| !c.is_empty())
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

fn is_hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

fn build_request_head(req: &Request, mode: ProxyMode) -> Vec<u8> {
    let version = if mode == ProxyMode::Http10 {
        "HTTP/1.0"
    } else {
        req.version.as_str()
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("{} {} {version}\r\n", req.method, req.target).as_bytes());
    for h in &req.headers {
        if is_hop_by_hop(&h.name) || h.is("te") || h.is("upgrade") || h.is("expect") {
            continue;
        }
        h.write_to(&mut out);
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------
// Activity tracking (for IdleKill)
// ---------------------------------------------------------------------------

/// Time of the last byte moved on a connection, in either direction.
struct Activity {
    base: std::time::Instant,
    last_nanos: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: std::time::Instant::now(),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> std::time::Instant {
        self.base + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed))
    }
}

/// An I/O stream that records activity whenever a byte is read or written.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
