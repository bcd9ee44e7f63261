//! Topics and patterns (`a/b`, `a/*`, `a/**`): never a panic, patterns read back as
//! themselves, and matching agrees with `covers` and with the scan prefix the log reads
//! from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surepush::model::{Pattern, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let topic = Topic::parse(c);
    if let Ok(t) = &topic {
        assert_eq!(t.as_str(), c);
        assert!(c.starts_with(t.parent()));
        for ancestor in t.ancestors() {
            assert!(c.starts_with(ancestor), "{ancestor:?} of {c:?}");
        }
        assert!(
            Pattern::parse(c).is_ok_and(|p| p.matches(c)),
            "a topic is its own pattern"
        );
    }
    let (Ok(p), q) = (Pattern::parse(a), Pattern::parse(b)) else {
        return;
    };
    assert_eq!(Pattern::parse(&p.to_string()).as_ref(), Ok(&p));
    assert!(p.covers(&p));
    if let Ok(t) = &topic {
        if p.matches(t.as_str()) {
            assert!(
                t.as_str().starts_with(&p.scan_prefix()),
                "{p} matched {t:?}"
            );
        }
        if let Ok(q) = &q {
            if p.covers(q) && q.matches(t.as_str()) {
                assert!(p.matches(t.as_str()), "{p} covers {q}, which matches {t:?}");
            }
        }
    }
});
