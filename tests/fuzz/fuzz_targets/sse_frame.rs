//! The SSE encoder: every accepted event, stored and read back, becomes exactly one frame
//! of three lines (`id:`, `event:`, `data:`) whose JSON is the event; stored bytes that
//! are not a record never panic the decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use surepush::config::LimitsConfig;
use surepush::model::EventId;
use surepush::store::record::{decode_record, encode_record, event_json};

fuzz_target!(|input: &[u8]| {
    if input.len() < 12 {
        return;
    }
    let seq = u64::from_le_bytes(input[..8].try_into().unwrap_or_default());
    let epoch = u32::from_le_bytes(input[8..12].try_into().unwrap_or_default());
    let body = &input[12..];
    let _ = decode_record(seq, epoch, body);
    let Ok(events) = surepush::http::parse_publish(body, &LimitsConfig::default()) else {
        return;
    };
    let id = EventId { seq, epoch };
    let time_ms = seq % (1 << 45);
    for e in events {
        let topic = e.topic.as_str();
        let json = event_json(id, topic, &e.kind, &e.data_json, time_ms);
        let record = encode_record(time_ms, topic, &e.kind, &json);
        let enc = decode_record(seq, epoch, &record).expect("our own record decodes");
        assert_eq!((enc.seq, enc.time_ms, &*enc.topic), (seq, time_ms, topic));
        let frame = std::str::from_utf8(&enc.sse).expect("frames are UTF-8");
        assert_eq!(
            frame,
            format!("id: {id}\nevent: {}\ndata: {json}\n\n", e.kind)
        );
        assert_eq!(
            frame.matches('\n').count(),
            4,
            "one line per field: {frame:?}"
        );
        assert!(!frame.contains('\r'), "{frame:?}");
        let (id_part, data_part) = enc.untyped_parts();
        assert_eq!(
            [&id_part[..], &data_part[..]].concat(),
            format!("id: {id}\ndata: {json}\n\n").into_bytes()
        );
        let v: Value = serde_json::from_slice(&enc.json()).expect("the data line is JSON");
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["topic"], topic);
        assert_eq!(v["type"], e.kind.as_str());
        let data: Value = serde_json::from_str(&e.data_json).expect("data is JSON");
        assert_eq!(v["data"], data);
    }
});
