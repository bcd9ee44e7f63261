//! Backup, restore and schema migration, end to end: the real server in-process, the
//! real `surepush backup` / `surepush restore` binary, real TLS.

mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{client, read_events, seq_of, test_config, TestServer};
use surepush::auth::{now_secs, Authenticator, Claims, Grants};
use surepush::store::{backup, SCHEMA_VERSION};

/// A valid admin users file (the admin module's format), written over the one the
/// server made, so the restored copy can be compared byte for byte.
const ADMIN_USERS: &[u8] = b"{\"users\":[{\"name\":\"root\",\"hash\":\"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\",\"created_ms\":1700000000000}]}\n";

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the real binary with the given arguments.
async fn surepush(args: &[&str]) -> Out {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_surepush"))
        .args(args)
        .env_remove("SUREPUSH_CONFIG")
        .env_remove("SUREPUSH_TOKEN")
        .env("SUREPUSH_LOG", "info")
        .output()
        .await
        .expect("run surepush");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `surepush backup` against a running server, over HTTPS, trusting its data dir's certificate.
async fn backup_online(server: &TestServer, out: &Path) -> Out {
    let listen = server.addr.to_string();
    let o = surepush(&[
        "backup",
        "--data-dir",
        s(&server.data_dir),
        "--listen",
        &listen,
        "--out",
        s(out),
    ])
    .await;
    assert!(o.ok, "backup failed: {}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("online from https://"), "{}", o.stdout);
    o
}

async fn restore(data_dir: &Path, from: &Path) -> Out {
    surepush(&["restore", "--data-dir", s(data_dir), "--from", s(from)]).await
}

/// "writes paused N ms" from the backup command's output.
fn pause_ms(o: &Out) -> u64 {
    let i = o.stdout.find("writes paused ").expect("pause figure") + "writes paused ".len();
    o.stdout[i..].split(' ').next().unwrap().parse().unwrap()
}

/// An address where nothing listens.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_json(base: &str, path: &str) -> (u16, Value) {
    let r = client().get(format!("{base}{path}")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn publish_batch(base: &str, events: Vec<Value>) -> Vec<String> {
    let (st, v) = post(base, "/v1/publish", Value::Array(events)).await;
    assert_eq!(st, 201, "{v}");
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

fn has_db(data_dir: &Path) -> bool {
    data_dir.join("db").exists() || data_dir.join("db.restoring").exists()
}

/// Opens a stopped server's database directly (sled's lock is released shortly after
/// the in-process server closes it).
fn open_sled(data_dir: &Path) -> sled::Db {
    for _ in 0..250 {
        match sled::open(data_dir.join("db")) {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    panic!("cannot open the database");
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(name.as_bytes());
    k
}

fn schema_in(data_dir: &Path) -> u32 {
    let db = open_sled(data_dir);
    let v = db
        .open_tree("log")
        .unwrap()
        .get(meta_key("schema"))
        .unwrap()
        .unwrap();
    u32::from_be_bytes(v.as_ref().try_into().unwrap())
}

/// The records of the segment files under `db/events` (format in src/store/segment.rs:
/// magic, then `len u32 LE | crc u32 LE | seq u64 LE | payload`), in seq order.
fn segment_records(data_dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let dir = data_dir.join("db/events");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(&bytes[..8], b"SPSEG01\n", "{}", f.display());
        let mut at = 8;
        while at + 16 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
            out.push((seq, bytes[at + 16..at + 16 + len].to_vec()));
            at += 16 + len;
        }
    }
    out
}

/// Makes a stopped server's database look like schema 1 to 4 (or sets any marker).
/// Up to schema 3 the events were in sled (`e` seq(8, BE) -> record), not in segments;
/// up to schema 4 the per-topic index was in sled too, one `i` topic 0x00 seq(8, BE)
/// entry per event being valid in every schema up to 4.
fn set_schema(data_dir: &Path, schema: u32) {
    let records = if schema <= 4 {
        segment_records(data_dir)
    } else {
        Vec::new()
    };
    let db = open_sled(data_dir);
    let log = db.open_tree("log").unwrap();
    log.insert(meta_key("schema"), &schema.to_be_bytes())
        .unwrap();
    if schema <= 4 {
        assert!(!records.is_empty());
        for (seq, rec) in &records {
            let topic = surepush::store::record::decode_head(rec).unwrap().topic;
            let mut key = vec![b'i'];
            key.extend_from_slice(topic.as_bytes());
            key.push(0);
            key.extend_from_slice(&seq.to_be_bytes());
            log.insert(key, b"".as_slice()).unwrap();
        }
    }
    if schema <= 3 {
        for (seq, rec) in records {
            let mut key = vec![b'e'];
            key.extend_from_slice(&seq.to_be_bytes());
            log.insert(key, rec).unwrap();
        }
        std::fs::remove_dir_all(data_dir.join("db/events")).unwrap();
    }
    if schema == 1 {
        log.remove(meta_key("created_ms")).unwrap();
        log.remove(meta_key("written_by")).unwrap();
    }
    db.flush().unwrap();
}

/// Token minted with the server's own key.
fn token(data_dir: &Path, admin: bool) -> String {
    let mut c = test_config(data_dir);
    c.auth.enabled = true;
    let auth = Authenticator::from_config(&c).unwrap();
    let claims = Claims {
        sub: "t".into(),
        exp: now_secs() + 600,
        nbf: None,
        iat: None,
        surepush: Grants {
            subscribe: vec!["**".into()],
            publish: vec!["**".into()],
            ..Grants::default()
        },
    };
    if admin {
        auth.mint_admin(&claims).unwrap()
    } else {
        auth.mint(&claims).unwrap()
    }
}

#[derive(Default)]
struct Publisher {
    /// Ids of each acknowledged batch, in publish order.
    batches: Vec<Vec<String>>,
    /// Batches acknowledged before the backup started.
    before: usize,
}

#[derive(Default)]
struct JobsSeen {
    /// job id -> the state it had (acknowledged) before the backup started.
    before: HashMap<String, &'static str>,
    /// Every job id enqueued, to check the restored ones.
    all: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_under_write_load_over_https() {
    let src = TestServer::start().await;
    let base = src.base_url.clone();
    std::fs::write(src.data_dir.join("admin-users.json"), ADMIN_USERS).unwrap();
    // A database worth snapshotting: 20 000 events on 50 topics.
    for b in 0..40 {
        let events = (0..500)
            .map(|i| json!({"topic": format!("pre/{}", (b * 500 + i) % 50), "type": "pre", "data": {"i": b * 500 + i}}))
            .collect();
        publish_batch(&base, events).await;
    }

    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let max_latency_during = Arc::new(AtomicU64::new(0));
    let batches_acked = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    for p in 0..4 {
        let (base, started, stop, lat, acked) = (
            base.clone(),
            started.clone(),
            stop.clone(),
            max_latency_during.clone(),
            batches_acked.clone(),
        );
        pubs.push(tokio::spawn(async move {
            let mut me = Publisher::default();
            while !stop.load(Ordering::SeqCst) {
                let b = me.batches.len();
                let events = (0..3)
                    .map(|k| json!({"topic": format!("load/p{p}"), "type": "load", "data": {"p": p, "b": b, "k": k}}))
                    .collect();
                let during = started.load(Ordering::SeqCst);
                let t = Instant::now();
                let ids = publish_batch(&base, events).await;
                if during {
                    lat.fetch_max(t.elapsed().as_millis() as u64, Ordering::SeqCst);
                }
                me.batches.push(ids);
                acked.fetch_add(1, Ordering::SeqCst);
                if !started.load(Ordering::SeqCst) {
                    me.before = me.batches.len();
                }
            }
            me
        }));
    }
    let jobs_seen = Arc::new(Mutex::new(JobsSeen::default()));
    let mut workers = Vec::new();
    for w in 0..2 {
        let (base, started, stop, seen) = (
            base.clone(),
            started.clone(),
            stop.clone(),
            jobs_seen.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // three queues, three end states: succeeded, leased, queued
                let (queue, end) = match n % 3 {
                    0 => (format!("done{w}"), "succeeded"),
                    1 => (format!("held{w}"), "leased"),
                    _ => (format!("wait{w}"), "queued"),
                };
                let (st, v) = post(
                    &base,
                    "/v1/jobs",
                    json!({"queue": queue, "payload": {"w": w, "n": n}, "reply_topic": format!("jobs/w{w}")}),
                )
                .await;
                assert_eq!(st, 202, "{v}");
                let id = v["job_id"].as_str().unwrap().to_string();
                {
                    let mut s = seen.lock().unwrap();
                    s.all.push(id.clone());
                    if !started.load(Ordering::SeqCst) {
                        s.before.insert(id.clone(), "queued");
                    }
                }
                if end == "queued" {
                    continue;
                }
                let (st, v) = post(
                    &base,
                    &format!("/v1/queues/{queue}/lease"),
                    json!({"worker": format!("w{w}"), "max": 1, "lease_secs": 600, "wait_secs": 0}),
                )
                .await;
                assert_eq!(st, 200, "{v}");
                let leased = &v["jobs"][0];
                assert_eq!(leased["job_id"], id.as_str(), "{v}");
                if !started.load(Ordering::SeqCst) {
                    seen.lock().unwrap().before.insert(id.clone(), "leased");
                }
                if end == "leased" {
                    continue;
                }
                let (st, v) = post(
                    &base,
                    &format!("/v1/jobs/{id}/complete"),
                    json!({"worker": format!("w{w}"), "attempt": leased["attempt"], "result": {"n": n}}),
                )
                .await;
                assert_eq!(st, 200, "{v}");
                if !started.load(Ordering::SeqCst) {
                    seen.lock().unwrap().before.insert(id.clone(), "succeeded");
                }
            }
        }));
    }

    // load runs until some of every kind of write is acknowledged (a slow box takes longer)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = jobs_seen
            .lock()
            .unwrap()
            .before
            .values()
            .filter(|s| **s == "succeeded")
            .count();
        if (done >= 3 && batches_acked.load(Ordering::SeqCst) >= 40) || Instant::now() > deadline {
            break;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mid-load.spbak");
    started.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let out = backup_online(&src, &file).await;
    let backup_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut published = Vec::new();
    for p in pubs {
        published.push(p.await.unwrap());
    }
    for w in workers {
        w.await.unwrap();
    }
    let seen = std::mem::take(&mut *jobs_seen.lock().unwrap());
    assert!(published
        .iter()
        .all(|p| p.before > 0 && p.batches.len() > p.before));
    assert!(seen.before.values().any(|s| *s == "succeeded"));
    eprintln!(
        "load: {} batches of 3 events published ({} acknowledged before the backup), {} jobs ({} acknowledged before)",
        published.iter().map(|p| p.batches.len()).sum::<usize>(),
        published.iter().map(|p| p.before).sum::<usize>(),
        seen.all.len(),
        seen.before.len()
    );
    eprintln!(
        "backup under load: {} bytes in {backup_secs:.2} s, writes paused {} ms, slowest publish during the backup {} ms\n{}",
        std::fs::metadata(&file).unwrap().len(),
        pause_ms(&out),
        max_latency_during.load(Ordering::SeqCst),
        out.stdout
    );
    // the temporary snapshot was removed from the server's data dir
    assert!(!std::fs::read_dir(&src.data_dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".backup-")));

    // restore into an empty dir and serve it
    let dst = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let r = restore(dst.path(), &file).await;
    assert!(r.ok, "restore failed: {}{}", r.stdout, r.stderr);
    eprintln!(
        "restore took {:.2} s\n{}",
        t.elapsed().as_secs_f64(),
        r.stdout
    );
    let users = dst.path().join("admin-users.json");
    assert_eq!(std::fs::read(&users).unwrap(), ADMIN_USERS);
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let restored = TestServer::start_in(dst.path(), |_| {}).await;
    let rbase = restored.base_url.clone();

    // every event: the 20 000 before the load are all there
    assert_eq!(read_events(&rbase, "pre/**", "0").await.len(), 20_000);
    let all = read_events(&rbase, "**", "0").await;
    let head = all
        .iter()
        .map(|e| seq_of(e["id"].as_str().unwrap()))
        .max()
        .unwrap();
    // per publisher: a gap-free prefix of whole batches, with the ids it was given,
    // holding at least every batch acknowledged before the backup started
    for (p, publ) in published.iter().enumerate() {
        let got = read_events(&rbase, &format!("load/p{p}"), "0").await;
        assert_eq!(got.len() % 3, 0, "publisher {p}: a partial batch");
        let n = got.len() / 3;
        assert!(
            n >= publ.before,
            "publisher {p}: {n} batches restored, {} acknowledged before the backup",
            publ.before
        );
        assert!(n <= publ.batches.len());
        for (i, e) in got.iter().enumerate() {
            let (b, k) = (i / 3, i % 3);
            assert_eq!(e["data"]["b"], b, "publisher {p}: gap at {i}");
            assert_eq!(e["data"]["k"], k, "publisher {p}: gap at {i}");
            assert_eq!(
                e["id"],
                publ.batches[b][k].as_str(),
                "publisher {p}: id of {b}/{k}"
            );
        }
    }
    // jobs: every job acknowledged before the backup, in at least the state it had then
    // (a later state only if the cut came after it: the outcome and its event agree)
    let mut completed_events = HashMap::new();
    for w in 0..2 {
        for e in read_events(&rbase, &format!("jobs/w{w}"), "0").await {
            assert_eq!(e["type"], "job.completed");
            completed_events.insert(e["data"]["job_id"].as_str().unwrap().to_string(), e);
        }
    }
    let mut restored_jobs = 0;
    for id in &seen.all {
        let (st, v) = get_json(&rbase, &format!("/v1/jobs/{id}")).await;
        let before = seen.before.get(id);
        if st == 404 {
            assert!(
                before.is_none(),
                "job {id} acknowledged before the backup is missing"
            );
            continue;
        }
        assert_eq!(st, 200, "{v}");
        restored_jobs += 1;
        let status = v["status"].as_str().unwrap();
        if let Some(b) = before {
            let rank = |s: &str| {
                ["queued", "leased", "succeeded"]
                    .iter()
                    .position(|x| *x == s)
            };
            assert!(
                rank(status) >= rank(b),
                "job {id}: {b} before the backup, {status} restored"
            );
        }
        assert_eq!(
            status == "succeeded",
            completed_events.contains_key(id),
            "job {id}: status {status} and its job.completed event disagree"
        );
    }
    assert!(restored_jobs >= seen.before.len());
    // ids continue after the restored head without reuse, in the same epoch, also after a restart
    let first_id = published[0].batches[0][0].clone();
    let epoch = first_id.split('-').nth(1).unwrap().to_string();
    let id1 = restored.publish("after/restore", json!(1)).await;
    // a restore leaves 2^32 seqs unused after the backup's head (ids the old server may
    // have issued after the backup are never reused)
    let gap = 1u64 << 32;
    assert_eq!(seq_of(&id1), head + 1 + gap);
    assert!(id1.ends_with(&format!("-{epoch}")));
    let (_, v) = get_json(
        &rbase,
        &format!("/v1/events?topic=load/p0&since={first_id}&limit=1"),
    )
    .await;
    assert_eq!(
        v["reset"], false,
        "a client's id from before the backup resumes"
    );
    let _ = restored.stop().await;
    let again = TestServer::start_in(dst.path(), |_| {}).await;
    let id2 = again.publish("after/restore", json!(2)).await;
    assert_eq!(seq_of(&id2), head + 2 + gap);
    // a client holding an id the old server issued after the backup: reset, then
    // everything issued since the restore, never a silent skip
    let lost = format!("{}-{epoch}", head + 5);
    let (_, v) = get_json(
        &again.base_url,
        &format!("/v1/events?topic=after/restore&since={lost}"),
    )
    .await;
    assert_eq!(v["reset"], true, "an id from the lost server is reset: {v}");
    let got: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![id1.as_str(), id2.as_str()]);
    let _ = again.stop().await;
    let _ = src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_backup_when_no_server_listens() {
    let src = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(src.publish("off/line", json!(i)).await);
    }
    std::fs::write(src.data_dir.join("admin-users.json"), ADMIN_USERS).unwrap();
    let data = src.data_dir.clone();
    let keep = src.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("off.spbak");
    let o = surepush(&[
        "backup",
        "--data-dir",
        s(&data),
        "--listen",
        &free_addr(),
        "--out",
        s(&file),
    ])
    .await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("offline from"), "{}", o.stdout);
    assert!(o.stdout.contains("events 100,"), "{}", o.stdout);
    assert!(!dir.path().join("off.spbak.tmp").exists());
    let dst = tempfile::tempdir().unwrap();
    let r = restore(dst.path(), &file).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read(dst.path().join("admin-users.json")).unwrap(),
        ADMIN_USERS
    );
    let restored = TestServer::start_in(dst.path(), |_| {}).await;
    let got: Vec<String> = read_events(&restored.base_url, "off/line", "0")
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids);
    let _ = restored.stop().await;
    drop(keep);
}

