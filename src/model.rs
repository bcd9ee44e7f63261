//! The vocabulary of the wire contract: topics, subscription patterns and event ids.
//!
//! Parsing lives here, next to the types, so every entry point (HTTP, CLI, store) agrees
//! on what a valid topic, pattern or id is.

use std::fmt;

use thiserror::Error;

/// Longest topic name accepted, in bytes (contract: 1-256 bytes).
pub const MAX_TOPIC_LEN: usize = 256;
/// Longest event type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("topic must be 1-{MAX_TOPIC_LEN} bytes, got {0}")]
    TopicLength(usize),
    #[error("topic {0:?} has an empty segment (a leading, trailing or double '/')")]
    EmptySegment(String),
    #[error("topic {topic:?} contains {ch:?}; segments allow only A-Z a-z 0-9 _ . ~ -")]
    BadTopicChar { topic: String, ch: char },
    #[error("pattern {0:?}: a wildcard may only be the last segment, as '/*' or '/**'")]
    BadWildcard(String),
    #[error("event type must be 1-{MAX_TYPE_LEN} bytes of A-Z a-z 0-9 _ . ~ - : / (got {0:?})")]
    BadType(String),
    #[error("event type {0:?} is reserved: surepush.* types are the server's own control events")]
    ReservedType(String),
    #[error(
        "{0:?} is not an event id issued by this server (expected SEQ-EPOCH, e.g. \"42-1a2b3c4d\")"
    )]
    BadId(String),
}

fn segment_ok(seg: &str) -> Option<char> {
    seg.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '~' | '-')))
}

fn check_segments(full: &str, segments: &str) -> Result<(), ModelError> {
    for seg in segments.split('/') {
        if seg.is_empty() {
            return Err(ModelError::EmptySegment(full.to_string()));
        }
        if let Some(ch) = segment_ok(seg) {
            return Err(ModelError::BadTopicChar {
                topic: full.to_string(),
                ch,
            });
        }
    }
    Ok(())
}

/// A validated topic name such as `users/42`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    pub fn parse(s: &str) -> Result<Topic, ModelError> {
        if s.is_empty() || s.len() > MAX_TOPIC_LEN {
            return Err(ModelError::TopicLength(s.len()));
        }
        check_segments(s, s)?;
        Ok(Topic(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic without its last segment (`""` for a single-segment topic).
    pub fn parent(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[..i],
            None => "",
        }
    }

    /// Every proper ancestor, from the root `""` down to the parent:
    /// `a/b/c` -> `""`, `a`, `a/b`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        std::iter::once("").chain(self.0.match_indices('/').map(|(i, _)| &self.0[..i]))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription pattern: an exact topic, `prefix/*` (exactly one more segment) or
/// `prefix/**` (any depth below prefix). `*` and `**` alone match from the root.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(String),
    OneLevel(String),
    AnyDepth(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, ModelError> {
        if s.is_empty() || s.len() > MAX_TOPIC_LEN {
            return Err(ModelError::TopicLength(s.len()));
        }
        let (prefix, ctor): (&str, fn(String) -> Pattern) = match s {
            "*" => return Ok(Pattern::OneLevel(String::new())),
            "**" => return Ok(Pattern::AnyDepth(String::new())),
            _ => {
                if let Some(p) = s.strip_suffix("/**") {
                    (p, Pattern::AnyDepth)
                } else if let Some(p) = s.strip_suffix("/*") {
                    (p, Pattern::OneLevel)
                } else {
                    (s, Pattern::Exact)
                }
            }
        };
        if prefix.contains('*') {
            return Err(ModelError::BadWildcard(s.to_string()));
        }
        check_segments(s, prefix)?;
        Ok(ctor(prefix.to_string()))
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == topic,
            Pattern::OneLevel(p) => match below(p, topic) {
                Some(rest) => !rest.contains('/'),
                None => false,
            },
            Pattern::AnyDepth(p) => below(p, topic).is_some(),
        }
    }

    /// True when every topic `other` matches is also matched by `self`: a grant covering
    /// a requested subscription.
    pub fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (_, Pattern::Exact(t)) => self.matches(t),
            (Pattern::Exact(_), _) => false,
            (Pattern::OneLevel(g), Pattern::OneLevel(p)) => g == p,
            (Pattern::OneLevel(_), Pattern::AnyDepth(_)) => false,
            (Pattern::AnyDepth(g), Pattern::OneLevel(p) | Pattern::AnyDepth(p)) => {
                g == p || below(g, p).is_some()
            }
        }
    }

    /// The topic-name prefix every matching topic starts with (for index scans).
    pub fn scan_prefix(&self) -> String {
        match self {
            Pattern::Exact(t) => t.clone(),
            Pattern::OneLevel(p) | Pattern::AnyDepth(p) if p.is_empty() => String::new(),
            Pattern::OneLevel(p) | Pattern::AnyDepth(p) => format!("{p}/"),
        }
    }
}

