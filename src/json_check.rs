//! JSON that every client of surepush can read.
//!
//! Event data, job payloads and job results are stored and handed out as the caller
//! sent them (`RawValue`, minified), so what the server accepts, its own clients must
//! parse: `surepush tail` and `surepush worker` (serde_json: at most 128 levels, no
//! lone UTF-16 surrogates, numbers within f64), the browser client and the admin pages.
//! A value that one of them cannot parse would be retried forever or shown blank, so it
//! is refused at the door (422):
//!
//! - nesting: at most [`MAX_DEPTH`] levels of arrays and objects (room is left for the
//!   envelopes the value travels in: the event, a lease answer, a job view);
//! - strings: an escaped surrogate (`\ud800`-`\udfff`) only as a high-low pair;
//! - numbers: within the range of f64 (`1e999999` is refused; `1e-999999` reads as 0,
//!   and big integers keep their digits on the wire).

/// Deepest nesting of arrays and objects in a value.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff not in a pair)")]
    LoneSurrogate,
    #[error("a number is outside the range of a 64-bit float")]
    NumberOutOfRange,
}

impl Unreadable {
    pub fn code(&self) -> &'static str {
        match self {
            Unreadable::TooDeep => "json_too_deep",
            Unreadable::LoneSurrogate => "json_lone_surrogate",
            Unreadable::NumberOutOfRange => "json_number_out_of_range",
        }
    }
}

/// Checks syntactically valid JSON text against the rules above.
pub fn check(json: &str) -> Result<(), Unreadable> {
    let b = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Unreadable::TooDeep);
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = string_end(b, i + 1)?,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let n: f64 = json[start..i].parse().unwrap_or(f64::INFINITY);
                if !n.is_finite() {
                    return Err(Unreadable::NumberOutOfRange);
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index after the string whose contents start at `i`.
fn string_end(b: &[u8], mut i: usize) -> Result<usize, Unreadable> {
    // a high surrogate escape waiting for its low half
    let mut high = false;
    while i < b.len() {
        match b[i] {
            b'"' if !high => return Ok(i + 1),
            b'\\' if b.get(i + 1) == Some(&b'u') => {
                let unit = b
                    .get(i + 2..i + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                    .unwrap_or(0);
                match unit {
                    0xD800..=0xDBFF if !high => high = true,
                    0xDC00..=0xDFFF if high => high = false,
                    0xD800..=0xDFFF => return Err(Unreadable::LoneSurrogate),
                    _ if high => return Err(Unreadable::LoneSurrogate),
                    _ => {}
                }
                i += 6;
            }
            _ if high => return Err(Unreadable::LoneSurrogate),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}1{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn readable_values_pass() {
        for ok in [
            r#"{"a":[1,2.5,-3e10,123456789012345678901234567890],"s":"x \" y\\n \\\\"}"#,
            r#""\ud83d\ude00 and \u00e9 and \\ud800""#,
            r#"[1e-999999, 0, -0, 1.7976931348623157e308]"#,
            r#"{"n":null,"t":true,"f":false,"e":"1e999999"}"#,
            "\"\u{1F600}\"",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        let v: serde_json::Value = serde_json::from_str(&nested(MAX_DEPTH)).unwrap();
        assert!(v.is_array());
    }

    #[test]
    fn what_a_client_cannot_read_is_named() {
        assert_eq!(check(&nested(MAX_DEPTH + 1)), Err(Unreadable::TooDeep));
        assert_eq!(check(&nested(100_000)), Err(Unreadable::TooDeep));
        for lone in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800x""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#"{"k\udfff":1}"#,
        ] {
            assert_eq!(check(lone), Err(Unreadable::LoneSurrogate), "{lone}");
            // and serde_json, as `surepush tail` uses it, cannot read them
            assert!(
                serde_json::from_str::<serde_json::Value>(lone).is_err(),
                "{lone}"
            );
        }
        for big in ["1e999999", "[-1e309]", r#"{"a":2e400}"#] {
            assert_eq!(check(big), Err(Unreadable::NumberOutOfRange), "{big}");
            assert!(
                serde_json::from_str::<serde_json::Value>(big).is_err(),
                "{big}"
            );
        }
    }
}
