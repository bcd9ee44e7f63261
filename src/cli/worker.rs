//! `surepush worker`: leases jobs from one queue, runs a command once per job with the
//! payload on stdin, and completes the job with the command's stdout or fails it with its
//! exit code and stderr.
//!
//! The main loop keeps at most `--concurrency` job tasks, leases only as many jobs as there
//! are free slots (one lease request at a time, long-polling when idle) and retries transient
//! HTTP errors with full-jitter backoff, so a worker outlives a server restart. Each job task
//! spawns the command in its own process group, heartbeats every third of the lease, and
//! stops the command if the server says the lease is gone (409). SIGTERM/SIGINT drain: no
//! new leases, running jobs finish and are reported, exit 0; a second signal kills them.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle, JoinSet};

use super::args::{ClientArgs, WorkerArgs};
use super::client;

/// Most bytes kept of a command's stdout (the head) and of its stderr (the tail).
const CAPTURE_LIMIT: usize = 1 << 20;
/// How much of the end of stderr a failure's error quotes.
const ERROR_TAIL: usize = 4 << 10;
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Timeout of one complete or fail request.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most jobs one lease request asks for (the server's default `max_lease_batch`).
const MAX_LEASE_BATCH: usize = 100;
/// A lease request may take `wait_secs` plus this.
const LEASE_SLACK: Duration = Duration::from_secs(15);
/// Between SIGTERM and SIGKILL for a command whose lease was lost.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long stdout/stderr may stay open after the command exited (a background process
/// it started can hold them); after that the rest of its process group is killed.
const PIPE_GRACE: Duration = Duration::from_secs(5);
/// An empty lease reply faster than this is followed by a pause (a server that does not
/// long-poll must not turn the worker into a busy loop).
const MIN_EMPTY_LEASE: Duration = Duration::from_secs(1);

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    super::init_logging("text");
    let Some((program, program_args)) = args.command.split_first() else {
        anyhow::bail!("a COMMAND to run is required after `--`");
    };
    check_program(program)?;
    let http = client::build(&args.client)?;
    let signals = watch_signals()?;
    let worker = Arc::new(Worker {
        http,
        client: args.client.clone(),
        base: args.url.clone(),
        queue: args.queue.clone(),
        name: args.name.clone().unwrap_or_else(default_name),
        lease_secs: args.lease_secs,
        wait_secs: args.wait_secs,
        program: program.clone(),
        program_args: program_args.to_vec(),
    });
    tracing::info!(
        url = %args.url,
        queue = %worker.queue,
        worker = %worker.name,
        concurrency = args.concurrency,
        "worker started"
    );
    let concurrency = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    main_loop(worker, concurrency, args.max_jobs, signals).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    /// First signal: lease nothing more, let running jobs finish and report them.
    Drain,
    /// Second signal: kill running commands and exit.
    Kill,
}

type LeaseOutcome = (Duration, Result<Vec<LeasedJob>, CallError>);

