//! `surepush worker` as a child process against a fake job server written here: plain
//! HTTP/1.1 on 127.0.0.1:0, the four worker endpoints (lease, heartbeat, complete, fail),
//! recording every call. Real shell commands as jobs; loopback only; every wait is bounded.

use std::collections::{HashSet, VecDeque};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

const BIN: &str = env!("CARGO_BIN_EXE_surepush");
/// Upper bound for any one wait in these tests.
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The fake job server

#[derive(Default)]
struct State {
    /// Jobs waiting: (id, payload, attempt).
    queue: VecDeque<(String, Value, u64)>,
    /// Lease request bodies.
    leases: Vec<Value>,
    /// Jobs handed out, with when.
    leased: Vec<(Instant, String)>,
    heartbeats: Vec<(Instant, String, Value)>,
    completes: Vec<(Instant, String, Value)>,
    fails: Vec<(Instant, String, Value)>,
    /// Heartbeats for these jobs get 409.
    conflicts: HashSet<String>,
    /// Completions with a longer result (as JSON text) get 413.
    result_limit: Option<usize>,
}

impl State {
    fn complete_of(&self, id: &str) -> Option<&Value> {
        self.completes
            .iter()
            .find(|(_, j, _)| j == id)
            .map(|(_, _, b)| b)
    }

    fn fail_of(&self, id: &str) -> Option<&Value> {
        self.fails
            .iter()
            .find(|(_, j, _)| j == id)
            .map(|(_, _, b)| b)
    }
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    token: Option<String>,
}

struct Fake {
    shared: Arc<Shared>,
    port: u16,
    task: Option<JoinHandle<()>>,
}

