//! `surepush doctor [URL]`: finds out what is wrong and says it in plain words.
//!
//! Without a URL it checks the local installation as `serve` would load it (config,
//! certificate, keys, data directory, disk, clock, listen port). With a URL it tests the
//! network path from this machine: reachability, TLS, HTTP version, clock, and for each
//! transport (SSE stream, SSE close-after-batch, long poll) the time to the canary and
//! to a test event published to a topic of its own, then gives a verdict.
//!
//! Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed.

mod der;
mod keys;
mod local;
mod probe;
mod remote;
mod tls_peek;
mod verdict;

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::args::DoctorArgs;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    /// "local" (this machine's installation) or "server" (seen through the URL).
    pub section: &'static str,
    pub name: &'static str,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: &'static str,
    /// The worst status of any check.
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The conclusion, one plain sentence per finding.
    pub verdict: Vec<String>,
    pub checks: Vec<Check>,
    /// What was not checked, and why.
    pub skipped: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<remote::Facts>,
}

impl Report {
    fn new(url: Option<String>) -> Report {
        Report {
            version: env!("CARGO_PKG_VERSION"),
            status: Status::Ok,
            url,
            verdict: Vec::new(),
            checks: Vec::new(),
            skipped: Vec::new(),
            remote: None,
        }
    }

    /// Records a check; returns it so the caller can attach `data`.
    fn add(
        &mut self,
        section: &'static str,
        name: &'static str,
        status: Status,
        message: impl Into<String>,
    ) -> &mut Check {
        if status != Status::Skip {
            self.status = self.status.max(status);
        }
        self.checks.push(Check {
            section,
            name,
            status,
            message: message.into(),
            data: Value::Null,
        });
        self.checks.last_mut().expect("just pushed")
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    fn names(&self, section: &str, status: Status) -> String {
        let names: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.section == section && c.status == status)
            .map(|c| c.name)
            .collect();
        names.join(", ")
    }

    /// The verdict about the local installation, when one was checked.
    fn local_verdict(&mut self) {
        if !self.checks.iter().any(|c| c.section == "local") {
            return;
        }
        let failed = self.names("local", Status::Fail);
        let warned = self.names("local", Status::Warn);
        self.verdict.push(if !failed.is_empty() {
            format!("The local installation has problems that need fixing: {failed}.")
        } else if !warned.is_empty() {
            format!("The local installation is usable, with warnings: {warned}.")
        } else {
            "The local installation looks healthy.".to_string()
        });
    }

    fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "surepush doctor {}", self.version);
        for (section, title) in [
            ("local", "Local installation".to_string()),
            (
                "server",
                format!("Server {}", self.url.as_deref().unwrap_or_default()),
            ),
        ] {
            let checks: Vec<&Check> = self
                .checks
                .iter()
                .filter(|c| c.section == section)
                .collect();
            if checks.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title}");
            let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in checks {
                let _ = writeln!(
                    out,
                    "  {:<5} {:<width$}  {}",
                    c.status.label(),
                    c.name,
                    c.message
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\nNot checked");
            for s in &self.skipped {
                let _ = writeln!(out, "  - {s}");
            }
        }
        let _ = writeln!(out, "\nVerdict");
        for v in &self.verdict {
            let _ = writeln!(out, "  {v}");
        }
        let (warn, fail) = (self.count(Status::Warn), self.count(Status::Fail));
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let _ = writeln!(
            out,
            "\nResult: {} ({}, {})",
            match self.status {
                Status::Fail => "FAILED",
                Status::Warn => "ok, with warnings",
                _ => "ok",
            },
            plural(fail, "failure"),
            plural(warn, "warning")
        );
        out
    }
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let mut report = Report::new(args.url.clone());
    let config = local::run(&args, &mut report).await;
    report.local_verdict();
    if let Some(url) = &args.url {
        remote::run(url, &args, config.as_ref(), &mut report).await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    let failed = report.count(Status::Fail);
    if failed > 0 {
        anyhow::bail!(
            "doctor: {failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// A duration for people: `0.4 ms`, `38 ms`, `2.1 s`.
pub(crate) fn human_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// Every message in an error's chain, without repeats.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_worst_check() {
        let mut r = Report::new(None);
        r.add("local", "a", Status::Ok, "fine");
        r.add("local", "b", Status::Skip, "n/a");
        assert_eq!(r.status, Status::Ok);
        r.add("local", "c", Status::Warn, "hmm");
        assert_eq!(r.status, Status::Warn);
        r.add("server", "d", Status::Fail, "broken");
        r.add("server", "e", Status::Ok, "fine");
        assert_eq!(r.status, Status::Fail);
        r.local_verdict();
        assert_eq!(
            r.verdict,
            ["The local installation is usable, with warnings: c."]
        );
        let text = r.render_text();
        assert!(text.contains("FAIL  d  broken"), "{text}");
        assert!(
            text.contains("Result: FAILED (1 failure, 1 warning)"),
            "{text}"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_ms(0.42), "0.4 ms");
        assert_eq!(human_ms(38.2), "38 ms");
        assert_eq!(human_ms(2100.0), "2.1 s");
    }
}
