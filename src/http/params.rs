//! The subscription query shared by the three transports.

use actix_web::HttpRequest;

use crate::config::PushConfig;
use crate::error::ApiError;
use crate::model::{Pattern, Since};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseMode {
    Stream,
    Close,
}

/// A `timeout` above this is a client bug, answered 400.
const ABSURD_TIMEOUT_SECS: u64 = 3600;

#[derive(Debug)]
pub struct SubscribeParams {
    pub patterns: Vec<Pattern>,
    pub since: Since,
    /// Seconds; validated against the configured maximum.
    pub timeout: Option<u64>,
    pub limit: usize,
    pub mode: Option<SseMode>,
    /// Why the client fell back to this transport (reported by surepush.js).
    pub fallback: Option<String>,
    /// SSE: send events without their `event:` line, so EventSource hands every type
    /// to `onmessage` (the type is in the JSON).
    pub untyped: bool,
}

/// Parses `topic` (repeatable), `since` / `lastEventId` / `Last-Event-ID`, `timeout`,
/// `limit`, `mode`, `fallback`. Unknown parameters are ignored (cache busters, tokens).
pub fn parse(req: &HttpRequest, cfg: &PushConfig) -> Result<SubscribeParams, ApiError> {
    let mut topics = Vec::new();
    let mut since_query = None;
    let mut last_event_id_query = None;
    let mut timeout = None;
    let mut limit = None;
    let mut mode = None;
    let mut fallback = None;
    let mut untyped = false;
    for (k, v) in form_urlencoded::parse(req.query_string().as_bytes()) {
        match k.as_ref() {
            "topic" => {
                if topics.len() >= cfg.max_topics_per_subscription {
                    return Err(ApiError::bad_request(
                        "too_many_topics",
                        format!(
                            "at most {} topic parameters per subscription",
                            cfg.max_topics_per_subscription
                        ),
                    ));
                }
                let p = Pattern::parse(&v).map_err(|e| {
                    ApiError::bad_request("invalid_topic", format!("topic parameter: {e}"))
                })?;
                topics.push(p);
            }
            "since" => since_query = Some(v.into_owned()),
            "lastEventId" => last_event_id_query = Some(v.into_owned()),
            "timeout" => {
                let t: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_timeout",
                        format!("timeout must be a whole number of seconds, got {v:?}"),
                    )
                })?;
                if t > ABSURD_TIMEOUT_SECS {
                    return Err(ApiError::bad_request(
                        "invalid_timeout",
                        format!(
                            "timeout {t} is over an hour; the server waits at most {} seconds",
                            cfg.poll_timeout_max_secs
                        ),
                    ));
                }
                // Within reason, a longer wait than configured is shortened, not refused:
                // clients keep working when an operator lowers the maximum.
                timeout = Some(t.min(cfg.poll_timeout_max_secs));
            }
            "limit" => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_limit",
                        format!("limit must be a whole number, got {v:?}"),
                    )
                })?;
                if n == 0 || n > cfg.poll_limit_max {
                    return Err(ApiError::bad_request(
                        "invalid_limit",
                        format!("limit must be 1..={}, got {n}", cfg.poll_limit_max),
                    ));
                }
                limit = Some(n);
            }
            "mode" => {
                mode = Some(match v.as_ref() {
                    "stream" => SseMode::Stream,
                    "close" => SseMode::Close,
                    other => {
                        return Err(ApiError::bad_request(
                            "invalid_mode",
                            format!("mode must be \"stream\" or \"close\", got {other:?}"),
                        ))
                    }
                })
            }
            "untyped" => untyped = matches!(v.as_ref(), "1" | "true"),
            "fallback" => fallback = fallback_reason(&v),
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "give at least one topic parameter, e.g. ?topic=users/42",
        ));
    }
    // EventSource reconnects send Last-Event-ID; it wins over the URL's original cursor.
    let header = req
        .headers()
        .get("Last-Event-ID")
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request("invalid_since", "Last-Event-ID header is not valid text")
            })
        })
        .transpose()?;
    let raw = header
        .or(last_event_id_query)
        .or(since_query)
        .unwrap_or_default();
    let since = Since::parse(&raw)
        .map_err(|e| ApiError::bad_request("invalid_since", format!("since: {e}")))?;
    Ok(SubscribeParams {
        patterns: topics,
        since,
        timeout,
        limit: limit.unwrap_or(cfg.poll_limit_default),
        mode,
        fallback,
        untyped,
    })
}

