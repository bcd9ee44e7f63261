//! The wire contract over real TLS on 127.0.0.1: publishing, the three transports,
//! resume and reset, operations endpoints, and bad input.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(5);

async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = client().post(url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_single_and_batch_with_increasing_ids() {
    let s = TestServer::start().await;
    let (st, v) = post(
        &s.url("/v1/publish"),
        r#"{"topic":"users/42","type":"greeting","data":{"n":1}}"#,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let first = v["ids"][0].as_str().unwrap().to_string();
    let (st, v) = post(
        &s.url("/v1/publish"),
        r#"[{"topic":"users/42","data":2},{"topic":"users/43","data":3},{"topic":"users/42","data":4}]"#,
    )
    .await;
    assert_eq!(st, 201);
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| seq_of(i.as_str().unwrap()))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(seq_of(&first) < ids[0]);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");

    let (st, v) = get_json(&s.url("/v1/events?topic=users/42&since=0")).await;
    assert_eq!(st, 200);
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["id"], first.as_str());
    assert_eq!(events[0]["topic"], "users/42");
    assert_eq!(events[0]["type"], "greeting");
    assert_eq!(events[0]["data"], json!({"n": 1}));
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(events[1]["type"], "message", "default type");
    assert_eq!(v["reset"], false);
    assert_eq!(seq_of(v["last_id"].as_str().unwrap()), ids[2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_is_all_or_nothing() {
    let s = TestServer::start().await;
    let (st, v) = post(
        &s.url("/v1/publish"),
        r#"[{"topic":"a","data":1},{"topic":"bad topic","data":2}]"#,
    )
    .await;
    assert_eq!(st, 422);
    assert_eq!(v["error"], "invalid_topic");
    assert!(v["message"].as_str().unwrap().contains("event 1"), "{v}");
    let (_, v) = get_json(&s.url("/v1/events?topic=a&since=0")).await;
    assert_eq!(v["events"].as_array().unwrap().len(), 0);
}

/// Values the server's own clients cannot parse are refused at the door with a code
/// naming the problem, and nothing of the batch is kept (seen: accepted, then
/// `surepush tail` retried the same batch forever and workers got `null`).
#[tokio::test(flavor = "multi_thread")]
async fn poison_pill_json_is_refused_with_a_clear_code() {
    let s = TestServer::start().await;
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<(String, &str)> = vec![
        (deep(100_000), "json_too_deep"),
        (deep(65), "json_too_deep"),
        (r#""\ud800""#.into(), "json_lone_surrogate"),
        (r#"{"k":"x\udc00"}"#.into(), "json_lone_surrogate"),
        ("1e999999".into(), "json_number_out_of_range"),
        ("[1, -2e400]".into(), "json_number_out_of_range"),
    ];
    for (data, code) in &cases {
        let batch = format!(r#"[{{"topic":"pp","data":1}},{{"topic":"pp","data":{data}}}]"#);
        let (st, v) = post(&s.url("/v1/publish"), batch).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (422, Some(*code)),
            "{:.60}: {v}",
            data
        );
        assert!(
            v["message"].as_str().unwrap().contains("event 1: data"),
            "{v}"
        );
        let job = format!(r#"{{"queue":"pp","payload":{data}}}"#);
        let (st, v) = post(&s.url("/v1/jobs"), job).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (422, Some(*code)),
            "{:.60}: {v}",
            data
        );
    }
    // nothing of a refused batch was kept; what every client reads still passes
    let (st, v) = get_json(&s.url("/v1/events?topic=pp&since=0")).await;
    assert_eq!(st, 200);
    assert_eq!(v["events"].as_array().unwrap().len(), 0, "{v}");
    let fine = format!(
        r#"{{"topic":"pp","data":[{},"\ud83d\ude00",1e308]}}"#,
        deep(60)
    );
    let (st, v) = post(&s.url("/v1/publish"), fine).await;
    assert_eq!(st, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_json_errors() {
    let s = TestServer::start_with(|c| {
        c.limits.max_body_bytes = 4096;
        c.limits.max_event_data_bytes = 1024;
        c.limits.max_batch_len = 3;
    })
    .await;
    let p = s.url("/v1/publish");
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_json"),
        ("".into(), 400, "invalid_json"),
        ("42".into(), 422, "invalid_event"),
        ("[]".into(), 422, "empty_batch"),
        (r#"{"type":"x"}"#.into(), 422, "invalid_event"),
        (r#"{"topic":"a","tpoic":"b"}"#.into(), 422, "invalid_event"),
        (r#"{"topic":"a/*"}"#.into(), 422, "invalid_topic"),
        (r#"{"topic":"a//b"}"#.into(), 422, "invalid_topic"),
        (
            format!(r#"{{"topic":"{}"}}"#, "a".repeat(257)),
            422,
            "invalid_topic",
        ),
        (
            r#"{"topic":"a","type":"has space"}"#.into(),
            422,
            "invalid_type",
        ),
        (
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(2000)),
            413,
            "data_too_large",
        ),
        ("x".repeat(5000), 413, "body_too_large"),
        (
            r#"[{"topic":"a"},{"topic":"a"},{"topic":"a"},{"topic":"a"}]"#.into(),
            413,
            "batch_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (st, v) = post(&p, body.clone()).await;
        assert_eq!(st, status, "body {:.60}: {v}", body);
        assert_eq!(v["error"], code, "body {:.60}: {v}", body);
        assert!(!v["message"].as_str().unwrap_or("").is_empty());
    }
    // A body larger than the limit sent without Content-Length (chunked) is refused too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let r = client_h1()
        .post(&p)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let q = |path: &str| s.url(path);
    let cases = vec![
        ("/v1/events", 400, "missing_topic"),
        ("/v1/events?topic=a%20b", 400, "invalid_topic"),
        ("/v1/events?topic=a/**/b", 400, "invalid_topic"),
        ("/v1/events?topic=a&since=yesterday", 400, "invalid_since"),
        ("/v1/events?topic=a&since=5-xyz", 400, "invalid_since"),
        ("/v1/events?topic=a&limit=0", 400, "invalid_limit"),
        ("/v1/events?topic=a&limit=1000000", 400, "invalid_limit"),
        ("/v1/poll?topic=a&timeout=abc", 400, "invalid_timeout"),
        ("/v1/poll?topic=a&timeout=86400", 400, "invalid_timeout"),
        ("/v1/stream?topic=a&mode=turbo", 400, "invalid_mode"),
        ("/v1/stream?topic=a&timeout=-5", 400, "invalid_timeout"),
        ("/v1/nothing", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let (st, v) = get_json(&q(path)).await;
        assert_eq!(st, status, "{path}: {v}");
        assert_eq!(v["error"], code, "{path}: {v}");
    }
    let many: String = (0..40).map(|i| format!("topic=t{i}&")).collect();
    let (st, v) = get_json(&q(&format!("/v1/events?{many}"))).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("too_many_topics")));
    let r = client().delete(q("/v1/publish")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = client().get(q("/v1/publish")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = client()
        .get(q("/v1/events?topic=a"))
        .header("Last-Event-ID", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // and the server is still healthy
    assert_eq!(get_json(&q("/healthz")).await.0, 200);
}

async fn sse_contract(c: reqwest::Client, expect_http: &str) {
    let s = TestServer::start_with(|c| c.push.padding_bytes = 2048).await;
    let before = s.publish("users/42", json!("old")).await;
    let raw = c
        .get(s.url("/v1/stream?topic=users/42"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    let h = raw.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache, no-transform");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(h.get("content-length").is_none());
    // Read the raw beginning: padding comment, retry, hello.
    let mut body = raw.bytes_stream();
    use futures_util::StreamExt;
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("surepush.hello") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        head.extend_from_slice(&chunk);
    }
    while !head.ends_with(b"\n\n") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        head.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(head).unwrap();
    assert!(text.starts_with(':'), "padding comment first");
    let first_line = text.lines().next().unwrap();
    assert!(
        first_line.len() >= 2048,
        "padding is {} bytes",
        first_line.len()
    );
    let retry: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .expect("retry line")
        .parse()
        .unwrap();
    assert!((1000..=5000).contains(&retry), "retry {retry}");
    let hello: Value = serde_json::from_str(
        text.lines()
            .skip_while(|l| *l != "event: surepush.hello")
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hello["transport"], "sse");
    assert_eq!(hello["mode"], "stream");
    assert_eq!(hello["http"], expect_http);
    assert_eq!(hello["reset"], false);
    assert_eq!(
        hello["last_id"],
        before.as_str(),
        "no since: starts at the head"
    );
    drop(body);

    // Events and heartbeats through EventSource-style parsing.
    let r = c
        .get(s.url("/v1/stream?topic=users/42"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(r);
    let hello = sse.next_any(WAIT).await.unwrap();
    assert_eq!(hello.event, "surepush.hello");
    let id = s.publish("users/42", json!({"k": "v"})).await;
    s.publish("users/43", json!("not for us")).await;
    let e = sse.next_event(WAIT).await.unwrap();
    assert_eq!(e.id, id);
    assert_eq!(e.event, "test");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["data"], json!({"k": "v"}));
    assert_eq!(v["topic"], "users/42");
    // heartbeat_secs = 1 in tests: a ping arrives, without an id
    let ping = loop {
        let e = sse.next_any(Duration::from_secs(3)).await.expect("ping");
        if e.event == "surepush.ping" {
            break e;
        }
        assert!(e.event.starts_with("surepush."), "unexpected {e:?}");
    };
    assert!(
        ping.id.is_empty() || ping.id == id,
        "ping carries no new id"
    );
    let v: Value = serde_json::from_str(&ping.data).unwrap();
    assert!(v["time"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_stream_contract_http11() {
    sse_contract(client_h1(), "1.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_stream_contract_http2() {
    sse_contract(client(), "2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_resume_by_header_query_and_since() {
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.publish("t", json!(i)).await);
    }
    let c = client_h1();
    for how in ["header", "lastEventId", "since"] {
        let url = match how {
            "header" => s.url("/v1/stream?topic=t&since=0"),
            "lastEventId" => s.url(&format!("/v1/stream?topic=t&lastEventId={}", ids[1])),
            _ => s.url(&format!("/v1/stream?topic=t&since={}", ids[1])),
        };
        let mut req = c.get(url);
        if how == "header" {
            req = req.header("Last-Event-ID", ids[1].as_str());
        }
        let mut sse = SseReader::new(req.send().await.unwrap());
        for expected in &ids[2..] {
            let e = sse.next_event(WAIT).await.unwrap();
            assert_eq!(&e.id, expected, "{how}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_close_mode_ends_after_a_batch() {
    let s = TestServer::start().await;
    let c = client_h1();
    let started = Instant::now();
    let r = c
        .get(s.url("/v1/stream?topic=t&mode=close&timeout=30"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(r);
    let hello = sse.next_any(WAIT).await.unwrap();
    let v: Value = serde_json::from_str(&hello.data).unwrap();
    assert_eq!(v["mode"], "close");
    let publisher = {
        let base = s.base_url.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            publish_to(&base, "t", json!(1)).await;
            publish_to(&base, "t", json!(2)).await
        })
    };
    let (events, ended) = sse.until_end(Duration::from_secs(10)).await;
    publisher.await.unwrap();
    assert!(ended, "close mode must end the response");
    assert!(!events.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    // reconnecting from the last id gives the rest, without duplicates
    let last = events.last().unwrap().id.clone();
    let r = c
        .get(s.url("/v1/stream?topic=t&mode=close&timeout=1"))
        .header("Last-Event-ID", last.as_str())
        .send()
        .await
        .unwrap();
    let (rest, ended) = SseReader::new(r).until_end(Duration::from_secs(10)).await;
    assert!(ended);
    assert_eq!(events.len() + rest.len(), 2, "{events:?} {rest:?}");
    // no events at all: the response ends at the timeout
    let t0 = Instant::now();
    let r = c
        .get(s.url("/v1/stream?topic=quiet&mode=close&timeout=1"))
        .send()
        .await
        .unwrap();
    let (none, ended) = SseReader::new(r).until_end(Duration::from_secs(10)).await;
    assert!(ended && none.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_answers_on_publish_and_on_timeout() {
    let s = TestServer::start().await;
    let head = s.publish("x", json!(0)).await;
    let c = client_h1();
    let url = s.url(&format!("/v1/poll?topic=lp&since={head}&timeout=20"));
    let waiter = tokio::spawn({
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            let cl = r.headers().get("content-length").cloned();
            let cc = r.headers()["cache-control"].clone();
            (cl, cc, r.json::<Value>().await.unwrap(), Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = s.publish("lp", json!("hello")).await;
    let published = Instant::now();
    let (cl, cc, v, answered) = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert!(cl.is_some(), "long poll answers carry Content-Length");
    assert_eq!(cc, "no-store");
    assert!(answered.duration_since(published) < Duration::from_secs(2));
    assert_eq!(v["events"][0]["id"], id.as_str());
    assert_eq!(v["last_id"], id.as_str());
    assert_eq!(v["reset"], false);

    let t0 = Instant::now();
    let (st, v) = get_json(&s.url(&format!("/v1/poll?topic=lp&since={id}&timeout=1"))).await;
    assert_eq!(st, 200);
    assert!(t0.elapsed() >= Duration::from_millis(900));
    assert_eq!(v["events"].as_array().unwrap().len(), 0);
    assert_eq!(v["last_id"], id.as_str());
    // events already there: answered at once, limit respected, continue from last_id
    for i in 0..5 {
        s.publish("lp", json!(i)).await;
    }
    let (_, v) = get_json(&s.url(&format!("/v1/poll?topic=lp&since={id}&limit=3"))).await;
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    let last = v["last_id"].as_str().unwrap().to_string();
    let (_, v) = get_json(&s.url(&format!("/v1/poll?topic=lp&since={last}&limit=3"))).await;
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcards_match_only_their_topics() {
    let s = TestServer::start().await;
    for t in ["users", "users/1", "users/1/x", "users/2", "other/1"] {
        s.publish(t, json!(t)).await;
    }
    let topics = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["topic"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, v) = get_json(&s.url("/v1/events?topic=users/*&since=0")).await;
    assert_eq!(topics(&v), ["users/1", "users/2"]);
    let (_, v) = get_json(&s.url("/v1/events?topic=users/**&since=0")).await;
    assert_eq!(topics(&v), ["users/1", "users/1/x", "users/2"]);
    let (_, v) = get_json(&s.url("/v1/events?topic=users&topic=other/1&since=0")).await;
    assert_eq!(topics(&v), ["users", "other/1"]);
    let (_, v) = get_json(&s.url("/v1/events?topic=**&since=0")).await;
    assert_eq!(topics(&v).len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_or_foreign_ids_reset() {
    let s = TestServer::start().await;
    let id = s.publish("r", json!(1)).await;
    let epoch = id.split('-').nth(1).unwrap();
    // never issued: a seq beyond the head
    let (_, v) = get_json(&s.url(&format!("/v1/events?topic=r&since=999-{epoch}"))).await;
    assert_eq!(v["reset"], true);
    // another database's id
    let other = if epoch == "00000000" {
        "00000001"
    } else {
        "00000000"
    };
    let (_, v) = get_json(&s.url(&format!("/v1/events?topic=r&since=1-{other}"))).await;
    assert_eq!(v["reset"], true);
    let mut sse = SseReader::new(
        client()
            .get(s.url(&format!("/v1/stream?topic=r&since=1-{other}")))
            .send()
            .await
            .unwrap(),
    );
    let hello = sse.next_any(WAIT).await.unwrap();
    let v: Value = serde_json::from_str(&hello.data).unwrap();
    assert_eq!(
        v["reset"], true,
        "the first thing the client receives says reset"
    );
    // a known id does not reset
    let (_, v) = get_json(&s.url(&format!("/v1/events?topic=r&since={id}"))).await;
    assert_eq!(v["reset"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_count_resets_clients_that_missed_events() {
    let s = TestServer::start_with(|c| {
        c.storage.retention_max_events_per_topic = 3;
        c.storage.retention_interval_secs = 1;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(s.publish("busy", json!(i)).await);
    }
    let quiet = s.publish("quiet", json!("q")).await;
    // retention runs every second
    let mut kept = 0;
    for _ in 0..50 {
        let (_, v) = get_json(&s.url("/v1/events?topic=busy&since=0")).await;
        kept = v["events"].as_array().unwrap().len();
        if kept == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kept, 3);
    let (_, v) = get_json(&s.url(&format!("/v1/events?topic=busy&since={}", ids[1]))).await;
    assert_eq!(v["reset"], true, "resuming from before what was kept");
    assert_eq!(
        v["events"].as_array().unwrap().len(),
        3,
        "what was kept still arrives"
    );
    let (_, v) = get_json(&s.url(&format!("/v1/events?topic=busy&since={}", ids[7]))).await;
    assert_eq!(v["reset"], false);
    let (_, v) = get_json(&s.url(&format!("/v1/events?topic=quiet&since={}", ids[0]))).await;
    assert_eq!(v["reset"], false, "an untouched topic does not reset");
    assert_eq!(v["events"][0]["id"], quiet.as_str());
    assert!(s
        .metrics()
        .await
        .contains("surepush_retention_deleted_events_total 7"));
}

/// `fallback=` becomes a metric label: values outside the client's reasons all count as
/// `other`, so requests cannot add series (seen: 600 requests grew /metrics 5 KB -> 42 KB).
#[tokio::test(flavor = "multi_thread")]
async fn unknown_fallback_reasons_share_one_metric_series() {
    let s = TestServer::start().await;
    let before = s.metrics().await.len();
    for i in 0..200 {
        let st = client_h1()
            .get(s.url(&format!("/v1/poll?topic=m&timeout=0&fallback=junk{i}")))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(st, 200);
    }
    client_h1()
        .get(s.url("/v1/poll?topic=m&timeout=0&fallback=no_eventsource"))
        .send()
        .await
        .unwrap();
    let m = s.metrics().await;
    assert!(
        m.contains("surepush_fallbacks_total{reason=\"other\"} 200"),
        "{m}"
    );
    assert!(m.contains("surepush_fallbacks_total{reason=\"no_eventsource\"} 1"));
    assert!(
        !m.contains("junk"),
        "a client-chosen label reached /metrics"
    );
    assert!(m.len() < before + 2000, "{} -> {} bytes", before, m.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn ops_endpoints() {
    let s = TestServer::start().await;
    let (st, v) = get_json(&s.url("/healthz")).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    let (st, v) = get_json(&s.url("/readyz")).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ready")));
    s.publish("m", json!(1)).await;
    let _r = client_h1()
        .get(s.url("/v1/stream?topic=m&since=0&fallback=sse_canary"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(_r);
    sse.next_event(WAIT).await.unwrap();
    let m = s.metrics().await;
    for needle in [
        "surepush_events_published_total 1",
        "surepush_connections{transport=\"sse_stream\",http=\"1.1\"} 1",
        "surepush_events_delivered_total{transport=\"sse_stream\"} 1",
        "surepush_fallbacks_total{reason=\"sse_canary\"} 1",
        "surepush_storage_bytes",
        "surepush_commit_group_events_count",
        "surepush_storage_flush_seconds_count 1",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    drop(sse);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_only_when_asked() {
    let s = TestServer::start_with(|c| c.insecure_http = true).await;
    assert!(s.base_url.starts_with("http://"));
    let id = s.publish("p", json!(1)).await;
    let (_, v) = get_json(&s.url("/v1/events?topic=p&since=0")).await;
    assert_eq!(v["events"][0]["id"], id.as_str());
    let s2 = TestServer::start().await;
    assert!(s2.base_url.starts_with("https://"));
    // a plain-HTTP request to the TLS port does not get an answer
    let r = reqwest::Client::new()
        .get(format!("http://{}/healthz", s2.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status() != 200);
}

/// `/demo` shows the address the browser used, never a forwarded host a client made up
/// (a cache in front would hand the made-up one to everyone).
#[tokio::test(flavor = "multi_thread")]
async fn demo_ignores_forwarded_hosts() {
    let s = TestServer::start().await;
    let r = client_h1()
        .get(s.url("/demo"))
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "host=evil2.example;proto=http")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(!page.contains("evil"), "a forwarded host reached the page");
    let own = s.base_url.trim_start_matches("https://");
    assert!(page.contains(own), "the page lacks {own}");
}
