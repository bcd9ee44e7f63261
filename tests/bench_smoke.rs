//! The benchmark tool's quick mode as a CI correctness check (issue 7): ~100 subscribers
//! and ~20 events on every transport over TLS h1, TLS h2 and plain HTTP, and a jobs round
//! trip, against the real binary. No timing is judged, only delivery. And a short soak
//! (issue 14): samples, a summary and the retention read-back check.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs surepush-bench with these arguments against the surepush under test, killed
/// after `limit`; its exit status, stdout and stderr.
fn bench(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surepush-bench"))
        .args(args)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_surepush"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start surepush-bench");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("surepush-bench {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn soak_samples_summarises_and_checks_retention() {
    let (status, stdout, stderr) = bench(
        &[
            "soak",
            "--secs",
            "6",
            "--sample-secs",
            "2",
            "--topics",
            "5",
            "--publishers",
            "2",
            "--max-events-per-topic",
            "50",
        ],
        Duration::from_secs(90),
    );
    assert!(
        status.success(),
        "surepush-bench soak failed ({status}):\n{stdout}\n{stderr}"
    );
    let samples = stdout
        .lines()
        .filter(|l| l.starts_with("sample t="))
        .count();
    assert!(samples >= 2, "{samples} samples:\n{stdout}\n{stderr}");
    for line in [
        "summary: ",
        "rate into an empty log (first sample",
        "steady-state rate (second half",
        "ratio db size / retained: ",
        "correctness: OK",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "no {line:?} line:\n{stdout}\n{stderr}"
        );
    }
}

#[test]
fn quick_mode_delivers_every_event_exactly_once() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().to_str().expect("utf-8 temp path");
    let (status, stdout, stderr) = bench(&["quick", "--out", out], Duration::from_secs(180));
    assert!(
        status.success(),
        "surepush-bench quick failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("0 lost, 0 duplicated, 0 out of order, 0 failed subscribers"),
        "no clean summary:\n{stdout}\n{stderr}"
    );
}
