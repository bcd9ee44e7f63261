//! The `surepush` binary as a child process: init, print-config and the configuration
//! layers, publish, tail over every transport, graceful shutdown on SIGTERM, and help.
//! Real processes and loopback sockets only; every wait is bounded.

mod support;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::{client, publish_to, seq_of, ChildServer, SseReader};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_surepush");
/// Upper bound for a short CLI command (init, print-config, publish, help).
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for a `tail` run (its own --duration is 20 s).
const TAIL_TIMEOUT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------
// helpers

/// The binary with no SUREPUSH_* variables inherited from the test's environment.
fn surepush(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("SUREPUSH_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn wait_output(cmd: &mut tokio::process::Command, limit: Duration) -> Output {
    let child = cmd.spawn().expect("spawn surepush");
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("surepush did not finish within {limit:?}"))
        .expect("wait for surepush")
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    wait_output(&mut surepush(args, env), CMD_TIMEOUT).await
}

async fn run_stdin(args: &[&str], stdin: &str) -> Output {
    let mut cmd = surepush(args, &[]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn surepush");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(CMD_TIMEOUT, child.wait_with_output())
        .await
        .expect("surepush finished")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "expected success: {}", describe(o));
}

#[track_caller]
fn assert_fails(o: &Output) {
    assert!(!o.status.success(), "expected failure: {}", describe(o));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `print-config` output as a TOML table.
fn parse_toml(o: &Output) -> toml::Table {
    assert_ok(o);
    stdout(o)
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("print-config is not TOML ({e}): {}", describe(o)))
}

fn heartbeat(t: &toml::Table) -> i64 {
    t["push"]["heartbeat_secs"].as_integer().unwrap()
}

/// Spawns a server in a thread-blocking way without stalling the async runtime.
async fn spawn_server(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ChildServer {
    let dir = dir.to_path_buf();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        ChildServer::spawn_env(&dir, &extra, &env)
    })
    .await
    .unwrap()
}

