//! Event ids and cursors (`since`, `Last-Event-ID`): never a panic; an accepted id is
//! what the server issues (decimal sequence, dash, eight hex digits) and reads back as
//! itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surepush::model::{EventId, Since};

fn issued_shape(s: &str) -> bool {
    match s.split_once('-') {
        Some((seq, epoch)) => {
            !seq.is_empty()
                && seq.bytes().all(|b| b.is_ascii_digit())
                && epoch.len() == 8
                && epoch.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = EventId::parse(text) {
        assert!(issued_shape(text), "accepted a malformed id {text:?}");
        let shown = id.to_string();
        assert!(issued_shape(&shown));
        assert_eq!(EventId::parse(&shown), Ok(id));
    }
    match Since::parse(text) {
        Ok(Since::Id(id)) => assert!(issued_shape(text.trim()), "{text:?} -> {id:?}"),
        Ok(Since::Seq(n)) => assert_eq!(text.trim().parse::<u64>().ok(), Some(n)),
        Ok(Since::Beginning) => assert_eq!(text.trim(), "0"),
        Ok(Since::Now) => assert!(text.trim().is_empty()),
        Err(_) => {}
    }
});
