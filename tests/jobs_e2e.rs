//! End to end over real TLS on 127.0.0.1: a subscriber on `users/42` enqueues a job, the
//! real `surepush worker` binary runs a real shell command for it, and the subscriber
//! receives `job.completed` with the result. Also a throughput figure (jobs/s through
//! enqueue -> worker -> pushed event).

mod support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use surepush::auth::{now_secs, Authenticator, Claims, Grants};
use surepush::config::Config;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(
    base: &str,
    token: &str,
    concurrency: usize,
    max_jobs: Option<usize>,
    cmd: &[&str],
) -> Worker {
    let mut c = Command::new(env!("CARGO_BIN_EXE_surepush"));
    c.args([
        "worker",
        base,
        "--queue",
        "reports",
        "--insecure",
        "--wait-secs",
        "5",
    ])
    .args(["--concurrency", &concurrency.to_string()])
    .env("SUREPUSH_TOKEN", token)
    .env("SUREPUSH_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    if let Some(n) = max_jobs {
        c.args(["--max-jobs", &n.to_string()]);
    }
    c.arg("--").args(cmd);
    Worker(c.spawn().expect("spawn worker"))
}

fn tokens(s: &TestServer) -> (String, String) {
    let mut c = Config {
        data_dir: s.data_dir.clone(),
        ..Config::default()
    };
    c.auth.enabled = true;
    let a = Authenticator::from_config(&c).unwrap();
    let mint = |sub: &str, g: Grants| {
        a.mint(&Claims {
            sub: sub.into(),
            exp: now_secs() + 3600,
            nbf: None,
            iat: None,
            surepush: g,
        })
        .unwrap()
    };
    let user = mint(
        "u42",
        Grants {
            subscribe: vec!["users/42".into()],
            jobs: vec!["reports".into()],
            ..Grants::default()
        },
    );
    let work = mint(
        "worker-1",
        Grants {
            work: vec!["reports".into()],
            ..Grants::default()
        },
    );
    (user, work)
}

async fn auth_server() -> TestServer {
    TestServer::start_with(|c| {
        c.auth.enabled = true;
        c.limits.publish_rate_per_sec = 0;
    })
    .await
}

async fn enqueue(s: &TestServer, token: &str, payload: Value) -> String {
    let r = client()
        .post(s.url("/v1/jobs"))
        .bearer_auth(token)
        .json(&json!({"queue": "reports", "payload": payload, "reply_topic": "users/42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    v["job_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shell_command_result_reaches_the_subscriber() {
    let s = auth_server().await;
    let (user, work) = tokens(&s);
    let r = client()
        .get(s.url("/v1/stream?topic=users/42"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut sse = SseReader::new(r);
    assert_eq!(
        sse.next_any(Duration::from_secs(5)).await.unwrap().event,
        "surepush.hello"
    );

    let started = Instant::now();
    let job = enqueue(&s, &user, json!({"month": "2026-10", "n": 21})).await;
    assert!(started.elapsed() < Duration::from_secs(2), "202 at once");
    // the job runs a real shell: it reads the payload from stdin and answers JSON
    let _w = worker(
        &s.base_url,
        &work,
        1,
        Some(1),
        &[
            "sh",
            "-c",
            "read p; printf '{\"got\":%s,\"job\":\"%s\"}' \"$p\" \"$SUREPUSH_JOB_ID\"",
        ],
    );
    let e = sse
        .next_event(Duration::from_secs(30))
        .await
        .expect("job.completed");
    assert_eq!(e.event, "job.completed");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["data"]["job_id"], job.as_str());
    assert_eq!(v["data"]["status"], "succeeded");
    assert_eq!(
        v["data"]["result"]["got"],
        json!({"month": "2026-10", "n": 21})
    );
    assert_eq!(v["data"]["result"]["job"], job.as_str());
    let st: Value = client()
        .get(s.url(&format!("/v1/jobs/{job}")))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["status"], "succeeded");
    assert_eq!(st["attempts"], 1);

    // a failing command: retried, then dead-lettered, and the subscriber is told
    let r = client()
        .post(s.url("/v1/jobs"))
        .bearer_auth(&user)
        .json(&json!({"queue": "reports", "payload": 1, "reply_topic": "users/42", "max_attempts": 1}))
        .send()
        .await
        .unwrap();
    let bad: Value = r.json().await.unwrap();
    let _w2 = worker(
        &s.base_url,
        &work,
        1,
        Some(1),
        &["sh", "-c", "echo broken >&2; exit 3"],
    );
    let e = sse
        .next_event(Duration::from_secs(30))
        .await
        .expect("job.dead");
    assert_eq!(e.event, "job.dead");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["data"]["job_id"], bad["job_id"]);
    let err = v["data"]["error"].as_str().unwrap();
    assert!(
        err.contains("exit code 3") && err.contains("broken"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn throughput_enqueue_worker_event() {
    let s = auth_server().await;
    let (user, work) = tokens(&s);
    let r = client()
        .get(s.url("/v1/stream?topic=users/42"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(r);
    sse.next_any(Duration::from_secs(5)).await.unwrap();
    let n = 200;
    let _w = worker(&s.base_url, &work, 8, None, &["cat"]);
    let started = Instant::now();
    let mut ids = HashSet::new();
    for chunk in 0..n / 20 {
        let futs: Vec<_> = (0..20)
            .map(|i| enqueue(&s, &user, json!({"i": chunk * 20 + i})))
            .collect();
        ids.extend(futures_util::future::join_all(futs).await);
    }
    let mut done = HashSet::new();
    while done.len() < n {
        let e = sse
            .next_event(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("only {} of {n} jobs completed", done.len()));
        assert_eq!(e.event, "job.completed");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        let id = v["data"]["job_id"].as_str().unwrap().to_string();
        assert!(ids.contains(&id));
        assert!(done.insert(id), "a job completed twice");
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "jobs e2e: {n} jobs enqueue -> surepush worker (8 x `cat`) -> job.completed over SSE in {secs:.2} s = {:.0} jobs/s (debug build)",
        n as f64 / secs
    );
}
