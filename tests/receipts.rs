//! Delivery receipts end to end over real TLS: an event published with `"receipt": true`
//! is delivered to subscribers over SSE, long polling and polling, each subscriber's
//! client acknowledges it, and the publisher (or an admin) reads who got it and who
//! acknowledged it, with times and transports, also after a restart. Who may read and
//! acknowledge is checked; events that did not ask have no receipts.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use surepush::auth::{now_secs, Authenticator, Claims, Grants};
use surepush::config::Config;

fn minter(data_dir: &std::path::Path) -> Authenticator {
    let mut c = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    c.auth.enabled = true;
    Authenticator::from_config(&c).unwrap()
}

fn token(m: &Authenticator, sub: &str, subscribe: &[&str], publish: &[&str]) -> String {
    m.mint(&Claims {
        sub: sub.into(),
        exp: now_secs() + 3600,
        nbf: None,
        iat: None,
        surepush: Grants {
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            ..Grants::default()
        },
    })
    .unwrap()
}

async fn publish(s: &TestServer, tok: &str, body: Value) -> Vec<String> {
    let r = client()
        .post(s.url("/v1/publish"))
        .bearer_auth(tok)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

async fn receipts(s: &TestServer, tok: &str, id: &str) -> (u16, Value) {
    let r = client()
        .get(s.url(&format!("/v1/events/{id}/receipts")))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn acknowledge(s: &TestServer, tok: &str, ids: &[&str]) -> (u16, Value) {
    let r = client()
        .post(s.url("/v1/receipts"))
        .bearer_auth(tok)
        .header("Content-Type", "text/plain") // what surepush.js sends: no preflight
        .body(json!({ "ids": ids }).to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn row<'a>(r: &'a Value, subject: &str) -> &'a Value {
    r["receipts"]
        .as_array()
        .and_then(|rows| rows.iter().find(|x| x["subject"] == subject))
        .unwrap_or_else(|| panic!("no receipt row for {subject}: {r:#}"))
}

/// Waits until the receipts of `id` satisfy `ok` (delivered marks are written every
/// 200 ms, but a read shows them before).
async fn receipts_until(s: &TestServer, tok: &str, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, r) = receipts(s, tok, id).await;
        assert_eq!(status, 200, "{r:#}");
        if ok(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "receipts never became: {r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_record_delivery_and_acknowledgement_per_subject_and_transport() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), |c| c.auth.enabled = true).await;
    let m = minter(dir.path());
    let backend = token(&m, "backend", &[], &["alarms/**"]);
    let alice = token(&m, "alice", &["alarms/**"], &[]);
    let bob = token(&m, "bob", &["alarms/**"], &[]);
    let carol = token(&m, "carol", &["alarms/**"], &[]);
    let outsider = token(&m, "mallory", &["other/**"], &["other/**"]);

    // three subscribers on three transports, waiting before the event exists
    let sse = client()
        .get(s.url("/v1/stream?topic=alarms/7"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = SseReader::new(sse);
    let hello = sse.next_any(Duration::from_secs(10)).await.unwrap();
    assert_eq!(hello.event, "surepush.hello");
    let since = serde_json::from_str::<Value>(&hello.data).unwrap()["last_id"]
        .as_str()
        .unwrap()
        .to_string();
    let long_poll = {
        let (c, url, t) = (
            client(),
            s.url(&format!("/v1/poll?topic=alarms/7&since={since}&timeout=20")),
            bob.clone(),
        );
        tokio::spawn(async move {
            let r = c.get(url).bearer_auth(t).send().await.unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ids = publish(
        &s,
        &backend,
        json!([
            {"topic": "alarms/7", "type": "alarm", "data": {"level": "high"}, "receipt": true},
            {"topic": "alarms/7", "data": "no receipt asked"}
        ]),
    )
    .await;
    let (wanted, plain) = (ids[0].clone(), ids[1].clone());

    // the event says it wants a receipt, on every transport
    let ev = sse.next_event(Duration::from_secs(10)).await.unwrap();
    let ev_json: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(ev_json["id"], wanted);
    assert_eq!(ev_json["receipt"], true);
    let plain_ev = sse.next_event(Duration::from_secs(10)).await.unwrap();
    assert!(serde_json::from_str::<Value>(&plain_ev.data).unwrap()["receipt"].is_null());
    let polled = long_poll.await.unwrap();
    assert_eq!(polled["events"][0]["receipt"], true, "{polled}");
    let r = client()
        .get(s.url(&format!("/v1/events?topic=alarms/7&since={since}")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // delivered to all three, none acknowledged yet
    let r = receipts_until(&s, &backend, &wanted, |r| r["delivered"] == 3).await;
    assert_eq!(r["topic"], "alarms/7");
    assert_eq!(r["acknowledged"], 0);
    for (who, transport) in [
        ("alice", "sse_stream"),
        ("bob", "longpoll"),
        ("carol", "poll"),
    ] {
        let x = row(&r, who);
        assert_eq!(x["transport"], transport, "{r:#}");
        assert!(
            x["delivered_at"].is_string() && x["acknowledged_at"].is_null(),
            "{r:#}"
        );
    }

    // alice and bob acknowledge; events that did not ask are ignored
    let (status, a) = acknowledge(&s, &alice, &[&wanted, &plain]).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["acknowledged"], json!([wanted]));
    let (status, _) = acknowledge(&s, &bob, &[&wanted]).await;
    assert_eq!(status, 200);
    let r = receipts_until(&s, &backend, &wanted, |r| r["acknowledged"] == 2).await;
    // metrics: two first acknowledgements timed, carol's delivery still open
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = client()
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        let now = (
            value("surepush_receipt_ack_seconds_count"),
            value("surepush_receipt_events"),
            value("surepush_receipt_unacknowledged"),
        );
        if now == (Some(2.0), Some(1.0), Some(1.0)) {
            break;
        }
        assert!(Instant::now() < deadline, "metrics: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(row(&r, "alice")["acknowledged_at"].is_string());
    assert!(row(&r, "bob")["acknowledged_at"].is_string());

    // the CLI: publish with --receipt, read the receipts as a table and as JSON
    let cli = |args: Vec<String>| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_surepush"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let base = s.base_url.clone();
    let args = |rest: &[&str]| -> Vec<String> {
        rest.iter()
            .map(|a| a.to_string())
            .chain(["--insecure".into(), "--token".into(), backend.clone()])
            .collect()
    };
    let table = cli(args(&["receipts", &base, &wanted]));
    assert!(
        table.starts_with(&format!(
            "event {wanted} on alarms/7: delivered to 3, acknowledged by 2\n"
        )),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("carol") && l.contains("poll") && l.ends_with(" -")),
        "{table}"
    );
    let as_json: Value =
        serde_json::from_str(&cli(args(&["receipts", &base, &wanted, "--json"]))).unwrap();
    assert_eq!(as_json["acknowledged"], 2);
    let id = cli(args(&[
        "publish",
        &base,
        "alarms/8",
        "--data",
        "\"pump 3\"",
        "--receipt",
    ]));
    let (status, r8) = receipts(&s, &backend, id.trim()).await;
    assert_eq!(
        (status, r8["topic"].clone()),
        (200, json!("alarms/8")),
        "{r8}"
    );
    assert!(row(&r, "carol")["acknowledged_at"].is_null());

    // per subject: one's own, or anyone's for admins
    let mine: Value = client()
        .get(s.url("/v1/receipts"))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["subject"], "carol");
    assert_eq!(mine["events"][0]["id"], wanted, "{mine}");
    assert_eq!(mine["events"][0]["transport"], "poll");
    assert!(mine["events"][0]["acknowledged_at"].is_null());
    let r = client()
        .get(s.url("/v1/receipts?subject=alice"))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "not another subject's");

    // who may read and acknowledge
    let (status, _) = receipts(&s, &alice, &wanted).await;
    assert_eq!(status, 403, "a subscriber does not read others' receipts");
    let (status, _) = receipts(&s, &outsider, &wanted).await;
    assert_eq!(status, 403);
    let admin = m
        .mint_admin(&Claims {
            sub: "ops".into(),
            exp: now_secs() + 3600,
            nbf: None,
            iat: None,
            surepush: Grants::default(),
        })
        .unwrap();
    let alices: Value = client()
        .get(s.url("/v1/receipts?subject=alice&limit=5"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(alices["events"][0]["transport"], "sse_stream", "{alices}");
    assert!(alices["events"][0]["acknowledged_at"].is_string());
    let (status, r) = receipts(&s, &admin, &wanted).await;
    assert_eq!((status, r["acknowledged"].clone()), (200, json!(2)));
    let r = client()
        .get(s.url(&format!("/v1/events/{wanted}/receipts")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, e) = acknowledge(&s, &outsider, &[&wanted]).await;
    assert_eq!(
        (status, e["error"].clone()),
        (403, json!("forbidden")),
        "{e}"
    );
    let (status, e) = receipts(&s, &backend, &plain).await;
    assert_eq!(
        (status, e["error"].clone()),
        (404, json!("not_found")),
        "{e}"
    );
    let (status, e) = acknowledge(&s, &alice, &["not-an-id"]).await;
    assert_eq!(
        (status, e["error"].clone()),
        (422, json!("invalid_id")),
        "{e}"
    );
    // another database's id (a client from before a restore) is nothing to mark, not an error
    let (seq, epoch) = wanted.split_once('-').unwrap();
    let foreign = format!("{seq}-{:08x}", u32::from_str_radix(epoch, 16).unwrap() ^ 1);
    let (status, a) = acknowledge(&s, &alice, &[&foreign]).await;
    assert_eq!((status, a["acknowledged"].clone()), (200, json!([])), "{a}");
    let r = client()
        .post(s.url("/v1/receipts"))
        .bearer_auth(&alice)
        .body("{\"ids\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let many: Vec<String> = (0..1001).map(|i| format!("{i}-00000000")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (status, e) = acknowledge(&s, &alice, &many).await;
    assert_eq!((status, e["error"].clone()), (413, json!("too_many_ids")));

    // a backend waits for the third acknowledgement (a long poll on the receipts)
    let waiting = {
        let (c, url, t) = (
            client(),
            s.url(&format!(
                "/v1/events/{wanted}/receipts?acknowledged=3&timeout=20"
            )),
            backend.clone(),
        );
        tokio::spawn(async move {
            let r = c.get(url).bearer_auth(t).send().await.unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "it waits while only two acknowledged"
    );
    let (status, _) = acknowledge(&s, &carol, &[&wanted]).await;
    assert_eq!(status, 200);
    let done = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait ends with the acknowledgement")
        .unwrap();
    assert_eq!(done["acknowledged"], 3, "{done}");
    // more than will ever come: the answer at the timeout says how many did
    let (status, r) = {
        let r = client()
            .get(s.url(&format!(
                "/v1/events/{wanted}/receipts?acknowledged=9&timeout=1"
            )))
            .bearer_auth(&backend)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((status, r["acknowledged"].clone()), (200, json!(3)));

    // the CLI waits the same way; fewer than asked is exit code 3
    let code = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_surepush"))
            .args([
                "receipts",
                s.base_url.as_str(),
                wanted.as_str(),
                "--insecure",
                "--token",
                backend.as_str(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = code(&["--acknowledged", "3", "--timeout", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = code(&["--acknowledged", "9", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only 3 of 9 acknowledged within 1 s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // an acknowledgement answered is durable: the receipts survive a restart
    drop(sse);
    s.stop().await;
    let s = TestServer::start_in(dir.path(), |c| c.auth.enabled = true).await;
    let (status, r) = receipts(&s, &backend, &wanted).await;
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(
        (r["delivered"].clone(), r["acknowledged"].clone()),
        (json!(3), json!(3)),
        "{r:#}"
    );
    assert_eq!(row(&r, "alice")["transport"], "sse_stream");
}

/// Receipts go with their event: once retention removes it, they are gone too.
#[tokio::test(flavor = "multi_thread")]
async fn receipts_go_with_their_event() {
    let s = TestServer::start_with(|c| {
        c.storage.retention_max_events_per_topic = 1;
        c.storage.retention_interval_secs = 1;
    })
    .await;
    let first = publish(
        &s,
        "",
        json!({"topic": "kept/1", "data": 1, "receipt": true}),
    )
    .await;
    let (status, _) = receipts(&s, "", &first[0]).await;
    assert_eq!(status, 200);
    publish(&s, "", json!({"topic": "kept/1", "data": 2})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = receipts(&s, "", &first[0]).await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "receipts outlived their event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
