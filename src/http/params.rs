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
            "fallback" => {
                let reason: String = v
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .take(32)
                    .collect();
                if !reason.is_empty() {
                    fallback = Some(reason);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

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
