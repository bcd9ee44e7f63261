//! `POST /v1/publish`: one event or a batch, all-or-nothing, acknowledged once durable.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::read_limited;
use super::resource;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::model::{is_reserved_topic, validate_type, Topic, RESERVED_ROOT};
use crate::server::AppState;
use crate::store::record::minify_json;
use crate::store::NewEvent;

pub const DEFAULT_TYPE: &str = "message";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/publish").route(web::post().to(publish)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    topic: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// Record who gets it and who acknowledges it.
    #[serde(default)]
    receipt: bool,
}

async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = super::auth::caller(&req, &st)?;
    let body = read_limited(&req, payload, st.config.limits.max_body_bytes).await?;
    let events = parse_publish(&body, &st.config.limits)?;
    st.auth
        .authorize_publish(who.as_ref(), events.iter().map(|e| &e.topic))?;
    let subject = match (&who, super::client_ip::client_ip(&req, &st)) {
        (Some(w), _) => w.sub.clone(),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "anonymous".to_string(),
    };
    st.publish_rate
        .take(&subject, events.len() as u64, std::time::Instant::now())
        .map_err(|retry_after_secs| ApiError::TooMany {
            code: "publish_rate_limited",
            message: format!(
                "{subject} is over the publish rate of {}/s; retry after {retry_after_secs} s",
                st.config.limits.publish_rate_per_sec
            ),
            retry_after_secs,
        })?;
    let ids = st.log.publish(events).await?;
    let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "ids": ids })))
}

fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::unprocessable("invalid_event", format!("invalid event: {e}")),
        _ => ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")),
    }
}

/// Parses and validates a publish body; nothing is written unless all of it is valid.
pub fn parse_publish(body: &[u8], limits: &LimitsConfig) -> Result<Vec<NewEvent>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let items: Vec<Item> = match first {
        Some(b'[') => serde_json::from_slice(body).map_err(json_error)?,
        Some(b'{') => vec![serde_json::from_slice(body).map_err(json_error)?],
        Some(_) => {
            // Still report a syntax error precisely when it is one.
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(json_error)?;
            return Err(ApiError::unprocessable(
                "invalid_event",
                "body must be an event object or an array of event objects",
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "invalid_json",
                "request body is empty",
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_batch",
            "the batch has no events",
        ));
    }
    if items.len() > limits.max_batch_len {
        return Err(ApiError::too_large(
            "batch_too_large",
            format!(
                "the batch has {} events; the limit is {}",
                items.len(),
                limits.max_batch_len
            ),
        ));
    }
    let many = items.len() > 1;
    let at = |i: usize| {
        if many {
            format!("event {i}: ")
        } else {
            String::new()
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let topic = Topic::parse(&item.topic)
            .map_err(|e| ApiError::unprocessable("invalid_topic", format!("{}{e}", at(i))))?;
        if is_reserved_topic(topic.as_str()) {
            return Err(ApiError::unprocessable(
                "reserved_topic",
                format!(
                    "{}topic {topic} is reserved: topics under {RESERVED_ROOT}* are the server's own",
                    at(i)
                ),
            ));
        }
        let kind = item.kind.unwrap_or_else(|| DEFAULT_TYPE.to_string());
        validate_type(&kind)
            .map_err(|e| ApiError::unprocessable("invalid_type", format!("{}{e}", at(i))))?;
        let data_json = match item.data {
            Some(raw) => minify_json(raw.get()),
            None => "null".to_string(),
        };
        crate::json_check::check(&data_json)
            .map_err(|e| ApiError::unreadable_json(e, &format!("{}data", at(i))))?;
        if data_json.len() > limits.max_event_data_bytes {
            return Err(ApiError::too_large(
                "data_too_large",
                format!(
                    "{}data is {} bytes; the limit is {}",
                    at(i),
                    data_json.len(),
                    limits.max_event_data_bytes
                ),
            ));
        }
        out.push(NewEvent {
            topic,
            kind,
            data_json,
            receipt: item.receipt,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<NewEvent>, ApiError> {
        parse_publish(s.as_bytes(), &LimitsConfig::default())
    }

    fn code(s: &str) -> &'static str {
        parse(s).err().map(|e| e.code()).unwrap_or("ok")
    }

    #[test]
    fn single_and_batch() {
        let one = parse(r#"{"topic":"a","type":"t","data":{"x": [1, 2]}}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].data_json, r#"{"x":[1,2]}"#);
        let many = parse(r#"[{"topic":"a"},{"topic":"b/c","data":"s"}]"#).unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].kind, "message");
        assert_eq!(many[0].data_json, "null");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code(""), "invalid_json");
        assert_eq!(code("42"), "invalid_event");
        assert_eq!(code("[]"), "empty_batch");
        assert_eq!(code(r#"{"type":"t"}"#), "invalid_event");
        assert_eq!(code(r#"{"topic":"a","tpye":"t"}"#), "invalid_event");
        assert_eq!(code(r#"{"topic":"a b"}"#), "invalid_topic");
        assert_eq!(code(r#"{"topic":"a","type":"x y"}"#), "invalid_type");
        let err = parse(r#"[{"topic":"a"},{"topic":"bad//t"}]"#).unwrap_err();
        assert!(err.to_string().starts_with("event 1: "), "{err}");
        let limits = LimitsConfig {
            max_event_data_bytes: 10,
            max_batch_len: 2,
            ..LimitsConfig::default()
        };
        let e = parse_publish(br#"{"topic":"a","data":"0123456789abc"}"#, &limits).unwrap_err();
        assert_eq!(e.code(), "data_too_large");
        let e =
            parse_publish(br#"[{"topic":"a"},{"topic":"a"},{"topic":"a"}]"#, &limits).unwrap_err();
        assert_eq!(e.code(), "batch_too_large");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn cases() -> u32 {
            crate::test_support::proptest_cases(3000)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases()))]

            /// Arbitrary bytes: a clear error or events, never a panic.
            #[test]
            fn fuzz_publish_body_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_publish(&body, &LimitsConfig::default());
            }

            /// Arbitrary JSON values shaped like events.
            #[test]
            fn fuzz_publish_body_json(topic in "\\PC{0,40}", kind in "\\PC{0,20}", n in any::<i64>(), s in "\\PC{0,60}", many in any::<bool>()) {
                let ev = serde_json::json!({"topic": topic, "type": kind, "data": {"n": n, "s": s}});
                let body = if many { serde_json::json!([ev.clone(), ev]) } else { ev };
                let text = serde_json::to_string_pretty(&body).unwrap();
                match parse_publish(text.as_bytes(), &LimitsConfig::default()) {
                    Ok(events) => {
                        for e in events {
                            // the stored data is the same JSON, on one line
                            prop_assert!(!e.data_json.contains('\n'));
                            let v: serde_json::Value = serde_json::from_str(&e.data_json).unwrap();
                            prop_assert_eq!(&v["n"], &serde_json::json!(n));
                            prop_assert_eq!(&v["s"], &serde_json::json!(s.clone()));
                        }
                    }
                    Err(e) => prop_assert!(matches!(e.code(), "invalid_topic" | "invalid_type")),
                }
            }
        }
    }
}