/// A small offline backup and the data dir it came from.
async fn small_backup(dir: &Path) -> (PathBuf, Arc<tempfile::TempDir>) {
    let src = TestServer::start().await;
    for i in 0..20 {
        src.publish("small/t", json!(i)).await;
    }
    std::fs::write(src.data_dir.join("admin-users.json"), ADMIN_USERS).unwrap();
    let data = src.data_dir.clone();
    let keep = src.stop().await.unwrap();
    let file = dir.join("small.spbak");
    let o = surepush(&[
        "backup",
        "--offline",
        "--data-dir",
        s(&data),
        "--out",
        s(&file),
    ])
    .await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    (file, keep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_backups_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _src) = small_backup(dir.path()).await;
    let good = std::fs::read(&file).unwrap();
    let len = good.len();
    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for cut in [0, 5, 20, len / 2, len - 5, len - 1] {
        cases.push((format!("cut at {cut}"), good[..cut].to_vec(), "truncated"));
    }
    // a flipped byte inside the admin users file's data: only the checksum can tell
    let at = good
        .windows(ADMIN_USERS.len())
        .position(|w| w == ADMIN_USERS)
        .unwrap();
    let mut flipped = good.clone();
    flipped[at + 5] ^= 0x5a;
    cases.push(("a flipped byte".into(), flipped, "checksum mismatch"));
    let mut magic = good.clone();
    magic[0] = b'X';
    cases.push(("bad magic".into(), magic, "not a surepush backup"));
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"more");
    cases.push(("trailing bytes".into(), trailing, "follow its end record"));
    for (name, bytes, expect) in cases {
        let f = dir.path().join("bad.spbak");
        std::fs::write(&f, &bytes).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let r = restore(dst.path(), &f).await;
        assert!(!r.ok, "{name}: restored");
        assert!(r.stderr.contains(expect), "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("cannot be restored"),
            "{name}: {}",
            r.stderr
        );
        assert!(!has_db(dst.path()), "{name}: wrote a database");
        assert!(!dst.path().join("admin-users.json").exists(), "{name}");
    }
    // and the intact file restores
    let dst = tempfile::tempdir().unwrap();
    assert!(restore(dst.path(), &file).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_data_dir_with_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let (file, src) = small_backup(dir.path()).await;
    let before = std::fs::read(src.path().join("admin-users.json")).unwrap();
    let r = restore(src.path(), &file).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("already has a database"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(src.path().join("admin-users.json")).unwrap(),
        before
    );
    assert!(!src.path().join("db.restoring").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_endpoint_needs_an_admin_token() {
    for auth_enabled in [true, false] {
        let srv = TestServer::start_with(|c| c.auth.enabled = auth_enabled).await;
        let url = srv.url("/v1/admin/backup");
        let c = client();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "auth.enabled={auth_enabled}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "token_required");
        let r = c.get(&url).bearer_auth("not.a.jwt").send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_token");
        let r = c
            .get(&url)
            .bearer_auth(token(&srv.data_dir, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
        let r = c
            .post(&url)
            .bearer_auth(token(&srv.data_dir, true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        let r = c
            .get(&url)
            .bearer_auth(token(&srv.data_dir, true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        let body = r.bytes().await.unwrap();
        let summary = backup::read(&body[..], |_| Ok(())).unwrap();
        assert!(summary.trees.iter().any(|t| t.name == "log"));
        let _ = srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_4_database_keeps_its_events_and_loses_its_sled_index() {
    let src = TestServer::start().await;
    let batch = (1..=30)
        .map(|i| json!({"topic": if i % 3 == 0 { "s4/b" } else { "s4/a" }, "data": i}))
        .collect();
    publish_batch(&src.base_url, batch).await;
    let data = src.data_dir.clone();
    let _keep = src.stop().await;
    set_schema(&data, 4);
    // no ring of recent events: every read goes through the index built at open
    let mut child = support::ChildServer::spawn_env(
        &data,
        &[],
        &[("SUREPUSH_STORAGE__RECENT_EVENTS_IN_MEMORY", "0")],
    );
    let a = read_events(&child.base_url, "s4/a", "0").await;
    let values: Vec<i64> = a.iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(values, (1..=30).filter(|i| i % 3 != 0).collect::<Vec<_>>());
    let b = read_events(&child.base_url, "s4/b", a[3]["id"].as_str().unwrap()).await;
    let values: Vec<i64> = b.iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(values, (6..=30).step_by(3).collect::<Vec<_>>());
    child.sigterm();
    assert!(child
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    assert_eq!(schema_in(&data), SCHEMA_VERSION);
    let db = open_sled(&data);
    let log = db.open_tree("log").unwrap();
    assert!(
        log.scan_prefix(b"i").next().is_none(),
        "the sled index was left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_1_is_migrated_and_a_newer_schema_refused_by_serve_and_restore() {
    // a schema-1 database: a current one with the marker set back, schema 2's keys
    // removed, the events and an index of one entry per event in sled
    let src = TestServer::start().await;
    let first = src.publish("mig/t", json!(1)).await;
    let batch = (2..=10)
        .flat_map(|i| {
            [
                json!({"topic": "mig/t", "data": i}),
                json!({"topic": "mig/u", "data": i}),
            ]
        })
        .chain((11..=20).map(|i| json!({"topic": "mig/t", "data": i})))
        .collect();
    publish_batch(&src.base_url, batch).await;
    let data = src.data_dir.clone();
    let keep = src.stop().await;
    set_schema(&data, 1);
    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("schema1.spbak");
    let o = surepush(&[
        "backup",
        "--offline",
        "--data-dir",
        s(&data),
        "--out",
        s(&old_file),
    ])
    .await;
    assert!(
        o.ok && o.stdout.contains("schema 1,"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    assert_eq!(schema_in(&data), 1, "an offline backup does not migrate");

    // serve migrates it
    let mut child = support::ChildServer::spawn(&data, &[]);
    let got = read_events(&child.base_url, "mig/t", "0").await;
    let values: Vec<i64> = got.iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(values, (1..=20).collect::<Vec<_>>());
    assert_eq!(got[0]["id"], first.as_str());
    let got_u = read_events(&child.base_url, "mig/u", "0").await;
    assert_eq!(got_u.len(), 9);
    // reading on from inside what is now one run per entry
    let after_5 = read_events(&child.base_url, "mig/t", got[4]["id"].as_str().unwrap()).await;
    assert_eq!(after_5.len(), 15);
    child.sigterm();
    assert!(child
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    {
        let db = open_sled(&data);
        let log = db.open_tree("log").unwrap();
        let schema = log.get(meta_key("schema")).unwrap().unwrap();
        assert_eq!(
            u32::from_be_bytes(schema.as_ref().try_into().unwrap()),
            SCHEMA_VERSION
        );
        assert_eq!(
            log.get(meta_key("written_by")).unwrap().unwrap(),
            env!("CARGO_PKG_VERSION").as_bytes()
        );
        // the events moved out of sled into segment files, the index into memory
        assert!(log.scan_prefix(b"e").next().is_none());
        assert!(log.scan_prefix(b"i").next().is_none());
        assert_eq!(segment_records(&data).len(), 29);
        let created = log.get(meta_key("created_ms")).unwrap().unwrap();
        let created = u64::from_be_bytes(created.as_ref().try_into().unwrap());
        let t = time::OffsetDateTime::parse(
            got[0]["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(created as i128, t.unix_timestamp_nanos() / 1_000_000);
    }

    // restore migrates a schema-1 backup
    let dst = tempfile::tempdir().unwrap();
    let r = restore(dst.path(), &old_file).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains(&format!("migrated from schema 1 to {SCHEMA_VERSION}")),
        "{}",
        r.stdout
    );
    assert_eq!(schema_in(dst.path()), SCHEMA_VERSION);

    // serve refuses a newer database, and leaves it alone
    set_schema(&data, 99);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_surepush"));
    cmd.args(["serve", "--data-dir", s(&data), "--listen", "127.0.0.1:0"])
        .env_remove("SUREPUSH_CONFIG")
        .env("SUREPUSH_AUTH__ENABLED", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut serve = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = serve.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve did not refuse a newer schema");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(&format!(
            "written by a newer surepush (schema 99, this build reads up to {SCHEMA_VERSION})"
        )),
        "{err}"
    );
    assert_eq!(schema_in(&data), 99);

    // restore refuses a newer backup before writing anything: schema 99 in the header,
    // checksum recomputed so that only the schema is wrong
    let mut bytes = std::fs::read(&old_file).unwrap();
    bytes[10..14].copy_from_slice(&99u32.to_be_bytes());
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_be_bytes());
    let newer = dir.path().join("schema99.spbak");
    std::fs::write(&newer, &bytes).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let r = restore(dst.path(), &newer).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&format!(
            "database of schema 99, newer than this build reads ({SCHEMA_VERSION})"
        )),
        "{}",
        r.stderr
    );
    assert!(!has_db(dst.path()));
    drop(keep);
}

/// Figures for the README: backup and restore of 100 000 events. Run with
/// `cargo test --test backup -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_backup_and_restore_of_100k_events() {
    let src = TestServer::start().await;
    for b in 0..100 {
        let events = (0..1000)
            .map(|i| json!({"topic": format!("m/{}", (b * 1000 + i) % 100), "type": "m", "data": {"i": b * 1000 + i, "pad": "x".repeat(100)}}))
            .collect();
        publish_batch(&src.base_url, events).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.spbak");
    let t = Instant::now();
    let o = backup_online(&src, &file).await;
    eprintln!(
        "100k events: backup {} bytes, {:.2} s end to end, writes paused {} ms",
        std::fs::metadata(&file).unwrap().len(),
        t.elapsed().as_secs_f64(),
        pause_ms(&o)
    );
    let dst = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let r = restore(dst.path(), &file).await;
    assert!(r.ok, "{}", r.stderr);
    eprintln!(
        "restore {:.2} s\n{}{}",
        t.elapsed().as_secs_f64(),
        o.stdout,
        r.stdout
    );
    let _ = src.stop().await;
}
