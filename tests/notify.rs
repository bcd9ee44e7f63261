//! systemd integration of the real binary, and healing a full disk (issue 14, item 3).
//!
//! - The server started with `NOTIFY_SOCKET` pointing at a datagram socket this test
//!   binds sends READY=1 once it listens, WATCHDOG=1 while `WATCHDOG_USEC` is set (and
//!   none when `WATCHDOG_PID` names another process), STOPPING=1 on SIGTERM.
//! - On a 16 MiB tmpfs, publishes answer 507 once it is full and the storage probe
//!   fails, so the server exits with code 75 after `storage.fatal_after_secs` of failed
//!   probes; started again on the same directory with space freed (a filler file
//!   deleted), it serves every event acknowledged before and takes new ones. Needs root for `mount`: skipped (with the reason) without it,
//!   except under CI=true, where that is a failure.

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
async fn a_full_disk_exits_75_and_a_restart_with_space_serves_every_acked_event() {
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

async fn full_disk() {
    const FATAL_AFTER_SECS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "16m").expect("as root, mount must work");
    let filler = disk.path.join("filler");
    std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
    let data = disk.path.join("data");
    let fatal = FATAL_AFTER_SECS.to_string();
    let env = [
        ("SUREPUSH_STORAGE__FATAL_AFTER_SECS", fatal.as_str()),
        ("SUREPUSH_STORAGE__RETENTION_MAX_EVENTS_PER_TOPIC", "0"),
    ];
    let mut server = ChildServer::spawn_env(&data, &[], &env);
    let (acked, full) = publish_until_full(&server.base_url).await;
    let full_at = Instant::now();
    assert_eq!(full["error"], "disk_full", "{full}");
    assert!(
        acked.len() > 50,
        "too few events before the disk was full: {}",
        acked.len()
    );

    let r = client()
        .get(server.url("/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    if let Ok(r) = r {
        assert_ne!(r.status(), 200, "ready on a full disk");
    }

    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(FATAL_AFTER_SECS + 20));
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = status;
    let took = full_at.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {} s after the disk filled up:\n{}",
            took.as_secs(),
            server.log_text()
        )
    });
    assert_eq!(status.code(), Some(75), "{}", server.log_text());
    // Failing probes start at the first probe after the 507, every 1.5 s; the exit
    // follows FATAL_AFTER_SECS later, and stopping takes up to the 5 s HTTP drain.
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

    // A fresh process re-opens the database on the same directory, now with space.
    std::fs::remove_file(&filler).unwrap();
    let server = ChildServer::spawn_env(&data, &[], &env);
    let r = client()
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let events = read_events(&server.base_url, "full/**", "0").await;
    let stored: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing after the restart, first {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
    // And it takes new publishes again.
    let id = publish_to(&server.base_url, "full/a", json!({"after": "restart"})).await;
    assert!(!acked.contains(&id));
    server.sigterm();
    let mut server = server;
    let status = server.wait_exit(Duration::from_secs(20)).expect("no exit");
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    drop(server);
    drop(disk);
}
