//! Job queues over real TLS on 127.0.0.1: enqueue answers 202 at once, workers lease,
//! heartbeat, complete or fail, the outcome reaches the requester as an event on its
//! reply topic; lease expiry, dead letters, delayed jobs, idempotency keys, long-poll
//! leases, many concurrent workers, SIGKILL of the real binary, bad input, auth rules
//! and metrics. Every wait is bounded.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::*;
use surepush::auth::{now_secs, Authenticator, Claims, Grants};
use surepush::config::Config;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Bound on one ordinary request.
const T: Duration = Duration::from_secs(20);
/// Bound on waiting for one pushed event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// helpers

struct Resp {
    status: u16,
    body: Value,
    location: Option<String>,
    /// The `Deprecation` header, if any.
    deprecation: Option<String>,
}

#[derive(Clone)]
struct Api {
    c: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(base: &str) -> Api {
        Api {
            c: client(),
            base: base.to_string(),
            token: None,
        }
    }

    fn as_user(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    fn anonymous(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// One request, bounded by `wait`; Err on transport errors (a killed server).
    async fn try_send(&self, req: reqwest::RequestBuilder, wait: Duration) -> Result<Resp, String> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = tokio::time::timeout(wait, req.timeout(wait).send())
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let deprecation = r
            .headers()
            .get("deprecation")
            .map(|v| v.to_str().unwrap().to_string());
        let text = tokio::time::timeout(wait, r.text())
            .await
            .map_err(|_| "body timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text:?}"))?
        };
        if status >= 400 {
            assert!(
                body["error"].is_string() && body["message"].is_string(),
                "error body without error/message: {body}"
            );
        }
        Ok(Resp {
            status,
            body,
            location,
            deprecation,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, wait: Duration) -> Resp {
        self.try_send(req, wait)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    async fn get(&self, path: &str) -> Resp {
        self.send(self.c.get(self.url(path)), T).await
    }

    async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.c.post(self.url(path)).json(body), T).await
    }

    async fn post_raw(&self, path: &str, body: impl Into<String>) -> Resp {
        let req = self
            .c
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .body(body.into());
        self.send(req, T).await
    }

    /// Enqueues; asserts 202 and returns the job id.
    async fn enqueue(&self, body: &Value) -> String {
        let r = self.post("/v1/jobs", body).await;
        assert_eq!(r.status, 202, "enqueue {body}: {}", r.body);
        r.body["job_id"].as_str().unwrap().to_string()
    }

    /// Leases; asserts 200 and returns the jobs. Bounded by wait_secs + 15 s.
    async fn lease(&self, queue: &str, body: &Value) -> Vec<Value> {
        let r = self.lease_resp(queue, body).await;
        assert_eq!(r.status, 200, "lease {queue} {body}: {}", r.body);
        r.body["jobs"].as_array().unwrap().clone()
    }

    async fn lease_resp(&self, queue: &str, body: &Value) -> Resp {
        let wait = Duration::from_secs(body["wait_secs"].as_u64().unwrap_or(0) + 15);
        let req = self
            .c
            .post(self.url(&format!("/v1/queues/{queue}/lease")))
            .json(body);
        self.send(req, wait).await
    }

    /// GET /v1/jobs/{id}; asserts 200.
    async fn job(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status, 200, "GET job {id}: {}", r.body);
        r.body
    }

    async fn act(&self, id: &str, action: &str, body: &Value) -> Resp {
        self.post(&format!("/v1/jobs/{id}/{action}"), body).await
    }

    /// Counts of one queue from GET /v1/queues (zeros if absent).
    async fn counts(&self, queue: &str) -> Value {
        let r = self.get("/v1/queues").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == queue)
            .cloned()
            .unwrap_or_else(|| {
                json!({"queue": queue, "queued": 0, "leased": 0, "succeeded": 0, "failed": 0, "dead": 0})
            })
    }

    /// Polls GET until the job has `status`, up to `within`.
    async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job(id).await;
            if j["status"] == status {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not become {status} within {within:?}: {j}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every event on `pattern` from the beginning, paged.
    async fn all_events(&self, pattern: &str) -> Vec<Value> {
        let mut since = "0".to_string();
        let mut out = Vec::new();
        loop {
            let r = self
                .get(&format!(
                    "/v1/events?topic={pattern}&since={since}&limit=1000"
                ))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let events = r.body["events"].as_array().unwrap();
            if events.is_empty() {
                return out;
            }
            out.extend(events.iter().cloned());
            since = r.body["last_id"].as_str().unwrap().to_string();
        }
    }
}

fn expect_err(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(r.body["error"], code, "{what}: {}", r.body);
}

fn ts(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &Rfc3339,
    )
    .unwrap_or_else(|e| panic!("bad time {v}: {e}"))
}

