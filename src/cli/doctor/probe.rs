//! The delivery probes, one per transport. Each is bounded by the probe timeout and
//! uses a topic of its own under `surepush-doctor/<random>/`, subscribing from the
//! cursor taken before anything was published, so the order in which the request and
//! the test event reach the server does not matter.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::{timeout_at, Instant};

use super::error_chain;
use crate::cli::client;

/// What the probes share.
pub struct Ctx {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    /// Bound for each step (waiting for headers, the canary, the event).
    pub timeout: Duration,
    /// `surepush-doctor/<random>`
    pub prefix: String,
    /// The head of the log before anything was published.
    pub cursor: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    #[default]
    Skipped,
    Ok,
    /// Response headers came, but the body was held back.
    Buffered,
    Failed,
}

/// One transport's measurements (milliseconds from the request or the publish).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Probe {
    pub status: Outcome,
    /// Request sent -> response headers.
    pub headers_ms: Option<f64>,
    /// Request sent -> the `surepush.hello` canary (SSE), or the first answer of an
    /// immediate long poll (`timeout=0`).
    pub canary_ms: Option<f64>,
    /// Publish sent -> 201 (the event is durable).
    pub publish_ms: Option<f64>,
    /// Publish sent -> the event received over this transport.
    pub event_ms: Option<f64>,
    /// From the canary: the mode the server chose and the HTTP version it saw.
    pub server_mode: Option<String>,
    pub server_http: Option<String>,
    pub detail: String,
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

impl Probe {
    fn failed(mut self, detail: impl Into<String>) -> Probe {
        self.status = Outcome::Failed;
        self.detail = detail.into();
        self
    }

    fn hello(&mut self, data: &str) {
        let v: Value = serde_json::from_str(data).unwrap_or_default();
        self.server_mode = v["mode"].as_str().map(str::to_string);
        self.server_http = v["http"].as_str().map(str::to_string);
    }

    /// Settles the probe from the publish and the wait for the event.
    fn settle(
        mut self,
        published: Option<Result<Published, String>>,
        waited: Option<Result<Instant, String>>,
        no_event: &str,
    ) -> Probe {
        let published = match published {
            None => {
                self.status = Outcome::Ok;
                self.detail = no_event.to_string();
                return self;
            }
            Some(Err(e)) => return self.failed(e),
            Some(Ok(p)) => p,
        };
        self.publish_ms = Some(ms(published.took));
        match waited {
            Some(Ok(at)) => {
                self.status = Outcome::Ok;
                self.event_ms = Some(ms(at.saturating_duration_since(published.start)));
                self
            }
            Some(Err(e)) => self.failed(e),
            None => self.failed("the test event never arrived"),
        }
    }
}

pub struct Published {
    start: Instant,
    took: Duration,
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

enum Next {
    Event(Event),
    End,
    Timeout,
    Error(String),
}

async fn next(events: &mut Events, deadline: Instant) -> Next {
    match timeout_at(deadline, events.next()).await {
        Err(_) => Next::Timeout,
        Ok(None) => Next::End,
        Ok(Some(Ok(e))) => Next::Event(e),
        Ok(Some(Err(e))) => Next::Error(e),
    }
}

/// An error response as one line: `server answered 403 Forbidden: ...`.
pub async fn refusal(resp: reqwest::Response) -> String {
    match client::check(resp).await {
        Ok(r) => format!("unexpected answer {}", r.status()),
        Err(e) => format!("{e:#}"),
    }
}

impl Ctx {
    pub fn topic(&self, probe: &str) -> String {
        format!("{}/{probe}", self.prefix)
    }

    pub fn get(&self, path: &str, query: &[(&str, String)]) -> reqwest::RequestBuilder {
        let req = self
            .http
            .get(client::url_with_query(&self.base, path, query));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Publishes one test event; Ok once the server answered 201.
    pub async fn publish(&self, topic: &str) -> Result<Published, String> {
        let body = json!({"topic": topic, "type": "doctor", "data": {"from": "surepush doctor"}});
        let mut req = self
            .http
            .post(client::endpoint(&self.base, "/v1/publish"))
            .json(&body)
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let start = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| format!("publishing the test event failed: {}", error_chain(&e)))?;
        let took = start.elapsed();
        if !resp.status().is_success() {
            return Err(format!(
                "publishing the test event was refused: {}",
                refusal(resp).await
            ));
        }
        Ok(Published { start, took })
    }

