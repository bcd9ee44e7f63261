//! Checks of the installation on this machine, as `surepush serve` would load it.

use std::ffi::CString;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use super::{der, keys};
use super::{Report, Status};
use crate::cli::args::DoctorArgs;
use crate::config::Config;

const LOCAL: &str = "local";
/// Disk headroom below either of these is a warning.
const DISK_WARN_BYTES: u64 = 1 << 30;
const DISK_WARN_PERCENT: f64 = 10.0;
/// No clock is right that says it is earlier than this (this code's own date).
const BUILD_FLOOR_UNIX: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z

/// Runs the local checks; returns the configuration when it was loaded, so the remote
/// part can mint a token with its signing key.
pub async fn run(args: &DoctorArgs, report: &mut Report) -> Option<Config> {
    let explicit = args.config.config.is_some() || args.config.data_dir.is_some();
    let (config, warnings) = match crate::cli::serve::load(&args.config) {
        Ok(x) => x,
        Err(e) => {
            report.add(LOCAL, "config", Status::Fail, format!("{e:#}"));
            return None;
        }
    };
    if args.url.is_some() && !explicit && !config.data_dir.exists() {
        report.skipped.push(format!(
            "local installation: none here (no --config or --data-dir, and no {}); pass them to check the server's own files",
            config.data_dir.display()
        ));
        return Some(config);
    }
    let source = match &args.config.config {
        Some(p) => format!("parsed {}", p.display()),
        None => "no config file: defaults and SUREPUSH_* environment, as `surepush serve` would run here".to_string(),
    };
    report
        .add(
            LOCAL,
            "config",
            Status::Ok,
            format!(
                "{source}; listen {}, data dir {}",
                config.listen,
                config.data_dir.display()
            ),
        )
        .data = json!({
        "file": args.config.config,
        "listen": config.listen.to_string(),
        "data_dir": config.data_dir,
    });
    for w in warnings {
        report.add(LOCAL, "environment", Status::Warn, w);
    }
    if config.auth.enabled {
        report.add(
            LOCAL,
            "auth",
            Status::Ok,
            format!("tokens required ({})", config.auth.algorithm),
        );
    } else {
        report.add(
            LOCAL,
            "auth",
            Status::Warn,
            "auth.enabled = false: anyone who reaches the port may publish and subscribe",
        );
    }
    data_dir(&config, report);
    disk(&config.data_dir, report);
    keys::tls(&config, report);
    keys::signing_key(&config, report);
    if args.url.is_none() {
        clock(report);
    }
    listen(&config, report).await;
    Some(config)
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The user name of a uid, or the number.
fn user_name(uid: u32) -> String {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pw's strings.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    format!("{} (uid {uid})", name.to_string_lossy())
}

/// May the current user write (and enter) this directory?
fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn data_dir(config: &Config, report: &mut Report) {
    let dir = &config.data_dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            report.add(
                LOCAL,
                "data_dir",
                Status::Warn,
                format!(
                    "{} does not exist yet; `surepush serve` creates it on first run",
                    dir.display()
                ),
            );
            return;
        }
        Err(e) => {
            report.add(
                LOCAL,
                "data_dir",
                Status::Fail,
                format!("cannot inspect {}: {e}", dir.display()),
            );
            return;
        }
    };
    if !meta.is_dir() {
        report.add(
            LOCAL,
            "data_dir",
            Status::Fail,
            format!("{} is not a directory", dir.display()),
        );
        return;
    }
    let mode = keys::mode_of(&meta);
    let me = current_uid();
    let owner = user_name(meta.uid());
    let as_whom = if meta.uid() == me {
        String::new()
    } else {
        format!(
            "; checked as {}: run doctor as the service's user for an exact answer",
            user_name(me)
        )
    };
    let db = if config.db_path().exists() {
        "database present"
    } else {
        "no database yet (made on first serve)"
    };
    let (status, message) = if !writable(dir) {
        (
            Status::Fail,
            format!(
                "{} is not writable by {}: surepush cannot store events there (owner {owner}, mode {mode:04o}); chown it to the service's user",
                dir.display(),
                user_name(me)
            ),
        )
    } else if mode & 0o002 != 0 {
        (
            Status::Warn,
            format!(
                "{} is writable by every user (mode {mode:04o}): anyone on this machine can alter the event log and keys; chmod 700 it",
                dir.display()
            ),
        )
    } else if mode & 0o004 != 0 {
        (
            Status::Warn,
            format!(
                "{} is readable by every user (mode {mode:04o}): the database holds every event; chmod 700 it",
                dir.display()
            ),
        )
    } else {
        (
            Status::Ok,
            format!(
                "{} owner {owner}, mode {mode:04o}, writable; {db}",
                dir.display()
            ),
        )
    };
    report
        .add(LOCAL, "data_dir", status, format!("{message}{as_whom}"))
        .data = json!({
        "path": dir,
        "owner_uid": meta.uid(),
        "mode": format!("{mode:04o}"),
        "writable": writable(dir),
        "world_readable": mode & 0o004 != 0,
    });
}

