//! `surepush doctor`: the real binary against the real server in-process, directly over
//! TLS and through the hostile proxy (pass-through and buffering), plus the local checks
//! on a data directory made by `surepush init`. Loopback only; every wait is bounded.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::proxy::{HostileProxy, ProxyMode};
use support::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_surepush");
/// Upper bound for one doctor run (its probes are bounded at a few seconds each).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the binary in `cwd` with no SUREPUSH_* variables inherited.
async fn surepush(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("SUREPUSH_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd.spawn().expect("spawn surepush");
    tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("surepush finished in time")
        .expect("wait for surepush")
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `surepush doctor ARGS --json`: (exit code, report).
async fn doctor_json(cwd: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = surepush(cwd, &all).await;
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}", describe(&o)));
    (o.status.code().expect("exited"), report)
}

/// `surepush doctor ARGS` as text: (exit code, stdout).
async fn doctor_text(cwd: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let o = surepush(cwd, &all).await;
    (
        o.status.code().expect("exited"),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

fn verdict(report: &Value) -> String {
    report["verdict"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ms(v: &Value) -> bool {
    v.as_f64().is_some_and(|ms| (0.0..10_000.0).contains(&ms))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_passing_proxy_streaming_works() {
    let server = TestServer::start().await;
    let proxy = HostileProxy::start(ProxyMode::Pass, server.addr, true).await;
    let cwd = tempfile::tempdir().unwrap();
    let (code, r) = doctor_json(cwd.path(), &[&proxy.base_url()]).await;
    assert_eq!(code, 0, "{r:#}");
    let t = &r["remote"]["transports"];
    for name in ["sse_stream", "sse_close", "longpoll"] {
        assert_eq!(t[name]["status"], "ok", "{name}: {r:#}");
        assert!(is_ms(&t[name]["canary_ms"]), "{name}: {r:#}");
        assert!(is_ms(&t[name]["event_ms"]), "{name}: {r:#}");
    }
    assert_eq!(t["sse_stream"]["server_mode"], "stream");
    assert_eq!(r["remote"]["http_version"], "1.1");
    assert_eq!(r["remote"]["reachable"], true);
    assert_eq!(r["remote"]["publish"], true);
    assert!(
        verdict(&r).contains("SSE streaming works through this network path"),
        "{r:#}"
    );
    // no installation in cwd: said, not failed
    assert!(r["skipped"][0]
        .as_str()
        .unwrap()
        .starts_with("local installation"));

    let (code, text) = doctor_text(cwd.path(), &[&proxy.base_url()]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("SSE streaming works through this network path"),
        "{text}"
    );
    assert!(text.contains("Result: ok"), "{text}");
}

/// HAProxy without `option http-no-delay` holds each streamed event ~200 ms: streaming
/// "works", late. The doctor names the delay and the setting; without it, it says nothing.
#[tokio::test(flavor = "multi_thread")]
async fn through_a_proxy_that_holds_small_writes_it_names_http_no_delay() {
    let server = TestServer::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let slow = HostileProxy::start(
        ProxyMode::DelayWrites(std::time::Duration::from_millis(250)),
        server.addr,
        true,
    )
    .await;
    let (code, r) = doctor_json(cwd.path(), &[&slow.base_url()]).await;
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        r["remote"]["transports"]["sse_stream"]["status"], "ok",
        "{r:#}"
    );
    let v = verdict(&r);
    assert!(
        v.contains("holds small writes back") && v.contains("option http-no-delay"),
        "{r:#}"
    );
    let (_, text) = doctor_text(cwd.path(), &[&slow.base_url()]).await;
    assert!(text.contains("option http-no-delay"), "{text}");

    let fast = HostileProxy::start(ProxyMode::Pass, server.addr, true).await;
    let (_, r) = doctor_json(cwd.path(), &[&fast.base_url()]).await;
    assert!(!verdict(&r).contains("http-no-delay"), "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_buffering_proxy_the_stream_is_buffered_and_the_fallbacks_work() {
    let server = TestServer::start().await;
    let proxy = HostileProxy::start(ProxyMode::BufferUntilClose, server.addr, true).await;
    let cwd = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (code, r) = doctor_json(cwd.path(), &[&proxy.base_url()]).await;
    assert!(started.elapsed() < Duration::from_secs(30), "{r:#}");
    // degraded but working: a warning, not a failure
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["status"], "warn", "{r:#}");
    let t = &r["remote"]["transports"];
    assert_eq!(t["sse_stream"]["status"], "buffered", "{r:#}");
    assert!(is_ms(&t["sse_stream"]["headers_ms"]), "{r:#}");
    assert!(t["sse_stream"]["canary_ms"].is_null(), "{r:#}");
    assert!(t["sse_stream"]["event_ms"].is_null(), "{r:#}");
    assert_eq!(check(&r, "sse_stream")["status"], "warn");
    for name in ["sse_close", "longpoll"] {
        assert_eq!(t[name]["status"], "ok", "{name}: {r:#}");
        assert!(is_ms(&t[name]["event_ms"]), "{name}: {r:#}");
        assert_eq!(check(&r, name)["status"], "ok", "{name}: {r:#}");
    }
    assert_eq!(t["sse_close"]["server_mode"], "close");
    let v = verdict(&r);
    assert!(
        v.contains(
            "A proxy on this path buffers SSE streams: events arrive only when the response ends."
        ),
        "{v}"
    );
    assert!(
        v.contains("surepush clients will fall back to SSE close mode, which worked (event in"),
        "{v}"
    );
    assert!(v.contains("Long polling works too"), "{v}");

    // the same in words (shown with --nocapture)
    let (code, text) = doctor_text(cwd.path(), &[&proxy.base_url()]).await;
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("buffered: the response headers came in"),
        "{text}"
    );
    assert!(
        text.contains("A proxy on this path buffers SSE streams"),
        "{text}"
    );
    assert!(text.contains("Result: ok, with warnings"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn through_an_http10_proxy_it_says_the_server_answers_in_close_mode() {
    let server = TestServer::start().await;
    let proxy = HostileProxy::start(ProxyMode::Http10, server.addr, true).await;
    let cwd = tempfile::tempdir().unwrap();
    let (code, r) = doctor_json(cwd.path(), &[&proxy.base_url()]).await;
    assert_eq!(code, 0, "{r:#}");
    let stream = &r["remote"]["transports"]["sse_stream"];
    assert_eq!(stream["status"], "ok", "{r:#}");
    assert_eq!(stream["server_mode"], "close", "{r:#}");
    assert_eq!(stream["server_http"], "1.0", "{r:#}");
    assert!(is_ms(&stream["event_ms"]), "{r:#}");
    assert!(
        verdict(&r).contains("something on this path speaks HTTP/1.0"),
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn directly_over_tls_it_reports_http2_and_the_certificate_it_saw() {
    let server = TestServer::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let cacert = server.data_dir.join("tls/cert.pem");
    let (code, r) = doctor_json(
        cwd.path(),
        &[&server.base_url, "--cacert", cacert.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{r:#}");
    let remote = &r["remote"];
    assert_eq!(remote["http_version"], "2", "{r:#}");
    assert_eq!(remote["server_http_version"], "2", "{r:#}");
    assert_eq!(remote["tls"]["alpn"], "h2", "{r:#}");
    assert_eq!(remote["tls"]["trusted"], true, "{r:#}");
    assert!(remote["tls"]["days_left"].as_i64().unwrap() > 365, "{r:#}");
    assert!(remote["clock_offset_ms"].as_i64().unwrap().abs() < 5_000);
    assert_eq!(check(&r, "clock")["status"], "ok");
    assert_eq!(remote["transports"]["sse_stream"]["status"], "ok", "{r:#}");
    // auth is off on the test server: publishing without a token is worth a warning
    assert_eq!(check(&r, "publish")["status"], "warn", "{r:#}");

    // the same server without --cacert or --insecure: not trusted, said so, exit 1
    let (code, r) = doctor_json(cwd.path(), &[&server.base_url]).await;
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "fail");
    assert!(
        verdict(&r).contains("does not trust its TLS certificate"),
        "{r:#}"
    );
    assert!(verdict(&r).contains("--cacert"), "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_url_is_a_clear_failure() {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let cwd = tempfile::tempdir().unwrap();
    let (code, r) = doctor_json(cwd.path(), &[&url, "--insecure"]).await;
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "fail");
    assert_eq!(r["remote"]["reachable"], false);
    assert_eq!(check(&r, "reachable")["status"], "fail");
    let v = verdict(&r);
    assert!(v.starts_with("Nothing reaches the server:"), "{v}");
    assert!(v.contains("refused"), "{v}");

    let o = surepush(cwd.path(), &["doctor", &url, "--insecure"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Nothing reaches the server"), "{text}");
    assert!(text.contains("Result: FAILED"), "{text}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("check failed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn local_checks_on_an_init_dir_find_permissions_and_a_broken_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("inst");
    let o = surepush(tmp.path(), &["init", "--dir", dir.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", describe(&o));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.join("surepush.toml");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--listen",
        listen.as_str(),
    ];

    let (code, r) = doctor_json(tmp.path(), &args).await;
    assert_eq!(code, 0, "{r:#}");
    for name in [
        "config",
        "auth",
        "data_dir",
        "tls_cert",
        "tls_key",
        "signing_key",
        "clock",
        "listen",
    ] {
        assert_eq!(check(&r, name)["status"], "ok", "{name}: {r:#}");
        assert_eq!(check(&r, name)["section"], "local");
    }
    let cert = &check(&r, "tls_cert")["data"];
    assert!(cert["days_left"].as_i64().unwrap() > 365, "{r:#}");
    assert!(cert["not_after"].as_str().unwrap().ends_with('Z'));
    assert_eq!(check(&r, "data_dir")["data"]["mode"], "0700");
    assert!(check(&r, "disk")["data"]["free_bytes"].as_u64().is_some());
    assert!(check(&r, "listen")["message"]
        .as_str()
        .unwrap()
        .contains("is free"));
    assert!(r.get("remote").is_none());
    // healthy, or usable with a warning about this machine's disk
    let v = verdict(&r);
    assert!(
        v.starts_with("The local installation") && !v.contains("problems"),
        "{v}"
    );

    // chmod 777: a warning, still exit 0
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, r) = doctor_json(tmp.path(), &args).await;
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["status"], "warn");
    let d = check(&r, "data_dir");
    assert_eq!(d["status"], "warn", "{r:#}");
    assert_eq!(d["data"]["world_readable"], true);
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("writable by every user (mode 0777)"),
        "{d}"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // a garbage certificate: failure, exit 1, the reason in words
    std::fs::write(dir.join("tls/cert.pem"), b"this is not a certificate\n").unwrap();
    let (code, text) = doctor_text(tmp.path(), &args).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("holds no PEM certificate"), "{text}");
    assert!(
        text.contains("The local installation has problems"),
        "{text}"
    );
    let (_, r) = doctor_json(tmp.path(), &args).await;
    assert_eq!(check(&r, "tls_cert")["status"], "fail");

    // a broken config file: failure with the parser's words
    std::fs::write(&config, "listen = [\n").unwrap();
    let (code, r) = doctor_json(tmp.path(), &args).await;
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(check(&r, "config")["status"], "fail");
    assert!(check(&r, "config")["message"]
        .as_str()
        .unwrap()
        .contains("not valid TOML"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listen_port_is_judged_by_who_holds_it() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let listen = server.addr.to_string();
    let (_, r) = doctor_json(
        tmp.path(),
        &["--data-dir", data.to_str().unwrap(), "--listen", &listen],
    )
    .await;
    let l = check(&r, "listen");
    assert_eq!(l["status"], "ok", "{r:#}");
    assert!(
        l["message"]
            .as_str()
            .unwrap()
            .contains("held by a running surepush"),
        "{l}"
    );
    // a data dir that does not exist yet is a warning: serve creates it
    assert_eq!(check(&r, "data_dir")["status"], "warn", "{r:#}");

    // something else on the port (it never answers): a failure
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = other.local_addr().unwrap().to_string();
    let (code, r) = doctor_json(
        tmp.path(),
        &["--data-dir", data.to_str().unwrap(), "--listen", &listen],
    )
    .await;
    assert_eq!(code, 1, "{r:#}");
    let l = check(&r, "listen");
    assert_eq!(l["status"], "fail", "{r:#}");
    assert!(
        l["message"]
            .as_str()
            .unwrap()
            .contains("in use by another program"),
        "{l}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_on_it_mints_a_token_locally_or_says_what_it_skipped() {
    let server = TestServer::start_with(|c| c.auth.enabled = true).await;
    let cwd = tempfile::tempdir().unwrap();
    // no token and no local key: reachable, delivery skipped and said so, not a failure
    let (code, r) = doctor_json(cwd.path(), &[&server.base_url, "--insecure"]).await;
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["remote"]["auth"], "none");
    assert!(r["remote"]["transports"].is_null(), "{r:#}");
    let skipped = r["skipped"].to_string();
    assert!(skipped.contains("delivery"), "{skipped}");
    assert!(skipped.contains("--token"), "{skipped}");
    assert!(verdict(&r).contains("delivery was not tested"), "{r:#}");

    // with the server's data dir: a token minted from its signing key, everything tested
    let listen = server.addr.to_string();
    let (code, r) = doctor_json(
        cwd.path(),
        &[
            &server.base_url,
            "--insecure",
            "--data-dir",
            server.data_dir.to_str().unwrap(),
            "--listen",
            &listen,
        ],
    )
    .await;
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["remote"]["auth"], "minted", "{r:#}");
    assert_eq!(check(&r, "publish")["status"], "ok", "{r:#}");
    for name in ["sse_stream", "sse_close", "longpoll"] {
        assert_eq!(
            r["remote"]["transports"][name]["status"], "ok",
            "{name}: {r:#}"
        );
    }
    assert_eq!(check(&r, "listen")["status"], "ok", "{r:#}");

    // a token that is not valid: a failure
    let (code, r) = doctor_json(
        cwd.path(),
        &[&server.base_url, "--insecure", "--token", "not.a.jwt"],
    )
    .await;
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(check(&r, "auth")["status"], "fail", "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_has_examples() {
    let cwd = tempfile::tempdir().unwrap();
    let o = surepush(cwd.path(), &["doctor", "--help"]).await;
    assert!(o.status.success(), "{}", describe(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Examples:"), "{text}");
    assert!(text.contains("surepush doctor https://"), "{text}");
    assert!(text.contains("--json"), "{text}");
}
