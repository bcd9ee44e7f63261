//! Event recognition. Every benchmark event carries a marker `SPB<k>;` (k = its number
//! in the run) in its data, whatever the server's framing: surepush's JSON, Nchan's raw
//! message, Pushpin's SSE content. SSE bodies go through a line parser (which also keeps
//! the last `id:` for resuming); complete bodies (long poll) are scanned whole.

/// Calls `f(k)` for every marker `SPB<k>;` in `text`, in order.
pub fn scan_markers(text: &[u8], mut f: impl FnMut(u32)) {
    let mut i = 0;
    while i + 4 < text.len() {
        if &text[i..i + 3] == b"SPB" {
            let mut j = i + 3;
            let mut k: u32 = 0;
            while j < text.len() && text[j].is_ascii_digit() {
                k = k
                    .saturating_mul(10)
                    .saturating_add(u32::from(text[j] - b'0'));
                j += 1;
            }
            if j > i + 3 && j < text.len() && text[j] == b';' {
                f(k);
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
}

/// An incremental SSE parser that only looks at what the benchmark needs.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The last `id:` seen (surepush and Nchan ids), for resuming.
    pub last_id: Option<String>,
    /// surepush's canary arrived: the subscription is registered.
    pub saw_hello: bool,
}

impl SseParser {
    pub fn feed(&mut self, mut data: &[u8], mut on_marker: impl FnMut(u32)) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            if self.line.is_empty() {
                self.on_line(&data[..i], &mut on_marker);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&data[..i]);
                self.on_line(&line, &mut on_marker);
                line.clear();
                if line.capacity() <= 1024 {
                    self.line = line; // keep a small buffer; drop the padding-sized one
                }
            }
            data = &data[i + 1..];
        }
        self.line.extend_from_slice(data);
    }

    fn on_line(&mut self, line: &[u8], on_marker: &mut impl FnMut(u32)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"data:") {
            scan_markers(v, on_marker);
        } else if let Some(v) = line.strip_prefix(b"id:") {
            self.last_id = Some(String::from_utf8_lossy(v).trim().to_string());
        } else if line == b"event: surepush.hello" {
            self.saw_hello = true;
        }
    }
}

/// The value of `"key":"..."` in a JSON text (surepush's `last_id`, a job id).
pub fn json_str<'a>(body: &'a [u8], key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = body.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let end = body[start..].iter().position(|b| *b == b'"')? + start;
    std::str::from_utf8(&body[start..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_across_pieces() {
        let mut p = SseParser::default();
        let mut got = Vec::new();
        let text = b": pad\nretry: 10\n\nevent: surepush.hello\ndata: {}\n\nid: 7-ab\nevent: message\ndata: {\"data\":\"SPB12;\"}\n\ndata: SPB13;\n\n";
        for piece in text.chunks(5) {
            p.feed(piece, |k| got.push(k));
        }
        assert_eq!(got, vec![12, 13]);
        assert_eq!(p.last_id.as_deref(), Some("7-ab"));
        assert!(p.saw_hello);
        assert_eq!(
            json_str(br#"{"events":[],"last_id":"9-x","reset":false}"#, "last_id"),
            Some("9-x")
        );
    }
}
