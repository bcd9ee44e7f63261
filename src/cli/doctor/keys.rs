//! The key material on this machine: the TLS certificate and key, the token signing key.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::der;
use super::{Report, Status};
use crate::config::Config;

const LOCAL: &str = "local";
/// A certificate expiring sooner than this is a warning.
pub const CERT_WARN_DAYS: i64 = 30;

/// Permission bits of a file.
pub fn mode_of(m: &std::fs::Metadata) -> u32 {
    m.mode() & 0o7777
}

/// Seconds since the epoch, by this machine's clock.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a certificate's validity means today: status, sentence, days left.
pub fn judge_validity(not_before: i64, not_after: i64) -> (Status, String, i64) {
    let now = now_unix();
    let days_left = (not_after - now).div_euclid(86_400);
    let until = der::format_unix(not_after);
    if now > not_after {
        (
            Status::Fail,
            format!("expired on {until} ({} days ago)", -days_left),
            days_left,
        )
    } else if now < not_before {
        (
            Status::Fail,
            format!(
                "not valid before {}: the certificate or this machine's clock is wrong",
                der::format_unix(not_before)
            ),
            days_left,
        )
    } else if days_left < CERT_WARN_DAYS {
        (
            Status::Warn,
            format!("expires on {until}, in {days_left} days: renew it"),
            days_left,
        )
    } else {
        (
            Status::Ok,
            format!("valid until {until} ({days_left} days left)"),
            days_left,
        )
    }
}

pub fn tls(config: &Config, report: &mut Report) {
    if config.insecure_http {
        report.add(
            LOCAL,
            "tls",
            Status::Skip,
            "insecure_http = true: plain HTTP, TLS must be terminated in front of surepush",
        );
        return;
    }
    let (cert, key) = (config.cert_path(), config.key_path());
    let default_paths = config.tls.cert_file.is_none() && config.tls.key_file.is_none();
    if default_paths && !cert.exists() && !key.exists() {
        report.add(
            LOCAL,
            "tls_cert",
            Status::Warn,
            format!(
                "no certificate at {} yet; `surepush serve` makes a self-signed one on first run",
                cert.display()
            ),
        );
        return;
    }
    let mut cert_ok = false;
    match crate::tls::load_certs(&cert) {
        Err(e) => {
            report.add(LOCAL, "tls_cert", Status::Fail, e.to_string());
        }
        Ok(chain) => match der::validity(&chain[0]) {
            None => {
                report.add(
                    LOCAL,
                    "tls_cert",
                    Status::Fail,
                    format!(
                        "{}: the first PEM block is not a readable X.509 certificate",
                        cert.display()
                    ),
                );
            }
            Some((nb, na)) => {
                let (status, text, days_left) = judge_validity(nb, na);
                cert_ok = status != Status::Fail;
                report
                    .add(
                        LOCAL,
                        "tls_cert",
                        status,
                        format!("{}: {text}", cert.display()),
                    )
                    .data = json!({
                    "path": cert,
                    "not_before": der::format_unix(nb),
                    "not_after": der::format_unix(na),
                    "days_left": days_left,
                    "chain_len": chain.len(),
                });
            }
        },
    }
    let meta = match std::fs::metadata(&key) {
        Ok(m) => m,
        Err(e) => {
            report.add(
                LOCAL,
                "tls_key",
                Status::Fail,
                format!("cannot read {}: {e}", key.display()),
            );
            return;
        }
    };
    if let Err(e) = crate::tls::load_key(&key) {
        report.add(LOCAL, "tls_key", Status::Fail, e.to_string());
        return;
    }
    let mode = mode_of(&meta);
    let matches = if cert_ok {
        match crate::tls::CertStore::load(&cert, &key) {
            Ok(_) => "matches the certificate",
            Err(e) => {
                report.add(
                    LOCAL,
                    "tls_key",
                    Status::Fail,
                    format!("{} does not go with the certificate: {e}", key.display()),
                );
                return;
            }
        }
    } else {
        "not compared (the certificate is unusable)"
    };
    let status = if mode & 0o077 != 0 {
        Status::Warn
    } else {
        Status::Ok
    };
    let advice = if status == Status::Warn {
        ", readable by others: chmod 600 it"
    } else {
        ""
    };
    report.add(
        LOCAL,
        "tls_key",
        status,
        format!("{}: mode {mode:04o}{advice}; {matches}", key.display()),
    );
}

pub fn signing_key(config: &Config, report: &mut Report) {
    let mut probe = config.clone();
    probe.auth.enabled = true;
    if config.auth.algorithm != "HS256" {
        let what = format!(
            "verifies {} tokens with {}",
            config.auth.algorithm,
            config
                .auth
                .public_key_file
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        );
        match crate::auth::Authenticator::from_config(&probe) {
            Ok(_) => report.add(LOCAL, "signing_key", Status::Ok, what),
            Err(e) => report.add(LOCAL, "signing_key", Status::Fail, e.to_string()),
        };
        return;
    }
    let path = config.signing_key_path();
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound && config.auth.key_file.is_none() => {
            report.add(
                LOCAL,
                "signing_key",
                Status::Warn,
                format!(
                    "no token signing key at {} yet; `surepush serve` makes one on first run",
                    path.display()
                ),
            );
            return;
        }
        Err(e) => {
            let status = if config.auth.enabled {
                Status::Fail
            } else {
                Status::Warn
            };
            report.add(
                LOCAL,
                "signing_key",
                status,
                format!("cannot read {}: {e}", path.display()),
            );
            return;
        }
    };
    if let Err(e) = crate::auth::Authenticator::from_config(&probe) {
        report.add(LOCAL, "signing_key", Status::Fail, e.to_string());
        return;
    }
    let mode = mode_of(&meta);
    if mode & 0o077 != 0 {
        report.add(
            LOCAL,
            "signing_key",
            Status::Warn,
            format!(
                "{}: mode {mode:04o}, readable by others who could then mint any token; chmod 600 it",
                path.display()
            ),
        );
    } else {
        report.add(
            LOCAL,
            "signing_key",
            Status::Ok,
            format!("{}: readable, mode {mode:04o}", path.display()),
        );
    }
}
