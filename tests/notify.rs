//! systemd integration of the real binary, and healing a full disk (issue 14, item 3).
//!
//! - The server started with `NOTIFY_SOCKET` pointing at a datagram socket this test
//!   binds sends READY=1 once it listens, WATCHDOG=1 while `WATCHDOG_USEC` is set (and
//!   none when `WATCHDOG_PID` names another process), STOPPING=1 on SIGTERM.
//! - On a 16 MiB tmpfs: publishes answer 507 once it is full, and go on in the same
//!   process once space is freed; below `storage.flood_free_disk_bytes` they are refused
//!   at once and /readyz answers 507; with the disk full to the last byte and sled (the
//!   job queue) hit by it, the storage probe fails and the server exits with code 75
//!   after `storage.fatal_after_secs`; started again once space is freed, it serves
//!   every event acknowledged before and takes new ones. Needs root for `mount`: skipped (with the reason)
//!   without it, except under CI=true, where that is a failure.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Everything received on a notify socket, to wait for one message among others.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits up to `wait` for a datagram holding the line `line`.
    fn wait_for(&mut self, line: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        if self.seen.iter().any(|m| m.lines().any(|l| l == line)) {
            return true;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            let Ok(n) = self.socket.recv(&mut buf) else {
                break;
            };
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = m.lines().any(|l| l == line);
            self.seen.push(m);
            if found {
                return true;
            }
        }
        false
    }

    fn count(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut sock = NotifySocket::bind(dir.path());
    let notify = sock.path.to_str().unwrap().to_string();
    let mut server = ChildServer::spawn_env(
        &dir.path().join("data"),
        &[],
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "1000000")],
    );
    let wait = Duration::from_secs(15);
    assert!(
        sock.wait_for("READY=1", wait),
        "no READY=1: {:?}",
        sock.seen
    );
    let ready = sock.seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains(&format!("STATUS=serving on {}", server.base_url)),
        "{ready:?}"
    );
    // Probes every 0.5 s (half the watchdog interval): several pings within a few seconds.
    assert!(
        sock.wait_for("WATCHDOG=1", wait),
        "no WATCHDOG=1: {:?}",
        sock.seen
    );
    std::thread::sleep(Duration::from_millis(1600));
    sock.wait_for("none", Duration::from_millis(100));
    assert!(sock.count("WATCHDOG=1") >= 2, "{:?}", sock.seen);
    assert_eq!(sock.count("STOPPING=1"), 0, "{:?}", sock.seen);
    server.sigterm();
    assert!(
        sock.wait_for("STOPPING=1", wait),
        "no STOPPING=1: {:?}",
        sock.seen
    );
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("no exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
}

