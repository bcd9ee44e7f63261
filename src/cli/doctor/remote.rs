//! Checks through a URL: reachability, TLS as this client sees it, HTTP version, the
//! server's clock, then the delivery probes and the verdict.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::probe::{self, Ctx, Outcome, Probe};
use super::{der, error_chain, human_ms, tls_peek, verdict, Report, Status};
use crate::auth::{now_secs, Authenticator, Claims, Grants};
use crate::cli::args::DoctorArgs;
use crate::cli::client;
use crate::config::Config;

pub const SERVER: &str = "server";
/// Clock differences beyond these are a warning, a failure.
const CLOCK_WARN_MS: i64 = 5_000;
const CLOCK_FAIL_MS: i64 = 120_000;

/// The machine-readable part of the report about the server.
#[derive(Debug, Default, Serialize)]
pub struct Facts {
    pub reachable: bool,
    /// HTTP version this client negotiated ("1.1", "2").
    pub http_version: Option<String>,
    /// HTTP version the server saw (from the canary); differs when something in between
    /// terminates the connection.
    pub server_http_version: Option<String>,
    pub tls: Option<tls_peek::TlsFacts>,
    /// Server clock minus this machine's clock, from the `Date` header.
    pub clock_offset_ms: Option<i64>,
    /// Where the token came from: "token" (given), "minted" (local signing key), "none".
    pub auth: &'static str,
    /// Whether the test events could be published.
    pub publish: Option<bool>,
    pub transports: Option<Transports>,
}

#[derive(Debug, Serialize)]
pub struct Transports {
    pub sse_stream: Probe,
    pub sse_close: Probe,
    pub longpoll: Probe,
}

enum TokenSource {
    Given,
    Minted(String),
    None,
}

pub async fn run(url: &str, args: &DoctorArgs, config: Option<&Config>, report: &mut Report) {
    let timeout = Duration::from_secs(args.timeout);
    let mut facts = Facts {
        auth: "none",
        ..Facts::default()
    };
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => {
            report.add(
                SERVER,
                "url",
                Status::Fail,
                format!("{url:?} is not an http:// or https:// URL"),
            );
            report.verdict.push(format!(
                "{url:?} is not a server URL; give one like https://push.example.com:8443."
            ));
            report.remote = Some(facts);
            return;
        }
    };
    let http = match client::build(&args.client) {
        Ok(h) => h,
        Err(e) => {
            report.add(SERVER, "client", Status::Fail, format!("{e:#}"));
            report
                .verdict
                .push(format!("The checks could not start: {e:#}."));
            report.remote = Some(facts);
            return;
        }
    };
    let base = url.trim_end_matches('/').to_string();
    let reached = reach(&http, &base, &parsed, args, timeout, &mut facts, report).await;
    if reached {
        deliver(http, base, args, config, timeout, &mut facts, report).await;
    }
    report.remote = Some(facts);
}

