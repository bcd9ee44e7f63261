//! The subscription query (`topic`, `since`, `lastEventId`, `Last-Event-ID`, `timeout`,
//! `limit`, `mode`, `fallback`, `untyped`) shared by SSE, long poll and poll: never a
//! panic, and what is accepted stays within the configured bounds.
#![no_main]

use actix_web::http::header::HeaderValue;
use actix_web::test::TestRequest;
use libfuzzer_sys::fuzz_target;
use surepush::config::PushConfig;
use surepush::http::params::{parse, FALLBACK_REASONS};
use surepush::model::Pattern;

/// Bytes as a query string: URI-safe bytes as they are, others percent-encoded (so the
/// parser sees every byte value after decoding).
fn as_query(bytes: &[u8]) -> String {
    let mut q = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~&=+,/:*".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    q
}

fuzz_target!(|input: &[u8]| {
    // the query, then (after a 0xFF) a Last-Event-ID header
    let (query, header) = match input.iter().position(|b| *b == 0xFF) {
        Some(i) => (&input[..i], Some(&input[i + 1..])),
        None => (input, None),
    };
    let query = as_query(query);
    // the HTTP layer refuses request lines this long before any handler (431)
    if query.len() > 60_000 {
        return;
    }
    let mut req = TestRequest::with_uri(&format!("/v1/stream?{query}"));
    if let Some(Ok(v)) = header.map(HeaderValue::from_bytes) {
        req = req.insert_header(("Last-Event-ID", v));
    }
    let req = req.to_http_request();
    let cfg = PushConfig::default();
    let Ok(p) = parse(&req, &cfg) else {
        return;
    };
    assert!(!p.patterns.is_empty() && p.patterns.len() <= cfg.max_topics_per_subscription);
    assert!(p.limit >= 1 && p.limit <= cfg.poll_limit_max);
    assert!(p.timeout.is_none_or(|t| t <= cfg.poll_timeout_max_secs));
    if let Some(reason) = &p.fallback {
        assert!(FALLBACK_REASONS.contains(&reason.as_str()) || reason == "other");
    }
    for pattern in &p.patterns {
        assert_eq!(Pattern::parse(&pattern.to_string()).as_ref(), Ok(pattern));
    }
});
