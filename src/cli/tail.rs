//! `surepush tail`: follows topics and prints each event's JSON on its own line,
//! resuming from the last id across disconnects (nothing lost, nothing repeated).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use super::args::{TailArgs, Transport};
use super::client;

struct Follower {
    args: TailArgs,
    http: reqwest::Client,
    last_id: String,
    printed: u64,
    deadline: Option<Instant>,
}

enum Flow {
    Continue,
    Stop,
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    for t in &args.topics {
        crate::model::Pattern::parse(t).with_context(|| format!("topic {t:?}"))?;
    }
    let http = client::build(&args.client)?;
    let mut f = Follower {
        last_id: args.since.clone().unwrap_or_default(),
        deadline: args
            .duration
            .map(|s| Instant::now() + Duration::from_secs(s)),
        http,
        printed: 0,
        args,
    };
    if f.last_id.is_empty() {
        // Without --since: take the current head as the cursor before following, so an
        // event published while the first connection is cut is not lost.
        f.last_id = f.head().await?;
    }
    let mut backoff = Duration::from_millis(250);
    loop {
        if f.finished() {
            return Ok(());
        }
        let attempt = match f.args.transport {
            Transport::Sse | Transport::Close => f.sse_once().await,
            Transport::Longpoll | Transport::Poll => f.poll_once().await,
        };
        match attempt {
            Ok(Flow::Stop) => return Ok(()),
            Ok(Flow::Continue) => backoff = Duration::from_millis(250),
            Err(e) => {
                eprintln!("surepush tail: {e:#}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Follower {
    fn finished(&self) -> bool {
        self.args.count.is_some_and(|c| self.printed >= c)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    async fn head(&self) -> anyhow::Result<String> {
        let q: Vec<(&'static str, String)> = self
            .args
            .topics
            .iter()
            .map(|t| ("topic", t.clone()))
            .collect();
        let req = self
            .http
            .get(client::url_with_query(&self.args.url, "/v1/events", &q))
            .timeout(Duration::from_secs(30));
        let resp = client::with_token(req, &self.args.client)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.args.url))?;
        let body: serde_json::Value = client::check(resp).await?.json().await?;
        Ok(body["last_id"].as_str().unwrap_or_default().to_string())
    }

    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q: Vec<(&'static str, String)> = self
            .args
            .topics
            .iter()
            .map(|t| ("topic", t.clone()))
            .collect();
        if !self.last_id.is_empty() {
            q.push(("since", self.last_id.clone()));
        }
        q
    }

    fn emit(&mut self, json: &str) -> Flow {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
        self.printed += 1;
        if self.finished() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600 * 24 * 365))
    }

    async fn sse_once(&mut self) -> anyhow::Result<Flow> {
        let mut q = self.query();
        if self.args.transport == Transport::Close {
            q.push(("mode", "close".into()));
        }
        let req = self
            .http
            .get(client::url_with_query(&self.args.url, "/v1/stream", &q))
            .header("Accept", "text/event-stream");
        let resp = client::with_token(req, &self.args.client)
            .send()
            .await
            .context("connecting")?;
        let resp = client::check(resp).await?;
        let mut events = resp.bytes_stream().eventsource();
        loop {
            let next = tokio::time::timeout(self.remaining(), events.next()).await;
            let ev = match next {
                Err(_) => return Ok(Flow::Stop),
                Ok(None) => return Ok(Flow::Continue),
                Ok(Some(ev)) => ev.context("reading the stream")?,
            };
            match ev.event.as_str() {
                "surepush.hello" => {
                    let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
                    if v["reset"] == true {
                        eprintln!("surepush tail: reset: events after {} are no longer retained; continuing", self.last_id);
                    }
                }
                "surepush.ping" => {}
                "surepush.shutdown" => return Ok(Flow::Continue),
                _ => {
                    if !ev.id.is_empty() {
                        self.last_id = ev.id.clone();
                    }
                    if let Flow::Stop = self.emit(&ev.data) {
                        return Ok(Flow::Stop);
                    }
                }
            }
        }
    }

    async fn poll_once(&mut self) -> anyhow::Result<Flow> {
        let long = self.args.transport == Transport::Longpoll;
        let mut q = self.query();
        let path = if long {
            let t = self.remaining().as_secs().clamp(0, 25);
            q.push(("timeout", t.to_string()));
            "/v1/poll"
        } else {
            "/v1/events"
        };
        let req = self
            .http
            .get(client::url_with_query(&self.args.url, path, &q))
            .timeout(Duration::from_secs(60));
        let resp = client::with_token(req, &self.args.client)
            .send()
            .await
            .context("polling")?;
        let body: serde_json::Value = client::check(resp).await?.json().await?;
        if body["reset"] == true {
            eprintln!(
                "surepush tail: reset: events after {} are no longer retained; continuing",
                self.last_id
            );
        }
        let events = body["events"].as_array().cloned().unwrap_or_default();
        for ev in &events {
            if let Some(id) = ev["id"].as_str() {
                self.last_id = id.to_string();
            }
            if let Flow::Stop = self.emit(&ev.to_string()) {
                return Ok(Flow::Stop);
            }
        }
        if let Some(id) = body["last_id"].as_str() {
            self.last_id = id.to_string();
        }
        if !long && events.is_empty() {
            tokio::time::sleep(Duration::from_secs(1).min(self.remaining())).await;
        }
        Ok(Flow::Continue)
    }
}