/// GET /healthz, /readyz; TLS, HTTP version and clock. False when nothing useful answers.
async fn reach(
    http: &reqwest::Client,
    base: &str,
    url: &reqwest::Url,
    args: &DoctorArgs,
    timeout: Duration,
    facts: &mut Facts,
    report: &mut Report,
) -> bool {
    let tls_peek = (url.scheme() == "https").then(|| {
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        tokio::task::spawn_blocking(move || tls_peek::peek(&host, port, timeout))
    });
    let sent_at = SystemTime::now();
    let start = std::time::Instant::now();
    let resp = http
        .get(client::endpoint(base, "/healthz"))
        .timeout(timeout)
        .send()
        .await;
    let rtt = start.elapsed();
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let (status, why, verdict) = unreachable(&e, url, timeout, args);
            report.add(SERVER, "reachable", status, why);
            report.verdict.push(verdict);
            // The certificate can still be described when only trust failed.
            if let Some(peek) = tls_peek {
                if let Ok(Ok(t)) = peek.await {
                    tls_peek::describe(t, Some(false), facts, report);
                }
            }
            return false;
        }
    };
    facts.reachable = true;
    let version = match resp.version() {
        reqwest::Version::HTTP_2 => "2",
        reqwest::Version::HTTP_11 => "1.1",
        reqwest::Version::HTTP_10 => "1.0",
        reqwest::Version::HTTP_3 => "3",
        _ => "0.9",
    };
    facts.http_version = Some(version.to_string());
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(der::http_date);
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    if matches!(status.as_u16(), 502 | 504) {
        report.add(
            SERVER,
            "reachable",
            Status::Fail,
            format!("GET /healthz answered {status}: a proxy answers, surepush behind it does not"),
        );
        report.verdict.push(format!(
            "Nothing reaches the server: a proxy at {base} answered {status}, so it cannot reach surepush behind it (is the server running, and the proxy's upstream address right?)."
        ));
        return false;
    }
    if !status.is_success() || body["status"] != "ok" {
        report.add(
            SERVER,
            "reachable",
            Status::Fail,
            format!("GET /healthz answered {status}, not like surepush"),
        );
        report.verdict.push(format!(
            "Something answers at {base}, but it is not surepush (GET /healthz gave {status}): check the URL, or what a proxy on the way does with it."
        ));
        return false;
    }
    report.add(
        SERVER,
        "reachable",
        Status::Ok,
        format!(
            "GET /healthz answered in {} over HTTP/{version}",
            human_ms(rtt.as_secs_f64() * 1000.0)
        ),
    );
    if let Some(peek) = tls_peek {
        match peek.await {
            Ok(Ok(t)) => {
                tls_peek::describe(t, (!args.client.insecure).then_some(true), facts, report)
            }
            Ok(Err(e)) => {
                report.add(
                    SERVER,
                    "tls",
                    Status::Warn,
                    format!("could not inspect the certificate directly: {e}"),
                );
            }
            Err(_) => {}
        }
    } else {
        let host_is_local = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        report.add(
            SERVER,
            "tls",
            if host_is_local {
                Status::Skip
            } else {
                Status::Warn
            },
            "plain http:// URL: no TLS between this machine and the first hop; events and tokens cross the network readable",
        );
    }
    clock(date, sent_at, rtt, facts, report);
    ready(http, base, timeout, report).await;
    true
}

/// What a failed first request means, for people: (status, check message, verdict).
fn unreachable(
    e: &reqwest::Error,
    url: &reqwest::Url,
    timeout: Duration,
    args: &DoctorArgs,
) -> (Status, String, String) {
    let chain = error_chain(e);
    let lower = chain.to_ascii_lowercase();
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or_default();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        let why = format!("the TLS certificate is not trusted here: {chain}");
        let advice = if args.client.cacert.is_some() {
            "the --cacert given does not vouch for it"
        } else {
            "pass --cacert FILE (for a self-signed install, its tls/cert.pem) or --insecure to test anyway"
        };
        return (
            Status::Fail,
            why,
            format!("The server answers, but this machine does not trust its TLS certificate: {advice}."),
        );
    }
    let reason = if lower.contains("connection refused") {
        format!("the connection to {host}:{port} was refused: nothing listens there, or a firewall rejects it")
    } else if lower.contains("dns error")
        || lower.contains("failed to lookup")
        || lower.contains("name or service not known")
    {
        format!("the name {host} does not resolve (DNS)")
    } else if e.is_timeout() {
        format!("no answer from {host}:{port} within {} s: a firewall may drop the packets, or the host is down", timeout.as_secs())
    } else if lower.contains("reset") {
        "the connection was reset: a firewall or proxy refuses this traffic".to_string()
    } else if url.scheme() == "https"
        && (lower.contains("corrupt message") || lower.contains("invalidcontenttype"))
    {
        format!("{host}:{port} does not speak TLS: try http://")
    } else if url.scheme() == "http" && lower.contains("parse") {
        format!("{host}:{port} does not speak plain HTTP: try https://")
    } else {
        chain.clone()
    };
    (
        Status::Fail,
        format!("{reason} ({chain})"),
        format!("Nothing reaches the server: {reason}."),
    )
}

