//! Limits and TLS hardening: per-IP connection cap under a flood, huge bodies, a
//! slowloris client, the publish rate per token, TLS versions, and certificate reload on
//! SIGHUP without dropping open streams. After each, the server is still healthy.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client bound to another loopback address: a different client IP.
fn client_from(ip: &str) -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn healthy_from_other_ip(s: &TestServer) {
    let c = client_from("127.0.0.2");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = c.get(s.url("/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server unhealthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_cap_under_a_connection_flood() {
    let s = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 100;
        // 500 handshakes on a loaded 2-core box (debug build) may take seconds
        c.limits.tls_handshake_timeout_ms = 15_000;
        c.limits.header_timeout_ms = 15_000;
    })
    .await;
    // 5 000 raw connections from one IP that never say anything
    let mut flood = Vec::new();
    for chunk in 0..50 {
        let conns: Vec<_> = (0..100)
            .map(|_| {
                tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(s.addr),
                )
            })
            .collect();
        for c in futures_util::future::join_all(conns).await {
            if let Ok(Ok(c)) = c {
                flood.push(c);
            }
        }
        let _ = chunk;
    }
    eprintln!("flood: {} raw connections open", flood.len());
    assert!(flood.len() >= 4000, "could open only {}", flood.len());
    healthy_from_other_ip(&s).await;
    drop(flood);

    // 500 real HTTPS long polls from one IP against a cap of 100
    let c = client_h1();
    let mut polls = Vec::new();
    for i in 0..500 {
        if i % 50 == 49 {
            // stagger connection attempts a little; all are still open together
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        polls.push({
            let c = c.clone();
            let url = s.url("/v1/poll?topic=capped&timeout=10");
            tokio::spawn(async move {
                match c.get(url).send().await {
                    Ok(r) => {
                        let retry = r.headers().get("retry-after").is_some();
                        let st = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        (st, retry, body["error"].as_str().unwrap_or("").to_string())
                    }
                    Err(e) => (0, false, format!("{e:?}")),
                }
            })
        });
    }
    // while the cap is reached, monitoring from the same IP still gets through
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = client_h1().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut ok = 0;
    let mut refused = 0;
    for p in polls {
        let (st, retry, code) = p.await.unwrap();
        match st {
            200 => ok += 1,
            429 => {
                assert!(retry, "429 carries Retry-After");
                assert_eq!(code, "too_many_connections");
                refused += 1
            }
            other => panic!("unexpected status {other}: {code}"),
        }
    }
    eprintln!("per-IP cap 100: {ok} long polls served, {refused} refused with 429");
    assert!((95..=100).contains(&ok), "{ok} served");
    assert_eq!(ok + refused, 500);
    healthy_from_other_ip(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mb_body_is_refused_without_being_read() {
    let s = TestServer::start().await;
    // declared size: refused from the header alone
    let started = Instant::now();
    let big = vec![b'x'; 50 * 1024 * 1024];
    let r = client_h1()
        .post(s.url("/v1/publish"))
        .body(big)
        .send()
        .await;
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "body_too_large");
        }
        // the server may close before the client finished sending 50 MB
        Err(e) => eprintln!("client saw the connection closed early: {e}"),
    }
    // undeclared size (chunked): refused once the limit is crossed
    let chunks =
        futures_util::stream::iter((0..50).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 1 << 20])));
    let r = client_h1()
        .post(s.url("/v1/publish"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    eprintln!("50 MB bodies refused in {:?}", started.elapsed());
    healthy_from_other_ip(&s).await;
    s.publish("after", json!(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_while_others_are_served() {
    let s = TestServer::start_with(|c| {
        c.insecure_http = true; // the header timer is the same with TLS; plain keeps the client simple
        c.limits.header_timeout_ms = 2000;
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed_after = None;
    for b in head.iter() {
        if slow.write_all(&[*b]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // meanwhile a normal client is served
        let r = client().get(s.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await
        {
            // 408 Request Timeout, or EOF
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            closed_after = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let t = closed_after.expect("the slow client was never cut");
    eprintln!("slowloris client cut after {t:?}");
    assert!(t < Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_rate_per_token() {
    let s = TestServer::start_with(|c| {
        c.auth.enabled = true;
        c.limits.publish_rate_per_sec = 2;
        c.limits.publish_burst = 10;
    })
    .await;
    let mut cfg = surepush::config::Config {
        data_dir: s.data_dir.clone(),
        ..Default::default()
    };
    cfg.auth.enabled = true;
    let m = surepush::auth::Authenticator::from_config(&cfg).unwrap();
    let token = |sub: &str| {
        m.mint(&surepush::auth::Claims {
            sub: sub.into(),
            exp: surepush::auth::now_secs() + 600,
            nbf: None,
            iat: None,
            surepush: surepush::auth::Grants {
                publish: vec!["r/**".into()],
                ..Default::default()
            },
        })
        .unwrap()
    };
    let (a, b) = (token("alice"), token("bob"));
    let c = client();
    let publish = |t: String| {
        let c = c.clone();
        let url = s.url("/v1/publish");
        async move {
            c.post(url)
                .bearer_auth(t)
                .json(&json!({"topic": "r/x"}))
                .send()
                .await
                .unwrap()
        }
    };
    // The burst passes; then 429. The bucket refills at 2/s while this runs, so on a slow
    // machine a few more may pass first: at most what the elapsed time refilled.
    let started = std::time::Instant::now();
    let mut passed = 0;
    let r = loop {
        let r = publish(a.clone()).await;
        if r.status() != 201 {
            break r;
        }
        passed += 1;
        assert!(passed <= 100, "never limited");
    };
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    assert!(
        (10..=10 + refilled).contains(&passed),
        "{passed} passed; burst 10 plus {refilled} refilled"
    );
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "publish_rate_limited");
    assert_eq!(
        publish(b).await.status(),
        201,
        "another subject is not limited"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(publish(a).await.status(), 201, "the bucket refills");
}

/// Handshakes with the given protocol versions; returns the presented certificate.
async fn handshake(
    addr: SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Vec<u8>, String> {
    init();
    let rec = Arc::new(CertRecorder::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(rec.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let cert = rec
        .0
        .lock()
        .unwrap()
        .last()
        .cloned()
        .ok_or("no certificate")?;
    Ok(cert)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_versions_and_reload_on_sighup_keep_open_streams() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[]);
    let v12 = handshake(server.addr, &[&rustls::version::TLS12])
        .await
        .unwrap();
    let v13 = handshake(server.addr, &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert_eq!(v12, v13);

    // a stream opened before the reload
    let r = client()
        .get(server.url("/v1/stream?topic=reload"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(r);
    assert_eq!(
        sse.next_any(Duration::from_secs(5)).await.unwrap().event,
        "surepush.hello"
    );

    // new certificate files, then SIGHUP
    let cert = dir.path().join("tls/cert.pem");
    let key = dir.path().join("tls/key.pem");
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    surepush::tls::ensure_self_signed(
        &cert,
        &key,
        &["localhost".to_string(), "reloaded.test".into()],
    )
    .unwrap();
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGHUP);
    }
    let mut fresh = v13.clone();
    for _ in 0..50 {
        fresh = handshake(server.addr, &[&rustls::version::TLS13])
            .await
            .unwrap();
        if fresh != v13 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(fresh, v13, "new connections get the new certificate");

    // the old stream still delivers
    let id = publish_to(&server.base_url, "reload", json!("after reload")).await;
    let e = sse
        .next_event(Duration::from_secs(5))
        .await
        .expect("stream survived the reload");
    assert_eq!(e.id, id);

    // a broken certificate file: the reload fails, the current certificate stays
    std::fs::write(&cert, b"not a certificate").unwrap();
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGHUP);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = handshake(server.addr, &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert_eq!(still, fresh);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let s = TestServer::start_with(|c| {
        c.insecure_http = true;
        c.limits.keep_alive_secs = 1;
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // idle after the response: closed by the server after about keep_alive_secs
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection not closed: {r:?}"
    );
    let t = started.elapsed();
    eprintln!("idle keep-alive connection closed after {t:?}");
    assert!(t < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn total_connection_cap_queues_the_excess_without_failing_it() {
    // 2 worker threads x 5 = 10 connections at once; 30 long polls of 2 s must take
    // at least three waves, and all of them are eventually served.
    let s = TestServer::start_with(|c| {
        c.limits.max_connections = 10;
        c.limits.tls_handshake_timeout_ms = 30_000;
        c.limits.header_timeout_ms = 30_000;
    })
    .await;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cap = 10usize.div_ceil(workers) * workers;
    let n = cap * 3;
    let started = Instant::now();
    let c = client_h1();
    let polls: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            let url = s.url("/v1/poll?topic=total&timeout=2");
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for p in polls {
        assert_eq!(p.await.unwrap().expect("served"), 200);
    }
    let t = started.elapsed();
    eprintln!("{n} long polls of 2 s through a cap of {cap} connections took {t:?}");
    assert!(
        t >= Duration::from_millis(5500),
        "more than {cap} were served at once ({t:?})"
    );
}

/// A TLS connection that trusts any certificate (raw bytes on top, for hostile clients).
async fn raw_tls(addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_over(tokio::net::TcpStream::connect(addr).await.unwrap(), &[]).await
}

/// Reads until the server closes (or `wait` passes): what it sent, and when it closed.
async fn until_closed(
    conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    started: Instant,
    wait: Duration,
) -> (String, Option<Duration>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = started + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(started.elapsed()),
                )
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
        }
    }
}

/// A body that never arrives no longer holds a connection: no pause over
/// `body_idle_timeout_ms`, all of it within `body_timeout_ms`, else 408 and closed
/// (seen: an admin form held for 170 s with no credential; the same with a chunked body
/// that never ends and with a publish whose Content-Length is never met).
#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_must_arrive_in_time() {
    let s = TestServer::start_with(|c| {
        c.limits.body_idle_timeout_ms = 1000;
        c.limits.body_timeout_ms = 3000;
    })
    .await;
    let form = "POST /admin/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nuser=";
    let publish = "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"topic\":";
    for (what, head) in [("admin form", form), ("publish", publish)] {
        let mut conn = raw_tls(s.addr).await;
        let started = Instant::now();
        conn.write_all(head.as_bytes()).await.unwrap();
        let (text, closed) = until_closed(&mut conn, started, Duration::from_secs(10)).await;
        let t = closed.unwrap_or_else(|| panic!("{what}: still open after 10 s: {text}"));
        eprintln!("{what}: closed after {t:?}: {:.60}", text);
        assert!(t < Duration::from_secs(6), "{what}: {t:?}");
        if what == "publish" {
            assert!(text.starts_with("HTTP/1.1 408"), "{what}: {text}");
            assert!(
                text.contains("\"error\":\"body_timeout\""),
                "{what}: {text}"
            );
        } else {
            assert!(
                text.is_empty() || text.starts_with("HTTP/1.1 4"),
                "{what}: {text}"
            );
        }
    }
    // a chunked body that trickles (never idle) ends at the total bound
    let mut conn = raw_tls(s.addr).await;
    let started = Instant::now();
    conn.write_all(b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut closed = None;
    let mut text = String::new();
    while started.elapsed() < Duration::from_secs(10) {
        if conn.write_all(b"1\r\n \r\n").await.is_err() {
            break;
        }
        let (t, c) = until_closed(&mut conn, Instant::now(), Duration::from_millis(400)).await;
        text.push_str(&t);
        if c.is_some() || text.contains("HTTP/1.1 408") {
            closed = Some(started.elapsed());
            break;
        }
    }
    let t = closed.unwrap_or_else(|| panic!("a trickling body was never cut: {text}"));
    assert!(
        t >= Duration::from_millis(2500) && t < Duration::from_secs(7),
        "{t:?}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // and the server goes on serving
    let r = client().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// One HTTP/2 connection cannot carry more streams than `h2_max_streams_per_connection`
/// (announced in SETTINGS), and its streams count against the per-address cap like
/// connections do (seen: cap 10 per address, one h2 connection opened 2 000 streams).
#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_are_bounded_and_counted_per_address() {
    // its own process: the stream bound is process-wide (one server per process), and the
    // other tests of this binary start in-process servers with the default meanwhile
    let dir = tempfile::tempdir().unwrap();
    let s = ChildServer::spawn_env(
        &dir.path().join("data"),
        &[],
        &[
            ("SUREPUSH_LIMITS__MAX_CONNECTIONS_PER_IP", "10"),
            ("SUREPUSH_LIMITS__H2_MAX_STREAMS_PER_CONNECTION", "50"),
        ],
    );
    // the bound is announced
    let tls = tls_over(
        tokio::net::TcpStream::connect(s.addr).await.unwrap(),
        &[b"h2"],
    )
    .await;
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/healthz")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(send.current_max_send_streams(), 50);

    // 30 streams on it: 10 are served, the rest refused as over the address's cap
    let mut streams = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        send = send.ready().await.unwrap();
        let req = http::Request::get("https://localhost/v1/stream?topic=h2cap")
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .unwrap()
            .unwrap();
        match resp.status().as_u16() {
            200 => streams.push(resp),
            429 => refused += 1,
            other => panic!("stream answered {other}"),
        }
    }
    assert_eq!((streams.len(), refused), (10, 20));
    // once streams end, new ones are served again
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client_h1()
            .get(format!("{}/v1/events?topic=h2cap&since=0", s.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        send = send.ready().await.unwrap();
        let req = http::Request::get("https://localhost/v1/stream?topic=h2cap")
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        if resp.await.unwrap().status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "streams were not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests the HTTP layer cannot parse get the JSON error shape too, not an empty body.
#[tokio::test(flavor = "multi_thread")]
async fn unparsable_requests_get_a_json_error() {
    let s = TestServer::start().await;
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_url = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad Content-Length",
            b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        ),
        (
            "NUL in a header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
        ),
        (
            "raw 0xFF",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \xff\xff\r\n\xff\r\n\r\n".to_vec(),
        ),
        (
            "folded header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n".to_vec(),
        ),
        (
            "too many headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
        ),
        ("URL over 64 KB", long_url.into_bytes()),
    ];
    for (what, raw) in &cases {
        let mut conn = raw_tls(s.addr).await;
        conn.write_all(raw).await.unwrap();
        let started = Instant::now();
        let (text, closed) = until_closed(&mut conn, started, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "{what}: left open");
        let status = text.get(9..12).unwrap_or("");
        assert!(matches!(status, "400" | "431"), "{what}: {text:.200}");
        let (_, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
        let v: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {text:.300}"));
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "{what}: {v}"
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}"
        );
    }
}

/// A client on loopback address `local`, HTTP/1.1 only or with h2 offered.
fn client_at(local: &str, h1_only: bool) -> reqwest::Client {
    init();
    let b = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(20));
    let b = if h1_only { b.http1_only() } else { b };
    b.build().unwrap()
}

/// Opens `/v1/stream` with an `X-Forwarded-For`; returns the status (and the open
/// response when it is 200, so the stream stays counted).
async fn stream_as(
    c: &reqwest::Client,
    s: &TestServer,
    forwarded_for: &str,
) -> (u16, Option<reqwest::Response>) {
    let r = c
        .get(s.url("/v1/stream?topic=behind-proxy"))
        .header("X-Forwarded-For", forwarded_for)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 429 {
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "too_many_connections", "{body}");
        return (status, None);
    }
    (status, Some(r))
}

/// Behind a reverse proxy every client shared the proxy's address (seen: per-address
/// limits hit all users of the proxy at once). Only a listed proxy is believed, only the
/// address it appended counts, and anyone else's header is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn clients_behind_a_trusted_proxy_get_their_own_limits() {
    let s = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 2;
        c.server.trusted_proxies = vec!["127.0.0.3".parse().unwrap()];
    })
    .await;
    for h1_only in [true, false] {
        let proxy = client_at("127.0.0.3", h1_only);
        let mut open = Vec::new();
        // four streams through the proxy, two clients: each client is within its 2,
        // though the proxy itself holds 4 (over h1, 4 TCP connections)
        for who in [
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.2",
        ] {
            let (status, r) = stream_as(&proxy, &s, who).await;
            assert_eq!(status, 200, "{who} (h1 only: {h1_only})");
            open.extend(r);
        }
        // a third for one client is over its cap, even when the client forges an
        // earlier hop: only what the proxy appended (the rightmost) counts
        let (status, _) = stream_as(&proxy, &s, "203.0.113.99, 198.51.100.1").await;
        assert_eq!(status, 429, "forged hop (h1 only: {h1_only})");
        let (status, _) = stream_as(&proxy, &s, "198.51.100.2").await;
        assert_eq!(status, 429, "(h1 only: {h1_only})");
        // another client through the same proxy is still served
        let (status, r) = stream_as(&proxy, &s, "198.51.100.3").await;
        assert_eq!(status, 200);
        open.extend(r);

        // an untrusted peer's header is ignored: it is one address with a cap of 2
        let direct = client_at("127.0.0.4", h1_only);
        let mut mine = Vec::new();
        for (i, who) in ["198.51.100.7", "198.51.100.8", "198.51.100.9"]
            .iter()
            .enumerate()
        {
            let (status, r) = stream_as(&direct, &s, who).await;
            let want = if i < 2 { 200 } else { 429 };
            assert_eq!(
                status, want,
                "untrusted peer, stream {i} (h1 only: {h1_only})"
            );
            mine.extend(r);
        }
        drop(open);
        drop(mine);
        // all released: the next round starts from nothing
        let deadline = Instant::now() + Duration::from_secs(10);
        while connections(&s.base_url, "sse_stream").await > 0 {
            assert!(Instant::now() < deadline, "streams were not released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    healthy_from_other_ip(&s).await;
}

/// Admin form posts show their credential before their body is read: with no session
/// (or, for the login form, no double-submit cookie) the answer comes at once, while the
/// body deadlines are long (seen: every /admin form read its body before any check).
#[tokio::test(flavor = "multi_thread")]
async fn admin_forms_are_refused_before_their_body_without_a_credential() {
    let s = TestServer::start_with(|c| {
        c.limits.body_idle_timeout_ms = 60_000;
        c.limits.body_timeout_ms = 60_000;
    })
    .await;
    let forms = [
        (
            "/admin/topics/publish",
            "HTTP/1.1 303",
            "location: /admin/login?next=",
        ),
        (
            "/admin/tokens",
            "HTTP/1.1 303",
            "location: /admin/login?next=",
        ),
        (
            "/admin/logout",
            "HTTP/1.1 303",
            "location: /admin/login?next=",
        ),
        ("/admin/login", "HTTP/1.1 403", "csrf"),
    ];
    for (path, status, says) in forms {
        let mut conn = raw_tls(s.addr).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: surepush_admin=not-a-session\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ncsrf="
        );
        let started = Instant::now();
        conn.write_all(head.as_bytes()).await.unwrap();
        // the rest of the body never comes; the answer must not wait for it
        let (text, closed) = until_closed(&mut conn, started, Duration::from_secs(20)).await;
        assert!(
            closed.is_some(),
            "{path}: held open for its body: {text:.200}"
        );
        eprintln!("{path}: answered and closed after {:?}", closed);
        assert!(text.starts_with(status), "{path}: {text:.200}");
        assert!(
            text.to_ascii_lowercase().contains(says),
            "{path}: {text:.400}"
        );
    }
    // the API answer of a session-less admin post is JSON, not a page
    let r = client()
        .post(s.url("/admin/api/anything"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "login_required");
}
