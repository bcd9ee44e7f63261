//! The poison-pill check on event data, job payloads and results: JSON it lets through
//! is readable by serde_json (the server's Rust clients) and within the depth limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // the check runs on JSON the parser already took as valid text
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    let minified = surepush::store::record::minify_json(raw.get());
    if surepush::json_check::check(&minified).is_ok() {
        let v = serde_json::from_str::<serde_json::Value>(&minified);
        assert!(v.is_ok(), "let through but unreadable: {minified:?}: {v:?}");
    }
});