async fn main_loop(
    worker: Arc<Worker>,
    concurrency: usize,
    max_jobs: Option<u64>,
    mut signals: watch::Receiver<Stop>,
) -> anyhow::Result<()> {
    let mut running: JoinSet<()> = JoinSet::new();
    // At most one lease request in flight; a task of its own so that a job finishing does not
    // cancel it (a cancelled lease can strand jobs the server already handed out).
    let mut lease: Option<JoinHandle<LeaseOutcome>> = None;
    let mut next_delay = Duration::ZERO;
    let mut failures: u32 = 0;
    let mut leased: u64 = 0;
    let mut fatal: Option<anyhow::Error> = None;
    loop {
        let stop = *signals.borrow_and_update();
        let quota = max_jobs.map(|m| m.saturating_sub(leased));
        let accepting = stop == Stop::Run && fatal.is_none() && quota != Some(0);
        if !accepting {
            if let Some(handle) = lease.take() {
                // A reply that already arrived is still served; anything else is abandoned.
                handle.abort();
                if let Ok((_, Ok(jobs))) = handle.await {
                    leased += jobs.len() as u64;
                    for job in jobs {
                        running.spawn(run_job(worker.clone(), job));
                    }
                }
            }
            if stop == Stop::Kill {
                let n = running.len();
                running.shutdown().await;
                anyhow::bail!("stopped by a second signal; killed {n} running job(s)");
            }
            if running.is_empty() {
                break;
            }
        } else if lease.is_none() {
            let free = concurrency.saturating_sub(running.len());
            let want = quota
                .map_or(free, |q| free.min(usize::try_from(q).unwrap_or(free)))
                .min(MAX_LEASE_BATCH);
            if want > 0 {
                lease = Some(tokio::spawn(lease_after(worker.clone(), want, next_delay)));
            }
        }
        tokio::select! {
            Ok(()) = signals.changed() => {}
            Some(done) = running.join_next() => {
                if let Err(e) = done {
                    tracing::error!("a job task ended abnormally: {e}");
                }
            }
            outcome = join_some(&mut lease) => {
                lease = None;
                match outcome {
                    Ok((took, Ok(jobs))) => {
                        failures = 0;
                        next_delay = if jobs.is_empty() && took < MIN_EMPTY_LEASE {
                            MIN_EMPTY_LEASE
                        } else {
                            Duration::ZERO
                        };
                        leased += jobs.len() as u64;
                        for job in jobs {
                            running.spawn(run_job(worker.clone(), job));
                        }
                    }
                    Ok((_, Err(CallError::Transient { message, retry_after }))) => {
                        failures = failures.saturating_add(1);
                        next_delay = backoff_delay(failures, retry_after, rand::random());
                        tracing::warn!("lease failed: {message}; retrying in {next_delay:.1?}");
                    }
                    Ok((_, Err(e @ CallError::Denied(_)))) => {
                        tracing::error!("lease refused: {e}");
                        fatal = Some(anyhow::anyhow!(
                            "the server refused to lease from queue {:?}: {e} (check --token / SUREPUSH_TOKEN and its `work` queues)",
                            worker.queue
                        ));
                    }
                    Ok((_, Err(e))) => {
                        tracing::error!("lease rejected: {e}");
                        fatal = Some(anyhow::anyhow!(
                            "the server rejected the lease request for queue {:?}: {e}",
                            worker.queue
                        ));
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        next_delay = backoff_delay(failures, None, rand::random());
                        tracing::error!("the lease task ended abnormally: {e}");
                    }
                }
            }
        }
    }
    match fatal {
        Some(e) => Err(e),
        None => {
            tracing::info!(jobs = leased, "worker stopped");
            Ok(())
        }
    }
}

/// Awaits the handle if there is one, else never resolves.
async fn join_some<T>(handle: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match handle {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn lease_after(worker: Arc<Worker>, max: usize, delay: Duration) -> LeaseOutcome {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let started = Instant::now();
    let result = worker.lease(max).await;
    (started.elapsed(), result)
}

/// SIGTERM or SIGINT once: drain; twice: kill.
fn watch_signals() -> anyhow::Result<watch::Receiver<Stop>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let (tx, rx) = watch::channel(Stop::Run);
    tokio::spawn(async move {
        let mut received = 0u32;
        loop {
            tokio::select! {
                Some(()) = term.recv() => {}
                Some(()) = int.recv() => {}
                else => break,
            }
            received += 1;
            if received == 1 {
                tracing::info!(
                    "signal received: draining (no new jobs; running jobs finish and are reported); signal again to kill them"
                );
                tx.send_replace(Stop::Drain);
            } else {
                tracing::warn!("second signal: killing running jobs");
                tx.send_replace(Stop::Kill);
            }
        }
        // Keep the sender, so the main loop never sees the channel close.
        std::future::pending::<()>().await;
    });
    Ok(rx)
}

// ---------------------------------------------------------------------------
// HTTP

struct Worker {
    http: reqwest::Client,
    client: ClientArgs,
    base: String,
    queue: String,
    name: String,
    lease_secs: u64,
    wait_secs: u64,
    program: String,
    program_args: Vec<String>,
}

#[derive(Deserialize)]
struct LeaseReply {
    #[serde(default)]
    jobs: Vec<LeasedJob>,
}

#[derive(Deserialize)]
struct LeasedJob {
    job_id: String,
    /// Kept as the server's exact JSON text: that text is what the command reads.
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default = "first_attempt")]
    attempt: u64,
}

fn first_attempt() -> u64 {
    1
}

impl LeasedJob {
    fn payload_text(&self) -> &str {
        self.payload.as_deref().map_or("null", RawValue::get)
    }
}

#[derive(Serialize)]
struct LeaseBody<'a> {
    worker: &'a str,
    max: usize,
    lease_secs: u64,
    wait_secs: u64,
}

#[derive(Serialize)]
struct HeartbeatBody<'a> {
    worker: &'a str,
    attempt: u64,
    lease_secs: u64,
}

#[derive(Serialize)]
struct CompleteBody<'a> {
    worker: &'a str,
    attempt: u64,
    result: &'a RawValue,
}

#[derive(Serialize)]
struct FailBody<'a> {
    worker: &'a str,
    attempt: u64,
    error: &'a str,
    retry: bool,
}

