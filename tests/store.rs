//! The durable event log through its public Rust API: ids, batches, reopen, reads by
//! topic and pattern, paging, the in-memory ring versus the disk path, retention and
//! resume points, the schema guard and group commit. No HTTP here.
//!
//! This file does not use `tests/support` (it needs neither a server nor TLS).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use surepush::config::{Durability, StorageConfig};
use surepush::hub::Hub;
use surepush::metrics::Metrics;
use surepush::model::{EventId, Pattern, Since, Topic};
use surepush::store::{
    now_ms, EncodedEvent, EventLog, NewEvent, RetentionPolicy, StoreError, SCHEMA_VERSION,
};

// ---------------------------------------------------------------------------
// helpers

/// A storage config for tests: small cache, the given ring size, no count limit unless
/// a test sets one (so retention only does what the test asks for).
fn storage(ring: usize) -> StorageConfig {
    StorageConfig {
        recent_events_in_memory: ring,
        cache_bytes: 16 << 20,
        retention_max_events_per_topic: 0,
        ..StorageConfig::default()
    }
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("db")
}

fn open(path: &Path, cfg: &StorageConfig) -> EventLog {
    open_with_metrics(path, cfg).0
}

fn open_with_metrics(path: &Path, cfg: &StorageConfig) -> (EventLog, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let log = EventLog::open(path, cfg, Hub::new(), metrics.clone())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    (log, metrics)
}

fn ev(topic: &str, kind: &str, data: Value) -> NewEvent {
    NewEvent {
        receipt: false,
        topic: Topic::parse(topic).unwrap(),
        kind: kind.into(),
        data_json: data.to_string(), // serde_json's Display is minified
    }
}

fn pats(ps: &[&str]) -> Vec<Pattern> {
    ps.iter().map(|p| Pattern::parse(p).unwrap()).collect()
}

fn as_json(e: &EncodedEvent) -> Value {
    serde_json::from_slice(&e.json()).expect("event JSON parses")
}

fn seqs(events: &[Arc<EncodedEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Reads everything after `after` matching the patterns, page by page of `limit`,
/// checking each page's bounds and that the cursor always advances.
async fn read_all(
    log: &EventLog,
    after: u64,
    patterns: &[Pattern],
    limit: usize,
) -> Vec<Arc<EncodedEvent>> {
    let mut cursor = after;
    let mut out: Vec<Arc<EncodedEvent>> = Vec::new();
    let mut rounds = 0;
    while cursor < log.head() {
        rounds += 1;
        assert!(rounds < 1_000_000, "read_all does not terminate");
        let b = log.read(cursor, patterns, limit).await.unwrap();
        assert!(
            b.events.len() <= limit,
            "limit {limit} exceeded: {}",
            b.events.len()
        );
        assert!(
            b.scanned_to > cursor,
            "cursor did not advance: after={cursor} scanned_to={}",
            b.scanned_to
        );
        assert!(b.scanned_to <= log.head());
        for e in &b.events {
            assert!(
                e.seq > cursor && e.seq <= b.scanned_to,
                "event {} outside ({cursor}, {}]",
                e.seq,
                b.scanned_to
            );
        }
        cursor = b.scanned_to;
        out.extend(b.events);
    }
    for w in out.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "out of order or duplicated: {} then {}",
            w[0].seq,
            w[1].seq
        );
    }
    out
}

/// The value of a metric line such as `surepush_commit_group_events_count 12`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name)).then(|| it.next().unwrap().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
}

fn no_retention() -> RetentionPolicy {
    RetentionPolicy {
        max_age_ms: 0,
        max_events_per_topic: 0,
        max_disk_bytes: 0,
        min_free_disk_bytes: 0,
        max_work: 10_000,
    }
}

// ---------------------------------------------------------------------------
// ids, batches, event JSON

