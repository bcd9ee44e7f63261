//! The connection code surepush runs is actix-http with two changes
//! (vendor/actix-http/PATCHED.md): an HTTP/1.1 connection holds no read or write buffer
//! while it waits, and an HTTP/2 response task lets go of a stream the client reset.
//! These tests drive raw sockets over plain HTTP/1.1 through every path where the
//! buffers are now dropped and made again: pipelined requests, bodies that arrive in
//! pieces, keep-alive after an idle pause, large responses, and a long SSE stream; and
//! check that a subscriber who leaves (closed connection, half close, HTTP/2 reset) is
//! let go at once over plain HTTP/1.1, TLS HTTP/1.1 and HTTP/2.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn plain_server() -> TestServer {
    TestServer::start_with(|c| c.insecure_http = true).await
}

/// Reads one response (head + Content-Length body) from `buf`/`s`, leaving the rest.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head[9..12].parse().expect("status code");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                read_more(s, buf).await;
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            return (status, body);
        }
        read_more(s, buf).await;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = timeout(WAIT, s.read(&mut chunk))
        .await
        .expect("server answered in time")
        .expect("read");
    assert!(n > 0, "server closed the connection; got so far: {buf:?}");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn publish_request(topic: &str, data: &Value) -> (String, String) {
    let body = json!({"topic": topic, "type": "t", "data": data}).to_string();
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    (head, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_in_one_write_are_all_answered_in_order() {
    let srv = plain_server().await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let (h1, b1) = publish_request("buf/pipe", &json!({"n": 1}));
    let (h2, b2) = publish_request("buf/pipe", &json!({"n": 2}));
    let all = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{h1}{b1}{h2}{b2}GET /v1/events?topic=buf/pipe&since=0 HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(all.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf).await.0, 200);
    assert_eq!(read_response(&mut s, &mut buf).await.0, 201);
    assert_eq!(read_response(&mut s, &mut buf).await.0, 201);
    let (status, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let ns: Vec<i64> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_arrives_in_pieces_is_read_whole() {
    let srv = plain_server().await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // 20 KiB of data, so the body is larger than one read buffer.
    let text = "x".repeat(20 * 1024);
    let (head, body) = publish_request("buf/pieces", &json!({ "text": text }));
    s.write_all(head.as_bytes()).await.unwrap();
    for part in body.as_bytes().chunks(3000) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(part).await.unwrap();
    }
    let mut buf = Vec::new();
    let (status, resp) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 201, "{resp}");

    // Chunked transfer encoding, one chunk per write, with pauses in between.
    let (_, body) = publish_request("buf/pieces", &json!({"n": 2}));
    s.write_all(
        b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    for part in body.as_bytes().chunks(7) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, resp) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 201, "{resp}");

    let events = support::read_events(&srv.base_url, "buf/pieces", "0").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"]["text"].as_str().unwrap(), text);
    assert_eq!(events[1]["data"]["n"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_works_after_an_idle_pause_and_large_responses_arrive_whole() {
    let srv = plain_server().await;
    let big = "y".repeat(100 * 1024);
    srv.publish("buf/big", json!({ "text": big })).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    for round in 0..3 {
        s.write_all(b"GET /v1/events?topic=buf/big&since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, body) = read_response(&mut s, &mut buf).await;
        assert_eq!(status, 200, "round {round}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["events"][0]["data"]["text"].as_str().unwrap(), big);
        // idle: the connection now holds no buffers; the next request must still work
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(buf.is_empty(), "nothing beyond the responses was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_sse_stream_over_plain_http1_delivers_every_event_once() {
    let srv = plain_server().await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /v1/stream?topic=buf/sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    while find(&buf, b"surepush.hello").is_none() {
        read_more(&mut s, &mut buf).await;
    }
    let large = "z".repeat(30 * 1024);
    let publisher = {
        let base = srv.base_url.clone();
        let large = large.clone();
        tokio::spawn(async move {
            for n in 0..200 {
                let data = if n % 50 == 7 {
                    json!({"n": n, "pad": large})
                } else {
                    json!({"n": n})
                };
                support::publish_to(&base, "buf/sse", data).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut text = String::new();
    while seen.len() < 200 {
        read_more(&mut s, &mut buf).await;
        text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut buf)));
        // SSE frames end with a blank line; chunk framing sits between frames
        while let Some(i) = text.find("\n\n") {
            let frame: String = text.drain(..i + 2).collect();
            if let Some(data) = frame
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .filter(|_| frame.contains("event: test\n"))
            {
                let v: Value = serde_json::from_str(data).expect("event data is whole JSON");
                if let Some(pad) = v["data"]["pad"].as_str() {
                    assert_eq!(pad.len(), large.len());
                }
                seen.push(v["data"]["n"].as_i64().unwrap());
            }
        }
    }
    publisher.await.unwrap();
    assert_eq!(seen, (0..200).collect::<Vec<i64>>());
}

/// Opens a raw SSE stream and reads until its canary: the server holds it.
async fn open_stream(srv: &TestServer, topic: &str) -> TcpStream {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let req = format!("GET /v1/stream?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while find(&buf, b"surepush.hello").is_none() {
        read_more(&mut s, &mut buf).await;
    }
    s
}

async fn wait_sse_streams(srv: &TestServer, want: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = support::connections(&srv.base_url, "sse_stream").await;
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} SSE streams held, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscriber that closes its connection is let go at once, not when the next
/// heartbeat write fails: a server with client churn would otherwise hold a socket and
/// a subscription per departed client for up to a heartbeat interval (regression: the
/// bench's 5 000-subscriber runs reached the open-files limit this way).
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stream_is_released_before_the_next_heartbeat() {
    let srv = TestServer::start_with(|c| {
        c.insecure_http = true;
        c.push.heartbeat_secs = 60;
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(open_stream(&srv, "buf/gone").await);
    }
    wait_sse_streams(&srv, 20, WAIT).await;
    // a full close of half of them, and a half close (FIN, still reading) of five more
    let rest = streams.split_off(10);
    drop(streams);
    let mut rest = rest.into_iter();
    let mut half_closed = Vec::new();
    for s in rest.by_ref().take(5) {
        let mut s = s;
        s.shutdown().await.unwrap();
        half_closed.push(s);
    }
    let kept: Vec<TcpStream> = rest.collect();
    // far sooner than the 60 s heartbeat would have found out
    wait_sse_streams(&srv, 5, Duration::from_secs(10)).await;
    // the half-closed ones were answered with a close, not left hanging
    for mut s in half_closed {
        let mut sink = Vec::new();
        let r = timeout(WAIT, s.read_to_end(&mut sink)).await;
        assert!(
            r.is_ok(),
            "a half-closed stream was not closed by the server"
        );
    }
    // the others still get events
    srv.publish("buf/gone", json!("still here")).await;
    for mut s in kept {
        let mut buf = Vec::new();
        while find(&buf, b"still here").is_none() {
            read_more(&mut s, &mut buf).await;
        }
    }
}

/// A raw TLS connection (HTTP/1.1 by ALPN) holding an SSE stream, read up to its canary.
async fn open_tls_stream(
    srv: &TestServer,
    topic: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = support::tls_h1(TcpStream::connect(srv.addr).await.unwrap()).await;
    let req = format!("GET /v1/stream?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while find(&buf, b"surepush.hello").is_none() {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the canary");
        buf.extend_from_slice(&chunk[..n]);
    }
    s
}

/// The same over TLS: HTTP/1.1 connections closed, HTTP/2 streams reset (a dropped
/// response) and HTTP/2 connections closed (a dropped client). Over HTTP/2 the stream
/// is released by actix-http's response task watching for the reset
/// (vendor/actix-http/PATCHED.md); before, it waited for the body's next chunk.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_tls_stream_is_released_before_the_next_heartbeat() {
    let srv = TestServer::start_with(|c| c.push.heartbeat_secs = 60).await;
    let mut h1 = Vec::new();
    for _ in 0..6 {
        h1.push(open_tls_stream(&srv, "buf/tls").await);
    }
    wait_sse_streams(&srv, 6, WAIT).await;
    h1.truncate(2);
    wait_sse_streams(&srv, 2, Duration::from_secs(10)).await;
    drop(h1);
    wait_sse_streams(&srv, 0, Duration::from_secs(10)).await;

    let client = support::client();
    let mut h2 = Vec::new();
    for _ in 0..6 {
        let mut r = client
            .get(srv.url("/v1/stream?topic=buf/tls"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let first = timeout(WAIT, r.chunk()).await.unwrap().unwrap().unwrap();
        assert!(find(&first, b"surepush.hello").is_some());
        h2.push(r);
    }
    wait_sse_streams(&srv, 6, WAIT).await;
    // streams reset, the connection stays
    h2.truncate(2);
    wait_sse_streams(&srv, 2, Duration::from_secs(10)).await;
    // the connection closed under its last streams
    drop(client);
    drop(h2);
    wait_sse_streams(&srv, 0, Duration::from_secs(10)).await;
}