/// The part of `topic` strictly below `prefix`, if `topic` is below it.
/// Wildcards at the root (`*`, `**`) never match reserved topics: only a pattern that
/// names one does.
fn below<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        return (!topic.is_empty() && !is_reserved_topic(topic)).then_some(topic);
    }
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    (!rest.is_empty()).then_some(rest)
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(t) => f.write_str(t),
            Pattern::OneLevel(p) if p.is_empty() => f.write_str("*"),
            Pattern::AnyDepth(p) if p.is_empty() => f.write_str("**"),
            Pattern::OneLevel(p) => write!(f, "{p}/*"),
            Pattern::AnyDepth(p) => write!(f, "{p}/**"),
        }
    }
}

/// The server's own topics (e.g. `surepush.admin/stats`, which feeds the admin
/// dashboard): the first segment starts with `surepush.`. Clients cannot publish to them,
/// and root wildcards do not match them.
pub fn is_reserved_topic(topic: &str) -> bool {
    topic.starts_with(RESERVED_ROOT)
}

pub const RESERVED_ROOT: &str = "surepush.";

/// True when any pattern matches the topic.
pub fn any_match(patterns: &[Pattern], topic: &str) -> bool {
    patterns.iter().any(|p| p.matches(topic))
}

pub fn validate_type(t: &str) -> Result<(), ModelError> {
    if t.starts_with("surepush.") {
        return Err(ModelError::ReservedType(t.to_string()));
    }
    let ok = !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '~' | '-' | ':' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadType(t.to_string()))
    }
}

/// An event id: the global sequence number plus the epoch of the database that issued
/// it, so an id from a different (wiped or replaced) database is recognised as foreign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub seq: u64,
    pub epoch: u32,
}

/// What a client asked to resume from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// No cursor given: only events accepted from now on.
    Now,
    /// `0`: everything still retained.
    Beginning,
    /// A sequence number without epoch (hand-typed); trusted to be ours.
    Seq(u64),
    /// A full id as issued.
    Id(EventId),
}

