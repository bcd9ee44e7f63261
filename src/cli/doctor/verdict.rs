//! The plain-words conclusion about delivery, and each transport's line in the report.

use super::probe::{Outcome, Probe};
use super::remote::{Facts, SERVER};
use super::{human_ms, Report, Status};

fn timings(p: &Probe, canary_word: &str) -> String {
    let mut parts = Vec::new();
    if let Some(c) = p.canary_ms {
        parts.push(format!("{canary_word} in {}", human_ms(c)));
    }
    if let Some(e) = p.event_ms {
        parts.push(format!("event in {}", human_ms(e)));
    }
    parts.join(", ")
}

/// One transport's line. A transport that fails while another works is a warning:
/// clients on this path still get their events.
pub fn report_probe(name: &'static str, p: &Probe, any_ok: bool, report: &mut Report) {
    let canary_word = if name == "longpoll" {
        "first answer"
    } else {
        "canary"
    };
    let t = timings(p, canary_word);
    let (status, text) = match p.status {
        Outcome::Ok if p.detail.is_empty() => (Status::Ok, t),
        Outcome::Ok => (Status::Ok, format!("{t}; {}", p.detail)),
        Outcome::Buffered => (Status::Warn, format!("buffered: {}", p.detail)),
        Outcome::Failed if t.is_empty() => (Status::Fail, p.detail.clone()),
        Outcome::Failed => (Status::Fail, format!("{t}; {}", p.detail)),
        Outcome::Skipped => (Status::Skip, p.detail.clone()),
    };
    let status = if status == Status::Fail && any_ok {
        Status::Warn
    } else {
        status
    };
    report.add(SERVER, name, status, text);
}

/// A streamed event this much later than its publish answer was held on the way (on
/// loopback or a LAN it takes a few milliseconds).
const HELD_WRITES_MS: f64 = 150.0;

/// How long after the publish was answered (the event durable) the stream delivered it.
fn stream_lag_ms(stream: &Probe) -> Option<f64> {
    if stream.status != Outcome::Ok {
        return None;
    }
    Some(stream.event_ms? - stream.publish_ms?)
}

/// The plain-words conclusion about delivery, and the final status of each transport.
pub fn verdict(
    stream: &Probe,
    close: &Probe,
    longpoll: &Probe,
    facts: &Facts,
    report: &mut Report,
) {
    let event = |p: &Probe| match p.event_ms {
        Some(ms) => format!("event in {}", human_ms(ms)),
        None => format!("canary in {}", human_ms(p.canary_ms.unwrap_or_default())),
    };
    let ok = |p: &Probe| p.status == Outcome::Ok;
    let v = &mut report.verdict;
    if ok(stream) {
        if stream.server_mode.as_deref() == Some("close") {
            v.push(format!(
                "Events arrive, but the server saw HTTP/{} and answered in SSE close mode: something on this path speaks HTTP/1.0. surepush clients reconnect after each batch, which works ({}).",
                stream.server_http.as_deref().unwrap_or("1.0"),
                event(stream)
            ));
        } else {
            v.push(format!(
                "SSE streaming works through this network path ({}).",
                event(stream)
            ));
        }
    } else {
        let problem = match stream.status {
            Outcome::Buffered => "A proxy on this path buffers SSE streams: events arrive only when the response ends.".to_string(),
            _ => format!("SSE streaming does not work through this path: {}.", stream.detail),
        };
        let fallback = if ok(close) {
            format!(
                "surepush clients will fall back to SSE close mode, which worked ({}).",
                event(close)
            )
        } else if ok(longpoll) {
            format!("SSE close mode failed too ({}); surepush clients will fall back to long polling, which worked ({}).", close.detail, event(longpoll))
        } else {
            format!("SSE close mode ({}) and long polling ({}) failed too: no transport delivers events here.", close.detail, longpoll.detail)
        };
        v.push(format!("{problem} {fallback}"));
    }
    if ok(close) && !ok(stream) && ok(longpoll) {
        v.push(format!("Long polling works too ({}).", event(longpoll)));
    }
    if ok(stream) && (!ok(close) || !ok(longpoll)) {
        let broken: Vec<&str> = [("SSE close mode", close), ("long polling", longpoll)]
            .iter()
            .filter(|(_, p)| !ok(p))
            .map(|(n, _)| *n)
            .collect();
        v.push(format!(
            "The fallbacks failed ({}): clients behind a buffering proxy would get nothing here.",
            broken.join(", ")
        ));
    }
    if let Some(lag) = stream_lag_ms(stream).filter(|lag| *lag >= HELD_WRITES_MS) {
        v.push(format!(
            "Streamed events arrive about {} after they are stored: something on this path holds small writes back. HAProxy does so by default (about 200 ms per event); `option http-no-delay` in its frontend or backend for this server removes it.",
            human_ms(lag)
        ));
    }
    if let (Some(client), Some(server)) = (&facts.http_version, &facts.server_http_version) {
        if client != server {
            v.push(format!(
                "This machine spoke HTTP/{client}, the server saw HTTP/{server}: something between them (a proxy or load balancer) terminates the connection."
            ));
        }
    }
}