/// Free space where the data directory lives (or would be created).
fn disk(dir: &Path, report: &mut Report) {
    let mut probe: PathBuf = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p.to_path_buf(),
            _ => {
                probe = PathBuf::from(".");
                break;
            }
        }
    }
    let Ok(c) = CString::new(probe.as_os_str().as_bytes()) else {
        return;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path, st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        report.add(
            LOCAL,
            "disk",
            Status::Warn,
            format!("cannot measure free space at {}: {e}", probe.display()),
        );
        return;
    }
    let unit = st.f_frsize as u64;
    let free = st.f_bavail as u64 * unit;
    let total = st.f_blocks as u64 * unit;
    let percent = if total == 0 {
        100.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let summary = format!(
        "{:.1} GiB free of {:.1} GiB ({percent:.0}%) at {}",
        gib(free),
        gib(total),
        probe.display()
    );
    let status = if free < DISK_WARN_BYTES || percent < DISK_WARN_PERCENT {
        Status::Warn
    } else {
        Status::Ok
    };
    let message = if status == Status::Warn {
        format!("{summary}: low; when the disk fills, publishing fails (503) until space is freed")
    } else {
        summary
    };
    report.add(LOCAL, "disk", status, message).data = json!({
        "path": probe,
        "free_bytes": free,
        "total_bytes": total,
        "free_percent": (percent * 10.0).round() / 10.0,
    });
}

/// Without a server to compare with: the clock must not be earlier than this build.
fn clock(report: &mut Report) {
    let now = keys::now_unix();
    let exe_time = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64 - 86_400); // a day's slack for copies between machines
    let floor = exe_time.unwrap_or(0).max(BUILD_FLOOR_UNIX);
    if now < floor {
        report.add(
            LOCAL,
            "clock",
            Status::Fail,
            format!(
                "the clock says {}, before this surepush was built ({}): certificates and tokens are judged by it; fix the time (NTP)",
                der::format_unix(now),
                der::format_unix(floor)
            ),
        );
    } else {
        report.add(
            LOCAL,
            "clock",
            Status::Ok,
            format!(
                "{} (not before this build; give a URL to compare with a server)",
                der::format_unix(now)
            ),
        );
    }
}

/// The address to reach a listener bound to `addr` from this machine.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

async fn listen(config: &Config, report: &mut Report) {
    let addr = config.listen;
    let err = match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            drop(l);
            report.add(
                LOCAL,
                "listen",
                Status::Ok,
                format!("{addr} is free: no server runs on it now, `surepush serve` can bind it"),
            );
            return;
        }
        Err(e) => e,
    };
    let (status, message) = match err.kind() {
        ErrorKind::AddrInUse => {
            let scheme = if config.insecure_http {
                "http"
            } else {
                "https"
            };
            let url = format!("{scheme}://{}/healthz", reachable(addr));
            match healthz(&url).await {
                Ok(ms) => (
                    Status::Ok,
                    format!(
                        "{addr} is held by a running surepush (GET /healthz answered in {})",
                        super::human_ms(ms)
                    ),
                ),
                Err(e) => (
                    Status::Fail,
                    format!("{addr} is in use by another program ({url}: {e}); `surepush serve` cannot bind it"),
                ),
            }
        }
        ErrorKind::PermissionDenied => (
            Status::Warn,
            format!("this user may not bind {addr}: ports below 1024 need root or CAP_NET_BIND_SERVICE for the service"),
        ),
        ErrorKind::AddrNotAvailable => (
            Status::Fail,
            format!("{addr} is not an address of this machine"),
        ),
        _ => (Status::Fail, format!("cannot bind {addr}: {err}")),
    };
    report.add(LOCAL, "listen", status, message);
}

/// GET a local healthz, any certificate accepted; milliseconds on a surepush answer.
async fn healthz(url: &str) -> Result<f64, String> {
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| super::error_chain(&e))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() && body["status"] == "ok" {
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    } else {
        Err(format!("answered {status}, not like surepush"))
    }
}
