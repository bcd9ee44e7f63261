//! Rough first figures for the core (issue 2): durable publish throughput and server
//! memory per idle SSE connection. Loopback only, bounded in time. Benchmarks proper
//! (fan-out latency, peers side by side) are a later issue.
//!
//!   cargo bench --bench rough                      # all, default sizes
//!   cargo bench --bench rough -- publish 5         # publish for 5 s per scenario
//!   cargo bench --bench rough -- idle 2000         # 2000 idle SSE connections

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surepush"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SUREPUSH_LOG", "warn,surepush::server=info")
        .env("SUREPUSH_AUTH__ENABLED", "false")
        .env("SUREPUSH_LIMITS__PUBLISH_RATE_PER_SEC", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn surepush");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on ") {
                let _ = tx.send(line[i + 13..].trim().to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server start");
    Server {
        child,
        base,
        _dir: dir,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn client() -> reqwest::Client {
    surepush::tls::install_crypto_provider();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .http1_only()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

async fn publish_rate(env: &[(&str, &str)], publishers: usize, batch: usize, secs: u64) -> f64 {
    let server = spawn_server(env);
    let c = client();
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (c, base, count) = (c.clone(), server.base.clone(), count.clone());
            tokio::spawn(async move {
                let body: Vec<serde_json::Value> = (0..batch)
                    .map(|i| serde_json::json!({"topic": format!("bench/{p}"), "data": {"i": i, "pad": "0123456789abcdef"}}))
                    .collect();
                let body = if batch == 1 { body[0].clone() } else { serde_json::Value::Array(body) };
                while Instant::now() < deadline {
                    let r = c.post(format!("{base}/v1/publish")).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 201);
                    count.fetch_add(batch as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

async fn idle_memory(connections: usize) {
    let server = spawn_server(&[("SUREPUSH_PUSH__HEARTBEAT_SECS", "15")]);
    let pid = server.child.id();
    let c = client();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let mut held = Vec::with_capacity(connections);
    for chunk in 0..connections.div_ceil(100) {
        let n = 100.min(connections - chunk * 100);
        let futs: Vec<_> = (0..n)
            .map(|i| {
                let url = format!("{}/v1/stream?topic=idle/{}", server.base, chunk * 100 + i);
                c.get(url).send()
            })
            .collect();
        for r in futures_util::future::join_all(futs).await {
            held.push(r.expect("connect"));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!(
        "idle SSE over TLS (HTTP/1.1): {connections} connections, server RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / connections as f64
    );
    drop(held);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let n: Option<u64> = args.get(1).and_then(|a| a.parse().ok());
    if what == "all" || what == "publish" {
        let secs = n.unwrap_or(5);
        for (name, env) in [
            ("flush_every_write", vec![]),
            (
                "group_commit 2ms",
                vec![("SUREPUSH_STORAGE__DURABILITY", "group_commit")],
            ),
        ] {
            for (publishers, batch) in [(1, 1), (32, 1), (128, 1), (8, 100)] {
                let rate = publish_rate(&env, publishers, batch, secs).await;
                println!(
                    "durable publish, {name}: {publishers} publishers x batch {batch}: {rate:.0} events/s"
                );
            }
        }
    }
    if what == "all" || what == "idle" {
        idle_memory(n.unwrap_or(2000) as usize).await;
    }
}