/// A client without a total timeout, for long streams (each read is bounded instead).
fn stream_client() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// An SSE subscription, returned once the server's hello arrived (so it is registered).
async fn subscribe(base: &str, pattern: &str, token: Option<&str>) -> SseReader {
    let mut req = stream_client().get(format!("{base}/v1/stream?topic={pattern}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = tokio::time::timeout(T, req.send())
        .await
        .expect("subscribe timed out")
        .unwrap();
    assert_eq!(r.status(), 200, "subscribe {pattern}");
    let mut sse = SseReader::new(r);
    let hello = sse.next_any(T).await.expect("no hello event");
    assert_eq!(hello.event, "surepush.hello");
    sse
}

/// The next application event as the whole event JSON; checks `event:` matches its type.
async fn next_event(sse: &mut SseReader) -> Value {
    let e = sse
        .next_event(EVENT_WAIT)
        .await
        .expect("no event on the reply topic within 10 s");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["type"], e.event.as_str(), "{v}");
    v
}

fn minter(s: &TestServer) -> Authenticator {
    let mut c = Config {
        data_dir: s.data_dir.clone(),
        ..Config::default()
    };
    c.auth.enabled = true;
    Authenticator::from_config(&c).unwrap()
}

fn mint(m: &Authenticator, sub: &str, subscribe: &[&str], jobs: &[&str], work: &[&str]) -> String {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    m.mint(&Claims {
        sub: sub.into(),
        exp: now_secs() + 600,
        nbf: None,
        iat: None,
        surepush: Grants {
            subscribe: v(subscribe),
            publish: Vec::new(),
            jobs: v(jobs),
            work: v(work),
        },
    })
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. lifecycle and outcome events

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_answers_at_once_and_the_outcome_is_pushed() {
    let s = TestServer::start_with(|c| c.jobs.backoff_base_ms = 50).await;
    let api = Api::new(&s.base_url);
    let mut sse = subscribe(&s.base_url, "users/42", None).await;

    // 202 at once, with the job's address; no worker exists, so nothing could have run
    let payload = json!({"report": "q3", "rows": [1, 2, 3]});
    let t0 = Instant::now();
    let r = api
        .post(
            "/v1/jobs",
            &json!({"queue": "reports", "payload": payload, "reply_topic": "users/42", "max_attempts": 3}),
        )
        .await;
    let took = t0.elapsed();
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(took < Duration::from_secs(2), "enqueue took {took:?}");
    let id = r.body["job_id"].as_str().unwrap().to_string();
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["duplicate"], false);
    let location = r.location.expect("Location header");
    assert_eq!(location, format!("/v1/jobs/{id}"));

    let j = api.job(&id).await;
    assert_eq!(api.get(&location).await.body, j);
    assert_eq!(j["job_id"], id.as_str());
    assert_eq!(j["queue"], "reports");
    assert_eq!(j["status"], "queued");
    assert_eq!(j["attempts"], 0);
    assert_eq!(j["max_attempts"], 3);
    assert_eq!(j["reply_topic"], "users/42");
    assert!(j["lease_until"].is_null() && j["finished"].is_null() && j["worker"].is_null());
    let created = ts(&j["created"]);
    assert!((OffsetDateTime::now_utc() - created).whole_seconds().abs() < 5);
    assert!(ts(&j["run_at"]) >= created);

    // lease: payload, attempt, lease_until ~30 s ahead
    let leased = api
        .lease(
            "reports",
            &json!({"worker": "w1", "max": 10, "lease_secs": 30}),
        )
        .await;
    assert_eq!(leased.len(), 1);
    let l = &leased[0];
    assert_eq!(l["job_id"], id.as_str());
    assert_eq!(l["payload"], payload);
    assert_eq!(l["attempt"], 1);
    let until = ts(&l["lease_until"]);
    let ahead = (until - created).whole_seconds();
    assert!((25..=35).contains(&ahead), "lease_until {ahead} s ahead");
    let j = api.job(&id).await;
    assert_eq!(j["status"], "leased");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["worker"], "w1");
    assert_eq!(j["lease_until"], l["lease_until"]);
    // given out once only
    assert!(api
        .lease("reports", &json!({"worker": "w2"}))
        .await
        .is_empty());

    // complete -> succeeded, with result and timestamps, and job.completed pushed
    let result = json!({"url": "https://files.example/q3.pdf", "pages": 3});
    let r = api
        .act(
            &id,
            "complete",
            &json!({"worker": "w1", "attempt": 1, "result": result}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    let j = api.job(&id).await;
    assert_eq!(j["status"], "succeeded");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["result"], result);
    assert!(j["lease_until"].is_null());
    let finished = ts(&j["finished"]);
    assert!(finished >= created && ts(&j["updated"]) >= created);

    let ev = next_event(&mut sse).await;
    assert_eq!(ev["type"], "job.completed");
    assert_eq!(ev["topic"], "users/42");
    assert!(ev["id"].is_string() && ev["time"].is_string());
    assert_eq!(
        ev["data"],
        json!({"job_id": id, "queue": "reports", "status": "succeeded", "attempts": 1, "result": result})
    );

    // fail without retry -> failed, job.failed pushed
    let id2 = api
        .enqueue(&json!({"queue": "reports", "payload": 2, "reply_topic": "users/42"}))
        .await;
    let l = api.lease("reports", &json!({"worker": "w2"})).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["job_id"], id2.as_str());
    let r = api
        .act(
            &id2,
            "fail",
            &json!({"worker": "w2", "attempt": 1, "error": "no such report", "retry": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "failed");
    let j = api.job(&id2).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error"], "no such report");
    assert!(j["finished"].is_string());
    let ev = next_event(&mut sse).await;
    assert_eq!(ev["type"], "job.failed");
    assert_eq!(ev["data"]["job_id"], id2.as_str());
    assert_eq!(ev["data"]["queue"], "reports");
    assert_eq!(ev["data"]["status"], "failed");
    assert_eq!(ev["data"]["attempts"], 1);
    assert_eq!(ev["data"]["error"], "no such report");

    // fail with retry: back to the queue after a backoff; past max_attempts: dead
    let id3 = api
        .enqueue(&json!({"queue": "reports", "payload": 3, "reply_topic": "users/42", "max_attempts": 2}))
        .await;
    let l = api.lease("reports", &json!({"worker": "w3"})).await;
    assert_eq!(l[0]["job_id"], id3.as_str());
    let r = api
        .act(
            &id3,
            "fail",
            &json!({"worker": "w3", "attempt": 1, "error": "flaky"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["attempts"], 1);
    assert!(r.body["worker"].is_null());
    let l = api
        .lease("reports", &json!({"worker": "w4", "wait_secs": 5}))
        .await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["job_id"], id3.as_str());
    assert_eq!(l[0]["attempt"], 2);
    let r = api
        .act(
            &id3,
            "fail",
            &json!({"worker": "w4", "attempt": 2, "error": "flaky again"}),
        )
        .await;
    assert_eq!(r.body["status"], "dead", "{}", r.body);
    let ev = next_event(&mut sse).await;
    assert_eq!(ev["type"], "job.dead");
    assert_eq!(ev["data"]["job_id"], id3.as_str());
    assert_eq!(ev["data"]["status"], "dead");
    assert_eq!(ev["data"]["attempts"], 2);
    assert_eq!(ev["data"]["error"], "flaky again");
    // exactly one event per outcome
    assert!(sse.next_event(Duration::from_millis(500)).await.is_none());

    let c = api.counts("reports").await;
    assert_eq!(
        (
            c["queued"].as_u64(),
            c["leased"].as_u64(),
            c["succeeded"].as_u64()
        ),
        (Some(0), Some(0), Some(1))
    );
    assert_eq!(
        (c["failed"].as_u64(), c["dead"].as_u64()),
        (Some(1), Some(1))
    );
}

// ---------------------------------------------------------------------------------------
// 2. lease expiry, heartbeats, dead letters, requeue, discard

#[tokio::test(flavor = "multi_thread")]
async fn expired_leases_move_on_and_dead_letters_can_be_requeued_or_discarded() {
    let s = TestServer::start_with(|c| c.jobs.backoff_base_ms = 50).await;
    let api = Api::new(&s.base_url);
    let mut sse = subscribe(&s.base_url, "users/7", None).await;
    let id = api
        .enqueue(
            &json!({"queue": "exp", "payload": "x", "reply_topic": "users/7", "max_attempts": 3}),
        )
        .await;

    // worker A takes it for 1 s and goes silent
    let a_leased = Instant::now();
    let l = api
        .lease("exp", &json!({"worker": "A", "lease_secs": 1}))
        .await;
    assert_eq!(l[0]["attempt"], 1);
    // worker B is waiting; it gets the job once A's lease ran out
    let l = api
        .lease(
            "exp",
            &json!({"worker": "B", "lease_secs": 1, "wait_secs": 10}),
        )
        .await;
    let after = a_leased.elapsed();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["job_id"], id.as_str());
    assert_eq!(l[0]["attempt"], 2);
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(6),
        "B got the job {after:?} after A's lease"
    );
    let j = api.job(&id).await;
    assert_eq!(j["status"], "leased");
    assert_eq!(j["worker"], "B");
    assert_eq!(j["attempts"], 2);
    assert!(
        j["error"].as_str().unwrap().contains("lease expired"),
        "{j}"
    );

    // the stale holder is refused, however it names itself
    for (what, body) in [
        (
            "complete",
            json!({"worker": "A", "attempt": 1, "result": 1}),
        ),
        ("complete", json!({"worker": "A"})),
        ("complete", json!({"attempt": 1})),
        (
            "heartbeat",
            json!({"worker": "A", "attempt": 1, "lease_secs": 1}),
        ),
        (
            "fail",
            json!({"worker": "A", "attempt": 1, "error": "late"}),
        ),
    ] {
        let r = api.act(&id, what, &body).await;
        expect_err(&r, 409, "lease_conflict", &format!("stale {what} {body}"));
    }

    // B heartbeats (every 250 ms, 2 s each) past its 1 s lease; C, waiting 3 s, gets nothing
    let c_api = api.clone();
    let c_wait = tokio::spawn(async move {
        c_api
            .lease(
                "exp",
                &json!({"worker": "C", "lease_secs": 1, "wait_secs": 3}),
            )
            .await
    });
    let hb_start = Instant::now();
    let mut last_until = ts(&l[0]["lease_until"]);
    while hb_start.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = api
            .act(
                &id,
                "heartbeat",
                &json!({"worker": "B", "attempt": 2, "lease_secs": 2}),
            )
            .await;
        assert_eq!(r.status, 200, "heartbeat: {}", r.body);
        assert_eq!(r.body["status"], "leased");
        let until = ts(&r.body["lease_until"]);
        assert!(until >= last_until, "heartbeat moved the lease back");
        last_until = until;
    }
    let got = tokio::time::timeout(T, c_wait).await.unwrap().unwrap();
    assert!(
        got.is_empty(),
        "a heartbeating worker's job was given out: {got:?}"
    );
    assert_eq!(api.job(&id).await["attempts"], 2);

    // B goes silent: C gets attempt 3, the last one
    let l = api
        .lease(
            "exp",
            &json!({"worker": "C", "lease_secs": 1, "wait_secs": 10}),
        )
        .await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["attempt"], 3);
    let r = api
        .act(&id, "complete", &json!({"worker": "B", "attempt": 2}))
        .await;
    expect_err(&r, 409, "lease_conflict", "B after losing the lease");

    // C goes silent too: past max_attempts the job is dead-lettered
    let j = api.wait_status(&id, "dead", Duration::from_secs(10)).await;
    assert_eq!(j["attempts"], 3);
    assert!(j["finished"].is_string());
    let ev = next_event(&mut sse).await;
    assert_eq!(ev["type"], "job.dead");
    assert_eq!(ev["data"]["job_id"], id.as_str());
    assert_eq!(ev["data"]["status"], "dead");
    assert_eq!(ev["data"]["attempts"], 3);
    assert!(ev["data"]["error"]
        .as_str()
        .unwrap()
        .contains("lease expired"));
    let dead = api.get("/v1/queues/exp/dead").await;
    assert_eq!(dead.status, 200);
    let dead_ids: Vec<&str> = dead.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(dead_ids, [id.as_str()]);
    assert_eq!(api.counts("exp").await["dead"], 1);
    let r = api
        .act(&id, "complete", &json!({"worker": "C", "attempt": 3}))
        .await;
    expect_err(&r, 409, "lease_conflict", "complete a dead job");
    assert!(api.lease("exp", &json!({"worker": "D"})).await.is_empty());

    // requeue from the dead letters: attempts reset, leasable again, completes
    let r = api.act(&id, "requeue", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["attempts"], 0);
    assert!(r.body["finished"].is_null());
    let dead = api.get("/v1/queues/exp/dead").await;
    assert!(dead.body["jobs"].as_array().unwrap().is_empty());
    let l = api
        .lease("exp", &json!({"worker": "D", "wait_secs": 5}))
        .await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["job_id"], id.as_str());
    assert_eq!(l[0]["attempt"], 1);
    let r = api
        .act(
            &id,
            "complete",
            &json!({"worker": "D", "attempt": 1, "result": "ok"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = next_event(&mut sse).await;
    assert_eq!(ev["type"], "job.completed");
    assert_eq!(ev["data"]["attempts"], 1);
    assert_eq!(ev["data"]["result"], "ok");
    // only dead or failed jobs can be requeued or discarded
    expect_err(
        &api.act(&id, "requeue", &json!({})).await,
        409,
        "lease_conflict",
        "requeue a succeeded job",
    );
    expect_err(
        &api.act(&id, "discard", &json!({})).await,
        409,
        "lease_conflict",
        "discard a succeeded job",
    );

    // discard: gone for good
    let id2 = api
        .enqueue(&json!({"queue": "exp", "payload": "y", "max_attempts": 1}))
        .await;
    expect_err(
        &api.act(&id2, "discard", &json!({})).await,
        409,
        "lease_conflict",
        "discard a queued job",
    );
    let l = api
        .lease("exp", &json!({"worker": "E", "lease_secs": 1}))
        .await;
    assert_eq!(l[0]["job_id"], id2.as_str());
    api.wait_status(&id2, "dead", Duration::from_secs(10)).await;
    let r = api.act(&id2, "discard", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "discarded");
    expect_err(
        &api.get(&format!("/v1/jobs/{id2}")).await,
        404,
        "not_found",
        "GET a discarded job",
    );
    expect_err(
        &api.act(&id2, "discard", &json!({})).await,
        404,
        "not_found",
        "discard twice",
    );
    let dead = api.get("/v1/queues/exp/dead").await;
    assert!(dead.body["jobs"].as_array().unwrap().is_empty());
    let c = api.counts("exp").await;
    assert_eq!(
        (
            c["queued"].as_u64(),
            c["leased"].as_u64(),
            c["succeeded"].as_u64(),
            c["dead"].as_u64()
        ),
        (Some(0), Some(0), Some(1), Some(0)),
        "{c}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. delayed jobs and idempotency keys

#[tokio::test(flavor = "multi_thread")]
async fn delayed_jobs_wait_for_their_time_and_idempotency_keys_dedupe() {
    let s = TestServer::start().await;
    let api = Api::new(&s.base_url);

    // a waiter that starts before the delayed job exists wakes when it becomes due
    let waiter_api = api.clone();
    let waiter = tokio::spawn(async move {
        let l = waiter_api
            .lease("later", &json!({"worker": "w0", "wait_secs": 10}))
            .await;
        (l, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_e = Instant::now();
    let id0 = api
        .enqueue(&json!({"queue": "later", "payload": 0, "delay_secs": 1}))
        .await;
    let (l, at) = tokio::time::timeout(T, waiter).await.unwrap().unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["job_id"], id0.as_str());
    let after = at - t_e;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "delay_secs 1 leased after {after:?}"
    );

    // delay_secs and run_at: not leased before due; a waiting lease wakes at due time
    let t_e = Instant::now();
    let id1 = api
        .enqueue(&json!({"queue": "later", "payload": 1, "delay_secs": 2}))
        .await;
    let run_at = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let id2 = api
        .enqueue(
            &json!({"queue": "later", "payload": 2, "run_at": run_at.format(&Rfc3339).unwrap()}),
        )
        .await;
    let j1 = api.job(&id1).await;
    assert_eq!(j1["status"], "queued");
    let delay = ts(&j1["run_at"]) - ts(&j1["created"]);
    assert!(
        (1900..=2100).contains(&delay.whole_milliseconds()),
        "run_at - created = {delay}"
    );
    let j2 = api.job(&id2).await;
    assert!((ts(&j2["run_at"]) - run_at).whole_milliseconds().abs() <= 1);
    assert!(api
        .lease("later", &json!({"worker": "w1", "max": 10}))
        .await
        .is_empty());
    let l = api
        .lease(
            "later",
            &json!({"worker": "w1", "max": 10, "wait_secs": 10}),
        )
        .await;
    let after = t_e.elapsed();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["job_id"], id1.as_str());
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_secs(4),
        "delay_secs 2 leased after {after:?}"
    );
    let l = api
        .lease(
            "later",
            &json!({"worker": "w1", "max": 10, "wait_secs": 10}),
        )
        .await;
    let after = t_e.elapsed();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["job_id"], id2.as_str());
    assert!(
        after >= Duration::from_millis(2700) && after < Duration::from_secs(5),
        "run_at +3 s leased after {after:?}"
    );
    // a run_at in the past is due at once
    let past = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let id3 = api
        .enqueue(&json!({"queue": "later", "payload": 3, "run_at": past.format(&Rfc3339).unwrap()}))
        .await;
    let l = api.lease("later", &json!({"worker": "w1"})).await;
    assert_eq!(l[0]["job_id"], id3.as_str());

    // Idempotency-Key: same key, same job; other queue, other job
    let keyed = |queue: &str, payload: i64, key: &str| {
        api.c
            .post(api.url("/v1/jobs"))
            .header("Idempotency-Key", key)
            .json(&json!({"queue": queue, "payload": payload}))
    };
    let r1 = api.send(keyed("idem", 1, "order-77"), T).await;
    assert_eq!(r1.status, 202, "{}", r1.body);
    assert_eq!(r1.body["duplicate"], false);
    let r2 = api.send(keyed("idem", 2, "order-77"), T).await;
    assert_eq!(r2.status, 202, "{}", r2.body);
    assert_eq!(r2.body["job_id"], r1.body["job_id"]);
    assert_eq!(r2.body["duplicate"], true);
    assert_eq!(r2.location, r1.location);
    let r3 = api.send(keyed("idem2", 3, "order-77"), T).await;
    assert_eq!(r3.status, 202);
    assert_eq!(r3.body["duplicate"], false);
    assert_ne!(r3.body["job_id"], r1.body["job_id"]);
    assert_eq!(api.counts("idem").await["queued"], 1);
    // the first payload is the one kept
    let l = api.lease("idem", &json!({"worker": "w", "max": 10})).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["payload"], 1);
    // still a duplicate once leased
    let r4 = api.send(keyed("idem", 4, "order-77"), T).await;
    assert_eq!(r4.body["job_id"], r1.body["job_id"]);
    assert_eq!(r4.body["duplicate"], true);
    assert_eq!(r4.body["status"], "leased");

    // many concurrent requests with one key create exactly one job
    let replies = futures_util::future::join_all(
        (0..12).map(|i| api.send(keyed("idem", 100 + i, "race"), T)),
    )
    .await;
    let ids: HashSet<&str> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.body);
            r.body["job_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one key gave {ids:?}");
    let created = replies
        .iter()
        .filter(|r| r.body["duplicate"] == false)
        .count();
    assert_eq!(created, 1);
    assert_eq!(api.counts("idem").await["queued"], 1);

    let r = api.send(keyed("idem", 5, &"k".repeat(201)), T).await;
    expect_err(&r, 400, "invalid_idempotency_key", "201-byte key");
}