impl EventId {
    pub fn parse(s: &str) -> Result<EventId, ModelError> {
        let bad = || ModelError::BadId(s.to_string());
        let (seq, epoch) = s.split_once('-').ok_or_else(bad)?;
        // from_str_radix alone would take a sign ("5-+0000001"), found by fuzzing
        if seq.is_empty()
            || epoch.len() != 8
            || !seq.bytes().all(|b| b.is_ascii_digit())
            || !epoch.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        Ok(EventId {
            seq: seq.parse().map_err(|_| bad())?,
            epoch: u32::from_str_radix(epoch, 16).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:08x}", self.seq, self.epoch)
    }
}

impl Since {
    /// Parses a `since` / `Last-Event-ID` value. Empty means "now".
    pub fn parse(s: &str) -> Result<Since, ModelError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Since::Now);
        }
        if s == "0" {
            return Ok(Since::Beginning);
        }
        if s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Since::Seq)
                .map_err(|_| ModelError::BadId(s.to_string()));
        }
        EventId::parse(s).map(Since::Id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(Topic::parse("users/42").is_ok());
        assert!(Topic::parse("a.b~c_d-e/F9").is_ok());
        assert_eq!(Topic::parse(""), Err(ModelError::TopicLength(0)));
        assert!(Topic::parse(&"a".repeat(257)).is_err());
        assert!(Topic::parse(&"a".repeat(256)).is_ok());
        assert!(matches!(
            Topic::parse("a//b"),
            Err(ModelError::EmptySegment(_))
        ));
        assert!(Topic::parse("/a").is_err());
        assert!(Topic::parse("a/").is_err());
        assert!(matches!(
            Topic::parse("a b"),
            Err(ModelError::BadTopicChar { ch: ' ', .. })
        ));
        assert!(Topic::parse("a/*").is_err());
        assert!(Topic::parse("é").is_err());
    }

    #[test]
    fn ancestors_and_parent() {
        let t = Topic::parse("a/b/c").unwrap();
        assert_eq!(t.ancestors().collect::<Vec<_>>(), vec!["", "a", "a/b"]);
        assert_eq!(t.parent(), "a/b");
        assert_eq!(Topic::parse("a").unwrap().parent(), "");
    }

    #[test]
    fn root_wildcards_skip_reserved_topics() {
        for p in ["*", "**"] {
            let p = Pattern::parse(p).unwrap();
            assert!(!p.matches("surepush.admin"));
            assert!(!p.matches("surepush.admin/stats"));
            assert!(p.matches("surepushx"));
            assert!(!p.covers(&Pattern::parse("surepush.admin/stats").unwrap()));
        }
        let named = Pattern::parse("surepush.admin/**").unwrap();
        assert!(named.matches("surepush.admin/stats"));
        assert!(Pattern::parse("surepush.admin/stats")
            .unwrap()
            .matches("surepush.admin/stats"));
        assert!(is_reserved_topic("surepush.admin/stats"));
        assert!(!is_reserved_topic("users/surepush.x"));
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("users/*").unwrap();
        assert!(p.matches("users/42"));
        assert!(!p.matches("users/42/x"));
        assert!(!p.matches("users"));
        assert!(!p.matches("usersx/1"));
        let p = Pattern::parse("users/**").unwrap();
        assert!(p.matches("users/42"));
        assert!(p.matches("users/42/x"));
        assert!(!p.matches("users"));
        assert!(!p.matches("users2/1"));
        let p = Pattern::parse("users/42").unwrap();
        assert!(p.matches("users/42"));
        assert!(!p.matches("users/43"));
        assert!(!p.matches("users/420"));
        assert!(Pattern::parse("*").unwrap().matches("a"));
        assert!(!Pattern::parse("*").unwrap().matches("a/b"));
        assert!(Pattern::parse("**").unwrap().matches("a/b"));
        for bad in ["", "a/*/b", "a*", "a/**/b", "/*", "a//*", "a/***", "a b/*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be rejected");
        }
        for s in ["users/42", "users/*", "users/**", "*", "**"] {
            assert_eq!(Pattern::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Pattern::parse("a/*").unwrap().scan_prefix(), "a/");
        assert_eq!(Pattern::parse("**").unwrap().scan_prefix(), "");
    }

    #[test]
    fn coverage() {
        let c = |g: &str, p: &str| {
            Pattern::parse(g)
                .unwrap()
                .covers(&Pattern::parse(p).unwrap())
        };
        assert!(c("users/42", "users/42"));
        assert!(!c("users/42", "users/43"));
        assert!(!c("users/42", "users/*"));
        assert!(c("users/*", "users/42"));
        assert!(c("users/*", "users/*"));
        assert!(!c("users/*", "users/42/x"));
        assert!(!c("users/*", "users/**"));
        assert!(c("users/**", "users/42/x"));
        assert!(c("users/**", "users/*"));
        assert!(c("users/**", "users/42/*"));
        assert!(c("users/**", "users/42/**"));
        assert!(!c("users/**", "users"));
        assert!(!c("users/**", "**"));
        assert!(!c("users/**", "usersx/*"));
        assert!(c("**", "**"));
        assert!(c("**", "a/*"));
        assert!(c("*", "a"));
        assert!(!c("*", "a/b"));
    }

    #[test]
    fn ids() {
        let id = EventId {
            seq: 42,
            epoch: 0x1a2b3c4d,
        };
        assert_eq!(id.to_string(), "42-1a2b3c4d");
        assert_eq!(EventId::parse("42-1a2b3c4d"), Ok(id));
        for bad in [
            "",
            "42",
            "-1a2b3c4d",
            "x-1a2b3c4d",
            "42-1a2b",
            "42-zzzzzzzz",
            "99999999999999999999999-00000000",
            "+4-00000000",
            "333333333336-+3333333",
            "5- 0000001",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Since::parse(""), Ok(Since::Now));
        assert_eq!(Since::parse("0"), Ok(Since::Beginning));
        assert_eq!(Since::parse("17"), Ok(Since::Seq(17)));
        assert_eq!(Since::parse("42-1a2b3c4d"), Ok(Since::Id(id)));
        assert!(Since::parse("abc").is_err());
        assert!(Since::parse("99999999999999999999999").is_err());
    }

    #[test]
    fn types() {
        assert!(validate_type("job.completed").is_ok());
        assert!(validate_type("a:b/c").is_ok());
        assert!(validate_type("").is_err());
        assert!(validate_type("a\nb").is_err());
        assert!(validate_type(&"a".repeat(129)).is_err());
        assert!(matches!(
            validate_type("surepush.ping"),
            Err(ModelError::ReservedType(_))
        ));
        assert!(validate_type("surepushx").is_ok());
    }

    /// Property tests (fuzzing where a fuzzer does not fit the stable toolchain):
    /// `PROPTEST_CASES=1000000 cargo test --lib fuzz_` for a long run.
    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        fn cases() -> u32 {
            crate::test_support::proptest_cases(3000)
        }

        fn segment() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.~-]{1,6}"
        }

        fn topic() -> impl Strategy<Value = String> {
            prop::collection::vec(segment(), 1..5).prop_map(|v| v.join("/"))
        }

        fn pattern() -> impl Strategy<Value = String> {
            prop_oneof![
                topic(),
                topic().prop_map(|t| format!("{t}/*")),
                topic().prop_map(|t| format!("{t}/**")),
                Just("*".to_string()),
                Just("**".to_string()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases()))]

            #[test]
            fn fuzz_parsers_never_panic(s in "\\PC{0,300}") {
                let _ = Topic::parse(&s);
                let _ = Pattern::parse(&s);
                let _ = EventId::parse(&s);
                let _ = Since::parse(&s);
                let _ = validate_type(&s);
            }

            #[test]
            fn fuzz_valid_topics_round_trip(t in topic()) {
                let parsed = Topic::parse(&t).unwrap();
                prop_assert_eq!(parsed.as_str(), t.as_str());
                let pat = Pattern::parse(&t).unwrap();
                prop_assert!(pat.matches(&t));
            }

            #[test]
            fn fuzz_patterns_round_trip(p in pattern()) {
                prop_assert_eq!(Pattern::parse(&p).unwrap().to_string(), p);
            }

            #[test]
            fn fuzz_ids_round_trip(seq in any::<u64>(), epoch in any::<u32>()) {
                let id = EventId { seq, epoch };
                prop_assert_eq!(EventId::parse(&id.to_string()), Ok(id));
                prop_assert_eq!(Since::parse(&id.to_string()), Ok(Since::Id(id)));
            }

            /// A grant that covers a subscription lets through nothing the grant would not:
            /// the property the authorization check relies on.
            #[test]
            fn fuzz_coverage_is_sound(g in pattern(), p in pattern(), t in topic()) {
                let g = Pattern::parse(&g).unwrap();
                let p = Pattern::parse(&p).unwrap();
                if g.covers(&p) && p.matches(&t) {
                    prop_assert!(g.matches(&t), "{} covers {} but not {}", g, p, t);
                }
            }

            /// Same, with topics built from the pattern's own prefix (where bugs would hide).
            #[test]
            fn fuzz_coverage_on_related_topics(g in pattern(), p in pattern(), tail in prop::collection::vec(segment(), 0..3)) {
                let g = Pattern::parse(&g).unwrap();
                let pp = Pattern::parse(&p).unwrap();
                let base = pp.scan_prefix();
                let t = format!("{}{}", base, tail.join("/"));
                let t = t.trim_end_matches('/').to_string();
                if Topic::parse(&t).is_ok() && g.covers(&pp) && pp.matches(&t) {
                    prop_assert!(g.matches(&t), "{} covers {} but not {}", g, pp, t);
                }
            }
        }
    }
}