    /// Runs `wait` while publishing to `topic` (when `publish`); stops early if the
    /// publish fails, since the event cannot come then.
    async fn with_publish<W: Future>(
        &self,
        topic: &str,
        publish: bool,
        wait: W,
    ) -> (Option<Result<Published, String>>, Option<W::Output>) {
        if !publish {
            return (None, Some(wait.await));
        }
        let publishing = self.publish(topic);
        tokio::pin!(publishing);
        tokio::pin!(wait);
        let mut published = None;
        loop {
            tokio::select! {
                r = &mut publishing, if published.is_none() => {
                    if r.is_err() {
                        return (Some(r), None);
                    }
                    published = Some(r);
                }
                w = &mut wait => {
                    let p = match published {
                        Some(p) => p,
                        None => publishing.await,
                    };
                    return (Some(p), Some(w));
                }
            }
        }
    }

    /// Sends an SSE request; the response once its headers arrived, as an event stream.
    async fn open_sse(&self, query: &[(&str, String)], t0: Instant) -> Result<Events, String> {
        let req = self
            .get("/v1/stream", query)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .timeout(self.timeout * 3);
        let resp = match timeout_at(t0 + self.timeout, req.send()).await {
            Err(_) => {
                return Err(format!(
                    "no response within {}, not even the headers",
                    secs(self.timeout)
                ))
            }
            Ok(Err(e)) => return Err(format!("the request failed: {}", error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !ct.starts_with("text/event-stream") {
            let body = timeout_at(t0 + self.timeout, resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let start: String = body.chars().take(120).collect();
            return Err(format!(
                "expected text/event-stream, got {ct:?} ({start:?}): something on the path answered instead of surepush"
            ));
        }
        Ok(Box::pin(
            resp.bytes_stream()
                .eventsource()
                .map(|r| r.map_err(|e| e.to_string())),
        ))
    }
}

/// SSE, `mode=stream`: the canary must come while the response stays open, then a test
/// event published after it must come too.
pub async fn sse_stream(ctx: &Ctx, publish: bool) -> Probe {
    let mut p = Probe::default();
    let topic = ctx.topic("stream");
    let t0 = Instant::now();
    let q = [("topic", topic.clone()), ("since", ctx.cursor.clone())];
    let mut events = match ctx.open_sse(&q, t0).await {
        Ok(e) => e,
        Err(e) => return p.failed(e),
    };
    p.headers_ms = Some(ms(t0.elapsed()));
    loop {
        match next(&mut events, t0 + ctx.timeout).await {
            Next::Event(e) if e.event == "surepush.hello" => {
                p.canary_ms = Some(ms(t0.elapsed()));
                p.hello(&e.data);
                break;
            }
            Next::Event(_) => {}
            Next::Timeout => {
                p.status = Outcome::Buffered;
                p.detail = format!(
                    "the response headers came in {} but no data within {}: the stream is held back on the way",
                    super::human_ms(p.headers_ms.unwrap_or_default()),
                    secs(ctx.timeout)
                );
                return p;
            }
            Next::End => return p.failed("the stream ended before its canary (surepush.hello)"),
            Next::Error(e) => return p.failed(format!("reading the stream failed: {e}")),
        }
    }
    let deadline = Instant::now() + ctx.timeout;
    let wait = async {
        loop {
            match next(&mut events, deadline).await {
                Next::Event(e) if !e.event.starts_with("surepush.") => return Ok(Instant::now()),
                Next::Event(_) => {}
                Next::Timeout => return Err(format!(
                    "the canary came, but the test event did not within {}: the stream stalls after its start (a proxy releasing data in blocks?)",
                    secs(ctx.timeout)
                )),
                Next::End => return Err("the stream ended without the test event".to_string()),
                Next::Error(e) => return Err(format!("reading the stream failed: {e}")),
            }
        }
    };
    let (published, waited) = ctx.with_publish(&topic, publish, wait).await;
    p.settle(
        published,
        waited,
        "the canary came while the stream stayed open (no test event: cannot publish)",
    )
}

/// SSE, `mode=close`: the response ends after the batch with the test event, so a
/// buffering proxy must hand it over.
pub async fn sse_close(ctx: &Ctx, publish: bool) -> Probe {
    let mut p = Probe::default();
    let topic = ctx.topic("close");
    // Without an event the response ends at this timeout: keep it short then.
    let server_timeout = if publish {
        ctx.timeout.as_secs().saturating_sub(1).max(1)
    } else {
        1
    };
    let q = [
        ("topic", topic.clone()),
        ("since", ctx.cursor.clone()),
        ("mode", "close".to_string()),
        ("timeout", server_timeout.to_string()),
    ];
    let t0 = Instant::now();
    let mut headers_at = None;
    let mut canary: Option<(Instant, String)> = None;
    let wait = async {
        let mut events = ctx.open_sse(&q, t0).await?;
        headers_at = Some(Instant::now());
        let deadline = t0 + ctx.timeout * 2;
        loop {
            match next(&mut events, deadline).await {
                Next::Event(e) if e.event == "surepush.hello" => {
                    canary = Some((Instant::now(), e.data));
                }
                Next::Event(e) if !e.event.starts_with("surepush.") => return Ok(Instant::now()),
                Next::Event(_) => {}
                Next::Timeout if canary.is_none() => {
                    return Err(format!(
                        "nothing arrived within {}, not even when the response should have ended",
                        secs(ctx.timeout * 2)
                    ))
                }
                Next::Timeout => {
                    return Err("the canary came but the test event did not".to_string())
                }
                Next::End if canary.is_none() => {
                    return Err("the response ended without its canary".to_string())
                }
                Next::End if publish => {
                    return Err("the response ended without the test event".to_string())
                }
                Next::End => return Err(String::new()),
                Next::Error(e) => return Err(format!("reading the response failed: {e}")),
            }
        }
    };
    let (published, waited) = ctx.with_publish(&topic, publish, wait).await;
    p.headers_ms = headers_at.map(|at| ms(at - t0));
    if let Some((at, data)) = &canary {
        p.canary_ms = Some(ms(*at - t0));
        p.hello(data);
    }
    if !publish {
        // Only the canary and the end of the response can be judged.
        return match (waited, &canary) {
            (_, Some(_)) => {
                p.status = Outcome::Ok;
                p.detail =
                    "the response with the canary came through (no test event: cannot publish)"
                        .into();
                p
            }
            (Some(Err(e)), None) => p.failed(e),
            (_, None) => p.failed("the canary never arrived"),
        };
    }
    p.settle(published, waited, "")
}

/// Long polling: an immediate poll (`timeout=0`) must answer, then a poll waiting for
/// the test event must return it.
pub async fn longpoll(ctx: &Ctx, publish: bool) -> Probe {
    let mut p = Probe::default();
    let topic = ctx.topic("longpoll");
    let poll = |timeout: u64| {
        let q = [
            ("topic", topic.clone()),
            ("since", ctx.cursor.clone()),
            ("timeout", timeout.to_string()),
        ];
        let req = ctx.get("/v1/poll", &q).timeout(ctx.timeout);
        async move {
            let resp = req
                .send()
                .await
                .map_err(|e| format!("the poll failed: {}", error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(refusal(resp).await);
            }
            let v: Value = resp
                .json()
                .await
                .map_err(|e| format!("the poll's answer is not surepush JSON: {e}"))?;
            match v["events"].as_array() {
                Some(events) => Ok(events.len()),
                None => Err("the poll's answer has no events list".to_string()),
            }
        }
    };
    let t0 = Instant::now();
    match poll(0).await {
        Ok(_) => p.canary_ms = Some(ms(t0.elapsed())),
        Err(e) => return p.failed(e),
    }
    let wait_secs = ctx.timeout.as_secs().saturating_sub(1).max(1);
    let wait = async {
        match poll(wait_secs).await {
            Ok(n) if n > 0 => Ok(Instant::now()),
            Ok(_) => Err(format!(
                "the poll ended after {wait_secs} s without the test event"
            )),
            Err(e) => Err(e),
        }
    };
    let (published, waited) = ctx.with_publish(&topic, publish, wait).await;
    p.settle(
        published,
        waited,
        "an immediate poll was answered (no test event: cannot publish)",
    )
}