// ---------------------------------------------------------------------------------------
// 4. long-poll lease

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_lease_returns_on_enqueue_or_empty_at_the_end_of_its_wait() {
    let s = TestServer::start().await;
    let api = Api::new(&s.base_url);

    // four workers wait up to 10 s; one job arrives from another client
    let started = Instant::now();
    let waiters: Vec<_> = (0..4)
        .map(|w| {
            let api = Api::new(&s.base_url);
            tokio::spawn(async move {
                let l = api
                    .lease(
                        "lp",
                        &json!({"worker": format!("w{w}"), "max": 5, "wait_secs": 10}),
                    )
                    .await;
                (l, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_e = started.elapsed();
    let id = api
        .enqueue(&json!({"queue": "lp", "payload": "wake"}))
        .await;
    let mut winners = Vec::new();
    let mut empty = 0;
    for w in waiters {
        let (l, at) = tokio::time::timeout(T, w).await.unwrap().unwrap();
        if l.is_empty() {
            empty += 1;
            assert!(at >= Duration::from_millis(9_900), "empty answer at {at:?}");
        } else {
            assert_eq!(l.len(), 1);
            assert_eq!(l[0]["job_id"], id.as_str());
            winners.push(at);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "the job went to {} workers",
        winners.len()
    );
    assert_eq!(empty, 3);
    let latency = winners[0] - t_e;
    assert!(
        latency < Duration::from_secs(2),
        "the waiting lease returned {latency:?} after the enqueue"
    );
    eprintln!("long-poll lease: woke {latency:?} after the enqueue");

    // FIFO per queue: jobs come out in the order they went in
    let mut fifo = Vec::new();
    for n in 0..6 {
        fifo.push(api.enqueue(&json!({"queue": "fifo", "payload": n})).await);
    }
    let mut out = Vec::new();
    for _ in 0..2 {
        let l = api.lease("fifo", &json!({"worker": "w", "max": 3})).await;
        out.extend(l.iter().map(|j| j["job_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(out, fifo);

    // nothing comes: an empty list at the end of the wait
    let t = Instant::now();
    let l = api
        .lease("lp-empty", &json!({"worker": "w", "wait_secs": 2}))
        .await;
    let took = t.elapsed();
    assert!(l.is_empty());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "empty lease took {took:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. concurrency

#[derive(Default)]
struct Track {
    /// (attempt, worker) per lease given out
    leases: Vec<(u64, String)>,
    holder: Option<(String, u64)>,
    completed: u32,
    failed: u32,
}

const CONC_JOBS: usize = 3000;
const CONC_WORKERS: usize = 8;
const CONC_ENQUEUERS: usize = 4;
const CONC_BATCH: usize = 50;

/// Job n fails its first attempt (retry) when n % FAIL_EVERY == 0, to exercise re-leasing.
const FAIL_EVERY: u64 = 50;

async fn conc_worker(
    api: Api,
    w: usize,
    track: Arc<Mutex<HashMap<String, Track>>>,
    done: Arc<AtomicUsize>,
    violations: Arc<Mutex<Vec<String>>>,
) -> usize {
    let name = format!("w{w}");
    let mut leases = 0;
    while done.load(Ordering::SeqCst) < CONC_JOBS {
        let max = rand::random_range(1..=10usize);
        let jobs = api
            .lease(
                "cc",
                &json!({"worker": name, "max": max, "lease_secs": 60, "wait_secs": 1}),
            )
            .await;
        assert!(jobs.len() <= max, "asked for {max}, got {}", jobs.len());
        leases += 1;
        {
            let mut t = track.lock().unwrap();
            for j in &jobs {
                let id = j["job_id"].as_str().unwrap().to_string();
                let attempt = j["attempt"].as_u64().unwrap();
                let e = t.entry(id.clone()).or_default();
                if let Some((other, a)) = &e.holder {
                    violations.lock().unwrap().push(format!(
                        "{id} attempt {attempt} leased to {name} while {other} holds attempt {a}"
                    ));
                }
                e.holder = Some((name.clone(), attempt));
                e.leases.push((attempt, name.clone()));
            }
        }
        // a worker with concurrency: the batch's jobs are finished in parallel
        let (api, name, track, done) = (&api, &name, &track, &done);
        futures_util::future::join_all(jobs.iter().map(|j| async move {
            let id = j["job_id"].as_str().unwrap().to_string();
            let attempt = j["attempt"].as_u64().unwrap();
            let n = j["payload"]["n"].as_u64().unwrap();
            // released before the request goes out: from then on the server may re-lease
            track.lock().unwrap().get_mut(&id).unwrap().holder = None;
            if attempt == 1 && n % FAIL_EVERY == 0 {
                let r = api
                    .act(
                        &id,
                        "fail",
                        &json!({"worker": name, "attempt": attempt, "error": "transient"}),
                    )
                    .await;
                assert_eq!(r.status, 200, "fail {id}: {}", r.body);
                assert_eq!(r.body["status"], "queued");
                track.lock().unwrap().get_mut(&id).unwrap().failed += 1;
            } else {
                let r = api
                    .act(
                        &id,
                        "complete",
                        &json!({"worker": name, "attempt": attempt, "result": {"n": n, "by": name}}),
                    )
                    .await;
                assert_eq!(r.status, 200, "complete {id}: {}", r.body);
                track.lock().unwrap().get_mut(&id).unwrap().completed += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }))
        .await;
    }
    leases
}

#[tokio::test(flavor = "multi_thread")]
async fn many_workers_never_hold_the_same_job_at_once() {
    let s = TestServer::start_with(|c| {
        c.jobs.backoff_base_ms = 20;
        c.storage.retention_max_events_per_topic = 0;
    })
    .await;
    let api = Api::new(&s.base_url);
    let track: Arc<Mutex<HashMap<String, Track>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let ids_by_n: Arc<Mutex<HashMap<u64, String>>> = Arc::default();

    // the requester side: one subscriber for every reply topic
    let mut sse = subscribe(&s.base_url, "cc/**", None).await;
    let listener = tokio::spawn(async move {
        let mut seen: HashMap<String, u32> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        while seen.len() < CONC_JOBS && Instant::now() < deadline {
            let Some(e) = sse.next_event(Duration::from_secs(15)).await else {
                break;
            };
            if e.event == "job.completed" {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                *seen
                    .entry(v["data"]["job_id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        (seen, Instant::now())
    });

    let start = Instant::now();
    let workers: Vec<_> = (0..CONC_WORKERS)
        .map(|w| {
            tokio::spawn(conc_worker(
                Api::new(&s.base_url),
                w,
                track.clone(),
                done.clone(),
                violations.clone(),
            ))
        })
        .collect();
    let enqueuers: Vec<_> = (0..CONC_ENQUEUERS)
        .map(|e| {
            let api = Api::new(&s.base_url);
            let ids_by_n = ids_by_n.clone();
            tokio::spawn(async move {
                let mine: Vec<u64> = (0..CONC_JOBS as u64)
                    .filter(|n| n % CONC_ENQUEUERS as u64 == e as u64)
                    .collect();
                for batch in mine.chunks(CONC_BATCH) {
                    let ids = futures_util::future::join_all(batch.iter().map(|n| {
                        let api = &api;
                        let body = json!({
                            "queue": "cc",
                            "payload": {"n": n},
                            "reply_topic": format!("cc/{}", n % 8),
                            "max_attempts": 3,
                        });
                        async move { api.enqueue(&body).await }
                    }))
                    .await;
                    let mut m = ids_by_n.lock().unwrap();
                    for (n, id) in batch.iter().zip(ids) {
                        m.insert(*n, id);
                    }
                }
            })
        })
        .collect();
    for e in enqueuers {
        tokio::time::timeout(Duration::from_secs(90), e)
            .await
            .expect("enqueuers did not finish within 90 s")
            .unwrap();
    }
    let enqueued_in = start.elapsed();
    let mut lease_calls = 0;
    for w in workers {
        lease_calls += tokio::time::timeout(Duration::from_secs(90), w)
            .await
            .expect("workers did not finish within 90 s")
            .unwrap();
    }
    let worked_in = start.elapsed();
    let (seen, last_event_at) = tokio::time::timeout(Duration::from_secs(100), listener)
        .await
        .unwrap()
        .unwrap();
    let evented_in = last_event_at - start;

    let v = std::mem::take(&mut *violations.lock().unwrap());
    assert!(
        v.is_empty(),
        "{} overlapping leases, e.g. {:?}",
        v.len(),
        &v[..v.len().min(5)]
    );
    let ids_by_n = std::mem::take(&mut *ids_by_n.lock().unwrap());
    assert_eq!(ids_by_n.len(), CONC_JOBS);
    let distinct: HashSet<&String> = ids_by_n.values().collect();
    assert_eq!(distinct.len(), CONC_JOBS, "job ids repeat");
    let t = std::mem::take(&mut *track.lock().unwrap());
    assert_eq!(t.len(), CONC_JOBS, "leased jobs that were never enqueued?");
    let mut retried = 0;
    for (n, id) in ids_by_n.iter() {
        let tr = t
            .get(id)
            .unwrap_or_else(|| panic!("job {id} (n={n}) was never leased"));
        let expect_attempts = if n % FAIL_EVERY == 0 { 2 } else { 1 };
        let mut attempts: Vec<u64> = tr.leases.iter().map(|(a, _)| *a).collect();
        attempts.sort_unstable();
        assert_eq!(
            attempts,
            (1..=expect_attempts).collect::<Vec<_>>(),
            "job {id} (n={n}) leases {:?}",
            tr.leases
        );
        assert_eq!(tr.completed, 1, "job {id} completed {} times", tr.completed);
        assert_eq!(u64::from(tr.failed), expect_attempts - 1);
        assert!(tr.holder.is_none());
        retried += usize::from(expect_attempts == 2);
        assert_eq!(
            seen.get(id),
            Some(&1),
            "job {id}: job.completed events over SSE"
        );
    }
    assert_eq!(seen.len(), CONC_JOBS, "events for unknown jobs");

    let c = api.counts("cc").await;
    assert_eq!(
        c,
        json!({"queue": "cc", "queued": 0, "leased": 0, "succeeded": CONC_JOBS, "failed": 0, "dead": 0})
    );
    // the log agrees: exactly one job.completed per job, with its attempts and result
    let events = api.all_events("cc/**").await;
    assert_eq!(events.len(), CONC_JOBS);
    let mut per_job: HashMap<&str, &Value> = HashMap::new();
    for e in &events {
        assert_eq!(e["type"], "job.completed");
        let id = e["data"]["job_id"].as_str().unwrap();
        assert!(per_job.insert(id, e).is_none(), "two events for {id}");
    }
    for (n, id) in ids_by_n.iter().filter(|(n, _)| *n % 97 == 0) {
        let e = per_job[id.as_str()];
        assert_eq!(e["topic"], format!("cc/{}", n % 8));
        assert_eq!(e["data"]["result"]["n"], *n);
        let j = api.job(id).await;
        assert_eq!(j["status"], "succeeded");
        assert_eq!(j["attempts"], e["data"]["attempts"]);
    }
    let rate = CONC_JOBS as f64 / evented_in.as_secs_f64();
    eprintln!(
        "concurrency: {CONC_JOBS} jobs ({retried} retried once), {CONC_WORKERS} workers, {lease_calls} lease calls; \
         all enqueued in {enqueued_in:.2?}, all completed in {worked_in:.2?}, \
         last job.completed received at {evented_in:.2?}: {rate:.0} jobs/s enqueue -> lease -> complete -> event"
    );
}

// ---------------------------------------------------------------------------------------
// 6. crash

const CRASH_ROUNDS: usize = 3;
const CRASH_ENQUEUERS: usize = 6;
const CRASH_WORKERS: usize = 4;

#[derive(Default)]
struct CrashLedger {
    /// job ids acknowledged with 202, with the payload sent
    acked: HashMap<String, Value>,
    /// job ids that got 200 on complete
    completed: HashSet<String>,
}

impl CrashLedger {
    /// A leased job's payload is the one its 202 acknowledged (ids are never reused).
    fn check_payload(&self, j: &Value) {
        let id = j["job_id"].as_str().unwrap();
        if let Some(p) = self.acked.get(id) {
            assert_eq!(&j["payload"], p, "job {id} came back with another payload");
        }
    }
}

async fn crash_enqueuer(base: String, round: usize, e: usize, ledger: Arc<Mutex<CrashLedger>>) {
    let api = Api::new(&base);
    for n in 0.. {
        let payload = json!({"round": round, "e": e, "n": n});
        let body = json!({"queue": "crash", "payload": payload, "reply_topic": format!("cj/{e}")});
        let req = api.c.post(api.url("/v1/jobs")).json(&body);
        let Ok(r) = api.try_send(req, Duration::from_secs(5)).await else {
            return;
        };
        if r.status != 202 {
            return;
        }
        let id = r.body["job_id"].as_str().unwrap().to_string();
        ledger.lock().unwrap().acked.insert(id, payload);
    }
}

async fn crash_worker(base: String, w: usize, ledger: Arc<Mutex<CrashLedger>>) {
    let api = Api::new(&base);
    let name = format!("cw{w}");
    loop {
        let body = json!({"worker": name, "max": 8, "lease_secs": 2, "wait_secs": 1});
        let req = api.c.post(api.url("/v1/queues/crash/lease")).json(&body);
        let Ok(r) = api.try_send(req, Duration::from_secs(5)).await else {
            return;
        };
        if r.status != 200 {
            return;
        }
        let jobs = r.body["jobs"].as_array().unwrap();
        for j in jobs {
            ledger.lock().unwrap().check_payload(j);
        }
        let (api, name, ledger) = (&api, &name, &ledger);
        let outcomes = futures_util::future::join_all(jobs.iter().map(|j| async move {
            let id = j["job_id"].as_str().unwrap().to_string();
            let body = json!({"worker": name, "attempt": j["attempt"], "result": {"job": id}});
            let req = api
                .c
                .post(api.url(&format!("/v1/jobs/{id}/complete")))
                .json(&body);
            let Ok(r) = api.try_send(req, Duration::from_secs(5)).await else {
                return false;
            };
            match r.status {
                200 => {
                    ledger.lock().unwrap().completed.insert(id);
                    true
                }
                409 => true, // the lease ran out under load; someone else will do it
                _ => false,
            }
        }))
        .await;
        if outcomes.contains(&false) {
            return;
        }
    }
}

/// Every job in the store: ids are dense from j1 (nothing is discarded in this test).
async fn all_jobs(api: &Api) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    let mut next = 1u64;
    loop {
        let replies: Vec<(u64, Resp)> = futures_util::stream::iter(next..next + 64)
            .map(|n| async move { (n, api.get(&format!("/v1/jobs/j{n}")).await) })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut missing = Vec::new();
        for (n, r) in replies {
            match r.status {
                200 => {
                    out.insert(n, r.body);
                }
                404 => missing.push(n),
                s => panic!("GET j{n}: {s} {}", r.body),
            }
        }
        if let Some(first_missing) = missing.iter().min() {
            assert!(
                out.keys().all(|k| k < first_missing),
                "job ids have a hole at j{first_missing}"
            );
            return out;
        }
        next += 64;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_loses_no_acknowledged_job_and_no_outcome_event() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SUREPUSH_STORAGE__RETENTION_MAX_EVENTS_PER_TOPIC", "0"),
        ("SUREPUSH_JOBS__BACKOFF_BASE_MS", "50"),
    ];
    let ledger: Arc<Mutex<CrashLedger>> = Arc::default();
    for round in 0..CRASH_ROUNDS {
        let mut server = ChildServer::spawn_env(dir.path(), &[], &env);
        let acked_before = ledger.lock().unwrap().acked.len();
        let completed_before = ledger.lock().unwrap().completed.len();
        let mut tasks: Vec<_> = (0..CRASH_ENQUEUERS)
            .map(|e| {
                tokio::spawn(crash_enqueuer(
                    server.base_url.clone(),
                    round,
                    e,
                    ledger.clone(),
                ))
            })
            .collect();
        tasks.extend(
            (0..CRASH_WORKERS)
                .map(|w| tokio::spawn(crash_worker(server.base_url.clone(), w, ledger.clone()))),
        );
        let ms = 500 + rand::random_range(0..1500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("a client did not notice the crash")
                .unwrap();
        }
        drop(server);

        let server = ChildServer::spawn_env(dir.path(), &[], &env);
        let api = Api::new(&server.base_url);
        let (acked, completed) = {
            let l = ledger.lock().unwrap();
            (l.acked.clone(), l.completed.clone())
        };
        let jobs = all_jobs(&api).await;
        let by_id: HashMap<String, &Value> = jobs
            .values()
            .map(|j| (j["job_id"].as_str().unwrap().to_string(), j))
            .collect();
        // every 202-acknowledged job exists
        for id in acked.keys() {
            assert!(
                by_id.contains_key(id),
                "round {round}: acknowledged job {id} lost"
            );
        }
        // every 200-completed job is succeeded
        for id in &completed {
            assert_eq!(
                by_id[id]["status"], "succeeded",
                "round {round}: completed job {id} is {}",
                by_id[id]
            );
        }
        // outcome events: exactly one per succeeded job, none for any other job
        let events = api.all_events("cj/**").await;
        let mut per_job: HashMap<String, Vec<&Value>> = HashMap::new();
        for e in &events {
            assert_eq!(e["type"], "job.completed", "{e}");
            per_job
                .entry(e["data"]["job_id"].as_str().unwrap().to_string())
                .or_default()
                .push(e);
        }
        let mut succeeded = 0;
        for (id, j) in &by_id {
            let evs = per_job.get(id).map_or(0, Vec::len);
            if j["status"] == "succeeded" {
                succeeded += 1;
                assert_eq!(
                    evs, 1,
                    "round {round}: succeeded job {id} has {evs} job.completed events"
                );
                let e = per_job[id][0];
                assert_eq!(e["data"]["result"]["job"], id.as_str());
                assert_eq!(e["data"]["attempts"], j["attempts"]);
            } else {
                assert_eq!(
                    evs, 0,
                    "round {round}: {} job {id} has a job.completed event",
                    j["status"]
                );
                assert!(
                    j["status"] == "queued" || j["status"] == "leased",
                    "round {round}: {j}"
                );
            }
        }
        for id in per_job.keys() {
            assert!(
                by_id.contains_key(id),
                "round {round}: event for unknown job {id}"
            );
        }
        let c = api.counts("crash").await;
        let at_restart = format!("{} queued, {} leased", c["queued"], c["leased"]);
        assert_eq!(c["succeeded"].as_u64(), Some(succeeded as u64), "{c}");
        assert_eq!(
            c["queued"].as_u64().unwrap() + c["leased"].as_u64().unwrap(),
            (by_id.len() - succeeded) as u64,
            "{c}"
        );

        // nothing succeeded is leasable again: drain everything (leases held at the
        // crash come back after 2 s), checking each job handed out
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut drained = 0;
        loop {
            let l = api
                .lease(
                    "crash",
                    &json!({"worker": "drain", "max": 100, "lease_secs": 30, "wait_secs": 1}),
                )
                .await;
            for j in &l {
                let id = j["job_id"].as_str().unwrap();
                assert!(
                    !completed.contains(id),
                    "round {round}: job {id} was completed (200) before the crash and is leased again"
                );
                assert_ne!(by_id[id]["status"], "succeeded", "round {round}: {id}");
                ledger.lock().unwrap().check_payload(j);
            }
            let replies = futures_util::stream::iter(l.iter())
                .map(|j| {
                    let id = j["job_id"].as_str().unwrap();
                    let body =
                        json!({"worker": "drain", "attempt": j["attempt"], "result": {"job": id}});
                    let api = &api;
                    async move { api.act(id, "complete", &body).await }
                })
                .buffer_unordered(32)
                .collect::<Vec<Resp>>()
                .await;
            for r in replies {
                assert_eq!(r.status, 200, "{}", r.body);
                drained += 1;
            }
            let c = api.counts("crash").await;
            if l.is_empty() && c["queued"] == 0 && c["leased"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: queue not drained: {c}"
            );
        }
        let c = api.counts("crash").await;
        assert_eq!(c["succeeded"].as_u64(), Some(by_id.len() as u64), "{c}");
        let events = api.all_events("cj/**").await;
        assert_eq!(
            events.len(),
            by_id.len(),
            "round {round}: one event per job"
        );
        let l = ledger.lock().unwrap();
        eprintln!(
            "crash round {round}: killed after {ms} ms; {} jobs acked (+{}), {} completed with 200 (+{}), \
             {} jobs in store checked ({succeeded} succeeded, {} events, {at_restart}), {drained} drained after restart",
            l.acked.len(),
            l.acked.len() - acked_before,
            l.completed.len(),
            l.completed.len() - completed_before,
            by_id.len(),
            per_job.len(),
        );
        assert!(
            l.acked.len() > acked_before,
            "round {round}: nothing was acknowledged"
        );
    }
    let l = ledger.lock().unwrap();
    assert!(
        !l.completed.is_empty(),
        "workers never completed a job before a crash"
    );
}

// ---------------------------------------------------------------------------------------
// 7. bad input

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors() {
    let s = TestServer::start_with(|c| c.jobs.max_payload_bytes = 1024).await;
    let api = Api::new(&s.base_url);
    let long_q = "q".repeat(65);

    for q in ["", "a/b", "has space", "ünï", long_q.as_str()] {
        let r = api
            .post("/v1/jobs", &json!({"queue": q, "payload": 1}))
            .await;
        expect_err(&r, 422, "invalid_queue", &format!("enqueue to {q:?}"));
    }
    for q in ["has%20space", "b%40d", long_q.as_str()] {
        let r = api.lease_resp(q, &json!({"worker": "w"})).await;
        expect_err(&r, 422, "invalid_queue", &format!("lease {q:?}"));
        let r = api.get(&format!("/v1/queues/{q}/dead")).await;
        expect_err(&r, 422, "invalid_queue", &format!("dead letters of {q:?}"));
    }
    let r = api
        .post(
            "/v1/jobs",
            &json!({"queue": "q", "payload": 1, "priority": 5}),
        )
        .await;
    expect_err(&r, 422, "invalid_body", "unknown field");
    let r = api.post("/v1/jobs", &json!({"payload": 1})).await;
    expect_err(&r, 422, "invalid_body", "no queue");
    let r = api
        .post("/v1/jobs", &json!({"queue": "q", "max_attempts": "3"}))
        .await;
    expect_err(&r, 422, "invalid_body", "max_attempts as a string");
    for raw in ["{\"queue\": ", "not json", "{\"queue\": \"q\",}", ""] {
        let r = api.post_raw("/v1/jobs", raw).await;
        expect_err(&r, 400, "invalid_json", &format!("body {raw:?}"));
    }
    let r = api
        .post(
            "/v1/jobs",
            &json!({"queue": "q", "payload": "x".repeat(2000)}),
        )
        .await;
    expect_err(&r, 413, "payload_too_large", "2000-byte payload");
    let r = api
        .post(
            "/v1/jobs",
            &json!({"queue": "q", "payload": "x".repeat(20_000)}),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    for m in [0, 101] {
        let r = api
            .post("/v1/jobs", &json!({"queue": "q", "max_attempts": m}))
            .await;
        expect_err(
            &r,
            422,
            "invalid_max_attempts",
            &format!("max_attempts {m}"),
        );
    }
    let r = api
        .post(
            "/v1/jobs",
            &json!({"queue": "q", "run_at": "2030-01-01T00:00:00Z", "delay_secs": 5}),
        )
        .await;
    expect_err(&r, 422, "invalid_run_at", "run_at and delay_secs");
    for bad in ["tomorrow", "2030-01-01", "2030-13-01T00:00:00Z", ""] {
        let r = api
            .post("/v1/jobs", &json!({"queue": "q", "run_at": bad}))
            .await;
        expect_err(&r, 422, "invalid_run_at", &format!("run_at {bad:?}"));
    }
    let r = api
        .post("/v1/jobs", &json!({"queue": "q", "reply_topic": "a//b"}))
        .await;
    expect_err(&r, 422, "invalid_topic", "reply_topic a//b");
    // none of that created a job
    assert_eq!(api.counts("q").await["queued"], 0);

    // job ids
    for bad in ["42", "jx", "j-1", "J1", "j99999999999999999999999"] {
        let r = api.get(&format!("/v1/jobs/{bad}")).await;
        expect_err(&r, 400, "invalid_job_id", &format!("GET {bad}"));
        let r = api.act(bad, "complete", &json!({})).await;
        expect_err(&r, 400, "invalid_job_id", &format!("complete {bad}"));
    }
    let r = api.get("/v1/jobs/j999999").await;
    expect_err(&r, 404, "not_found", "unknown job");
    for action in ["complete", "heartbeat", "fail", "requeue", "discard"] {
        let r = api.act("j999999", action, &json!({})).await;
        expect_err(&r, 404, "not_found", &format!("{action} an unknown job"));
    }

    // holder checks
    let id = api.enqueue(&json!({"queue": "q", "payload": 1})).await;
    let r = api.act(&id, "complete", &json!({"result": 1})).await;
    expect_err(&r, 409, "lease_conflict", "complete a job never leased");
    let l = api.lease("q", &json!({"worker": "w1"})).await;
    assert_eq!(l[0]["job_id"], id.as_str());
    for (what, body) in [
        ("wrong worker", json!({"worker": "w2", "attempt": 1})),
        ("wrong attempt", json!({"worker": "w1", "attempt": 2})),
        ("both wrong", json!({"worker": "w2", "attempt": 7})),
    ] {
        for action in ["complete", "heartbeat", "fail"] {
            let r = api.act(&id, action, &body).await;
            expect_err(&r, 409, "lease_conflict", &format!("{action}, {what}"));
        }
    }
    let r = api
        .post_raw(&format!("/v1/jobs/{id}/complete"), "{\"result\": ")
        .await;
    expect_err(&r, 400, "invalid_json", "complete with broken JSON");
    let r = api
        .act(&id, "complete", &json!({"worker": "w1", "outcome": 1}))
        .await;
    expect_err(&r, 422, "invalid_body", "complete with an unknown field");
    let r = api
        .act(
            &id,
            "complete",
            &json!({"worker": "w1", "result": "x".repeat(2000)}),
        )
        .await;
    expect_err(&r, 413, "result_too_large", "2000-byte result");
    // a result its enqueuer's client could not parse (see json_check)
    for (result, code) in [
        (r#""\udbff""#, "json_lone_surrogate"),
        ("1e999999", "json_number_out_of_range"),
        ("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", "json_too_deep"),
    ] {
        let r = api
            .post_raw(
                &format!("/v1/jobs/{id}/complete"),
                &format!(r#"{{"worker":"w1","result":{result}}}"#),
            )
            .await;
        expect_err(&r, 422, code, &format!("complete with {result:.20}"));
    }
    let r = api
        .act(&id, "heartbeat", &json!({"worker": "w1", "lease_secs": 0}))
        .await;
    expect_err(&r, 422, "invalid_lease_secs", "heartbeat lease_secs 0");
    expect_err(
        &api.act(&id, "requeue", &json!({})).await,
        409,
        "lease_conflict",
        "requeue a leased job",
    );
    expect_err(
        &api.act(&id, "discard", &json!({})).await,
        409,
        "lease_conflict",
        "discard a leased job",
    );
    // none of the refusals changed the lease: the holder completes
    let r = api
        .act(
            &id,
            "complete",
            &json!({"worker": "w1", "attempt": 1, "result": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .act(
            &id,
            "complete",
            &json!({"worker": "w1", "attempt": 1, "result": 2}),
        )
        .await;
    expect_err(&r, 409, "lease_conflict", "complete twice");
    for action in ["heartbeat", "fail"] {
        let r = api.act(&id, action, &json!({"worker": "w1"})).await;
        expect_err(
            &r,
            409,
            "lease_conflict",
            &format!("{action} after complete"),
        );
    }
    let j = api.job(&id).await;
    assert_eq!(j["status"], "succeeded");
    assert_eq!(j["result"], 1);

    // lease parameters
    for (body, code) in [
        (json!({"worker": "w", "max": 0}), "invalid_max"),
        (json!({"worker": "w", "max": 101}), "invalid_max"),
        (
            json!({"worker": "w", "lease_secs": 0}),
            "invalid_lease_secs",
        ),
        (
            json!({"worker": "w", "lease_secs": 3601}),
            "invalid_lease_secs",
        ),
        (json!({"worker": "w", "wait_secs": 61}), "invalid_wait_secs"),
        (json!({"worker": ""}), "invalid_worker"),
        (json!({"worker": "w".repeat(129)}), "invalid_worker"),
        (json!({"max": 1}), "invalid_body"),
        (json!({"worker": "w", "max": -1}), "invalid_body"),
        (json!({"worker": "w", "queue": "q"}), "invalid_body"),
    ] {
        let r = api.lease_resp("q", &body).await;
        expect_err(&r, 422, code, &format!("lease {body}"));
    }
    let r = api.post_raw("/v1/queues/q/lease", "{worker: w}").await;
    expect_err(&r, 400, "invalid_json", "lease with broken JSON");
}

/// `delay_secs` near u64::MAX / 1000: `now_ms() + d.saturating_mul(1000)` in
/// src/http/jobs.rs overflows; a debug build panics in the handler (the connection is
/// dropped), a release build wraps to a time in the past and runs the job at once.
#[tokio::test(flavor = "multi_thread")]
async fn huge_delay_is_refused_or_never_due() {
    let s = TestServer::start().await;
    let api = Api::new(&s.base_url);
    for d in [u64::MAX / 1000, u64::MAX] {
        let body = json!({"queue": "far", "payload": 1, "delay_secs": d});
        let req = api.c.post(api.url("/v1/jobs")).json(&body);
        let r = api
            .try_send(req, T)
            .await
            .unwrap_or_else(|e| panic!("delay_secs {d}: no answer ({e})"));
        match r.status {
            422 => assert_eq!(r.body["error"], "invalid_run_at"),
            202 => {
                let l = api.lease("far", &json!({"worker": "w"})).await;
                assert!(l.is_empty(), "delay_secs {d} ran at once");
            }
            s => panic!("delay_secs {d}: {s} {}", r.body),
        }
    }
}

/// Over HTTP/2 (what `client()` and browsers negotiate) a JSON response like a job view
/// takes ~45 ms on loopback instead of ~2 ms: src/server.rs `build_http_server` never
/// calls `HttpServer::tcp_nodelay(true)`, so Nagle holds the DATA frame written after the
/// HEADERS frame until the client's delayed ACK. Every GET/complete/heartbeat pays it.
#[tokio::test(flavor = "multi_thread")]
async fn http2_job_responses_are_not_held_back_by_nagle() {
    let s = TestServer::start().await;
    let api = Api::new(&s.base_url);
    let id = api.enqueue(&json!({"queue": "q", "payload": 1})).await;
    let c = client();
    let mut took = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let r = tokio::time::timeout(T, c.get(s.url(&format!("/v1/jobs/{id}"))).send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(15),
        "median GET over HTTP/2: {median:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. auth

#[tokio::test(flavor = "multi_thread")]
async fn auth_rules_for_jobs() {
    let s = TestServer::start_with(|c| {
        c.auth.enabled = true;
        c.auth.leeway_secs = 0;
    })
    .await;
    let m = minter(&s);
    let alice = mint(&m, "alice", &["users/alice"], &["reports"], &[]);
    let carol = mint(&m, "carol", &["users/carol"], &["other"], &["other"]);
    let worker = mint(&m, "render-1", &[], &[], &["reports"]);
    let star = mint(&m, "ops", &["users/ops"], &["*"], &["*"]);
    let base = Api::new(&s.base_url);
    let (a, c, w, st) = (
        base.as_user(&alice),
        base.as_user(&carol),
        base.as_user(&worker),
        base.as_user(&star),
    );
    let anon = base.anonymous();
    let job = |reply: &str| json!({"queue": "reports", "payload": 1, "reply_topic": reply});

    // enqueue needs a jobs claim for the queue
    expect_err(
        &anon.post("/v1/jobs", &job("users/alice")).await,
        401,
        "token_required",
        "no token",
    );
    let r = base
        .as_user("not-a-jwt")
        .post("/v1/jobs", &job("users/alice"))
        .await;
    expect_err(&r, 401, "invalid_token", "garbage token");
    expect_err(
        &c.post("/v1/jobs", &job("users/carol")).await,
        403,
        "forbidden",
        "carol to reports",
    );
    expect_err(
        &w.post("/v1/jobs", &json!({"queue": "reports"})).await,
        403,
        "forbidden",
        "worker enqueues",
    );
    // the reply topic must be one the requester may subscribe to
    expect_err(
        &a.post("/v1/jobs", &job("users/carol")).await,
        403,
        "forbidden",
        "reply to another user",
    );
    expect_err(
        &a.post("/v1/jobs", &job("users/*")).await,
        422,
        "invalid_topic",
        "reply to a pattern",
    );
    let mut sse = subscribe(&s.base_url, "users/alice", Some(&alice)).await;
    let id = a.enqueue(&job("users/alice")).await;
    let id_noreply = a.enqueue(&json!({"queue": "reports", "payload": 2})).await;

    // lease, heartbeat, complete, fail, requeue, discard, dead letters need work
    let lease_body = json!({"worker": "w", "max": 1});
    expect_err(
        &anon.lease_resp("reports", &lease_body).await,
        401,
        "token_required",
        "lease, no token",
    );
    expect_err(
        &a.lease_resp("reports", &lease_body).await,
        403,
        "forbidden",
        "lease with only jobs",
    );
    expect_err(
        &c.lease_resp("reports", &lease_body).await,
        403,
        "forbidden",
        "lease another queue's",
    );
    expect_err(
        &a.get("/v1/queues/reports/dead").await,
        403,
        "forbidden",
        "dead letters with only jobs",
    );
    let l = w
        .lease("reports", &json!({"worker": "render-1", "max": 1}))
        .await;
    assert_eq!(l[0]["job_id"], id.as_str());
    for action in ["heartbeat", "complete", "fail", "requeue", "discard"] {
        expect_err(
            &a.act(&id, action, &json!({})).await,
            403,
            "forbidden",
            &format!("owner {action}s"),
        );
        expect_err(
            &c.act(&id, action, &json!({})).await,
            403,
            "forbidden",
            &format!("carol {action}s"),
        );
        expect_err(
            &anon.act(&id, action, &json!({})).await,
            401,
            "token_required",
            &format!("anonymous {action}"),
        );
    }
    let r = w
        .act(
            &id,
            "complete",
            &json!({"worker": "render-1", "attempt": 1, "result": "done"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = next_event(&mut sse).await;
    assert_eq!(ev["type"], "job.completed");
    assert_eq!(ev["data"]["job_id"], id.as_str());
    assert_eq!(ev["data"]["result"], "done");

    // GET: the owner and the queue's workers; nobody else
    for (who, api) in [("owner", &a), ("worker", &w), ("star", &st)] {
        let r = api.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status, 200, "{who}: {}", r.body);
        assert_eq!(r.body["status"], "succeeded");
    }
    expect_err(
        &c.get(&format!("/v1/jobs/{id}")).await,
        403,
        "forbidden",
        "carol reads alice's job",
    );
    expect_err(
        &anon.get(&format!("/v1/jobs/{id}")).await,
        401,
        "token_required",
        "anonymous read",
    );
    assert_eq!(a.get(&format!("/v1/jobs/{id_noreply}")).await.status, 200);
    // queue listing shows only the caller's queues
    let r = c.get("/v1/queues").await;
    assert!(
        r.body["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["queue"] != "reports"),
        "{}",
        r.body
    );
    let r = a.get("/v1/queues").await;
    assert!(r.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["queue"] == "reports"));

    // "*" allows any queue
    let id3 = st
        .enqueue(&json!({"queue": "anything-at-all", "payload": 3, "reply_topic": "users/ops"}))
        .await;
    let l = st.lease("anything-at-all", &json!({"worker": "ops"})).await;
    assert_eq!(l[0]["job_id"], id3.as_str());
    let r = st.act(&id3, "complete", &json!({"worker": "ops"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // and reaches alice's queue as a worker too, but not her reply topic
    assert_eq!(
        st.lease_resp("reports", &json!({"worker": "ops"}))
            .await
            .status,
        200
    );
    expect_err(
        &st.post("/v1/jobs", &job("users/alice")).await,
        403,
        "forbidden",
        "star replies to alice",
    );
}

/// Job ids are sequential (j1, j2, ...), so any holder of a `jobs` claim on a shared
/// queue can read every other user's job, result included: src/http/jobs.rs
/// `visible_job` lets `allowed(&p.jobs, &job.queue)` read any job of the queue.
#[tokio::test(flavor = "multi_thread")]
async fn another_enqueuer_of_the_same_queue_cannot_read_my_job() {
    let s = TestServer::start_with(|c| c.auth.enabled = true).await;
    let m = minter(&s);
    let alice = mint(&m, "alice", &["users/alice"], &["reports"], &[]);
    let bob = mint(&m, "bob", &["users/bob"], &["reports"], &[]);
    let base = Api::new(&s.base_url);
    let id = base
        .as_user(&alice)
        .enqueue(&json!({"queue": "reports", "payload": {"ssn": "secret"}, "reply_topic": "users/alice"}))
        .await;
    let r = base.as_user(&bob).get(&format!("/v1/jobs/{id}")).await;
    expect_err(&r, 403, "forbidden", "bob reads alice's job");
}

/// An idempotency key is the sender's own (seen: bob's `invoice-77` made alice's enqueue
/// answer `duplicate: true` with a job she could not read).
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_are_scoped_by_owner() {
    let s = TestServer::start_with(|c| c.auth.enabled = true).await;
    let m = minter(&s);
    let alice = mint(&m, "alice", &["users/alice"], &["reports"], &[]);
    let bob = mint(&m, "bob", &["users/bob"], &["reports"], &[]);
    let base = Api::new(&s.base_url);
    let keyed = |api: &Api, payload: i64| {
        api.c
            .post(api.url("/v1/jobs"))
            .header("Idempotency-Key", "invoice-77")
            .json(&json!({"queue": "reports", "payload": payload}))
    };
    let (a, b) = (base.as_user(&alice), base.as_user(&bob));
    let by_bob = b.send(keyed(&b, 1), T).await;
    assert_eq!(
        (by_bob.status, &by_bob.body["duplicate"]),
        (202, &json!(false))
    );
    let by_alice = a.send(keyed(&a, 2), T).await;
    assert_eq!(by_alice.status, 202, "{}", by_alice.body);
    assert_eq!(by_alice.body["duplicate"], false, "{}", by_alice.body);
    assert_ne!(by_alice.body["job_id"], by_bob.body["job_id"]);
    let again = a.send(keyed(&a, 3), T).await;
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["job_id"], by_alice.body["job_id"]);
    // each reads their own job
    for (api, job) in [(&a, &by_alice), (&b, &by_bob)] {
        let id = job.body["job_id"].as_str().unwrap();
        let r = api.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(
            (r.status, &r.body["job_id"]),
            (200, &json!(id)),
            "{}",
            r.body
        );
    }
}

/// Naming neither `worker` nor `attempt` is accepted only from the token that took the
/// lease, and marked deprecated (seen: a second worker completed another's lease by
/// leaving both out).
#[tokio::test(flavor = "multi_thread")]
async fn another_token_must_name_the_lease_it_acts_on() {
    let s = TestServer::start_with(|c| c.auth.enabled = true).await;
    let m = minter(&s);
    let alice = mint(&m, "alice", &["users/alice"], &["reports"], &[]);
    let w1 = mint(&m, "render-1", &[], &[], &["reports"]);
    let w2 = mint(&m, "render-2", &[], &[], &["reports"]);
    let base = Api::new(&s.base_url);
    let (w1, w2) = (base.as_user(&w1), base.as_user(&w2));
    for action in ["heartbeat", "complete"] {
        let id = base
            .as_user(&alice)
            .enqueue(&json!({"queue": "reports", "payload": 1}))
            .await;
        let l = w1.lease("reports", &json!({"worker": "r1"})).await;
        assert_eq!(l[0]["job_id"], id.as_str());
        let r = w2.act(&id, action, &json!({})).await;
        expect_err(
            &r,
            409,
            "lease_conflict",
            &format!("{action} by another token"),
        );
        assert!(
            r.body["message"].as_str().unwrap().contains("attempt"),
            "{}",
            r.body
        );
        // the holder's own token, as workers of before did
        let r = w1.act(&id, action, &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.deprecation.as_deref(), Some("true"));
        if action == "heartbeat" {
            // naming the lease works from any worker token of the queue, undeprecated
            for act in ["heartbeat", "complete"] {
                let r = w2
                    .act(&id, act, &json!({"worker": "r1", "attempt": 1}))
                    .await;
                assert_eq!(r.status, 200, "{act}: {}", r.body);
                assert_eq!(r.deprecation, None);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 9. metrics

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_depths_attempts_expiries_and_latency() {
    let s = TestServer::start_with(|c| c.jobs.backoff_base_ms = 50).await;
    let api = Api::new(&s.base_url);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(api.enqueue(&json!({"queue": "q", "payload": n})).await);
    }
    let extra = api.enqueue(&json!({"queue": "q", "payload": "left"})).await;
    let l = api
        .lease("q", &json!({"worker": "w", "max": 3, "lease_secs": 1}))
        .await;
    assert_eq!(l.len(), 3);
    for id in &ids[..2] {
        let r = api.act(id, "complete", &json!({"worker": "w"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // ids[2]'s lease expires; a second worker takes it and completes
    let l = api
        .lease("q", &json!({"worker": "w2", "wait_secs": 10}))
        .await;
    // the extra job is first in line; take it too, then the expired one comes back
    let mut got: Vec<String> = l
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_string())
        .collect();
    while !got.contains(&ids[2]) {
        let l = api
            .lease("q", &json!({"worker": "w2", "wait_secs": 10}))
            .await;
        assert!(!l.is_empty(), "the expired job never came back");
        got.extend(l.iter().map(|j| j["job_id"].as_str().unwrap().to_string()));
    }
    assert!(got.contains(&extra));
    let r = api.act(&ids[2], "complete", &json!({"worker": "w2"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api.job(&ids[2]).await["attempts"], 2);

    let text = s.metrics().await;
    assert_eq!(
        metric(
            &text,
            "surepush_queue_jobs{queue=\"q\",state=\"succeeded\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&text, "surepush_queue_jobs{queue=\"q\",state=\"leased\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "surepush_queue_jobs{queue=\"q\",state=\"queued\"}"),
        0.0
    );
    assert_eq!(metric(&text, "surepush_job_lease_expiries_total"), 1.0);
    assert_eq!(metric(&text, "surepush_job_attempts_total"), 5.0);
    assert_eq!(metric(&text, "surepush_job_latency_seconds_count"), 3.0);
    assert!(metric(&text, "surepush_job_latency_seconds_sum") > 0.0);
    eprintln!(
        "metrics: {}",
        text.lines()
            .filter(|l| l.contains("job") && !l.starts_with('#'))
            .filter(|l| !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}