/// Fallback reasons the served client reports (`static/surepush.js`: `_stepDown`,
/// `_connect`, the remembered fallback). They become metric labels, so the set is
/// closed: anything else counts as `other`, and a client cannot grow `/metrics`.
pub const FALLBACK_REASONS: &[&str] = &[
    "no_eventsource",
    "forced",
    "remembered",
    "http10",
    "server_close",
    "sse_canary",
    "sse_late",
    "sse_bunched",
    "sse_error",
    "sse_stall",
    "close_canary",
    "close_error",
    "close_stall",
];

/// The label a `fallback=` value is counted under; None for an empty one.
pub fn fallback_reason(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let known = FALLBACK_REASONS.iter().find(|r| **r == raw);
    Some(known.copied().unwrap_or("other").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    /// Every reason the served client can send is counted under its own name: the
    /// string literals on the client's lines that set a reason or step down.
    #[test]
    fn the_client_reasons_are_all_known() {
        let js = include_str!("../../static/surepush.js");
        let mut found = Vec::new();
        for line in js.lines() {
            if !(line.contains("_stepDown(")
                || line.contains("reason = ")
                || line.contains("reason: "))
            {
                continue;
            }
            for (i, lit) in line.split('\'').enumerate() {
                let ident = !lit.is_empty()
                    && lit
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if i % 2 == 1 && ident {
                    found.push(lit.to_string());
                }
            }
        }
        assert!(found.len() >= 12, "{found:?}");
        for r in &found {
            assert!(
                FALLBACK_REASONS.contains(&r.as_str()),
                "{r} is not in FALLBACK_REASONS"
            );
            assert_eq!(fallback_reason(r).as_deref(), Some(r.as_str()));
        }
        assert_eq!(fallback_reason("junk\u{7}").as_deref(), Some("other"));
        assert_eq!(fallback_reason(""), None);
    }

    fn run(uri: &str) -> Result<SubscribeParams, &'static str> {
        parse(
            &TestRequest::with_uri(uri).to_http_request(),
            &PushConfig::default(),
        )
        .map_err(|e| e.code())
    }

    #[test]
    fn parses_and_rejects() {
        let p = run("/v1/poll?topic=a&topic=b/*&since=5-0000000a&timeout=3&limit=7&mode=close&_=1")
            .unwrap();
        assert_eq!(p.patterns.len(), 2);
        assert_eq!(p.timeout, Some(3));
        assert_eq!(p.limit, 7);
        assert_eq!(p.mode, Some(SseMode::Close));
        assert!(matches!(p.since, Since::Id(_)));
        assert_eq!(run("/x").unwrap_err(), "missing_topic");
        assert_eq!(run("/x?topic=a%20b").unwrap_err(), "invalid_topic");
        assert_eq!(run("/x?topic=a&since=zz").unwrap_err(), "invalid_since");
        assert_eq!(run("/x?topic=a&timeout=-1").unwrap_err(), "invalid_timeout");
        assert_eq!(
            run("/x?topic=a&timeout=99999").unwrap_err(),
            "invalid_timeout"
        );
        assert_eq!(run("/x?topic=a&limit=0").unwrap_err(), "invalid_limit");
        assert_eq!(run("/x?topic=a&mode=fast").unwrap_err(), "invalid_mode");
        let many: String = (0..33).map(|i| format!("topic=t{i}&")).collect();
        assert_eq!(run(&format!("/x?{many}")).unwrap_err(), "too_many_topics");
    }

    #[test]
    fn header_beats_query() {
        let req = TestRequest::with_uri("/x?topic=a&since=1&lastEventId=2")
            .insert_header(("Last-Event-ID", "3"))
            .to_http_request();
        let p = parse(&req, &PushConfig::default()).unwrap();
        assert_eq!(p.since, Since::Seq(3));
        let p = run("/x?topic=a&since=1&lastEventId=2").unwrap();
        assert_eq!(p.since, Since::Seq(2));
    }
}