async fn wait_healthy(base: &str) {
    let c = client();
    for _ in 0..400 {
        if let Ok(r) = c.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{base} never became healthy");
}

/// Every retained event of a pattern, via `GET /v1/events`, page by page.
async fn stored_events(base: &str, pattern: &str) -> Vec<Value> {
    let c = client();
    let mut since = "0".to_string();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("topic", pattern)
            .append_pair("since", &since)
            .append_pair("limit", "1000")
            .finish();
        let r = c
            .get(format!("{base}/v1/events?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["reset"], false);
        let events = v["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        out.extend(events);
        since = v["last_id"].as_str().unwrap().to_string();
    }
    panic!("paging through {pattern} does not end");
}

/// Publishes one batch over HTTP; returns the ids.
async fn publish_batch(base: &str, events: Value) -> Vec<String> {
    let r = client()
        .post(format!("{base}/v1/publish"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

async fn wait_connections(base: &str, transport: &str, at_least: u64) {
    for _ in 0..600 {
        if support::connections(base, transport).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {transport} subscriber connected to {base} within 15 s");
}

/// The JSON lines `tail` printed.
fn tail_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("tail printed a non-JSON line {l:?} ({e})"))
        })
        .collect()
}

fn ids_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

const TRANSPORTS: [(&str, &str); 4] = [
    ("sse", "sse_stream"),
    ("close", "sse_close"),
    ("longpoll", "longpoll"),
    ("poll", "poll"),
];

// ---------------------------------------------------------------------------
// init, print-config, serve

#[tokio::test(flavor = "multi_thread")]
async fn init_writes_a_data_dir_that_serve_uses_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("install");
    let dir = d.to_str().unwrap();
    let o = run(&["init", "--dir", dir], &[]).await;
    assert_ok(&o);
    let canon = std::fs::canonicalize(&d).unwrap();
    let config = canon.join("surepush.toml");
    assert!(
        stdout(&o).contains(config.to_str().unwrap()),
        "{}",
        describe(&o)
    );
    for f in [
        "surepush.toml",
        "tls/cert.pem",
        "tls/key.pem",
        "signing.key",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&d.join("tls/key.pem")), 0o600, "private key mode");
    assert_eq!(mode(&d.join("signing.key")), 0o600, "signing key mode");
    let cert_pem = std::fs::read_to_string(d.join("tls/cert.pem")).unwrap();
    assert!(cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(std::fs::read_to_string(d.join("tls/key.pem"))
        .unwrap()
        .contains("PRIVATE KEY"));
    let signing = std::fs::read_to_string(d.join("signing.key")).unwrap();
    assert_eq!(signing.trim().len(), 64);
    assert!(signing.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("# "), "the written config is commented");

    // a second init refuses and changes nothing
    let again = run(&["init", "--dir", dir], &[]).await;
    assert_fails(&again);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        describe(&again)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert_eq!(
        std::fs::read_to_string(d.join("tls/cert.pem")).unwrap(),
        cert_pem
    );

    // print-config shows the data dir init chose
    let o = run(&["print-config", "--config", config.to_str().unwrap()], &[]).await;
    let t = parse_toml(&o);
    assert_eq!(t["data_dir"].as_str().unwrap(), canon.to_str().unwrap());
    assert_eq!(t["listen"].as_str().unwrap(), "127.0.0.1:8443");
    assert_eq!(heartbeat(&t), 15);

    // serve reads that file (a value changed in it shows in the hello event) and uses
    // the certificate init wrote
    std::fs::write(
        &config,
        text.replace("heartbeat_secs = 15", "heartbeat_secs = 3"),
    )
    .unwrap();
    let server = spawn_server(&d, &["--config", config.to_str().unwrap()], &[]).await;
    wait_healthy(&server.base_url).await;
    let resp = client()
        .get(server.url("/v1/stream?topic=init/x&since=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let hello = sse.next_any(Duration::from_secs(10)).await.expect("hello");
    assert_eq!(hello.event, "surepush.hello");
    let hello: Value = serde_json::from_str(&hello.data).unwrap();
    assert_eq!(hello["heartbeat_secs"], 3, "{hello}");
    // without --insecure: the client trusts exactly the certificate init wrote
    let cacert = d.join("tls/cert.pem");
    let o = run(
        &[
            "publish",
            &server.base_url,
            "init/x",
            "--data",
            "1",
            "--cacert",
            cacert.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_ok(&o);
    assert_eq!(stdout(&o).lines().count(), 1);
    let ev = sse
        .next_event(Duration::from_secs(10))
        .await
        .expect("event");
    assert_eq!(ev.id, stdout(&o).trim());
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_layers_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1000\"\ndata_dir = \"/from/file\"\n[push]\nheartbeat_secs = 7\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // file over defaults
    let t = parse_toml(&run(&["print-config", "--config", f], &[]).await);
    assert_eq!(heartbeat(&t), 7);
    assert_eq!(t["listen"].as_str().unwrap(), "127.0.0.1:1000");
    assert_eq!(t["data_dir"].as_str().unwrap(), "/from/file");

    // environment over file
    let env = [
        ("SUREPUSH_PUSH__HEARTBEAT_SECS", "9"),
        ("SUREPUSH_LISTEN", "127.0.0.1:2000"),
    ];
    let o = run(&["print-config", "--config", f], &env).await;
    let t = parse_toml(&o);
    assert_eq!(heartbeat(&t), 9);
    assert_eq!(t["listen"].as_str().unwrap(), "127.0.0.1:2000");
    assert!(
        !stderr(&o).contains("warning"),
        "known variables must not warn: {}",
        describe(&o)
    );

    // flags over environment
    let t = parse_toml(
        &run(
            &[
                "print-config",
                "--config",
                f,
                "--listen",
                "127.0.0.1:3000",
                "--data-dir",
                "/from/flag",
            ],
            &env,
        )
        .await,
    );
    assert_eq!(t["listen"].as_str().unwrap(), "127.0.0.1:3000");
    assert_eq!(t["data_dir"].as_str().unwrap(), "/from/flag");
    assert_eq!(heartbeat(&t), 9);

    // the file may also come from SUREPUSH_CONFIG
    let t = parse_toml(&run(&["print-config"], &[("SUREPUSH_CONFIG", f)]).await);
    assert_eq!(heartbeat(&t), 7);

    // an unknown variable is a warning naming it, not an error
    let o = run(&["print-config", "--config", f], &[("SUREPUSH_BOGUS", "1")]).await;
    assert_ok(&o);
    assert!(stderr(&o).contains("SUREPUSH_BOGUS"), "{}", describe(&o));
    assert_eq!(heartbeat(&parse_toml(&o)), 7);

    // an unknown key in the file is an error naming it
    for (text, key) in [
        ("bogus_key = 1\n", "bogus_key"),
        ("[push]\nheartbeat_sec = 7\n", "heartbeat_sec"),
    ] {
        std::fs::write(&file, text).unwrap();
        let o = run(&["print-config", "--config", f], &[]).await;
        assert_fails(&o);
        assert!(stderr(&o).contains(key), "{}", describe(&o));
        assert!(stdout(&o).is_empty(), "{}", describe(&o));
        let data = tmp.path().join("data");
        let o = run(
            &[
                "serve",
                "--config",
                f,
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        )
        .await;
        assert_fails(&o);
        assert!(stderr(&o).contains(key), "serve: {}", describe(&o));
    }
    // an invalid value is refused too
    let o = run(
        &["print-config"],
        &[("SUREPUSH_STORAGE__DURABILITY", "sometimes")],
    )
    .await;
    assert_fails(&o);
    // a missing file is an error naming it
    let missing = tmp.path().join("missing.toml");
    let o = run(
        &["print-config", "--config", missing.to_str().unwrap()],
        &[],
    )
    .await;
    assert_fails(&o);
    assert!(stderr(&o).contains("missing.toml"), "{}", describe(&o));
}

/// `SUREPUSH_TOKEN` is the CLI's own variable (`publish`/`tail --token`): an operator
/// who exports it for the client commands must not be told it is an unknown config key.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_token_variable_is_not_an_unknown_config_key() {
    let o = run(&["print-config"], &[("SUREPUSH_TOKEN", "abc")]).await;
    assert_ok(&o);
    assert!(!stderr(&o).contains("SUREPUSH_TOKEN"), "{}", describe(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_applies_env_over_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, "[push]\nheartbeat_secs = 7\n").unwrap();
    let data = tmp.path().join("data");
    let server = spawn_server(
        &data,
        &["--config", file.to_str().unwrap()],
        &[("SUREPUSH_PUSH__HEARTBEAT_SECS", "2")],
    )
    .await;
    let resp = client()
        .get(server.url("/v1/stream?topic=a&since=0"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(resp);
    let hello = sse.next_any(Duration::from_secs(10)).await.expect("hello");
    let hello: Value = serde_json::from_str(&hello.data).unwrap();
    assert_eq!(hello["heartbeat_secs"], 2, "{hello}");
    // and the heartbeat really comes at that interval
    let ping = sse.next_any(Duration::from_secs(6)).await.expect("ping");
    assert_eq!(ping.event, "surepush.ping");
    assert!(data.join("tls/cert.pem").is_file());
}

// ---------------------------------------------------------------------------
// publish

#[tokio::test(flavor = "multi_thread")]
async fn publish_prints_the_id_and_reports_errors_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = spawn_server(tmp.path(), &[], &[]).await;
    let url = server.base_url.as_str();

    let o = run(
        &[
            "publish",
            url,
            "cli/a",
            "--type",
            "greeting",
            "--data",
            "{\"hi\": [1, 2]}",
            "--insecure",
        ],
        &[],
    )
    .await;
    assert_ok(&o);
    let id = stdout(&o).trim().to_string();
    assert_eq!(stdout(&o).lines().count(), 1, "{}", describe(&o));
    assert_eq!(seq_of(&id), 1);
    let ev = &stored_events(url, "cli/a").await[0];
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["type"], "greeting");
    assert_eq!(ev["data"], json!({"hi": [1, 2]}));

    // defaults: type "message", data null; data from stdin with "-"
    let o = run(&["publish", url, "cli/a", "--insecure"], &[]).await;
    assert_ok(&o);
    let o2 = run_stdin(
        &["publish", url, "cli/a", "--data", "-", "--insecure"],
        "[1,\n 2,\n 3]\n",
    )
    .await;
    assert_ok(&o2);
    let evs = stored_events(url, "cli/a").await;
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[1]["id"], stdout(&o).trim());
    assert_eq!(evs[1]["type"], "message");
    assert_eq!(evs[1]["data"], Value::Null);
    assert_eq!(evs[2]["id"], stdout(&o2).trim());
    assert_eq!(evs[2]["data"], json!([1, 2, 3]));

    // invalid --data: refused before anything is sent
    let o = run(
        &["publish", url, "cli/a", "--data", "{nope", "--insecure"],
        &[],
    )
    .await;
    assert_fails(&o);
    assert!(
        stderr(&o).contains("--data is not valid JSON"),
        "{}",
        describe(&o)
    );
    assert!(stdout(&o).is_empty());

    // a bad topic: non-zero, with the server's message
    let o = run(&["publish", url, "bad topic", "--insecure"], &[]).await;
    assert_fails(&o);
    let err = stderr(&o);
    assert!(err.contains("422"), "{}", describe(&o));
    assert!(err.contains("segments allow only"), "{}", describe(&o));
    let o = run(&["publish", url, "a//b", "--insecure"], &[]).await;
    assert_fails(&o);
    assert!(stderr(&o).contains("empty segment"), "{}", describe(&o));

    // the self-signed certificate is refused without --insecure or --cacert
    let o = run(&["publish", url, "cli/a"], &[]).await;
    assert_fails(&o);
    assert!(stderr(&o).contains("cannot reach"), "{}", describe(&o));
    // nothing was written by any failed attempt
    assert_eq!(stored_events(url, "**").await.len(), 3);
}

// ---------------------------------------------------------------------------
// tail

#[tokio::test(flavor = "multi_thread")]
async fn tail_from_zero_prints_exactly_the_events_on_every_transport() {
    let tmp = tempfile::tempdir().unwrap();
    let server = spawn_server(tmp.path(), &[], &[]).await;
    let url = server.base_url.clone();
    // 120 events (more than one poll page of 100), interleaved with other topics
    let mut batch = Vec::new();
    for i in 0..120 {
        batch.push(json!({"topic": "tail/x", "type": "tick", "data": {"i": i}}));
        if i % 10 == 0 {
            batch.push(json!({"topic": "tail/y", "type": "noise", "data": i}));
            batch.push(json!({"topic": "other", "type": "noise", "data": i}));
        }
    }
    let ids = publish_batch(&url, Value::Array(batch)).await;
    let stored = stored_events(&url, "tail/x").await;
    let want_ids = ids_of(&stored);
    assert_eq!(want_ids.len(), 120);
    assert!(want_ids.iter().all(|i| ids.contains(i)));

    let mut runs = Vec::new();
    for (transport, _) in TRANSPORTS {
        for (pattern, count) in [("tail/x", 120usize), ("tail/x", 7)] {
            let url = url.clone();
            runs.push(tokio::spawn(async move {
                let n = count.to_string();
                let o = wait_output(
                    &mut surepush(
                        &[
                            "tail",
                            &url,
                            pattern,
                            "--since",
                            "0",
                            "--count",
                            &n,
                            "--transport",
                            transport,
                            "--duration",
                            "20",
                            "--insecure",
                        ],
                        &[],
                    ),
                    TAIL_TIMEOUT,
                )
                .await;
                (transport, count, o)
            }));
        }
    }
    // a wildcard over several topics
    {
        let url = url.clone();
        runs.push(tokio::spawn(async move {
            let o = wait_output(
                &mut surepush(
                    &[
                        "tail",
                        &url,
                        "tail/*",
                        "--since",
                        "0",
                        "--count",
                        "132",
                        "--transport",
                        "longpoll",
                        "--duration",
                        "20",
                        "--insecure",
                    ],
                    &[],
                ),
                TAIL_TIMEOUT,
            )
            .await;
            ("longpoll tail/*", 132, o)
        }));
    }
    for r in runs {
        let (what, count, o) = r.await.unwrap();
        assert_ok(&o);
        let lines = tail_lines(&o);
        assert_eq!(lines.len(), count, "{what}: {}", describe(&o));
        if what.ends_with("tail/*") {
            let want = ids_of(&stored_events(&url, "tail/*").await);
            assert_eq!(want.len(), 132);
            assert_eq!(ids_of(&lines), want, "{what}");
            assert!(lines.iter().all(|e| e["topic"] != "other"));
            continue;
        }
        assert_eq!(ids_of(&lines), want_ids[..count].to_vec(), "{what}");
        for (i, e) in lines.iter().enumerate() {
            assert_eq!(e["topic"], "tail/x", "{what}");
            assert_eq!(e["type"], "tick", "{what}");
            assert_eq!(e["data"], json!({"i": i}), "{what}");
            assert!(e["time"].is_string(), "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_without_since_prints_only_events_published_after_it_connected() {
    let tmp = tempfile::tempdir().unwrap();
    let server = spawn_server(tmp.path(), &[], &[]).await;
    let url = server.base_url.clone();
    for (transport, label) in TRANSPORTS {
        let topic = format!("live/{transport}");
        let old = publish_to(&url, &topic, json!("old")).await;
        let mut child = surepush(
            &[
                "tail",
                &url,
                &topic,
                "--count",
                "2",
                "--transport",
                transport,
                "--duration",
                "20",
                "--insecure",
            ],
            &[],
        )
        .spawn()
        .unwrap();
        // connected: the subscription's cursor is set (polling has no lasting
        // connection to observe; give its first request time instead)
        if transport == "poll" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        } else {
            wait_connections(&url, label, 1).await;
        }
        let mut published = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
        while child.try_wait().unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{transport}: tail did not exit"
            );
            if published.len() < 40 {
                published.push(publish_to(&url, &topic, json!(published.len())).await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let o = tokio::time::timeout(CMD_TIMEOUT, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_ok(&o);
        let lines = tail_lines(&o);
        let got = ids_of(&lines);
        assert_eq!(got.len(), 2, "{transport}: {}", describe(&o));
        assert!(
            !got.contains(&old),
            "{transport}: printed an event from before it started"
        );
        let at = published
            .iter()
            .position(|p| *p == got[0])
            .unwrap_or_else(|| panic!("{transport}: printed an id never published: {got:?}"));
        assert_eq!(
            got,
            published[at..at + 2].to_vec(),
            "{transport}: not consecutive"
        );
        if transport != "poll" {
            assert_eq!(
                at, 0,
                "{transport}: missed the first event after it connected"
            );
        }
        assert_eq!(lines[0]["data"], json!(at));
    }
}

/// A TCP relay (TLS passes through untouched) that can cut its connections and hold new
/// ones, to reconnect a client at a chosen moment.
struct Relay {
    addr: std::net::SocketAddr,
    hold: watch::Sender<bool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    forwarded: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, hold_rx) = watch::channel(false);
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let forwarded = Arc::new(AtomicU64::new(0));
        let accept = {
            let (conns, forwarded) = (conns.clone(), forwarded.clone());
            tokio::spawn(async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    let mut hold = hold_rx.clone();
                    let forwarded = forwarded.clone();
                    let task = tokio::spawn(async move {
                        if hold.wait_for(|h| !*h).await.is_err() {
                            return;
                        }
                        let Ok(mut up) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        forwarded.fetch_add(1, Ordering::SeqCst);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Relay {
            addr,
            hold,
            conns,
            forwarded,
            accept,
        }
    }

    /// Closes every relayed connection (the client sees EOF or a reset).
    fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn set_hold(&self, hold: bool) {
        let _ = self.hold.send(hold);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// `tail` promises "nothing lost" across disconnects. Without `--since`, an event
/// published after tail connected but while it reconnects must still be printed: the
/// cursor it started from (the hello's `last_id`, or the poll's) must be kept.
#[tokio::test(flavor = "multi_thread")]
async fn tail_without_since_loses_nothing_across_a_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let server = spawn_server(tmp.path(), &[], &[]).await;
    let url = server.base_url.clone();
    let mut failures = Vec::new();
    for (transport, label) in &TRANSPORTS[..3] {
        let relay = Relay::start(server.addr).await;
        let relay_url = format!("https://{}", relay.addr);
        let topic = format!("gap/{transport}");
        let child = surepush(
            &[
                "tail",
                &relay_url,
                &topic,
                "--count",
                "2",
                "--transport",
                transport,
                "--duration",
                "15",
                "--insecure",
            ],
            &[],
        )
        .spawn()
        .unwrap();
        wait_connections(&url, label, 1).await;
        // the connection drops; the reconnect is held until e1 is durable
        relay.set_hold(true);
        relay.cut();
        let e1 = publish_to(&url, &topic, json!(1)).await;
        relay.set_hold(false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let e2 = publish_to(&url, &topic, json!(2)).await;
        let o = tokio::time::timeout(TAIL_TIMEOUT, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            relay.forwarded.load(Ordering::SeqCst) >= 2,
            "tail reconnected"
        );
        let got = ids_of(&tail_lines(&o));
        if got != [e1.clone(), e2.clone()] {
            failures.push(format!(
                "{transport}: printed {got:?}, expected [{e1}, {e2}]"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------
// graceful shutdown

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_streams_with_a_goodbye_exits_0_and_keeps_every_acknowledged_event() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = spawn_server(tmp.path(), &[], &[]).await;
    let url = server.base_url.clone();

    let resp = client()
        .get(server.url("/v1/stream?topic=down/**&since=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let hello = sse.next_any(Duration::from_secs(10)).await.expect("hello");
    assert_eq!(hello.event, "surepush.hello");

    let mut acked: Vec<String> = Vec::new();
    for i in 0..20 {
        acked.push(publish_to(&url, &format!("down/{}", i % 3), json!(i)).await);
    }
    for id in &acked {
        let e = sse
            .next_event(Duration::from_secs(10))
            .await
            .expect("event before shutdown");
        assert_eq!(&e.id, id);
    }

    // publishers keep going while the server shuts down; what they got a 201 for must
    // survive
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (url, stop, during) = (url.clone(), stop.clone(), during.clone());
        publishers.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r = c
                    .post(format!("{url}/v1/publish"))
                    .json(&json!({"topic": format!("down/p{p}"), "data": i}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => continue,
                        };
                        during
                            .lock()
                            .unwrap()
                            .push(v["ids"][0].as_str().unwrap().to_string());
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.sigterm();

    // the open stream says goodbye and ends
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut saw_goodbye = false;
    while let Some(e) = sse
        .next_any(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if e.event == "surepush.shutdown" {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v["reconnect"], true);
            saw_goodbye = true;
            break;
        }
    }
    assert!(saw_goodbye, "no surepush.shutdown event on the open stream");
    let (_, ended) = sse.until_end(Duration::from_secs(10)).await;
    assert!(ended, "the stream did not end after the goodbye");

    let (status, server) = tokio::task::spawn_blocking(move || {
        let s = server.wait_exit(Duration::from_secs(10));
        (s, server)
    })
    .await
    .unwrap();
    let status = status.expect("the server did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    drop(server);
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(20), p)
            .await
            .expect("publisher stops")
            .unwrap();
    }
    acked.extend(during.lock().unwrap().iter().cloned());

    // restart on the same data: every acknowledged event is there, in id order
    let server = spawn_server(tmp.path(), &[], &[]).await;
    let stored = stored_events(&server.base_url, "down/**").await;
    let ids = ids_of(&stored);
    let have: HashSet<&String> = ids.iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|a| !have.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged events lost across SIGTERM: {missing:?}"
    );
    let seqs: Vec<u64> = ids.iter().map(|i| seq_of(i)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // and the restarted server continues the ids
    let next = publish_to(&server.base_url, "down/after", json!("x")).await;
    assert!(seq_of(&next) > *seqs.last().unwrap());
}

// ---------------------------------------------------------------------------
// help

#[tokio::test(flavor = "multi_thread")]
async fn help_lists_every_command_and_the_examples() {
    let o = run(&["--help"], &[]).await;
    assert_ok(&o);
    let text = stdout(&o);
    for cmd in ["serve", "init", "print-config", "publish", "tail", "help"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "--help does not list {cmd}:\n{text}"
        );
    }

    for (cmd, example) in [
        ("serve", "surepush serve --config"),
        ("init", "surepush init --dir"),
        ("publish", "surepush publish https://"),
        ("tail", "--transport longpoll --since 0"),
    ] {
        let o = run(&["help", cmd], &[]).await;
        assert_ok(&o);
        let text = stdout(&o);
        assert!(text.contains("Example"), "help {cmd}:\n{text}");
        assert!(
            text.contains(example),
            "help {cmd} lacks {example:?}:\n{text}"
        );
    }
    let serve = stdout(&run(&["help", "serve"], &[]).await);
    for flag in ["--config", "--listen", "--data-dir", "--insecure-http"] {
        assert!(serve.contains(flag), "help serve lacks {flag}:\n{serve}");
    }

    let o = run(&["--version"], &[]).await;
    assert_ok(&o);
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
    // no subcommand, or an unknown one: usage error
    assert_fails(&run(&[], &[]).await);
    let o = run(&["frobnicate"], &[]).await;
    assert_fails(&o);
    assert!(stderr(&o).contains("frobnicate"));
}

/// `surepush token` mints with the data dir's key; the server accepts exactly its grants.
#[tokio::test(flavor = "multi_thread")]
async fn token_minted_by_the_cli_is_honoured_by_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    // no key yet: a clear error
    let o = run(&["token", "--data-dir", dir, "--sub", "u42"], &[]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no signing key"), "{}", describe(&o));
    let server = spawn_server(tmp.path(), &[], &[("SUREPUSH_AUTH__ENABLED", "true")]).await;
    let o = run(
        &[
            "token",
            "--data-dir",
            dir,
            "--sub",
            "u42",
            "--subscribe",
            "users/42",
            "--publish",
            "users/42",
            "--ttl",
            "10m",
        ],
        &[],
    )
    .await;
    assert_ok(&o);
    let token = stdout(&o).trim().to_string();
    assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");
    let c = support::client();
    let r = c
        .post(format!("{}/v1/publish", server.base_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"topic": "users/42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(format!("{}/v1/publish", server.base_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"topic": "users/43"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!(
            "{}/v1/events?topic=users/42&since=0",
            server.base_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // a bad pattern or a bad ttl is refused before minting
    let o = run(
        &[
            "token",
            "--data-dir",
            dir,
            "--sub",
            "x",
            "--subscribe",
            "a//b",
        ],
        &[],
    )
    .await;
    assert!(!o.status.success());
    let o = run(
        &["token", "--data-dir", dir, "--sub", "x", "--ttl", "soon"],
        &[],
    )
    .await;
    assert!(!o.status.success());
}

/// The files `surepush serve` creates are not readable by other users, whatever umask it
/// was started with (seen: the database 0644 from a plain `surepush serve`).
#[tokio::test(flavor = "multi_thread")]
async fn serve_creates_no_world_readable_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = ChildServer::spawn(&data, &[]);
    let r = client()
        .post(format!("{}/v1/publish", child.base_url))
        .json(&serde_json::json!({"topic": "perm", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    child.sigterm();
    assert!(child
        .wait_exit(std::time::Duration::from_secs(20))
        .is_some());
    let mut checked = 0;
    let mut stack = vec![data.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "{} is {mode:o}", p.display());
        checked += 1;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    assert!(checked > 5, "only {checked} paths");
}
