//! The systemd notification protocol (sd_notify), without a crate: `READY=1`,
//! `STOPPING=1`, `WATCHDOG=1` and `STATUS=...` as one datagram each to the unix socket
//! named by `NOTIFY_SOCKET` (a path, or an abstract name written `@name`).
//!
//! Why: with `Type=notify` systemd knows when the server really listens, and with
//! `WatchdogSec` it restarts a server that stops proving its storage works (src/health.rs
//! pings only after a good storage probe). Without `NOTIFY_SOCKET` (not under systemd,
//! or `Type=simple`) every call does nothing. Sending is best effort: a failure is
//! logged once at debug level and never stops the server.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where and whether to notify; read once from the environment at start.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
    /// The watchdog interval systemd expects pings within, when it is meant for us.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that never sends anything.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` of this process.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::from_vars(
            socket.as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// The notifier the given variable values describe, for a process with id `my_pid`.
    /// An unusable socket name disables notifications; a watchdog for another process
    /// (`WATCHDOG_PID` set and different) or an unparsable or zero interval means none.
    pub fn from_vars(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        my_pid: u32,
    ) -> Notifier {
        let target = notify_socket.and_then(|name| match socket_addr(name) {
            Ok(addr) => Some(addr),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; not notifying systemd");
                None
            }
        });
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(my_pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us && target.is_some())
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// True when there is a socket to notify.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The interval systemd's watchdog expects a `WATCHDOG=1` within, if it watches us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// The server listens and serves; `status` is a line for `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// The server begins to shut down.
    pub fn stopping(&self, status: &str) {
        self.send_logged(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Proves liveness to the watchdog; nothing when it does not watch this process.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send_logged("WATCHDOG=1");
        }
    }

    /// A free-form status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send_logged(&format!("STATUS={}", one_line(status)));
    }

    /// Sends `message` (newline-separated `KEY=value` assignments) as one datagram.
    /// `Ok(false)` when notifications are disabled.
    pub fn send(&self, message: &str) -> io::Result<bool> {
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let socket = UnixDatagram::unbound()?;
        let sent = socket.send_to_addr(message.as_bytes(), target)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was cut short",
            ));
        }
        Ok(true)
    }

    fn send_logged(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }
}

/// A `NOTIFY_SOCKET` value as a socket address: `@name` is Linux's abstract namespace,
/// anything else a file system path (systemd only hands out absolute ones).
fn socket_addr(name: &OsStr) -> io::Result<SocketAddr> {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty NOTIFY_SOCKET",
        )),
        Some((b'@', abstract_name)) => abstract_addr(abstract_name),
        Some(_) => SocketAddr::from_pathname(name),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// A status value stays on its line: a newline would start another assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn recv(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn notifier(socket: &str, usec: Option<&str>, pid: Option<&str>) -> Notifier {
        Notifier::from_vars(Some(OsStr::new(socket)), usec, pid, std::process::id())
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = notifier(path.to_str().unwrap(), Some("2000000"), None);
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        n.ready("serving on https://127.0.0.1:1");
        assert_eq!(
            recv(&listener),
            "READY=1\nSTATUS=serving on https://127.0.0.1:1"
        );
        n.watchdog();
        assert_eq!(recv(&listener), "WATCHDOG=1");
        n.status("two\nlines");
        assert_eq!(recv(&listener), "STATUS=two lines");
        n.stopping("bye");
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=bye");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "surepush-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = notifier(&format!("@{name}"), None, None);
        assert!(n.enabled());
        assert!(n.send("READY=1").unwrap());
        assert_eq!(recv(&listener), "READY=1");
        n.stopping("stopping");
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn watchdog_only_for_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let path = path.to_str().unwrap();
        let me = std::process::id().to_string();
        let other = (std::process::id() + 1).to_string();
        assert!(notifier(path, Some("1000"), Some(&me))
            .watchdog_interval()
            .is_some());
        for n in [
            notifier(path, Some("1000"), Some(&other)),
            notifier(path, None, None),
            notifier(path, Some("0"), None),
            notifier(path, Some("soon"), None),
        ] {
            assert_eq!(n.watchdog_interval(), None, "{n:?}");
            n.watchdog();
        }
        let mut buf = [0u8; 64];
        let r = listener.recv(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "a watchdog ping was sent for another process: {r:?}"
        );
    }

    #[test]
    fn nothing_without_notify_socket() {
        let n = Notifier::from_vars(None, Some("1000000"), None, std::process::id());
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        assert!(!n.send("READY=1").unwrap());
        n.ready("x");
        n.watchdog();
        assert!(!Notifier::disabled().enabled());
        let n = Notifier::from_vars(Some(OsStr::new("")), None, None, 1);
        assert!(!n.enabled());
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let n = notifier(path.to_str().unwrap(), None, None);
        assert!(n.send("READY=1").is_err());
        n.ready("logged, not raised");
    }
}
