//! A subscriber that stops reading: the server's memory for it stays bounded (the stream
//! is pulled, never queued), the connection is cut after the configured stall, and the
//! client resumes from its last complete id without loss or duplicates.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ids of the complete event frames in raw (chunked) response bytes.
fn complete_ids(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(i) = rest
        .find("\nid: ")
        .or_else(|| rest.strip_prefix("id: ").map(|_| 0))
    {
        let start = if rest[i..].starts_with('\n') {
            i + 5
        } else {
            i + 4
        };
        let Some(end) = rest[start..].find('\n') else {
            break;
        };
        let id = rest[start..start + end].to_string();
        let after = &rest[start + end..];
        if after.contains("\n\n") && after.find("\n\n") < after.find("\nid: ").or(Some(usize::MAX))
        {
            out.push(id);
        } else if !after.contains("\n\n") {
            break;
        }
        rest = &rest[start + end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_reader_is_cut_and_resumes_without_loss() {
    let s = TestServer::start_with(|c| {
        c.push.heartbeat_secs = 1;
        c.push.slow_consumer_timeout_secs = 2;
        c.push.socket_send_buffer_bytes = 32 * 1024;
    })
    .await;

    // A raw TLS client with a small receive buffer that reads the start, then stops.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = sock.connect(s.addr).await.unwrap();
    let mut tls = tls_h1(tcp).await;
    tls.write_all(b"GET /v1/stream?topic=slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("surepush.hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        raw.extend_from_slice(&buf[..n]);
    }

    // Publish far more than the socket buffers hold while the client does not read.
    let blob = "x".repeat(16 * 1024);
    let c = client();
    let mut published = Vec::new();
    for _ in 0..40 {
        let body: Vec<Value> = (0..10)
            .map(|_| json!({"topic": "slow", "type": "big", "data": blob}))
            .collect();
        let v: Value = c
            .post(s.url("/v1/publish"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for id in v["ids"].as_array().unwrap() {
            published.push(id.as_str().unwrap().to_string());
        }
    }
    // ...and thousands of small ones behind them.
    for _ in 0..20 {
        let body: Vec<Value> = (0..100)
            .map(|i| json!({"topic": "slow", "type": "small", "data": i}))
            .collect();
        let v: Value = c
            .post(s.url("/v1/publish"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for id in v["ids"].as_array().unwrap() {
            published.push(id.as_str().unwrap().to_string());
        }
    }

    // The server cuts the stalled stream.
    let mut cut = false;
    for _ in 0..150 {
        let m = s.metrics().await;
        if m.contains("surepush_slow_consumer_disconnects_total 1") {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut, "stalled stream was not closed");

    // The client now reads what reached it, up to the end of the connection.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection was not closed"),
        }
    }
    let seen = complete_ids(&raw);
    assert!(
        seen.len() < published.len(),
        "the client got everything before the cut"
    );
    assert_eq!(
        seen[..],
        published[..seen.len()],
        "received a prefix, in order"
    );

    // Resume from the last complete id: the rest arrives, nothing twice.
    let mut since = seen.last().cloned().unwrap_or_default();
    let mut rest = Vec::new();
    loop {
        let v: Value = c
            .get(s.url(&format!("/v1/events?topic=slow&since={since}&limit=500")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["reset"], false);
        let events = v["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        rest.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        since = v["last_id"].as_str().unwrap().to_string();
    }
    let mut all = seen.clone();
    all.extend(rest);
    assert_eq!(all, published);
    eprintln!(
        "slow consumer: received {} of {} events before the cut, resumed the rest",
        seen.len(),
        published.len()
    );
}
