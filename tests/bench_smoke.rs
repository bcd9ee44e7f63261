//! The benchmark tool's quick mode as a CI correctness check (issue 7): ~100 subscribers
//! and ~20 events on every transport over TLS h1, TLS h2 and plain HTTP, and a jobs round
//! trip, against the real binary. No timing is judged, only delivery.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn quick_mode_delivers_every_event_exactly_once() {
    let out_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_surepush-bench"))
        .arg("quick")
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_surepush"))
        .arg("--out")
        .arg(out_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start surepush-bench");
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("surepush-bench quick did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "surepush-bench quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("0 lost, 0 duplicated, 0 out of order, 0 failed subscribers"),
        "no clean summary:\n{stdout}\n{stderr}"
    );
}
