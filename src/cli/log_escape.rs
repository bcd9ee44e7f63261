//! Log lines that logged values cannot forge.
//!
//! Audit lines carry what a client typed (a login name, a topic): a newline in it would
//! start a line of its own (`INFO audit: admin logged in`), an ANSI escape would repaint
//! the operator's terminal. Every field of the text format is written through
//! [`escape_controls`]; the JSON format escapes them itself.

use std::fmt::{self, Write};

use tracing::field::Field;
use tracing_subscriber::fmt::format::Writer;

/// Writes one field of a log line: `name=value`, the message bare, control characters
/// escaped in both.
pub fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let text = format!("{value:?}");
    if field.name() != "message" {
        write!(w, "{}=", field.name())?;
    }
    w.write_str(&escape_controls(&text))
}

/// `s` with every control character (C0, DEL, C1) and the Unicode line and paragraph
/// separators written as escapes: `\n`, `\r`, `\t`, else `\u{..}`.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(needs) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_characters_cannot_break_or_paint_a_line() {
        assert_eq!(escape_controls("plain ünïcode"), "plain ünïcode");
        assert_eq!(
            escape_controls("x\nINFO audit: forged\r\t"),
            "x\\nINFO audit: forged\\r\\t"
        );
        assert_eq!(
            escape_controls("\u{1b}[2J\u{7f}\u{85}"),
            "\\u{1b}[2J\\u{7f}\\u{85}"
        );
        assert_eq!(escape_controls("a\u{2028}b"), "a\\u{2028}b");
    }
}
