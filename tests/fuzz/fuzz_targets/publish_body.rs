//! `POST /v1/publish` bodies: never a panic, and what is accepted is what the server's
//! own clients can read back (JSON without raw line breaks, valid topics and types).
#![no_main]

use libfuzzer_sys::fuzz_target;
use surepush::config::LimitsConfig;
use surepush::model::{is_reserved_topic, validate_type, Topic};

fuzz_target!(|body: &[u8]| {
    let limits = LimitsConfig::default();
    let Ok(events) = surepush::http::parse_publish(body, &limits) else {
        return;
    };
    assert!(!events.is_empty() && events.len() <= limits.max_batch_len);
    for e in &events {
        let parsed = serde_json::from_str::<serde_json::Value>(&e.data_json);
        assert!(
            parsed.is_ok(),
            "accepted data is unreadable: {:?}",
            e.data_json
        );
        assert!(
            !e.data_json.contains(['\n', '\r']),
            "a raw line break would split the SSE data line: {:?}",
            e.data_json
        );
        assert!(e.data_json.len() <= limits.max_event_data_bytes.max(body.len()));
        assert_eq!(Topic::parse(e.topic.as_str()).as_ref(), Ok(&e.topic));
        assert!(!is_reserved_topic(e.topic.as_str()));
        assert!(validate_type(&e.kind).is_ok());
    }
});
