//! surepush as a child process (temp data dir, auth off, no publish rate limit, no per-IP
//! connection cap), and process memory read from /proc.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    dir: PathBuf,
    /// The data directory was given (not made here): left on disk at the end.
    keep: bool,
}

impl Server {
    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The surepush binary next to this one (target/<profile>/surepush) unless given.
pub fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("surepush")))
        .unwrap_or_else(|| PathBuf::from("target/release/surepush"))
}

/// Starts `surepush serve` on 127.0.0.1:0 in a fresh data directory under `data_parent`
/// (removed at the end) and waits for its "listening on" line.
pub fn spawn(
    bin: &Path,
    data_parent: &Path,
    tls: bool,
    env: &[(&str, &str)],
) -> io::Result<Server> {
    let dir = data_parent.join(format!(
        "surepush-bench-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    spawn_in(bin, &dir, false, tls, env)
}

/// Starts `surepush serve` on 127.0.0.1:0 with `--data-dir dir` (created if missing;
/// with `keep`, left on disk at the end) and waits for its "listening on" line.
pub fn spawn_in(
    bin: &Path,
    dir: &Path,
    keep: bool,
    tls: bool,
    env: &[(&str, &str)],
) -> io::Result<Server> {
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(&dir)?;
    // `SUREPUSH_BENCH_SERVER_CPUS=0`: the server runs pinned to those CPUs (taskset execs
    // it, so the pid is the server's), the way bench/peers.sh pins every server it compares.
    let mut cmd = match std::env::var("SUREPUSH_BENCH_SERVER_CPUS") {
        Ok(cpus) if !cpus.is_empty() => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus.as_str()]).arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("SUREPUSH_LOG", "warn,surepush::server=info")
        .env("SUREPUSH_AUTH__ENABLED", "false")
        .env("SUREPUSH_LIMITS__PUBLISH_RATE_PER_SEC", "0")
        .env("SUREPUSH_LIMITS__MAX_CONNECTIONS_PER_IP", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !tls {
        cmd.arg("--insecure-http");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display())))?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on ") {
                let url = line[i + 13..].trim();
                let _ = tx.send(url.rsplit("://").next().unwrap_or(url).to_string());
            } else if line.contains("ERROR") || line.contains("panicked") {
                eprintln!("surepush: {line}");
            }
        }
    });
    let pid = child.id();
    let server = |addr| Server {
        child,
        addr,
        pid,
        dir: dir.clone(),
        keep,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => match a.parse() {
            Ok(addr) => Ok(server(addr)),
            Err(_) => Err(io::Error::other(format!("bad listen address {a}"))),
        },
        Err(_) => {
            drop(server("127.0.0.1:0".parse().expect("addr")));
            Err(io::Error::other("surepush did not start within 60 s"))
        }
    }
}

/// VmRSS of a process, KiB (0 if gone).
pub fn rss_kib(pid: u32) -> u64 {
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

/// The processes and all their descendants.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for &(c, pp) in &parent {
            if pp == p && !out.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// Summed VmRSS of the processes and their descendants, KiB.
pub fn tree_rss_kib(roots: &[u32]) -> u64 {
    tree(roots).into_iter().map(rss_kib).sum()
}