impl Fake {
    async fn start(token: Option<&str>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            token: token.map(str::to_string),
        });
        let task = Some(tokio::spawn(serve(listener, shared.clone())));
        Fake { shared, port, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("state lock")
    }

    fn push(&self, id: &str, payload: Value, attempt: u64) {
        self.state()
            .queue
            .push_back((id.to_string(), payload, attempt));
        self.shared.notify.notify_waiters();
    }

    /// Takes the server down: the listener and every open connection are closed, so the
    /// worker gets "connection refused".
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Up again on the same port, with the same state (as a restarted durable server).
    async fn restart(&mut self) {
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    eprintln!("rebinding port {}: {e}", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind port {}: {e}", self.port),
            }
        };
        self.task = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&State) -> bool) {
        let started = Instant::now();
        while !pred(&self.state()) {
            assert!(started.elapsed() < LIMIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped (aborted) with this task, which closes every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    conns.spawn(connection(stream, shared.clone()));
                }
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

/// Minimal HTTP/1.1 with keep-alive: request line, headers, Content-Length body.
async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut length = 0usize;
        let mut auth = None;
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "authorization" => auth = Some(value.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, reply) = route(&shared, &method, &path, auth.as_deref(), &body).await;
        let text = reply.to_string();
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            409 => "Conflict",
            413 => "Payload Too Large",
            _ => "Other",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn error(code: &str, message: &str) -> Value {
    json!({"error": code, "message": message})
}

async fn route(
    shared: &Shared,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    if let Some(token) = &shared.token {
        if auth != Some(format!("Bearer {token}").as_str()) {
            return (401, error("unauthorized", "missing or invalid token"));
        }
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let now = Instant::now();
    match (method, segments.as_slice()) {
        ("POST", ["v1", "queues", _queue, "lease"]) => lease(shared, body).await,
        ("POST", ["v1", "jobs", id, "heartbeat"]) => {
            let mut st = shared.state.lock().expect("state lock");
            st.heartbeats.push((now, id.to_string(), body));
            if st.conflicts.contains(*id) {
                (409, error("lease-lost", "the lease on this job is gone"))
            } else {
                (200, json!({"lease_until": "2030-01-01T00:00:00Z"}))
            }
        }
        ("POST", ["v1", "jobs", id, "complete"]) => {
            let mut st = shared.state.lock().expect("state lock");
            let size = body["result"].to_string().len();
            if st.result_limit.is_some_and(|limit| size > limit) {
                let message = format!("result is {size} bytes; the limit is 100");
                return (413, error("result_too_large", &message));
            }
            st.completes.push((now, id.to_string(), body));
            (200, json!({"status": "succeeded"}))
        }
        ("POST", ["v1", "jobs", id, "fail"]) => {
            let mut st = shared.state.lock().expect("state lock");
            st.fails.push((now, id.to_string(), body));
            (200, json!({"status": "queued"}))
        }
        _ => (404, error("not-found", "no such endpoint")),
    }
}

/// Hands out up to `max` jobs, long-polling up to `wait_secs` for the first one.
async fn lease(shared: &Shared, body: Value) -> (u16, Value) {
    let max = body["max"].as_u64().unwrap_or(1) as usize;
    let wait = Duration::from_secs(body["wait_secs"].as_u64().unwrap_or(0));
    shared.state.lock().expect("state lock").leases.push(body);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a push in between is not missed.
        let notified = shared.notify.notified();
        {
            let mut st = shared.state.lock().expect("state lock");
            if !st.queue.is_empty() {
                let n = max.min(st.queue.len());
                let mut jobs = Vec::new();
                for (id, payload, attempt) in st.queue.drain(..n).collect::<Vec<_>>() {
                    st.leased.push((Instant::now(), id.clone()));
                    jobs.push(json!({
                        "job_id": id,
                        "payload": payload,
                        "attempt": attempt,
                        "lease_until": "2030-01-01T00:00:00Z",
                    }));
                }
                return (200, json!({ "jobs": jobs }));
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return (200, json!({"jobs": []}));
        }
    }
}

// ---------------------------------------------------------------------------
// The worker process

fn worker(
    url: &str,
    flags: &[&str],
    command: &[&str],
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("worker")
        .arg(url)
        .args(["--queue", "reports", "--name", "w-test"])
        .args(flags)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("SUREPUSH_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn surepush worker")
}

async fn finish(child: tokio::process::Child, limit: Duration) -> Output {
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the worker did not exit within {limit:?}"))
        .expect("wait for the worker")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_clean_exit(out: &Output) {
    assert!(
        out.status.success(),
        "worker failed: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "the worker printed on stdout: {}",
        text(&out.stdout)
    );
}

fn signal(child: &tokio::process::Child, sig: i32) {
    let pid = child.id().expect("worker pid") as i32;
    // SAFETY: kill(2) with a pid of our own child.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The pid a job command wrote to `file` (waits for it to appear).
async fn read_pid(file: &std::path::Path) -> i32 {
    let started = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(file) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        assert!(started.elapsed() < LIMIT, "no pid in {}", file.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dead (gone, or a zombie nobody reaped: the container's init may not).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn assert_dies(pid: i32, within: Duration) {
    let started = Instant::now();
    while !dead(pid) {
        assert!(
            started.elapsed() < within,
            "process {pid} still runs after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn nanos(s: &str) -> u128 {
    s.trim().parse().expect("a date +%s%N timestamp")
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn runs_a_job_with_the_payload_on_stdin_and_completes_it_with_json_stdout() {
    let fake = Fake::start(Some("good-token")).await;
    fake.push("j1", json!({"n": 21, "name": "x y", "list": [1, 2]}), 3);
    fake.push("j2", json!("anything"), 1);
    let script = r#"p=$(cat)
if [ "$SUREPUSH_JOB_ID" = j2 ]; then echo "just text, not JSON"; exit 0; fi
printf '{"stdin":%s,"job":"%s","queue":"%s","attempt":%s,"token":"%s"}\n' \
  "$p" "$SUREPUSH_JOB_ID" "$SUREPUSH_QUEUE" "$SUREPUSH_ATTEMPT" "${SUREPUSH_TOKEN:-}""#;
    let child = worker(
        &fake.url(),
        &["--max-jobs", "2", "--wait-secs", "2"],
        &["sh", "-c", script],
        &[("SUREPUSH_TOKEN", "good-token")],
    );
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);

    let st = fake.state();
    let first = &st.leases[0];
    assert_eq!(first["worker"], "w-test");
    assert_eq!(first["max"], 1);
    assert_eq!(first["lease_secs"], 30);
    assert_eq!(first["wait_secs"], 2);

    let j1 = st.complete_of("j1").expect("j1 completed");
    assert_eq!(j1["worker"], "w-test");
    assert_eq!(j1["attempt"], 3);
    assert_eq!(
        j1["result"],
        json!({
            "stdin": {"n": 21, "name": "x y", "list": [1, 2]},
            "job": "j1",
            "queue": "reports",
            "attempt": 3,
            // The worker's token is not passed on to the command.
            "token": "",
        })
    );
    let j2 = st.complete_of("j2").expect("j2 completed");
    assert_eq!(j2["result"], json!("just text, not JSON"));
    assert!(st.fails.is_empty(), "unexpected fails: {:?}", st.fails);
}

#[tokio::test]
async fn a_failing_command_fails_the_job_with_its_exit_code_and_stderr() {
    let fake = Fake::start(None).await;
    fake.push("j1", json!(1), 1);
    fake.push("j2", json!(2), 2);
    let script = r#"cat >/dev/null
if [ "$SUREPUSH_JOB_ID" = j1 ]; then echo "some output"; echo "oops: bad input" >&2; exit 3; fi
head -c 20000 /dev/zero | tr '\0' x >&2
printf '\nthe real reason\n' >&2
exit 2"#;
    let child = worker(
        &fake.url(),
        &["--max-jobs", "2", "--wait-secs", "2"],
        &["sh", "-c", script],
        &[],
    );
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);

    let st = fake.state();
    assert!(st.completes.is_empty(), "unexpected completes");
    let j1 = st.fail_of("j1").expect("j1 failed");
    assert_eq!(j1["error"], "exit code 3: oops: bad input");
    assert_eq!(j1["retry"], true);
    assert_eq!(j1["worker"], "w-test");
    assert_eq!(j1["attempt"], 1);

    let j2 = st.fail_of("j2").expect("j2 failed");
    let error = j2["error"].as_str().expect("error string");
    assert!(
        error.starts_with("exit code 2: [stderr truncated: last 4096 of 20017 bytes]\n"),
        "{error}"
    );
    assert!(error.ends_with("xxx\nthe real reason"), "{error}");
    assert!(error.len() < 4200, "{} bytes", error.len());
    assert_eq!(j2["attempt"], 2);
    assert_eq!(j2["retry"], true);
}

#[tokio::test]
async fn a_slow_command_gets_heartbeats() {
    let fake = Fake::start(None).await;
    fake.push("slow", json!(null), 1);
    let child = worker(
        &fake.url(),
        // Heartbeat every second.
        &["--max-jobs", "1", "--lease-secs", "3", "--wait-secs", "1"],
        &["sh", "-c", "sleep 3.5; echo done"],
        &[],
    );
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);

    let st = fake.state();
    assert_eq!(st.leases[0]["lease_secs"], 3);
    let (done_at, _, body) = &st.completes[0];
    assert_eq!(body["result"], "done");
    let beats: Vec<_> = st
        .heartbeats
        .iter()
        .filter(|(at, id, _)| id == "slow" && at < done_at)
        .collect();
    assert!(
        (2..=4).contains(&beats.len()),
        "{} heartbeats in 3.5 s with a 3 s lease",
        beats.len()
    );
    for (_, _, body) in &beats {
        assert_eq!(
            *body,
            json!({"worker": "w-test", "attempt": 1, "lease_secs": 3})
        );
    }
    // Roughly a second apart, starting about a second in.
    let leased_at = st.leased[0].0;
    let first = beats[0].0.duration_since(leased_at);
    assert!(
        first >= Duration::from_millis(800) && first < Duration::from_millis(2000),
        "first heartbeat after {first:?}"
    );
}

#[tokio::test]
async fn a_409_on_heartbeat_stops_the_command_and_does_not_complete_the_job() {
    let fake = Fake::start(None).await;
    fake.state().conflicts.insert("lost".to_string());
    fake.push("lost", json!({}), 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pid");
    let pidfile_arg = pidfile.to_str().expect("utf-8 path");
    let started = Instant::now();
    let child = worker(
        &fake.url(),
        &["--max-jobs", "1", "--lease-secs", "3", "--wait-secs", "1"],
        // `sleep` is a grandchild: stopping the job must reach it too.
        &[
            "sh",
            "-c",
            r#"sleep 30 & echo $! > "$0"; wait; echo finished"#,
            pidfile_arg,
        ],
        &[],
    );
    let sleep_pid = read_pid(&pidfile).await;
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}: the command was not stopped",
        started.elapsed()
    );
    assert_dies(sleep_pid, Duration::from_secs(5)).await;

    let st = fake.state();
    assert!(!st.heartbeats.is_empty());
    assert!(
        st.completes.is_empty(),
        "a job whose lease was lost was completed"
    );
    assert!(st.fails.is_empty(), "a job whose lease was lost was failed");
    assert!(text(&out.stderr).contains("lease lost"));
}

#[tokio::test]
async fn a_background_process_holding_stdout_does_not_hang_the_job() {
    let fake = Fake::start(None).await;
    fake.push("bg", json!(null), 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pid");
    let started = Instant::now();
    let child = worker(
        &fake.url(),
        // Lease 6 s: heartbeat, and so the wait for the output to close, 2 s.
        &["--max-jobs", "1", "--lease-secs", "6", "--wait-secs", "1"],
        &[
            "sh",
            "-c",
            r#"sleep 30 & echo $! > "$0"; echo '{"ok":1}'"#,
            pidfile.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let sleep_pid = read_pid(&pidfile).await;
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_dies(sleep_pid, Duration::from_secs(5)).await;
    let st = fake.state();
    assert_eq!(
        st.complete_of("bg").map(|b| b["result"].clone()),
        Some(json!({"ok": 1}))
    );
}

#[tokio::test]
async fn concurrency_n_runs_n_jobs_at_once() {
    let fake = Fake::start(None).await;
    for i in 0..3 {
        fake.push(&format!("c{i}"), json!(i), 1);
    }
    let child = worker(
        &fake.url(),
        &["--max-jobs", "3", "--concurrency", "3", "--wait-secs", "1"],
        &["sh", "-c", "date +%s%N; sleep 1; date +%s%N"],
        &[],
    );
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);

    let st = fake.state();
    assert_eq!(
        st.leases[0]["max"], 3,
        "the first lease asks for every slot"
    );
    assert_eq!(st.completes.len(), 3);
    let spans: Vec<(u128, u128)> = st
        .completes
        .iter()
        .map(|(_, _, body)| {
            let out = body["result"].as_str().expect("two timestamps");
            let (a, b) = out.split_once('\n').expect("two lines");
            (nanos(a), nanos(b))
        })
        .collect();
    let latest_start = spans.iter().map(|s| s.0).max().expect("spans");
    let earliest_end = spans.iter().map(|s| s.1).min().expect("spans");
    assert!(
        latest_start < earliest_end,
        "the three jobs did not all run at the same time: {spans:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_the_running_job_then_exits_0() {
    let fake = Fake::start(None).await;
    fake.push("d1", json!(null), 1);
    // Two slots, one job: a long-poll lease is in flight when the signal arrives, and must not
    // hold the exit back for its 20 s.
    let child = worker(
        &fake.url(),
        &["--concurrency", "2", "--wait-secs", "20"],
        &[
            "sh",
            "-c",
            r#"sleep 2; echo "{\"drained\":\"$SUREPUSH_JOB_ID\"}""#,
        ],
        &[],
    );
    fake.wait_for(
        "the job to be leased and the next lease to be waiting",
        |st| st.leased.len() == 1 && st.leases.len() == 2,
    )
    .await;
    signal(&child, libc::SIGTERM);
    let signalled = Instant::now();
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        signalled.elapsed()
    );

    // A job pushed now would have been taken by a worker still leasing.
    let st = fake.state();
    assert_eq!(st.completes.len(), 1, "{}", text(&out.stderr));
    assert_eq!(st.completes[0].2["result"], json!({"drained": "d1"}));
    assert_eq!(st.leases.len(), 2, "leased again after the signal");
}

#[tokio::test]
async fn a_second_signal_kills_running_jobs_and_exits_non_zero() {
    let fake = Fake::start(None).await;
    fake.push("k1", json!(null), 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pid");
    let child = worker(
        &fake.url(),
        &["--wait-secs", "1"],
        &[
            "sh",
            "-c",
            r#"sleep 30 & echo $! > "$0"; wait"#,
            pidfile.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let sleep_pid = read_pid(&pidfile).await;
    signal(&child, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, libc::SIGINT);
    let out = finish(child, Duration::from_secs(10)).await;
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("second signal"));
    assert_dies(sleep_pid, Duration::from_secs(5)).await;
    let st = fake.state();
    assert!(st.completes.is_empty() && st.fails.is_empty());
}

#[tokio::test]
async fn the_worker_survives_the_server_being_down() {
    let mut fake = Fake::start(None).await;
    fake.push("before", json!(null), 1);
    let child = worker(
        &fake.url(),
        &["--max-jobs", "2", "--concurrency", "2", "--wait-secs", "1"],
        &[
            "sh",
            "-c",
            r#"sleep 2; echo "{\"job\":\"$SUREPUSH_JOB_ID\"}""#,
        ],
        &[],
    );
    fake.wait_for("the first job to be leased", |st| st.leased.len() == 1)
        .await;
    // Down while the job runs and while a lease is pending: the lease request and then the
    // job's completion meet a closed port.
    fake.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(fake.state().completes.is_empty());
    fake.push("after", json!(null), 1);
    fake.restart().await;

    let out = finish(child, Duration::from_secs(60)).await;
    assert_clean_exit(&out);
    let st = fake.state();
    assert_eq!(
        st.complete_of("before").map(|b| b["result"].clone()),
        Some(json!({"job": "before"}))
    );
    assert_eq!(
        st.complete_of("after").map(|b| b["result"].clone()),
        Some(json!({"job": "after"}))
    );
    let log = text(&out.stderr);
    assert!(log.contains("lease failed"), "{log}");
    assert!(log.contains("reporting the outcome failed"), "{log}");
}

#[tokio::test]
async fn a_result_the_server_refuses_as_too_large_fails_the_job_without_retry() {
    let fake = Fake::start(None).await;
    fake.state().result_limit = Some(100);
    fake.push("big", json!(null), 1);
    let child = worker(
        &fake.url(),
        &["--max-jobs", "1", "--wait-secs", "1"],
        &["sh", "-c", "head -c 1000 /dev/zero | tr '\\0' y"],
        &[],
    );
    let out = finish(child, LIMIT).await;
    assert_clean_exit(&out);
    let st = fake.state();
    assert!(st.completes.is_empty());
    let fail = st.fail_of("big").expect("reported as failed");
    assert_eq!(fail["retry"], false);
    assert_eq!(
        fail["error"],
        "the server refused the result: server answered 413 Payload Too Large: result is 1002 bytes; the limit is 100"
    );
}

#[tokio::test]
async fn a_refused_token_stops_the_worker_with_a_clear_error() {
    let fake = Fake::start(Some("good-token")).await;
    fake.push("never", json!(null), 1);
    let child = worker(
        &fake.url(),
        &["--token", "bad-token", "--wait-secs", "1"],
        &["cat"],
        &[],
    );
    let out = finish(child, Duration::from_secs(15)).await;
    assert!(!out.status.success());
    let log = text(&out.stderr);
    assert!(log.contains("401"), "{log}");
    assert!(log.contains("SUREPUSH_TOKEN"), "{log}");
    assert_eq!(fake.state().queue.len(), 1);
}

#[tokio::test]
async fn the_command_is_required_and_checked() {
    let out = finish(
        worker("http://127.0.0.1:9", &[], &[], &[]),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("<COMMAND>"));

    let out = finish(
        worker(
            "http://127.0.0.1:9",
            &[],
            &["surepush-test-no-such-command"],
            &[],
        ),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("command not found"));

    let help = tokio::process::Command::new(BIN)
        .args(["worker", "--help"])
        .output()
        .await
        .expect("worker --help");
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("surepush worker https://"));
}