fn clock(
    date: Option<i64>,
    sent_at: SystemTime,
    rtt: Duration,
    facts: &mut Facts,
    report: &mut Report,
) {
    let Some(server_secs) = date else {
        report.add(
            SERVER,
            "clock",
            Status::Skip,
            "the answer had no Date header to compare clocks with",
        );
        return;
    };
    let mid = sent_at + rtt / 2;
    let local_ms = mid
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // Date has whole seconds: its middle is the best guess.
    let offset = server_secs * 1000 + 500 - local_ms;
    facts.clock_offset_ms = Some(offset);
    let slack = rtt.as_millis() as i64;
    let abs = offset.abs();
    let (status, text) = if abs > CLOCK_FAIL_MS + slack {
        (Status::Fail, format!("the server's clock and this machine's differ by {} s: one of them is wrong, and tokens and certificates are judged by them; fix the time (NTP)", abs / 1000))
    } else if abs > CLOCK_WARN_MS + slack {
        (
            Status::Warn,
            format!(
                "the server's clock and this machine's differ by {} s; check NTP on both",
                abs / 1000
            ),
        )
    } else {
        (
            Status::Ok,
            "the server's clock agrees with this machine's (within a second)".to_string(),
        )
    };
    report.add(SERVER, "clock", status, text);
}

async fn ready(http: &reqwest::Client, base: &str, timeout: Duration, report: &mut Report) {
    match http
        .get(client::endpoint(base, "/readyz"))
        .timeout(timeout)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            report.add(
                SERVER,
                "ready",
                Status::Ok,
                "GET /readyz: storage accepts and flushes writes",
            );
        }
        Ok(r) => {
            let why = probe::refusal(r).await;
            report.add(SERVER, "ready", Status::Fail, format!("GET /readyz: {why}"));
            report.verdict.push(format!(
                "The server runs but its storage is not ready ({why}): publishing fails until it is."
            ));
        }
        Err(e) => {
            report.add(
                SERVER,
                "ready",
                Status::Warn,
                format!("GET /readyz failed: {}", error_chain(&e)),
            );
        }
    }
}

/// The token for the probes: --token, else one minted with the local signing key.
fn token(
    args: &DoctorArgs,
    config: Option<&Config>,
    prefix: &str,
) -> (Option<String>, TokenSource) {
    if let Some(t) = &args.client.token {
        return (Some(t.clone()), TokenSource::Given);
    }
    let Some(config) = config else {
        return (None, TokenSource::None);
    };
    let key = config.signing_key_path();
    if config.auth.algorithm != "HS256" || !key.exists() {
        return (None, TokenSource::None);
    }
    let mut c = config.clone();
    c.auth.enabled = true;
    let Ok(auth) = Authenticator::from_config(&c) else {
        return (None, TokenSource::None);
    };
    let now = now_secs();
    let pattern = format!("{prefix}/**");
    let claims = Claims {
        sub: "surepush-doctor".into(),
        exp: now + 600,
        nbf: None,
        iat: Some(now),
        surepush: Grants {
            subscribe: vec![pattern.clone()],
            publish: vec![pattern],
            ..Grants::default()
        },
    };
    match auth.mint(&claims) {
        Ok(t) => (Some(t), TokenSource::Minted(key.display().to_string())),
        Err(_) => (None, TokenSource::None),
    }
}

const TOKEN_HINT: &str = "pass --token with a token that may publish and subscribe surepush-doctor/** (surepush token --sub doctor --publish 'surepush-doctor/**' --subscribe 'surepush-doctor/**' --ttl 10m), or run doctor with the server's --config";