#[test]
fn no_watchdog_pings_for_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut sock = NotifySocket::bind(dir.path());
    let notify = sock.path.to_str().unwrap().to_string();
    // PID 1 is never the server: systemd meant the watchdog for someone else.
    let mut server = ChildServer::spawn_env(
        &dir.path().join("data"),
        &[],
        &[
            ("NOTIFY_SOCKET", &notify),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    assert!(
        sock.wait_for("READY=1", Duration::from_secs(15)),
        "{:?}",
        sock.seen
    );
    assert!(!sock.wait_for("WATCHDOG=1", Duration::from_millis(1500)));
    server.sigterm();
    assert!(
        sock.wait_for("STOPPING=1", Duration::from_secs(15)),
        "{:?}",
        sock.seen
    );
    assert_eq!(sock.count("WATCHDOG=1"), 0, "{:?}", sock.seen);
    let status = server.wait_exit(Duration::from_secs(20)).expect("no exit");
    assert_eq!(status.code(), Some(0));
}

/// A tmpfs mounted for the test's life; unmounted on drop, a panic included.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a server not yet reaped): detach it now, freed when unused.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Publishes batches of ~40 KB until the server answers 507; returns the ids of every
/// acknowledged event and the body of the 507.
async fn publish_until_full(base: &str) -> (Vec<String>, Value) {
    let c = client_h1();
    let data = "x".repeat(4000);
    let mut acked = Vec::new();
    for n in 0..5000 {
        let batch: Vec<Value> = (0..10)
            .map(
                |i| json!({"topic": "full/a", "type": "t", "data": {"n": n * 10 + i, "pad": data}}),
            )
            .collect();
        let r = c
            .post(format!("{base}/v1/publish"))
            .json(&batch)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("publish request");
        match r.status().as_u16() {
            201 => {
                let v: Value = r.json().await.unwrap();
                for id in v["ids"].as_array().unwrap() {
                    acked.push(id.as_str().unwrap().to_string());
                }
            }
            507 => return (acked, r.json().await.unwrap()),
            s => panic!("publish answered {s}: {:?}", r.text().await),
        }
    }
    panic!("16 MiB never filled up after {} events", acked.len());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_heals_in_place_and_failed_storage_exits_75_for_a_restart() {
    init();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !is_root() {
        assert!(
            !ci,
            "CI=true: the full-disk test must run (it needs root to mount a tmpfs)"
        );
        eprintln!("notify: SKIPPED the full-disk test: not root (mount -t tmpfs needs root)");
        return;
    }
    tokio::time::timeout(Duration::from_secs(150), full_disk())
        .await
        .expect("the full-disk test took longer than 150 s");
}

/// Every acknowledged id is readable from the server at `base`.
async fn assert_all_readable(base: &str, acked: &[String], when: &str) {
    let events = read_events(base, "full/**", "0").await;
    let stored: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing {when}, first {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
}

async fn readyz_status(server: &ChildServer) -> Option<u16> {
    client()
        .get(server.url("/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

async fn full_disk() {
    const FATAL_AFTER_SECS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "16m").expect("as root, mount must work");
    let filler = disk.path.join("filler");
    std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
    let data = disk.path.join("data");
    let fatal = FATAL_AFTER_SECS.to_string();

    // 1. A disk that really fills up (no free-space mark): 507, nothing accepted lost, and
    //    once space is freed publishing goes on in the same process.
    let env = [
        ("SUREPUSH_STORAGE__FATAL_AFTER_SECS", fatal.as_str()),
        ("SUREPUSH_STORAGE__SEGMENT_BYTES", "262144"),
        ("SUREPUSH_STORAGE__MIN_FREE_DISK_BYTES", "0"),
        ("SUREPUSH_STORAGE__RETENTION_MAX_EVENTS_PER_TOPIC", "0"),
        ("SUREPUSH_STORAGE__FLOOD_FREE_DISK_BYTES", "0"),
    ];
    let mut server = ChildServer::spawn_env(&data, &[], &env);
    let (mut acked, full) = publish_until_full(&server.base_url).await;
    assert_eq!(full["error"], "disk_full", "{full}");
    assert!(
        acked.len() > 50,
        "too few events before the disk was full: {}",
        acked.len()
    );
    std::fs::remove_file(&filler).unwrap();
    let id = publish_to(&server.base_url, "full/a", json!({"after": "space freed"})).await;
    acked.push(id);
    assert_eq!(readyz_status(&server).await, Some(200));
    assert_all_readable(&server.base_url, &acked, "after space was freed").await;
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).expect("no exit");
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    drop(server);

    // 2. The free-space mark: with less free than it, new events are refused at once
    //    (507, a sentence naming the mark) and /readyz says so; above it they go on.
    //    (The filler leaves 2 MiB: enough to open the database, below the 4 MiB mark.)
    let free = free_bytes(&disk.path);
    assert!(free > 5 << 20, "{free} bytes free after the first part");
    std::fs::write(&filler, vec![0u8; (free - (2 << 20)) as usize]).unwrap();
    let env = [
        ("SUREPUSH_STORAGE__FATAL_AFTER_SECS", fatal.as_str()),
        ("SUREPUSH_STORAGE__FLOOD_FREE_DISK_BYTES", "4194304"),
        ("SUREPUSH_STORAGE__MIN_FREE_DISK_BYTES", "0"),
    ];
    let mut server = ChildServer::spawn_env(&data, &[], &env);
    let r = client_h1()
        .post(server.url("/v1/publish"))
        .json(&json!({"topic": "full/a", "data": "below the mark"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "disk_full", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("almost full"),
        "{body}"
    );
    assert_eq!(readyz_status(&server).await, Some(507));
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the writer re-reads free space
    acked.push(
        publish_to(
            &server.base_url,
            "full/a",
            json!({"after": "above the mark"}),
        )
        .await,
    );
    assert_eq!(readyz_status(&server).await, Some(200));
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).expect("no exit");
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    drop(server);

    // 2b. Headroom: with less free than storage.min_free_disk_bytes, retention deletes
    //     the oldest segments, the fewest that give it back, and keeps the newest events.
    let free = free_bytes(&disk.path);
    let wanted = free + (3 << 20);
    let headroom = wanted.to_string();
    let env = [
        ("SUREPUSH_STORAGE__FATAL_AFTER_SECS", fatal.as_str()),
        ("SUREPUSH_STORAGE__SEGMENT_BYTES", "262144"),
        ("SUREPUSH_STORAGE__FLOOD_FREE_DISK_BYTES", "0"),
        ("SUREPUSH_STORAGE__MIN_FREE_DISK_BYTES", headroom.as_str()),
        ("SUREPUSH_STORAGE__RETENTION_INTERVAL_SECS", "1"),
    ];
    let mut server = ChildServer::spawn_env(&data, &[], &env);
    let deadline = Instant::now() + Duration::from_secs(20);
    while free_bytes(&disk.path) < wanted {
        assert!(
            Instant::now() < deadline,
            "retention did not give back the headroom: {} free, {wanted} wanted",
            free_bytes(&disk.path)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = read_events(&server.base_url, "full/**", "0").await;
    let kept_ids: Vec<String> = kept
        .iter()
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();
    assert!(
        !kept_ids.is_empty(),
        "headroom retention deleted every event"
    );
    assert!(kept_ids.len() < acked.len(), "nothing was deleted");
    // what is gone is the oldest: the kept ones are the tail of the acknowledged ones
    acked = acked[acked.len() - kept_ids.len()..].to_vec();
    assert_eq!(kept_ids, acked);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).expect("no exit");
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    drop(server);

    // 3. Storage that fails for good inside the process: the disk full to the last byte
    //    (a filler takes what is left) and sled, which keeps the jobs, hit by it. The
    //    storage probe then fails, the server exits with 75 after fatal_after_secs, and a
    //    fresh process, once space is freed, has everything.
    let env = [
        ("SUREPUSH_STORAGE__FATAL_AFTER_SECS", fatal.as_str()),
        ("SUREPUSH_STORAGE__FLOOD_FREE_DISK_BYTES", "0"),
        ("SUREPUSH_STORAGE__MIN_FREE_DISK_BYTES", "0"),
    ];
    let server = ChildServer::spawn_env(&data, &[], &env);
    assert_eq!(readyz_status(&server).await, Some(200));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&chunk[..4096]);
        let _ = f.write_all(&chunk[..512]);
    }
    let failed_at = Instant::now();
    let payload = "j".repeat(8 << 10);
    let mut refused = None;
    for _ in 0..2000 {
        let r = client_h1()
            .post(server.url("/v1/jobs"))
            .json(&json!({"queue": "fill", "payload": payload}))
            .send()
            .await
            .unwrap();
        if r.status().is_server_error() {
            refused = Some(r.status().as_u16());
            break;
        }
        assert_eq!(r.status(), 202);
    }
    let refused = refused.expect("jobs were still accepted on a full disk");
    assert!(refused == 507 || refused == 503, "{refused}");
    let (status, server) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let status = server.wait_exit(Duration::from_secs(FATAL_AFTER_SECS + 20));
        (status, server)
    })
    .await
    .unwrap();
    let took = failed_at.elapsed();
    std::fs::remove_file(&filler).unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {} s after its storage failed:\n{}",
            took.as_secs(),
            server.log_text()
        )
    });
    assert_eq!(status.code(), Some(75), "{}", server.log_text());
    assert!(
        took < Duration::from_secs(FATAL_AFTER_SECS + 15),
        "exit came {took:?} after the disk filled up"
    );
    let log = server.log_text();
    assert!(
        log.contains("exiting with code 75"),
        "no error sentence in the log:\n{log}"
    );
    drop(server);

    let server = ChildServer::spawn_env(&data, &[], &env);
    assert_eq!(readyz_status(&server).await, Some(200));
    assert_all_readable(&server.base_url, &acked, "after the restart").await;
    let id = publish_to(&server.base_url, "full/a", json!({"after": "restart"})).await;
    assert!(!acked.contains(&id));
    server.sigterm();
    let mut server = server;
    let status = server.wait_exit(Duration::from_secs(20)).expect("no exit");
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    drop(server);
    drop(disk);
}
