//! How an event is stored and how it goes on the wire.
//!
//! The event's JSON is built once, when the log accepts it, and stored as is. The SSE
//! frame wraps that JSON, so fan-out and replay hand out the same bytes to every
//! subscriber (`Bytes` clones are reference counts, not copies).

use bytes::{BufMut, Bytes, BytesMut};

use crate::model::EventId;

/// Record layout: version(1) time_ms(8) topic_len(2) topic type_len(2) type json
const RECORD_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("corrupt event record: {0}")]
pub struct CorruptRecord(pub &'static str);

/// An event as delivered: its SSE frame, of which the JSON is a slice.
#[derive(Debug)]
pub struct EncodedEvent {
    pub seq: u64,
    pub time_ms: u64,
    pub topic: Box<str>,
    /// `id: ..\nevent: ..\ndata: {json}\n\n`
    pub sse: Bytes,
    json_start: usize,
    json_end: usize,
}

impl EncodedEvent {
    /// The frame without its `event:` line (`id:` line, then `data:` line), as two
    /// slices of the same bytes: for clients that take every event on `message`.
    pub fn untyped_parts(&self) -> (Bytes, Bytes) {
        let id_end = self.sse[..self.json_start]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let data_start = self.json_start - b"data: ".len();
        (self.sse.slice(..id_end), self.sse.slice(data_start..))
    }

    /// The event as JSON: `{"id", "topic", "type", "data", "time"}`.
    pub fn json(&self) -> Bytes {
        self.sse.slice(self.json_start..self.json_end)
    }

    fn new(seq: u64, time_ms: u64, topic: &str, id: EventId, kind: &str, json: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(json.len() + kind.len() + 48);
        buf.put_slice(b"id: ");
        buf.put_slice(id.to_string().as_bytes());
        buf.put_slice(b"\nevent: ");
        buf.put_slice(kind.as_bytes());
        buf.put_slice(b"\ndata: ");
        let json_start = buf.len();
        buf.put_slice(json);
        let json_end = buf.len();
        buf.put_slice(b"\n\n");
        EncodedEvent {
            seq,
            time_ms,
            topic: topic.into(),
            sse: buf.freeze(),
            json_start,
            json_end,
        }
    }
}

/// The whole event as JSON text. `data_json` must be minified (no raw newlines).
pub fn event_json(id: EventId, topic: &str, kind: &str, data_json: &str, time_ms: u64) -> String {
    let time = rfc3339(time_ms);
    // topic and type are validated to a charset that needs no escaping
    format!(
        "{{\"id\":\"{id}\",\"topic\":\"{topic}\",\"type\":\"{kind}\",\"data\":{data_json},\"time\":\"{time}\"}}"
    )
}

/// The same with `"receipt":true`: the client acknowledges it once handed to the app.
pub fn event_json_with_receipt(
    id: EventId,
    topic: &str,
    kind: &str,
    data_json: &str,
    time_ms: u64,
) -> String {
    let mut json = event_json(id, topic, kind, data_json, time_ms);
    json.pop();
    json.push_str(",\"receipt\":true}");
    json
}

pub fn rfc3339(time_ms: u64) -> String {
    let nanos = i128::from(time_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

pub fn encode_record(time_ms: u64, topic: &str, kind: &str, json: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(13 + topic.len() + kind.len() + json.len());
    v.push(RECORD_VERSION);
    v.extend_from_slice(&time_ms.to_be_bytes());
    v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    v.extend_from_slice(topic.as_bytes());
    v.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    v.extend_from_slice(kind.as_bytes());
    v.extend_from_slice(json.as_bytes());
    v
}

/// The parts of a record needed without decoding the JSON.
pub struct RecordHead<'a> {
    pub time_ms: u64,
    pub topic: &'a str,
    pub kind: &'a str,
    pub json: &'a [u8],
}

pub fn decode_head(rec: &[u8]) -> Result<RecordHead<'_>, CorruptRecord> {
    if rec.first() != Some(&RECORD_VERSION) {
        return Err(CorruptRecord("unknown record version"));
    }
    let take = |at: usize, n: usize| rec.get(at..at + n).ok_or(CorruptRecord("truncated"));
    let time_ms = super::keys::be_u64(take(1, 8)?);
    let t = take(9, 2)?;
    let tlen = u16::from_be_bytes([t[0], t[1]]);
    let topic = std::str::from_utf8(take(11, tlen as usize)?)
        .map_err(|_| CorruptRecord("topic not UTF-8"))?;
    let at = 11 + tlen as usize;
    let k = take(at, 2)?;
    let klen = u16::from_be_bytes([k[0], k[1]]) as usize;
    let kind =
        std::str::from_utf8(take(at + 2, klen)?).map_err(|_| CorruptRecord("type not UTF-8"))?;
    Ok(RecordHead {
        time_ms,
        topic,
        kind,
        json: &rec[at + 2 + klen..],
    })
}

pub fn decode_record(seq: u64, epoch: u32, rec: &[u8]) -> Result<EncodedEvent, CorruptRecord> {
    let h = decode_head(rec)?;
    Ok(EncodedEvent::new(
        seq,
        h.time_ms,
        h.topic,
        EventId { seq, epoch },
        h.kind,
        h.json,
    ))
}

/// Removes insignificant whitespace from valid JSON text, leaving strings and numbers
/// byte for byte (so big integers keep their precision and no raw newline remains).
pub fn minify_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_frame() {
        let id = EventId { seq: 5, epoch: 1 };
        let json = event_json(id, "users/42", "job.completed", "{\"a\":1}", 0);
        assert_eq!(
            json,
            "{\"id\":\"5-00000001\",\"topic\":\"users/42\",\"type\":\"job.completed\",\"data\":{\"a\":1},\"time\":\"1970-01-01T00:00:00Z\"}"
        );
        let rec = encode_record(1234, "users/42", "job.completed", &json);
        let ev = decode_record(5, 1, &rec).unwrap();
        assert_eq!(ev.time_ms, 1234);
        assert_eq!(&*ev.topic, "users/42");
        assert_eq!(ev.json(), Bytes::from(json.clone()));
        assert_eq!(
            ev.sse,
            Bytes::from(format!(
                "id: 5-00000001\nevent: job.completed\ndata: {json}\n\n"
            ))
        );
        let (id, data) = ev.untyped_parts();
        assert_eq!(id, Bytes::from_static(b"id: 5-00000001\n"));
        assert_eq!(data, Bytes::from(format!("data: {json}\n\n")));
        assert!(decode_head(&rec[..5]).is_err());
        assert!(decode_head(&[]).is_err());
        assert!(decode_head(&[9, 0, 0]).is_err());
    }

    #[test]
    fn minify_keeps_strings_and_numbers() {
        let raw =
            "{ \"a\" : [1,\n 2.50, 123456789012345678901234567890 ],\n \"s\": \"x \\\" y\\n z\" }";
        assert_eq!(
            minify_json(raw),
            "{\"a\":[1,2.50,123456789012345678901234567890],\"s\":\"x \\\" y\\n z\"}"
        );
    }
}