async fn deliver(
    http: reqwest::Client,
    base: String,
    args: &DoctorArgs,
    config: Option<&Config>,
    timeout: Duration,
    facts: &mut Facts,
    report: &mut Report,
) {
    let nonce: String = (0..8)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let prefix = format!("surepush-doctor/{nonce}");
    let (token, source) = token(args, config, &prefix);
    facts.auth = match source {
        TokenSource::Given => "token",
        TokenSource::Minted(_) => "minted",
        TokenSource::None => "none",
    };
    let mut ctx = Ctx {
        http,
        base,
        token,
        timeout,
        prefix,
        cursor: String::new(),
    };
    // Subscribing: the head of the log, which is also where the probes start.
    let head = ctx
        .get("/v1/events", &[("topic", format!("{}/**", ctx.prefix))])
        .timeout(timeout)
        .send()
        .await;
    let resp = match head {
        Err(e) => {
            let why = error_chain(&e);
            report.add(
                SERVER,
                "subscribe",
                Status::Fail,
                format!("GET /v1/events failed: {why}"),
            );
            report.verdict.push(format!(
                "The server answers health checks but not subscriptions: {why}."
            ));
            return;
        }
        Ok(r) => r,
    };
    let code = resp.status().as_u16();
    if code == 401 || code == 403 {
        let why = probe::refusal(resp).await;
        let (status, what) = match (&source, code) {
            (TokenSource::Given, 401) => (Status::Fail, format!("the token given was refused ({why})")),
            (TokenSource::Given, _) => (Status::Warn, format!("the token given may not subscribe to surepush-doctor topics ({why})")),
            (TokenSource::Minted(key), _) => (Status::Warn, format!("a token minted with the local key {key} was refused ({why}): the server uses another key")),
            (TokenSource::None, _) => (Status::Warn, format!("the server requires a token and none is available ({why})")),
        };
        report.add(SERVER, "auth", status, what.clone());
        report.skipped.push(format!(
            "delivery (canary and test event on SSE stream, SSE close, long poll): {what}; {TOKEN_HINT}"
        ));
        report.verdict.push(format!(
            "The server is reachable, but delivery was not tested: {what}. To test it, {TOKEN_HINT}."
        ));
        return;
    }
    if !resp.status().is_success() {
        let why = probe::refusal(resp).await;
        report.add(
            SERVER,
            "subscribe",
            Status::Fail,
            format!("GET /v1/events: {why}"),
        );
        report
            .verdict
            .push(format!("The server refuses subscriptions: {why}."));
        return;
    }
    let body: Value = resp.json().await.unwrap_or_default();
    ctx.cursor = body["last_id"].as_str().unwrap_or("0").to_string();
    match &source {
        TokenSource::Given => report.add(SERVER, "auth", Status::Ok, "the token given is accepted"),
        TokenSource::Minted(key) => report.add(
            SERVER,
            "auth",
            Status::Ok,
            format!("using a 10-minute token minted with {key}"),
        ),
        TokenSource::None => report.add(SERVER, "auth", Status::Ok, "no token needed to subscribe"),
    };
    // Publishing: one event first, so each probe knows whether it can use one.
    let publish = match ctx.publish(&ctx.topic("check")).await {
        Ok(_) => {
            if matches!(source, TokenSource::None) {
                report.add(
                    SERVER,
                    "publish",
                    Status::Warn,
                    "anyone may publish without a token (auth.enabled = false on the server?)",
                );
            } else {
                report.add(SERVER, "publish", Status::Ok, "a test event was accepted");
            }
            true
        }
        Err(e) => {
            let refused = e.contains("401") || e.contains("403");
            report.add(
                SERVER,
                "publish",
                if refused { Status::Warn } else { Status::Fail },
                e.clone(),
            );
            if refused {
                report.skipped.push(format!(
                    "test events (only the canaries were measured): {e}; {TOKEN_HINT}"
                ));
            }
            false
        }
    };
    facts.publish = Some(publish);
    let stream = probe::sse_stream(&ctx, publish).await;
    let close = probe::sse_close(&ctx, publish).await;
    let longpoll = probe::longpoll(&ctx, publish).await;
    let any_ok = [&stream, &close, &longpoll]
        .iter()
        .any(|p| p.status == Outcome::Ok);
    for (name, p) in [
        ("sse_stream", &stream),
        ("sse_close", &close),
        ("longpoll", &longpoll),
    ] {
        verdict::report_probe(name, p, any_ok, report);
    }
    facts.server_http_version = stream
        .server_http
        .clone()
        .or_else(|| close.server_http.clone());
    verdict::verdict(&stream, &close, &longpoll, facts, report);
    facts.transports = Some(Transports {
        sse_stream: stream,
        sse_close: close,
        longpoll,
    });
}