#[tokio::test(flavor = "multi_thread")]
async fn ids_increase_batches_are_contiguous_and_event_json_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&db_path(&dir), &storage(8192));
    assert_eq!(log.head(), 0);
    let t0 = now_ms();

    let first = log
        .publish(vec![ev("users/42", "job.completed", json!({"ok": true}))])
        .await
        .unwrap();
    let batch_data: Vec<Value> = vec![
        json!(1),
        json!("two \"quoted\"\nline"),
        json!([1, 2.5, {"x": null}]),
        json!({"nested": {"deep": [true, false]}, "unicode": "h\u{e9}llo \u{1f600}"}),
        json!(null),
    ];
    let batch: Vec<NewEvent> = batch_data
        .iter()
        .enumerate()
        .map(|(i, d)| ev(&format!("b/{}", i % 2), "t:x/y", d.clone()))
        .collect();
    let ids_batch = log.publish(batch.clone()).await.unwrap();
    let last = log
        .publish(vec![ev("users/42", "z", json!(123456789012345678u64))])
        .await
        .unwrap();
    let t1 = now_ms();

    assert_eq!(first.len(), 1);
    assert_eq!(ids_batch.len(), 5);
    assert_eq!(last.len(), 1);
    let all: Vec<EventId> = first
        .iter()
        .chain(&ids_batch)
        .chain(&last)
        .copied()
        .collect();
    // strictly increasing, the batch contiguous, one epoch
    assert_eq!(
        all.iter().map(|i| i.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    for id in &all {
        assert_eq!(id.epoch, log.epoch());
        assert_eq!(EventId::parse(&id.to_string()).unwrap(), *id);
        assert_eq!(log.id(id.seq), *id);
    }
    assert_eq!(log.head(), 7);

    let got = log.read(0, &pats(&["**"]), 100).await.unwrap();
    assert_eq!(got.scanned_to, 7);
    assert_eq!(seqs(&got.events), (1..=7).collect::<Vec<_>>());

    let mut expected: Vec<(String, String, Value)> = vec![(
        "users/42".into(),
        "job.completed".into(),
        json!({"ok": true}),
    )];
    for (i, d) in batch_data.iter().enumerate() {
        expected.push((format!("b/{}", i % 2), "t:x/y".into(), d.clone()));
    }
    expected.push(("users/42".into(), "z".into(), json!(123456789012345678u64)));

    let mut prev_time = 0;
    for ((e, id), (topic, kind, data)) in got.events.iter().zip(&all).zip(&expected) {
        let v = as_json(e);
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["data", "id", "time", "topic", "type"], "{v}");
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["topic"], topic.as_str());
        assert_eq!(v["type"], kind.as_str());
        assert_eq!(&v["data"], data);
        assert_eq!(&*e.topic, topic.as_str());
        // time: RFC 3339, equal to the record's time, within the publish window,
        // never going backwards in id order
        let time = time::OffsetDateTime::parse(
            v["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ms = (time.unix_timestamp_nanos() / 1_000_000) as u64;
        assert_eq!(ms, e.time_ms);
        assert!(ms >= t0 && ms <= t1, "time {ms} outside [{t0}, {t1}]");
        assert!(ms >= prev_time);
        prev_time = ms;
        // the SSE frame wraps exactly that JSON
        let frame = String::from_utf8(e.sse.to_vec()).unwrap();
        let json_text = String::from_utf8(e.json().to_vec()).unwrap();
        assert!(
            !json_text.contains('\n'),
            "JSON must be one line: {json_text}"
        );
        assert_eq!(
            frame,
            format!("id: {id}\nevent: {kind}\ndata: {json_text}\n\n")
        );
    }
    // big integers keep their precision byte for byte
    assert!(String::from_utf8(got.events[6].json().to_vec())
        .unwrap()
        .contains("\"data\":123456789012345678,"));
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_becomes_visible_all_or_nothing() {
    for ring in [8192usize, 0] {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(open(&db_path(&dir), &storage(ring)));
        const BATCH: usize = 25;
        const BATCHES: usize = 40;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (log, done) = (log.clone(), done.clone());
            tokio::spawn(async move {
                let p = pats(&["b/**"]);
                let mut reads = 0usize;
                let mut seen_partial = Vec::new();
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::Acquire);
                    let b = log.read(0, &p, 100_000).await.unwrap();
                    reads += 1;
                    let s = seqs(&b.events);
                    if s.len() % BATCH != 0 || s != (1..=s.len() as u64).collect::<Vec<_>>() {
                        seen_partial.push(s.len());
                    }
                    if finished {
                        return (reads, seen_partial, s.len());
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        for b in 0..BATCHES {
            let events = (0..BATCH)
                .map(|i| ev(&format!("b/{}", i % 5), "t", json!({"batch": b, "i": i})))
                .collect();
            let ids = log.publish(events).await.unwrap();
            let s: Vec<u64> = ids.iter().map(|i| i.seq).collect();
            let base = (b * BATCH) as u64;
            assert_eq!(s, (base + 1..=base + BATCH as u64).collect::<Vec<_>>());
            // once publish has returned, the whole batch is readable
            let got = log.read(base, &pats(&["**"]), 1000).await.unwrap();
            assert_eq!(got.events.len(), BATCH, "ring={ring} batch {b}");
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        let (reads, partial, last_len) = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("reader finished")
            .unwrap();
        assert!(reads > 0);
        assert!(
            partial.is_empty(),
            "ring={ring}: reads saw a partial or gapped batch: lengths {partial:?}"
        );
        assert_eq!(last_len, BATCH * BATCHES);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wake_up_comes_after_the_event_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new();
    let log = Arc::new(
        EventLog::open(
            &db_path(&dir),
            &storage(8192),
            hub.clone(),
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    );
    let quiet = hub.subscribe(&pats(&["other/*"]));
    let sub = hub.subscribe(&pats(&["w/*"]));
    let l2 = log.clone();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        l2.publish(vec![ev("w/1", "t", json!(1))]).await.unwrap()
    });
    tokio::time::timeout(Duration::from_secs(10), sub.notified())
        .await
        .expect("subscriber woken");
    let got = log.read(0, &pats(&["w/*"]), 10).await.unwrap();
    assert_eq!(
        seqs(&got.events),
        [1],
        "woken before the event was readable"
    );
    publisher.await.unwrap();
    // a subscriber of other topics is not woken
    assert!(
        tokio::time::timeout(Duration::from_millis(200), quiet.notified())
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------------------
// reopen

#[tokio::test(flavor = "multi_thread")]
async fn reopen_after_close_keeps_epoch_and_continues_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let (epoch, before) = {
        let log = open(&path, &storage(8192));
        for i in 0..10 {
            log.publish(vec![ev(&format!("r/{}", i % 3), "t", json!({"i": i}))])
                .await
                .unwrap();
        }
        let before: Vec<Vec<u8>> = read_all(&log, 0, &pats(&["**"]), 1000)
            .await
            .iter()
            .map(|e| e.json().to_vec())
            .collect();
        log.close().await.unwrap();
        // closed: no more writes
        assert!(matches!(
            log.publish(vec![ev("r/0", "t", json!(0))]).await,
            Err(StoreError::Closed)
        ));
        (log.epoch(), before)
    };
    assert_eq!(before.len(), 10);

    for round in 0..2u64 {
        let log = open(&path, &storage(8192));
        assert_eq!(log.epoch(), epoch, "epoch changed on reopen");
        assert_eq!(log.head(), 10 + round);
        let id = log
            .publish(vec![ev("r/0", "t", json!("after"))])
            .await
            .unwrap();
        assert_eq!(id[0].seq, 11 + round, "ids must continue, never be reused");
        assert_eq!(id[0].epoch, epoch);
        let all = read_all(&log, 0, &pats(&["**"]), 1000).await;
        assert_eq!(seqs(&all), (1..=11 + round).collect::<Vec<_>>());
        for (e, b) in all.iter().zip(&before) {
            assert_eq!(&e.json()[..], &b[..], "stored event changed across reopen");
        }
        log.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_after_a_plain_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let epoch = {
        let log = open(&path, &storage(8192));
        let ids = log
            .publish((0..20).map(|i| ev("d/x", "t", json!(i))).collect())
            .await
            .unwrap();
        assert_eq!(ids.last().unwrap().seq, 20);
        log.epoch()
        // dropped here without close()
    };
    let log = open(&path, &storage(0));
    assert_eq!(log.epoch(), epoch);
    assert_eq!(log.head(), 20);
    let all = read_all(&log, 0, &pats(&["d/x"]), 7).await;
    assert_eq!(seqs(&all), (1..=20).collect::<Vec<_>>());
    for (i, e) in all.iter().enumerate() {
        assert_eq!(as_json(e)["data"], json!(i));
    }
    let id = log.publish(vec![ev("d/x", "t", json!(20))]).await.unwrap();
    assert_eq!(id[0].seq, 21);
}

/// A server restarted in the same process (tests, an embedding app) reopens the log
/// right after closing it. `close()` has returned and the `EventLog` is dropped, so the
/// open should succeed at once.
#[tokio::test(flavor = "multi_thread")]
async fn reopening_at_once_after_close_succeeds() {
    // other logs busy in the same process meanwhile, as in a test suite
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut busy = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        busy.push(tokio::spawn(async move {
            let dir = tempfile::tempdir().unwrap();
            let log = open(&db_path(&dir), &storage(0));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                log.publish((0..50).map(|i| ev("busy/x", "t", json!(i))).collect())
                    .await
                    .unwrap();
                let _ = log.read(0, &pats(&["busy/*"]), 2000).await.unwrap();
            }
        }));
    }
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async {
            let dir = tempfile::tempdir().unwrap();
            let path = db_path(&dir);
            let mut failures = Vec::new();
            for round in 0..100u64 {
                let log =
                    match EventLog::open(&path, &storage(64), Hub::new(), Arc::new(Metrics::new()))
                    {
                        Ok(log) => log,
                        Err(e) => {
                            failures.push(format!("round {round}: {e}"));
                            open(&path, &storage(64)) // the helper waits the lock out
                        }
                    };
                let id = log
                    .publish(vec![ev("o/x", "t", json!(round))])
                    .await
                    .unwrap();
                assert_eq!(id[0].seq, round + 1);
                log.close().await.unwrap();
                drop(log);
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("reopen loop finished")
                .unwrap(),
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        tokio::time::timeout(Duration::from_secs(60), b)
            .await
            .expect("busy log stops")
            .unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of 600 immediate reopens failed: {failures:#?}",
        failures.len()
    );
}

// ---------------------------------------------------------------------------
// reading: patterns, limits, ring versus disk

const TOPICS: [&str; 7] = ["a", "a/x", "a/y", "a/x/deep", "ab/x", "b/x", "b"];

/// Publishes `n` events cycling through TOPICS, in batches of 50; returns (seq, topic).
async fn publish_cycle(log: &EventLog, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(50);
        let events: Vec<NewEvent> = (i..i + k)
            .map(|j| ev(TOPICS[j % TOPICS.len()], "t", json!({"j": j})))
            .collect();
        let ids = log.publish(events).await.unwrap();
        for (id, j) in ids.iter().zip(i..i + k) {
            out.push((id.seq, TOPICS[j % TOPICS.len()].to_string()));
        }
        i += k;
    }
    out
}

fn expect(published: &[(u64, String)], patterns: &[Pattern]) -> Vec<u64> {
    published
        .iter()
        .filter(|(_, t)| patterns.iter().any(|p| p.matches(t)))
        .map(|(s, _)| *s)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn read_by_exact_topic_and_wildcards() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let published = {
        let log = open(&path, &storage(8192));
        let p = publish_cycle(&log, 140).await;
        log.close().await.unwrap();
        p
    };
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["a/x"], vec!["a/x"]),
        (vec!["a"], vec!["a"]),
        (vec!["a/*"], vec!["a/x", "a/y"]),
        (vec!["a/**"], vec!["a/x", "a/y", "a/x/deep"]),
        (vec!["*"], vec!["a", "b"]),
        (vec!["**"], TOPICS.to_vec()),
        (vec!["a/x", "b/x"], vec!["a/x", "b/x"]),
        (vec!["a/x", "a/*"], vec!["a/x", "a/y"]),
        (vec!["a/x", "a/x"], vec!["a/x"]),
        (vec!["nothing/here"], vec![]),
        (vec!["nothing/**"], vec![]),
    ];
    // ring holding everything, no ring at all, and a ring holding only the tail
    for ring in [8192usize, 0, 30] {
        let log = open(&path, &storage(ring));
        for (ps, topics) in &cases {
            let p = pats(ps);
            let want: Vec<u64> = published
                .iter()
                .filter(|(_, t)| topics.contains(&t.as_str()))
                .map(|(s, _)| *s)
                .collect();
            assert_eq!(
                want,
                expect(&published, &p),
                "test table is wrong for {ps:?}"
            );
            // one read with a large limit returns everything and reaches the head
            let b = log.read(0, &p, 10_000).await.unwrap();
            assert_eq!(seqs(&b.events), want, "ring={ring} patterns={ps:?}");
            assert_eq!(b.scanned_to, log.head(), "ring={ring} patterns={ps:?}");
            for e in &b.events {
                assert!(p.iter().any(|x| x.matches(&e.topic)));
                assert_eq!(as_json(e)["topic"], &*e.topic);
            }
            // from the middle
            let mid = log.head() / 2;
            let b = log.read(mid, &p, 10_000).await.unwrap();
            let want_mid: Vec<u64> = want.iter().copied().filter(|s| *s > mid).collect();
            assert_eq!(
                seqs(&b.events),
                want_mid,
                "ring={ring} patterns={ps:?} from {mid}"
            );
        }
        // at or past the head: nothing, cursor unchanged
        let head = log.head();
        let b = log.read(head, &pats(&["**"]), 10).await.unwrap();
        assert!(b.events.is_empty());
        assert_eq!(b.scanned_to, head);
        let b = log.read(0, &pats(&["**"]), 0).await.unwrap();
        assert!(b.events.is_empty());
        drop(log);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_with_limit_and_scanned_to_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&db_path(&dir), &storage(8192));
    let published = publish_cycle(&log, 500).await;
    for ps in [
        vec!["a/x"],
        vec!["a/x", "b"],
        vec!["a/**"],
        vec!["**"],
        vec!["b/*"],
    ] {
        let p = pats(&ps);
        let want = expect(&published, &p);
        for limit in [1usize, 3, 7, 64, 1000] {
            let got = read_all(&log, 0, &p, limit).await;
            assert_eq!(seqs(&got), want, "patterns={ps:?} limit={limit}");
        }
        // a page that hits the limit ends exactly at its last event
        let b = log.read(0, &p, 5).await.unwrap();
        assert_eq!(b.events.len(), 5);
        assert_eq!(b.scanned_to, b.events[4].seq);
    }
}

/// A wildcard read from disk examines a bounded stretch of the log: over a long run of
/// other topics it may return no events yet, with a cursor to continue from.
#[tokio::test(flavor = "multi_thread")]
async fn wildcard_reads_over_long_unmatched_stretches_continue_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&db_path(&dir), &storage(0));
    log.publish(vec![ev("s/x", "t", json!("first"))])
        .await
        .unwrap();
    for b in 0..25 {
        log.publish(
            (0..1000)
                .map(|i| ev("noise", "t", json!(b * 1000 + i)))
                .collect(),
        )
        .await
        .unwrap();
    }
    let last = log
        .publish(vec![ev("s/y", "t", json!("last"))])
        .await
        .unwrap()[0];
    let p = pats(&["s/*"]);
    let b = log.read(1, &p, 10).await.unwrap();
    assert!(b.scanned_to > 1 && b.scanned_to <= log.head());
    // either it stopped early with nothing found, or it reached the head with the match
    assert_eq!(
        b.events.is_empty(),
        b.scanned_to < log.head(),
        "scanned_to {}",
        b.scanned_to
    );
    let got = read_all(&log, 0, &p, 10).await;
    assert_eq!(seqs(&got), [1, last.seq]);
    let got = read_all(&log, 0, &pats(&["s/**", "nothing"]), 1).await;
    assert_eq!(seqs(&got), [1, last.seq]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ring_and_disk_paths_return_identical_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let topics = ["u/1", "u/2", "u/3", "v/1", "v/2/deep"];
    let mut published = Vec::new();
    {
        let log = open(&path, &storage(8192));
        for b in 0..30 {
            let events: Vec<NewEvent> = (0..100)
                .map(|i| {
                    let n = b * 100 + i;
                    ev(
                        topics[(n * 7 + n / 3) % 5],
                        "kind.x",
                        json!({"n": n, "s": "x".repeat(n % 13)}),
                    )
                })
                .collect();
            for (id, e) in log
                .publish(events.clone())
                .await
                .unwrap()
                .iter()
                .zip(&events)
            {
                published.push((id.seq, e.topic.to_string()));
            }
        }
        assert_eq!(log.head(), 3000);
        log.close().await.unwrap();
    }
    let pattern_sets: Vec<Vec<&str>> = vec![
        vec!["u/1"],
        vec!["u/2", "v/1"],
        vec!["u/*"],
        vec!["v/**"],
        vec!["**"],
        vec!["u/3", "v/**"],
    ];
    type Reads = BTreeMap<(usize, usize, u64), Vec<Vec<u8>>>;
    let mut results: Vec<(usize, Reads)> = Vec::new();
    for ring in [8192usize, 0, 500] {
        let log = open(&path, &storage(ring));
        let mut reads = Reads::new();
        for (pi, ps) in pattern_sets.iter().enumerate() {
            let p = pats(ps);
            for limit in [100usize, 1000, 5000] {
                for from in [0u64, 1234, 2600] {
                    let got = read_all(&log, from, &p, limit).await;
                    let want: Vec<u64> = expect(&published, &p)
                        .into_iter()
                        .filter(|s| *s > from)
                        .collect();
                    assert_eq!(
                        seqs(&got),
                        want,
                        "ring={ring} {ps:?} limit={limit} from={from}"
                    );
                    reads.insert(
                        (pi, limit, from),
                        got.iter().map(|e| e.sse.to_vec()).collect(),
                    );
                }
            }
        }
        results.push((ring, reads));
    }
    let (base_ring, base) = &results[0];
    for (ring, r) in &results[1..] {
        for (k, v) in base {
            assert!(
                r[k] == *v,
                "ring={ring} differs from ring={base_ring} for (pattern set, limit, from) {k:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_listed_with_counts_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&db_path(&dir), &storage(8192));
    let mut last = BTreeMap::new();
    for (i, t) in ["t/b", "t/a", "t/c", "t/a", "t/a", "t/c"]
        .iter()
        .enumerate()
    {
        let id = log.publish(vec![ev(t, "t", json!(i))]).await.unwrap()[0];
        last.insert(t.to_string(), id);
    }
    let all = log.topics(String::new(), 100).await.unwrap();
    let names: Vec<&str> = all.iter().map(|t| t.topic.as_str()).collect();
    assert_eq!(names, ["t/a", "t/b", "t/c"]);
    let counts: Vec<u64> = all.iter().map(|t| t.events).collect();
    assert_eq!(counts, [3, 1, 2]);
    for t in &all {
        assert_eq!(t.last_id, last[&t.topic].to_string());
        assert!(t.last_time_ms > 0);
    }
    let page = log.topics(String::new(), 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = log.topics(page[1].topic.clone(), 2).await.unwrap();
    assert_eq!(
        rest.iter().map(|t| t.topic.as_str()).collect::<Vec<_>>(),
        ["t/c"]
    );
    log.probe().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_with_limit_zero_lists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&db_path(&dir), &storage(8192));
    log.publish(vec![ev("t/a", "t", json!(1))]).await.unwrap();
    assert!(log.topics(String::new(), 0).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// retention and resume

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_count_per_topic_and_resume_resets() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut cfg = storage(8192);
    cfg.retention_max_events_per_topic = 5;
    let log = open(&path, &cfg);
    let mut ids_a = Vec::new();
    let mut ids_b = Vec::new();
    for i in 0..12 {
        ids_a.push(log.publish(vec![ev("c/a", "t", json!(i))]).await.unwrap()[0]);
        if i % 4 == 0 {
            ids_b.push(log.publish(vec![ev("c/b", "t", json!(i))]).await.unwrap()[0]);
        }
    }
    let policy = RetentionPolicy {
        max_events_per_topic: 5,
        ..no_retention()
    };
    let r = log.retain(policy, now_ms()).await.unwrap();
    assert_eq!(r.deleted_by_count, 7, "{r:?}");
    assert_eq!(r.deleted(), 7);
    assert!(!r.more);
    let again = log.retain(policy, now_ms()).await.unwrap();
    assert_eq!(again.deleted(), 0, "{again:?}");

    let counts: BTreeMap<String, u64> = log
        .topics(String::new(), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.topic, t.events))
        .collect();
    assert_eq!(counts["c/a"], 5);
    assert_eq!(counts["c/b"], 3);

    let log = check_count_retention(log, &ids_a, &ids_b).await;
    log.close().await.unwrap();
    drop(log);
    // trimming is remembered across a reopen, and the ring is rebuilt from disk
    check_count_retention(open(&path, &cfg), &ids_a, &ids_b).await;
    check_count_retention(open(&path, &storage(0)), &ids_a, &ids_b).await;
}

/// c/a had 12 events (7 trimmed), c/b 3 (none trimmed).
async fn check_count_retention(log: EventLog, ids_a: &[EventId], ids_b: &[EventId]) -> EventLog {
    let seq = |ids: &[EventId]| ids.iter().map(|i| i.seq).collect::<Vec<_>>();
    let trimmed = ids_a[6]; // the newest deleted event of c/a
    let got = read_all(&log, 0, &pats(&["c/a"]), 100).await;
    assert_eq!(seqs(&got), seq(&ids_a[7..]), "c/a keeps its newest 5");
    let got = read_all(&log, 0, &pats(&["c/b"]), 100).await;
    assert_eq!(seqs(&got), seq(ids_b), "c/b untouched");
    let got = read_all(&log, 0, &pats(&["c/*"]), 2).await;
    let mut want = seq(&ids_a[7..]);
    want.extend(seq(ids_b));
    want.sort_unstable();
    assert_eq!(seqs(&got), want);

    let old = Since::Id(ids_a[0]);
    let r = log.resume(old, &pats(&["c/a"])).await.unwrap();
    assert!(r.reset, "resume before trimmed events of c/a must reset");
    assert_eq!(r.cursor, ids_a[0].seq);
    assert!(log.resume(old, &pats(&["c/*"])).await.unwrap().reset);
    assert!(log.resume(old, &pats(&["**"])).await.unwrap().reset);
    assert!(log.resume(old, &pats(&["c/b", "c/a"])).await.unwrap().reset);
    let r = log.resume(old, &pats(&["c/b"])).await.unwrap();
    assert!(!r.reset, "c/b lost nothing");
    assert_eq!(r.cursor, ids_a[0].seq);
    assert!(!log.resume(old, &pats(&["x/**"])).await.unwrap().reset);
    // boundary: the client saw the newest trimmed event, so it missed nothing
    let prev = EventId {
        seq: trimmed.seq - 1,
        epoch: trimmed.epoch,
    };
    assert!(
        log.resume(Since::Id(prev), &pats(&["c/a"]))
            .await
            .unwrap()
            .reset
    );
    assert!(
        !log.resume(Since::Id(trimmed), &pats(&["c/a"]))
            .await
            .unwrap()
            .reset
    );
    assert!(
        !log.resume(Since::Id(ids_a[7]), &pats(&["c/a"]))
            .await
            .unwrap()
            .reset
    );
    // a hand-typed sequence number behaves like the id
    assert!(
        log.resume(Since::Seq(1), &pats(&["c/a"]))
            .await
            .unwrap()
            .reset
    );
    // from the beginning never resets
    let r = log.resume(Since::Beginning, &pats(&["c/a"])).await.unwrap();
    assert_eq!((r.cursor, r.reset), (0, false));
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_count_is_bounded_per_pass_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = storage(8192);
    cfg.retention_max_events_per_topic = 5;
    let path = db_path(&dir);
    let log = open(&path, &cfg);
    // each batch is one index run, which the passes cut part way
    log.publish((0..30).map(|i| ev("w/a", "t", json!(i))).collect())
        .await
        .unwrap();
    log.publish((0..8).map(|i| ev("w/b", "t", json!(i))).collect())
        .await
        .unwrap();
    let policy = RetentionPolicy {
        max_events_per_topic: 5,
        max_work: 10,
        ..no_retention()
    };
    let mut total = 0;
    let mut passes = 0;
    loop {
        passes += 1;
        assert!(passes <= 20, "count retention never finishes");
        let r = log.retain(policy, now_ms()).await.unwrap();
        assert!(r.deleted_by_count <= 10, "work bound exceeded: {r:?}");
        total += r.deleted_by_count;
        if !r.more {
            break;
        }
    }
    assert_eq!(total, 25 + 3);
    assert!(
        passes >= 3,
        "28 deletions at 10 per pass need 3 passes, took {passes}"
    );
    for (topic, first) in [("w/a", 26u64), ("w/b", 34)] {
        let got = read_all(&log, 0, &pats(&[topic]), 100).await;
        assert_eq!(
            seqs(&got),
            (first..first + 5).collect::<Vec<_>>(),
            "{topic}"
        );
    }
    // only new excess is deleted later
    log.publish(vec![ev("w/a", "t", json!("new"))])
        .await
        .unwrap();
    let r = log.retain(policy, now_ms()).await.unwrap();
    assert_eq!(r.deleted_by_count, 1, "{r:?}");
    let got = read_all(&log, 0, &pats(&["w/a"]), 100).await;
    assert_eq!(seqs(&got), [27, 28, 29, 30, 39]);
    // the same from disk alone (no ring): the index was cut, not just the events
    log.close().await.unwrap();
    drop(log);
    let log = open(&path, &storage(0));
    let got = read_all(&log, 0, &pats(&["w/a"]), 2).await;
    assert_eq!(seqs(&got), [27, 28, 29, 30, 39]);
    let got = read_all(&log, 28, &pats(&["w/a"]), 100).await;
    assert_eq!(seqs(&got), [29, 30, 39]);
    let got = read_all(&log, 0, &pats(&["w/b"]), 100).await;
    assert_eq!(seqs(&got), (34..39).collect::<Vec<_>>());
    let page = log.topic_page("w/a", Some(30), 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [29, 28, 27]);
}

/// Readers must not be handed events retention has already deleted: an event that a
/// reopened server would not return (and that `resume` reports as lost) must not be
/// served from the in-memory ring either (regression: the ring used to keep them).
#[tokio::test(flavor = "multi_thread")]
async fn reads_after_retention_agree_with_disk_without_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = storage(8192);
    cfg.retention_max_events_per_topic = 5;
    let log = open(&db_path(&dir), &cfg);
    for i in 0..12 {
        log.publish(vec![ev("c/a", "t", json!(i))]).await.unwrap();
    }
    let r = log
        .retain(
            RetentionPolicy {
                max_events_per_topic: 5,
                ..no_retention()
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted_by_count, 7);
    let got = read_all(&log, 0, &pats(&["c/a"]), 100).await;
    assert_eq!(seqs(&got), (8..=12).collect::<Vec<_>>());
}

/// The policy handed to `retain` is the one applied, whatever the open-time config said.
#[tokio::test(flavor = "multi_thread")]
async fn retention_by_count_follows_the_policy_passed_in() {
    let dir = tempfile::tempdir().unwrap();
    // the config's own limit is the default (10 000), the policy asks for 5
    let log = open(&db_path(&dir), &StorageConfig::default());
    for i in 0..12 {
        log.publish(vec![ev("c/a", "t", json!(i))]).await.unwrap();
    }
    let r = log
        .retain(
            RetentionPolicy {
                max_events_per_topic: 5,
                ..no_retention()
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted_by_count, 7, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_age_deletes_older_keeps_newer() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&db_path(&dir), &storage(8192));
    let old: Vec<EventId> = log
        .publish((0..3).map(|i| ev("age/old", "t", json!(i))).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let newer: Vec<EventId> = log
        .publish(vec![
            ev("age/old", "t", json!(10)),
            ev("age/new", "t", json!(11)),
            ev("age/old", "t", json!(12)),
            ev("age/new", "t", json!(13)),
        ])
        .await
        .unwrap();
    for e in read_all(&log, 0, &pats(&["**"]), 100).await {
        let is_old = old.iter().any(|i| i.seq == e.seq);
        assert_eq!(
            e.time_ms < cutoff,
            is_old,
            "event {} time {}",
            e.seq,
            e.time_ms
        );
    }

    // "now" far in the future, max age such that the cutoff falls between the two groups
    let far = cutoff + 1_000_000_000_000;
    let policy = RetentionPolicy {
        max_age_ms: far - cutoff,
        ..no_retention()
    };
    let r = log.retain(policy, far).await.unwrap();
    assert_eq!(r.deleted_by_age, 3, "{r:?}");
    assert_eq!(r.deleted(), 3);
    assert!(!r.more);
    drop(log);
    let log = open(&db_path(&dir), &storage(0));
    let left = read_all(&log, 0, &pats(&["**"]), 100).await;
    assert_eq!(seqs(&left), newer.iter().map(|i| i.seq).collect::<Vec<_>>());
    assert!(left.iter().all(|e| e.time_ms >= cutoff));

    let since = Since::Id(old[0]);
    assert!(log.resume(since, &pats(&["age/old"])).await.unwrap().reset);
    assert!(log.resume(since, &pats(&["age/*"])).await.unwrap().reset);
    assert!(!log.resume(since, &pats(&["age/new"])).await.unwrap().reset);
    assert!(
        !log.resume(Since::Beginning, &pats(&["age/old"]))
            .await
            .unwrap()
            .reset
    );

    // a small max age with "now" far in the future: everything goes
    let r = log
        .retain(
            RetentionPolicy {
                max_age_ms: 1000,
                ..no_retention()
            },
            far,
        )
        .await
        .unwrap();
    assert_eq!(r.deleted_by_age, 4, "{r:?}");
    assert!(read_all(&log, 0, &pats(&["**"]), 100).await.is_empty());
    assert!(
        log.resume(Since::Id(newer[1]), &pats(&["age/new"]))
            .await
            .unwrap()
            .reset
    );
    for t in log.topics(String::new(), 10).await.unwrap() {
        assert_eq!(t.events, 0, "{t:?}");
    }
}

/// Bytes and number of the files under `dir` (recursively), 0 when it does not exist.
fn dir_size(dir: &Path) -> (u64, usize) {
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return total;
    };
    for e in entries {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (b, n) = dir_size(&e.path());
            total = (total.0 + b, total.1 + n);
        } else {
            total = (total.0 + m.len(), total.1 + 1);
        }
    }
    total
}

/// Small segment files, so that a test's few megabytes span many of them.
fn small_segments(ring: usize) -> StorageConfig {
    StorageConfig {
        segment_bytes: 64 << 10,
        ..storage(ring)
    }
}

/// Runs retention passes until one says there is no more to do.
async fn retain_fully(log: &EventLog, policy: RetentionPolicy) -> surepush::store::RetentionReport {
    let mut total = surepush::store::RetentionReport::default();
    for _ in 0..200 {
        let r = log.retain(policy, now_ms()).await.unwrap();
        total.deleted_by_age += r.deleted_by_age;
        total.deleted_by_count += r.deleted_by_count;
        total.deleted_by_disk += r.deleted_by_disk;
        total.freed_bytes += r.freed_bytes;
        total.budget_unmet |= r.budget_unmet;
        if !r.more {
            return total;
        }
    }
    panic!("retention passes never finish");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_disk_meets_the_budget_with_the_oldest_segments_and_never_deletes_everything()
{
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let (log, metrics) = open_with_metrics(&path, &small_segments(0));
    let data = "x".repeat(10_000);
    for b in 0..40 {
        log.publish(
            (0..10)
                .map(|i| ev("d/a", "t", json!(format!("{b}-{i}-{data}"))))
                .collect(),
        )
        .await
        .unwrap();
    }
    assert_eq!(log.head(), 400);
    let epoch = log.epoch();
    let before = log.size_on_disk();
    let budget = before / 2;
    let r = retain_fully(
        &log,
        RetentionPolicy {
            max_disk_bytes: budget,
            ..no_retention()
        },
    )
    .await;
    let after = log.size_on_disk();
    assert!(
        after <= budget,
        "{after} bytes on disk, budget {budget}: {r:?}"
    );
    assert!(
        r.deleted_by_disk > 0 && r.freed_bytes > 0 && !r.budget_unmet,
        "{r:?}"
    );
    // what is left is the newest events, all of them, and their files are the segments
    let left = read_all(&log, 0, &pats(&["**"]), 1000).await;
    assert_eq!(left.len() as u64, 400 - r.deleted_by_disk);
    assert_eq!(
        seqs(&left),
        ((401 - left.len() as u64)..=400).collect::<Vec<_>>()
    );
    assert!(
        left.len() >= 100,
        "only {} events kept of half the disk",
        left.len()
    );
    let (seg_bytes, _) = dir_size(&path.join("events"));
    assert!(seg_bytes < before / 2, "{seg_bytes} bytes of segments left");
    assert!(
        log.resume(Since::Id(EventId { seq: 1, epoch }), &pats(&["d/a"]))
            .await
            .unwrap()
            .reset
    );

    // a budget nothing can meet deletes nothing, and says so
    let r = log
        .retain(
            RetentionPolicy {
                max_disk_bytes: 1,
                ..no_retention()
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 0, "{r:?}");
    assert!(r.budget_unmet, "{r:?}");
    assert_eq!(
        metric(&metrics.render(), "surepush_storage_budget_unmet"),
        1.0
    );
    assert_eq!(
        read_all(&log, 0, &pats(&["**"]), 1000).await.len(),
        left.len()
    );
    // nor does headroom that no deletion can give
    let r = log
        .retain(
            RetentionPolicy {
                min_free_disk_bytes: u64::MAX / 4,
                ..no_retention()
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 0, "{r:?}");
    assert!(r.budget_unmet, "{r:?}");
    assert_eq!(
        read_all(&log, 0, &pats(&["**"]), 1000).await.len(),
        left.len()
    );

    // the same after a reopen, and ids go on
    log.close().await.unwrap();
    drop(log);
    let log = open(&path, &small_segments(8192));
    assert_eq!(
        seqs(&read_all(&log, 0, &pats(&["d/**"]), 1000).await),
        seqs(&left)
    );
    let next = log.publish(vec![ev("d/a", "t", json!("y"))]).await.unwrap();
    assert_eq!(next[0].seq, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_count_frees_segment_files_and_a_quiet_topic_pins_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let log = open(&path, &small_segments(64));
    let policy = RetentionPolicy {
        max_events_per_topic: 20,
        ..no_retention()
    };
    // one event on a quiet topic, in the first segment, then many rounds on busy ones
    log.publish(vec![ev("q/quiet", "t", json!("old but kept"))])
        .await
        .unwrap();
    let data = "y".repeat(1000);
    let mut written = 0u64;
    for round in 0..20 {
        for t in 0..10 {
            let events = (0..20)
                .map(|i| ev(&format!("c/{t}"), "t", json!(format!("{round}-{i}-{data}"))))
                .collect();
            log.publish(events).await.unwrap();
            written += 20;
        }
        retain_fully(&log, policy).await;
    }
    retain_fully(&log, policy).await;
    for t in 0..10 {
        let got = read_all(&log, 0, &pats(&[&format!("c/{t}")]), 100).await;
        assert_eq!(got.len(), 20, "topic c/{t}");
        let last = as_json(got.last().unwrap());
        assert!(
            last["data"].as_str().unwrap().starts_with("19-19-"),
            "{last}"
        );
    }
    let quiet = read_all(&log, 0, &pats(&["q/quiet"]), 10).await;
    assert_eq!(quiet.len(), 1);
    // 201 events of ~1.1 KiB are kept of 4 001 written: the files follow what is kept
    // (the newest segment, still written to, may be full and not yet sealed)
    let kept_bytes = 201 * 1100;
    let (seg_bytes, files) = dir_size(&path.join("events"));
    assert!(
        seg_bytes <= 2 * kept_bytes + 2 * (64 << 10),
        "{seg_bytes} bytes in {files} segment files for {kept_bytes} kept ({written} written)"
    );
    // and with sled stored as little as the index: no blobs left behind
    let (blob_bytes, _) = dir_size(&path.join("blobs"));
    assert_eq!(blob_bytes, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_events_leave_no_blobs_and_their_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let log = open(
        &path,
        &StorageConfig {
            segment_bytes: 1 << 20,
            ..storage(16)
        },
    );
    let big = "z".repeat(200 * 1024);
    let policy = RetentionPolicy {
        max_events_per_topic: 2,
        ..no_retention()
    };
    for _ in 0..30 {
        log.publish((0..4).map(|_| ev("users/42", "t", json!(big))).collect())
            .await
            .unwrap();
        retain_fully(&log, policy).await;
    }
    log.close().await.unwrap();
    drop(log);
    let log = open(&path, &storage(16));
    retain_fully(&log, policy).await;
    let got = read_all(&log, 0, &pats(&["users/42"]), 10).await;
    assert_eq!(seqs(&got), [119, 120]);
    let (blob_bytes, blob_files) = dir_size(&path.join("blobs"));
    assert_eq!((blob_bytes, blob_files), (0, 0));
    let (db_bytes, _) = dir_size(&path);
    // 120 events of 200 KiB written (24 MiB), two kept: a few segments at most
    assert!(db_bytes < 6 << 20, "db/ is {db_bytes} bytes");
    let id = log
        .publish(vec![ev("users/42", "t", json!("after"))])
        .await
        .unwrap();
    let got = read_all(&log, 0, &pats(&["users/42"]), 10).await;
    assert_eq!(got.last().unwrap().seq, id[0].seq);
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_from_unissued_or_foreign_ids_resets() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&db_path(&dir), &storage(8192));
    let p = pats(&["r/**"]);
    // an empty log never issued seq 1
    let r = log.resume(Since::Seq(1), &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (0, true));
    let ids = log
        .publish((0..5).map(|i| ev("r/a", "t", json!(i))).collect())
        .await
        .unwrap();
    let epoch = log.epoch();

    let future = EventId { seq: 6, epoch };
    let r = log.resume(Since::Id(future), &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (5, true), "seq 6 was never issued");
    let r = log.resume(Since::Seq(1_000_000), &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (5, true));

    let foreign = EventId {
        seq: 3,
        epoch: epoch.wrapping_add(1),
    };
    let r = log.resume(Since::Id(foreign), &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (5, true), "an id of another epoch");

    let r = log.resume(Since::Id(ids[2]), &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (3, false));
    let r = log.resume(Since::Id(ids[4]), &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (5, false));
    let r = log.resume(Since::Beginning, &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (0, false));
    let r = log.resume(Since::Now, &p).await.unwrap();
    assert_eq!((r.cursor, r.reset), (5, false));
    // an id of seq 0 in our epoch means "from the beginning"
    let r = log
        .resume(Since::Id(EventId { seq: 0, epoch }), &p)
        .await
        .unwrap();
    assert_eq!((r.cursor, r.reset), (0, false));
    // the cursor a reset hands out is where new events will follow
    let next = log.publish(vec![ev("r/a", "t", json!(5))]).await.unwrap();
    let r = log.resume(Since::Id(foreign), &p).await.unwrap();
    let after = log.read(r.cursor, &p, 10).await.unwrap();
    assert!(seqs(&after.events).is_empty());
    assert_eq!(r.cursor, next[0].seq);
}

// ---------------------------------------------------------------------------
// schema guard

fn write_schema_marker(path: &Path, version: u32) {
    let db = retry_locked(|| sled::open(path)).unwrap();
    let tree = db.open_tree("log").unwrap();
    tree.insert(b"mschema", &version.to_be_bytes()).unwrap();
    db.flush().unwrap();
}

fn expect_newer_schema(path: &Path, found_want: u32) {
    match EventLog::open(path, &storage(16), Hub::new(), Arc::new(Metrics::new())) {
        Err(StoreError::NewerSchema { found, supported }) => {
            assert_eq!(found, found_want);
            assert_eq!(supported, SCHEMA_VERSION);
            let msg = StoreError::NewerSchema { found, supported }.to_string();
            assert!(msg.contains("newer surepush"), "{msg}");
        }
        Err(e) => panic!("expected NewerSchema, got {e}"),
        Ok(_) => panic!("a database with schema {found_want} was opened"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_is_refused() {
    // a database holding only the newer marker
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_schema_marker(&path, 99);
    expect_newer_schema(&path, 99);

    // an existing log whose marker was raised by a newer build
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let log = open(&path, &storage(16));
        log.publish(vec![ev("s/a", "t", json!(1))]).await.unwrap();
        log.close().await.unwrap();
    }
    write_schema_marker(&path, SCHEMA_VERSION + 1);
    expect_newer_schema(&path, SCHEMA_VERSION + 1);
    // refusing did not change anything: with the marker back, the log opens intact
    write_schema_marker(&path, SCHEMA_VERSION);
    let log = open(&path, &storage(16));
    assert_eq!(log.head(), 1);
    assert_eq!(read_all(&log, 0, &pats(&["s/a"]), 10).await.len(), 1);
}

// ---------------------------------------------------------------------------
// group commit

async fn concurrent_publishers(durability: Durability, window_ms: u64) {
    const PUBLISHERS: usize = 50;
    const EACH: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = storage(8192);
    cfg.durability = durability;
    cfg.group_commit_ms = window_ms;
    let (log, metrics) = open_with_metrics(&db_path(&dir), &cfg);
    let log = Arc::new(log);
    let start = Arc::new(tokio::sync::Barrier::new(PUBLISHERS));
    // Probes wait for every group before them to be flushed (the writer's barrier with
    // its flusher thread): run them throughout.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let (log, probing) = (log.clone(), probing.clone());
        tokio::spawn(async move {
            let mut probes = 0u32;
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                log.probe().await.expect("probe");
                probes += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            probes
        })
    };
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (log, start) = (log.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut ids = Vec::with_capacity(EACH);
            let topic = format!("g/{}", p % 7);
            for i in 0..EACH {
                let id = log
                    .publish(vec![ev(&topic, "t", json!({"p": p, "i": i}))])
                    .await
                    .unwrap();
                assert_eq!(id.len(), 1);
                // acknowledged means visible: readable at once, from the ring
                let got = log.read(id[0].seq - 1, &pats(&[&topic]), 1).await.unwrap();
                assert_eq!(seqs(&got.events), vec![id[0].seq], "ack before visible");
                ids.push(id[0]);
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        let ids = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("publishers finish")
            .unwrap();
        for w in ids.windows(2) {
            assert!(w[0].seq < w[1].seq, "one publisher's ids must increase");
        }
        for id in ids {
            assert_eq!(id.epoch, log.epoch());
            assert!(all.insert(id.seq), "duplicate id {id}");
        }
    }
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let probes = prober.await.unwrap();
    assert!(probes > 0);
    let total = PUBLISHERS * EACH;
    assert_eq!(all.len(), total);
    assert_eq!(all.iter().max().copied(), Some(total as u64));
    assert_eq!(all.iter().min().copied(), Some(1));
    assert_eq!(log.head(), total as u64);
    let stored = read_all(&log, 0, &pats(&["g/*"]), 1000).await;
    assert_eq!(seqs(&stored), (1..=total as u64).collect::<Vec<_>>());

    let text = metrics.render();
    let groups = metric(&text, "surepush_commit_group_events_count");
    let sum = metric(&text, "surepush_commit_group_events_sum");
    // every group flush is timed, and flushes share the groups' count
    let flushes = metric(&text, "surepush_storage_flush_seconds_count");
    assert_eq!(flushes, groups, "{text}");
    assert!(metric(&text, "surepush_storage_flush_seconds_sum") > 0.0);
    let published = metric(&text, "surepush_events_published_total");
    assert_eq!(sum as usize, total, "{text}");
    assert_eq!(published as usize, total);
    assert!(groups >= 1.0);
    assert!(
        (groups as usize) < total,
        "{durability:?}: {groups} flush groups for {total} publish calls: publishes did not share flushes"
    );
    if durability == Durability::GroupCommit {
        assert!(
            (groups as usize) <= total / 4,
            "group commit with a {window_ms} ms window: {groups} groups for {total} publishes"
        );
    }
    eprintln!("{durability:?}: {total} publishes in {groups} flush groups");
}

#[tokio::test(flavor = "multi_thread")]
async fn group_commit_shares_flushes_between_concurrent_publishers() {
    concurrent_publishers(Durability::GroupCommit, 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_every_write_shares_flushes_between_concurrent_publishers() {
    concurrent_publishers(Durability::FlushEveryWrite, 2).await;
}

/// sled 0.34 releases its file lock in the background after the last handle is dropped
/// (spacejam/sled#1234): raw `sled::open` right after a close in this process may need a
/// moment. (`EventLog::open` waits for it itself; `reopening_at_once_after_close_succeeds`.)
fn retry_locked<T, E: std::fmt::Display>(mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// No publish waits behind a whole retention pass: only recording what a pass removes
/// runs on the writer (one small batch), so publishes are answered while the pass reads
/// and frees a large backlog, and nothing they add is removed by it.
#[tokio::test(flavor = "multi_thread")]
async fn publishes_are_answered_during_a_large_retention_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let log = Arc::new(open(&path, &small_segments(0)));
    for b in 0..100 {
        log.publish(
            (0..1000)
                .map(|i| ev(&format!("big/{}", i % 50), "t", json!(b)))
                .collect(),
        )
        .await
        .unwrap();
    }
    let backlog = log.head();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pass = {
        let log = log.clone();
        tokio::spawn(async move {
            log.retain(
                RetentionPolicy {
                    max_age_ms: 10,
                    max_work: 1_000_000,
                    ..no_retention()
                },
                now_ms(),
            )
            .await
            .unwrap()
        })
    };
    let mut during = Vec::new();
    while !pass.is_finished() {
        let id = log
            .publish(vec![ev("live/a", "t", json!("during"))])
            .await
            .unwrap();
        if !pass.is_finished() {
            during.push(id[0].seq);
        }
    }
    let report = pass.await.unwrap();
    assert_eq!(report.deleted_by_age, backlog, "{report:?}");
    assert!(
        !during.is_empty(),
        "no publish was answered while the pass over {backlog} events ran"
    );
    let live = read_all(&log, 0, &pats(&["live/a"]), 10_000).await;
    let live: HashSet<u64> = seqs(&live).into_iter().collect();
    assert!(
        during.iter().all(|s| live.contains(s)),
        "an event published during the pass was removed"
    );
    assert!(read_all(&log, 0, &pats(&["big/**"]), 1000).await.is_empty());
}