/// Why a request to the server did not succeed, sorted by what the worker does about it.
#[derive(Debug)]
enum CallError {
    /// No answer, a timeout, 408, 429 or 5xx: try again later.
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// 409: the lease is no longer ours (expired and given to another worker, or finished).
    Conflict(String),
    /// 404 or 410: the server does not know the job (or the queue).
    Gone(String),
    /// 401 or 403: the token is missing, invalid or lacks the right.
    Denied(String),
    /// Any other 4xx: the server rejected the request itself.
    Rejected { status: u16, message: String },
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transient { message, .. }
            | CallError::Conflict(message)
            | CallError::Gone(message)
            | CallError::Denied(message)
            | CallError::Rejected { message, .. } => f.write_str(message),
        }
    }
}

fn classify(status: u16, message: String, retry_after: Option<Duration>) -> CallError {
    match status {
        401 | 403 => CallError::Denied(message),
        404 | 410 => CallError::Gone(message),
        409 => CallError::Conflict(message),
        408 | 429 | 500..=599 => CallError::Transient {
            message,
            retry_after,
        },
        _ if status < 400 => CallError::Transient {
            message: format!("unexpected answer: {message}"),
            retry_after,
        },
        _ => CallError::Rejected { status, message },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not worth the parsing here).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl Worker {
    async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<reqwest::Response, CallError> {
        let req = self
            .http
            .post(client::endpoint(&self.base, path))
            .json(body)
            .timeout(timeout);
        let resp = client::with_token(req, &self.client)
            .send()
            .await
            .map_err(|e| CallError::Transient {
                message: format!("{:#}", anyhow::Error::new(e)),
                retry_after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let wait = retry_after(resp.headers());
        let message = match client::check(resp).await {
            Err(e) => format!("{e:#}"),
            Ok(_) => format!("server answered {status}"),
        };
        Err(classify(status.as_u16(), message, wait))
    }

    async fn lease(&self, max: usize) -> Result<Vec<LeasedJob>, CallError> {
        let path = format!("/v1/queues/{}/lease", encode_segment(&self.queue));
        let body = LeaseBody {
            worker: &self.name,
            max,
            lease_secs: self.lease_secs,
            wait_secs: self.wait_secs,
        };
        let timeout = Duration::from_secs(self.wait_secs) + LEASE_SLACK;
        let resp = self.post(&path, &body, timeout).await?;
        let reply: LeaseReply = resp.json().await.map_err(|e| CallError::Transient {
            message: format!("reading the lease reply: {:#}", anyhow::Error::new(e)),
            retry_after: None,
        })?;
        Ok(reply.jobs)
    }

    async fn heartbeat(&self, job: &LeasedJob, timeout: Duration) -> Result<(), CallError> {
        let path = format!("/v1/jobs/{}/heartbeat", encode_segment(&job.job_id));
        let body = HeartbeatBody {
            worker: &self.name,
            attempt: job.attempt,
            lease_secs: self.lease_secs,
        };
        self.post(&path, &body, timeout).await.map(drop)
    }

    /// Renews the lease every third of it until the server says it is gone; returns why.
    /// Transient errors are retried sooner, never later than the regular interval.
    async fn heartbeat_until_lost(&self, job: &LeasedJob) -> CallError {
        let every = heartbeat_interval(self.lease_secs);
        let timeout = every.clamp(Duration::from_secs(1), REPORT_TIMEOUT);
        let mut wait = every;
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(wait).await;
            match self.heartbeat(job, timeout).await {
                Ok(()) => {
                    failures = 0;
                    wait = every;
                    tracing::debug!(job = %job.job_id, "heartbeat");
                }
                Err(e @ (CallError::Conflict(_) | CallError::Gone(_))) => return e,
                Err(CallError::Transient {
                    message,
                    retry_after,
                }) => {
                    failures = failures.saturating_add(1);
                    wait = backoff_delay(failures, retry_after, rand::random()).min(every);
                    tracing::warn!(job = %job.job_id, "heartbeat failed: {message}");
                }
                Err(e) => {
                    wait = every;
                    tracing::warn!(job = %job.job_id, "heartbeat rejected: {e}");
                }
            }
        }
    }

    /// Sends the outcome, retrying transient errors until it is accepted or refused. A
    /// result the server finds too large (413) is reported as a failure without retry.
    async fn report(&self, job: &LeasedJob, mut report: Report, ran: Duration) {
        let id = encode_segment(&job.job_id);
        let mut failures = 0u32;
        loop {
            let sent = match &report {
                Report::Complete(result) => {
                    let body = CompleteBody {
                        worker: &self.name,
                        attempt: job.attempt,
                        result,
                    };
                    let path = format!("/v1/jobs/{id}/complete");
                    self.post(&path, &body, REPORT_TIMEOUT).await
                }
                Report::Fail { error, retry } => {
                    let body = FailBody {
                        worker: &self.name,
                        attempt: job.attempt,
                        error,
                        retry: *retry,
                    };
                    let path = format!("/v1/jobs/{id}/fail");
                    self.post(&path, &body, REPORT_TIMEOUT).await
                }
            };
            match sent {
                Ok(_) => {
                    match &report {
                        Report::Complete(_) => tracing::info!(
                            job = %job.job_id, attempt = job.attempt,
                            "job completed in {ran:.1?}"
                        ),
                        Report::Fail { error, retry } => tracing::warn!(
                            job = %job.job_id, attempt = job.attempt, retry,
                            "job failed in {ran:.1?}: {}", first_line(error)
                        ),
                    }
                    return;
                }
                Err(CallError::Transient {
                    message,
                    retry_after,
                }) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff_delay(failures, retry_after, rand::random());
                    tracing::warn!(
                        job = %job.job_id,
                        "reporting the outcome failed: {message}; retrying in {wait:.1?}"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(CallError::Conflict(m)) => {
                    tracing::warn!(
                        job = %job.job_id,
                        "lease lost before the outcome was reported ({m}); the job will run again elsewhere"
                    );
                    return;
                }
                Err(CallError::Rejected {
                    status: 413,
                    message,
                }) if matches!(report, Report::Complete(_)) => {
                    // Running it again would produce the same result.
                    report = Report::Fail {
                        error: format!("the server refused the result: {message}"),
                        retry: false,
                    };
                }
                Err(e) => {
                    tracing::error!(job = %job.job_id, "the outcome was not accepted: {e}");
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Running one job

enum Report {
    Complete(Box<RawValue>),
    Fail { error: String, retry: bool },
}

async fn run_job(worker: Arc<Worker>, job: LeasedJob) {
    let started = Instant::now();
    tracing::info!(job = %job.job_id, attempt = job.attempt, "job started");
    if let Some(report) = worker.execute(&job).await {
        worker.report(&job, report, started.elapsed()).await;
    }
}

impl Worker {
    /// Runs the command; `None` when the lease was lost and the command was stopped.
    async fn execute(&self, job: &LeasedJob) -> Option<Report> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.program_args)
            .env("SUREPUSH_JOB_ID", &job.job_id)
            .env("SUREPUSH_QUEUE", &self.queue)
            .env("SUREPUSH_ATTEMPT", job.attempt.to_string())
            // The worker's credential is not the job's business.
            .env_remove("SUREPUSH_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches the worker only (which
            // drains), and stopping the job reaches whatever the command started.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Some(Report::Fail {
                    error: format!("cannot start {}: {e}", self.program),
                    retry: true,
                })
            }
        };
        let mut group = ProcessGroup::of(&child);
        let payload = job.payload_text().as_bytes().to_vec();
        let stdin = child.stdin.take();
        let _feed = Helper::spawn(async move {
            if let Some(mut stdin) = stdin {
                // A command that does not read its stdin is not an error.
                let _ = stdin.write_all(&payload).await;
            }
        });
        let mut out = Helper::spawn(capture(child.stdout.take(), Keep::Head, CAPTURE_LIMIT));
        let mut err = Helper::spawn(capture(child.stderr.take(), Keep::Tail, CAPTURE_LIMIT));

        let status = tokio::select! {
            status = child.wait() => status,
            lost = self.heartbeat_until_lost(job) => {
                tracing::warn!(
                    job = %job.job_id,
                    "lease lost ({lost}); stopping the command without reporting the job"
                );
                group.terminate(&mut child).await;
                return None;
            }
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                return Some(Report::Fail {
                    error: format!("waiting for {}: {e}", self.program),
                    retry: true,
                })
            }
        };
        // No heartbeats from here on: keep the wait well inside the lease.
        let grace = PIPE_GRACE.min(heartbeat_interval(self.lease_secs));
        let pipes = async {
            out.wait().await;
            err.wait().await;
        };
        if tokio::time::timeout(grace, pipes).await.is_err() {
            tracing::warn!(
                job = %job.job_id,
                "the command exited but a process it started still holds its output open; killing its process group"
            );
            group.kill();
            let pipes = async {
                out.wait().await;
                err.wait().await;
            };
            if tokio::time::timeout(Duration::from_secs(1), pipes)
                .await
                .is_err()
            {
                return Some(Report::Fail {
                    error: "the command exited, but a process it started outside its process group still holds its output open".to_string(),
                    retry: true,
                });
            }
        }
        group.disarm();
        Some(report_for(status, &out.take(), &err.take()))
    }
}

/// What the job's outcome is, from how the command ended and what it wrote.
fn report_for(status: ExitStatus, stdout: &Captured, stderr: &Captured) -> Report {
    if !status.success() {
        return Report::Fail {
            error: failure_message(status, stderr),
            retry: true,
        };
    }
    if stdout.truncated() {
        // Retrying would produce the same oversized output.
        return Report::Fail {
            error: format!(
                "the command succeeded but its stdout ({} bytes) exceeds the {} byte result limit",
                stdout.total, CAPTURE_LIMIT
            ),
            retry: false,
        };
    }
    Report::Complete(result_from_stdout(&stdout.bytes))
}

/// stdout as JSON if its trimmed text parses, else as a JSON string (trailing whitespace
/// removed); empty output is `null`. Valid JSON is passed on exactly as written.
fn result_from_stdout(stdout: &[u8]) -> Box<RawValue> {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return raw_json(&serde_json::Value::Null);
    }
    match serde_json::from_str::<Box<RawValue>>(trimmed) {
        Ok(raw) => raw,
        Err(_) => raw_json(&serde_json::Value::String(text.trim_end().to_string())),
    }
}

fn raw_json(value: &serde_json::Value) -> Box<RawValue> {
    // A Value always serializes; the default (`null`) is never used.
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

/// `exit code N: <end of stderr>`, or `exit code 128+S (killed by signal S): ...`, with a
/// note when stderr was cut to its last 4 KiB.
fn failure_message(status: ExitStatus, stderr: &Captured) -> String {
    let head = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("exit code {} (killed by signal {sig})", 128 + sig),
        (None, None) => format!("ended abnormally ({status})"),
    };
    let (tail, shown) = tail_text(&stderr.bytes, ERROR_TAIL);
    let tail = tail.trim_end();
    if tail.trim().is_empty() {
        return head;
    }
    if (shown as u64) < stderr.total {
        format!(
            "{head}: [stderr truncated: last {shown} of {} bytes]\n{}",
            stderr.total,
            tail.trim_start_matches('\n')
        )
    } else {
        format!("{head}: {}", tail.trim_start())
    }
}

/// The last `max` bytes (fewer, to start on a UTF-8 character boundary) as text, and how
/// many bytes that is.
fn tail_text(bytes: &[u8], max: usize) -> (String, usize) {
    let mut start = bytes.len().saturating_sub(max);
    // Skip continuation bytes (0b10xx_xxxx) a cut may have left at the start.
    let mut skipped = 0;
    while start < bytes.len() && start > 0 && bytes[start] & 0xC0 == 0x80 && skipped < 3 {
        start += 1;
        skipped += 1;
    }
    let tail = &bytes[start..];
    (String::from_utf8_lossy(tail).into_owned(), tail.len())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Keep {
    Head,
    Tail,
}

/// Up to `limit` bytes of a stream (its start or its end) and how many bytes it had.
#[derive(Default, Debug)]
struct Captured {
    bytes: Vec<u8>,
    total: u64,
}

impl Captured {
    fn truncated(&self) -> bool {
        (self.bytes.len() as u64) < self.total
    }

    fn push(&mut self, chunk: &[u8], keep: Keep, limit: usize) {
        self.total += chunk.len() as u64;
        match keep {
            Keep::Head => {
                let room = limit.saturating_sub(self.bytes.len());
                self.bytes
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Keep::Tail => {
                self.bytes.extend_from_slice(chunk);
                // Trim in batches, so the copy is amortised.
                if self.bytes.len() > limit.saturating_mul(2) {
                    self.trim_front(limit);
                }
            }
        }
    }

    fn finish(mut self, keep: Keep, limit: usize) -> Captured {
        if keep == Keep::Tail {
            self.trim_front(limit);
        }
        self
    }

    fn trim_front(&mut self, limit: usize) {
        let excess = self.bytes.len().saturating_sub(limit);
        self.bytes.drain(..excess);
    }
}

async fn capture<R: AsyncRead + Unpin>(reader: Option<R>, keep: Keep, limit: usize) -> Captured {
    let mut captured = Captured::default();
    let Some(mut reader) = reader else {
        return captured;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => captured.push(&buf[..n], keep, limit),
        }
    }
    captured.finish(keep, limit)
}

/// A job's helper task (stdin feeder, output capture), aborted with the job task (second
/// signal).
struct Helper<T> {
    handle: JoinHandle<T>,
    output: Option<T>,
    done: bool,
}

impl<T: Default + Send + 'static> Helper<T> {
    fn spawn(task: impl std::future::Future<Output = T> + Send + 'static) -> Helper<T> {
        Helper {
            handle: tokio::spawn(task),
            output: None,
            done: false,
        }
    }

    /// Waits for the task to end. Cancel-safe: the output is kept even if the caller gives
    /// up right after it arrived, and a finished task is never polled again.
    async fn wait(&mut self) {
        if !self.done {
            let output = (&mut self.handle).await.unwrap_or_default();
            self.output = Some(output);
            self.done = true;
        }
    }

    fn take(&mut self) -> T {
        self.output.take().unwrap_or_default()
    }
}

impl<T> Drop for Helper<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The command's process group (the command is its leader). Dropped while armed, e.g. when
/// a second signal aborts the job task, it SIGKILLs the whole group.
struct ProcessGroup {
    pgid: Option<i32>,
}

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> ProcessGroup {
        // Never 0 or 1: kill(0, ..) and kill(-1, ..) would hit far more than the job.
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|&p| p > 1);
        ProcessGroup { pgid }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) takes plain integers; a negative pid addresses the process group.
            unsafe {
                libc::kill(-pgid, sig);
            }
        }
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// SIGTERM to the group, SIGKILL after a grace period, and reap the command.
    async fn terminate(&mut self, child: &mut tokio::process::Child) {
        self.signal(libc::SIGTERM);
        let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
        self.kill();
        let _ = child.wait().await;
        self.disarm();
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Small pure helpers

/// Full jitter: uniform in [0, min(cap, base * 2^(failures-1))), `unit` in [0, 1) being the
/// random draw; never shorter than a Retry-After the server sent (itself capped).
fn backoff_delay(failures: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
    let exp = 1u32 << failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(exp).min(BACKOFF_CAP);
    let delay = ceiling.mul_f64(unit.clamp(0.0, 1.0));
    match retry_after {
        Some(r) => delay.max(r.min(BACKOFF_CAP)),
        None => delay,
    }
}

/// A third of the lease, at least 200 ms.
fn heartbeat_interval(lease_secs: u64) -> Duration {
    (Duration::from_secs(lease_secs) / 3).max(Duration::from_millis(200))
}

/// Percent-encodes one URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Fails early, with a clear message, when the command cannot be found: otherwise every job
/// would be leased only to fail.
fn check_program(program: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        anyhow::ensure!(
            executable(Path::new(program)),
            "{program} is not an executable file"
        );
        return Ok(());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    anyhow::ensure!(
        std::env::split_paths(&path).any(|dir| executable(&dir.join(program))),
        "{program}: command not found in PATH"
    );
    Ok(())
}

/// `hostname-pid`.
fn default_name() -> String {
    let host = hostname().unwrap_or_else(|| "worker".to_string());
    format!("{host}-{}", std::process::id())
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn value(raw: &RawValue) -> Value {
        serde_json::from_str(raw.get()).expect("valid JSON")
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn captured(bytes: &[u8]) -> Captured {
        Captured {
            bytes: bytes.to_vec(),
            total: bytes.len() as u64,
        }
    }

    #[test]
    fn stdout_json_is_parsed_after_trimming() {
        assert_eq!(
            value(&result_from_stdout(b"  {\"a\": [1, 2]}\n")),
            json!({"a": [1, 2]})
        );
        assert_eq!(value(&result_from_stdout(b"42\n")), json!(42));
        assert_eq!(value(&result_from_stdout(b"\"s\"")), json!("s"));
        assert_eq!(value(&result_from_stdout(b"true")), json!(true));
    }

    #[test]
    fn stdout_json_text_is_kept_exactly() {
        // Key order and number spelling survive (no round trip through a map or f64).
        let raw = result_from_stdout(b"{\"z\":1,\"a\":12345678901234567890123}\n");
        assert_eq!(raw.get(), "{\"z\":1,\"a\":12345678901234567890123}");
    }

    #[test]
    fn stdout_that_is_not_json_becomes_a_string() {
        assert_eq!(
            value(&result_from_stdout(b"hello world\n")),
            json!("hello world")
        );
        assert_eq!(value(&result_from_stdout(b"1\n2\n")), json!("1\n2"));
        assert_eq!(value(&result_from_stdout(b"{broken")), json!("{broken"));
        assert_eq!(
            value(&result_from_stdout(b"  indented\n")),
            json!("  indented")
        );
        assert_eq!(
            value(&result_from_stdout(b"caf\xc3\xa9 \xff")),
            json!("café \u{fffd}")
        );
    }

    #[test]
    fn empty_stdout_is_null() {
        assert_eq!(value(&result_from_stdout(b"")), Value::Null);
        assert_eq!(value(&result_from_stdout(b" \n\t\n")), Value::Null);
    }

    #[test]
    fn failure_names_the_exit_code_and_quotes_stderr() {
        let msg = failure_message(exited(3), &captured(b"oops: no such file\n"));
        assert_eq!(msg, "exit code 3: oops: no such file");
        assert_eq!(failure_message(exited(1), &captured(b"")), "exit code 1");
        assert_eq!(
            failure_message(exited(2), &captured(b"\n  \n")),
            "exit code 2"
        );
    }

    #[test]
    fn failure_by_signal_says_so() {
        let msg = failure_message(ExitStatus::from_raw(libc::SIGKILL), &captured(b"bye"));
        assert_eq!(msg, "exit code 137 (killed by signal 9): bye");
    }

    #[test]
    fn failure_quotes_only_the_last_4_kib_of_stderr_and_says_it_was_cut() {
        let mut stderr = vec![b'x'; 10_000];
        stderr.extend_from_slice(b"\nthe real reason\n");
        let msg = failure_message(exited(4), &captured(&stderr));
        assert!(msg.starts_with("exit code 4: [stderr truncated: last 4096 of 10017 bytes]\n"));
        assert!(msg.ends_with("the real reason"), "{msg}");
        assert!(msg.len() < ERROR_TAIL + 100, "{}", msg.len());
    }

    #[test]
    fn failure_counts_bytes_the_capture_already_dropped() {
        // The capture kept only its tail; the note reports the full size.
        let c = Captured {
            bytes: b"end of it".to_vec(),
            total: 5 << 20,
        };
        let msg = failure_message(exited(1), &c);
        assert_eq!(
            msg,
            format!(
                "exit code 1: [stderr truncated: last 9 of {} bytes]\nend of it",
                5 << 20
            )
        );
    }

    #[test]
    fn stderr_tail_starts_on_a_character_boundary() {
        // 'é' is 2 bytes; cutting 4097 bytes from the end would start inside one.
        let stderr = "é".repeat(3000);
        let (tail, shown) = tail_text(stderr.as_bytes(), ERROR_TAIL);
        assert!(!tail.contains('\u{fffd}'));
        assert_eq!(shown, tail.len());
        assert!((ERROR_TAIL - 3..=ERROR_TAIL).contains(&shown));
    }

    #[test]
    fn report_for_success_failure_and_oversized_output() {
        let ok = report_for(exited(0), &captured(b"{\"n\":1}"), &captured(b"warn"));
        assert!(matches!(ok, Report::Complete(ref r) if r.get() == "{\"n\":1}"));
        let failed = report_for(exited(7), &captured(b"{}"), &captured(b"bad"));
        assert!(
            matches!(failed, Report::Fail { ref error, retry: true } if error == "exit code 7: bad")
        );
        let big = Captured {
            bytes: vec![b'1'; 16],
            total: 2 << 20,
        };
        let too_big = report_for(exited(0), &big, &captured(b""));
        assert!(
            matches!(too_big, Report::Fail { ref error, retry: false } if error.contains("exceeds")),
        );
    }

    #[test]
    fn capture_keeps_the_head_of_stdout_and_the_tail_of_stderr() {
        let mut head = Captured::default();
        let mut tail = Captured::default();
        for i in 0..100u8 {
            let chunk = [i; 10];
            head.push(&chunk, Keep::Head, 25);
            tail.push(&chunk, Keep::Tail, 25);
        }
        let head = head.finish(Keep::Head, 25);
        let tail = tail.finish(Keep::Tail, 25);
        assert_eq!(head.total, 1000);
        assert_eq!(tail.total, 1000);
        assert_eq!(head.bytes.len(), 25);
        assert_eq!(tail.bytes.len(), 25);
        assert_eq!(&head.bytes[..12], &[0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(&tail.bytes[20..], &[99u8; 5]);
        assert_eq!(tail.bytes[0], 97);
        assert!(head.truncated() && tail.truncated());
        let mut small = Captured::default();
        small.push(b"abc", Keep::Tail, 25);
        assert!(!small.finish(Keep::Tail, 25).truncated());
    }

    #[tokio::test]
    async fn capture_reads_a_stream_to_its_end() {
        let data = vec![7u8; 100_000];
        let c = capture(Some(&data[..]), Keep::Head, 1000).await;
        assert_eq!((c.bytes.len(), c.total), (1000, 100_000));
        let c = capture(Some(&data[..]), Keep::Tail, CAPTURE_LIMIT).await;
        assert_eq!((c.bytes.len(), c.total), (100_000, 100_000));
        let none: Option<&[u8]> = None;
        assert_eq!(capture(none, Keep::Head, 10).await.total, 0);
    }

    #[test]
    fn backoff_stays_within_full_jitter_bounds() {
        for failures in 1..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (failures - 1).min(16))
                .min(BACKOFF_CAP);
            assert_eq!(backoff_delay(failures, None, 0.0), Duration::ZERO);
            for unit in [0.1, 0.5, 0.999_999] {
                let d = backoff_delay(failures, None, unit);
                assert!(d < ceiling && d <= BACKOFF_CAP, "{failures} {unit} {d:?}");
            }
        }
        assert_eq!(
            backoff_delay(1, None, 0.999_999),
            BACKOFF_BASE.mul_f64(0.999_999)
        );
        // Grows to the cap and stays there; an out-of-range draw is clamped.
        assert!(backoff_delay(8, None, 0.999) > Duration::from_secs(29));
        assert_eq!(backoff_delay(u32::MAX, None, 5.0), BACKOFF_CAP);
        assert_eq!(backoff_delay(3, None, -1.0), Duration::ZERO);
    }

    #[test]
    fn backoff_honours_retry_after_up_to_the_cap() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(backoff_delay(1, five, 0.0), Duration::from_secs(5));
        assert_eq!(
            backoff_delay(1, Some(Duration::from_secs(3600)), 0.5),
            BACKOFF_CAP
        );
        assert!(backoff_delay(10, five, 0.9) > Duration::from_secs(5));
    }

    #[test]
    fn status_codes_are_sorted_by_what_to_do() {
        let c = |s| classify(s, String::new(), None);
        assert!(matches!(c(401), CallError::Denied(_)));
        assert!(matches!(c(403), CallError::Denied(_)));
        assert!(matches!(c(409), CallError::Conflict(_)));
        assert!(matches!(c(404), CallError::Gone(_)));
        assert!(matches!(c(400), CallError::Rejected { status: 400, .. }));
        assert!(matches!(c(413), CallError::Rejected { status: 413, .. }));
        assert!(matches!(c(422), CallError::Rejected { status: 422, .. }));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(c(s), CallError::Transient { .. }), "{s}");
        }
        let wait = Some(Duration::from_secs(7));
        assert!(matches!(
            classify(503, String::new(), wait),
            CallError::Transient { retry_after, .. } if retry_after == wait
        ));
    }

    #[test]
    fn retry_after_seconds_are_read() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "12".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn heartbeats_come_every_third_of_the_lease() {
        assert_eq!(heartbeat_interval(30), Duration::from_secs(10));
        assert_eq!(heartbeat_interval(3), Duration::from_secs(1));
        assert_eq!(heartbeat_interval(1), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("reports"), "reports");
        assert_eq!(encode_segment("a-b_c.d~e9"), "a-b_c.d~e9");
        assert_eq!(encode_segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn lease_replies_parse_and_keep_the_payload_text() {
        let reply: LeaseReply = serde_json::from_str(
            r#"{"jobs":[{"job_id":"j1","payload":{"b":1, "a":[true]},"attempt":2,"lease_until":"2030-01-01T00:00:00Z"},
                        {"job_id":"j2"}]}"#,
        )
        .expect("parses");
        assert_eq!(reply.jobs.len(), 2);
        assert_eq!(reply.jobs[0].payload_text(), r#"{"b":1, "a":[true]}"#);
        assert_eq!(reply.jobs[0].attempt, 2);
        assert_eq!(reply.jobs[1].payload_text(), "null");
        assert_eq!(reply.jobs[1].attempt, 1);
        let empty: LeaseReply = serde_json::from_str("{}").expect("parses");
        assert!(empty.jobs.is_empty());
    }

    #[test]
    fn report_bodies_carry_worker_attempt_and_raw_result() {
        let result = result_from_stdout(b"{\"z\":1,\"a\":2}");
        let body = CompleteBody {
            worker: "w1",
            attempt: 3,
            result: &result,
        };
        assert_eq!(
            serde_json::to_string(&body).expect("serializes"),
            r#"{"worker":"w1","attempt":3,"result":{"z":1,"a":2}}"#
        );
    }

    #[test]
    fn the_default_name_is_host_and_pid() {
        let name = default_name();
        assert!(
            name.ends_with(&format!("-{}", std::process::id())),
            "{name}"
        );
        assert!(name.len() > 2);
    }

    #[test]
    fn missing_commands_are_found_early() {
        assert!(check_program("sh").is_ok());
        assert!(check_program("/bin/sh").is_ok());
        assert!(check_program("surepush-no-such-command-xyz").is_err());
        assert!(check_program("/nonexistent/cmd").is_err());
        let dir = tempfile::tempdir().expect("temp dir");
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        assert!(check_program(plain.to_str().expect("utf-8 path")).is_err());
    }
}
