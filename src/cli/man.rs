//! `surepush man --out DIR` (hidden): man pages generated from the command line itself,
//! `surepush.1` plus one page per subcommand (`surepush-serve.1`, ...). The package build
//! runs it on the release binary, so the pages always match the shipped flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use super::args::{Cli, ManArgs};

/// Extra sections of `surepush.1`: what a packaged install puts where.
const ROOT_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/surepush/surepush.toml\fR
Configuration of a packaged install (every key optional; the file lists each default).
.TP
\fI/var/lib/surepush\fR
Data directory of a packaged install: the database (\fIdb/\fR), the self\-signed certificate
(\fItls/cert.pem\fR, \fItls/key.pem\fR), the token signing key (\fIsigning.key\fR), the admin
users (\fIadmin\-users.json\fR) and the first admin password (\fIinitial\-admin\-password\fR).
.TP
\fI/usr/share/doc/surepush\fR
Operations guide and reverse\-proxy examples.
.SH ENVIRONMENT
.TP
\fBSUREPUSH_CONFIG\fR
Configuration file, as \fB\-\-config\fR.
.TP
\fBSUREPUSH_\fIKEY\fR, \fBSUREPUSH_\fITABLE\fB__\fIKEY\fR
Any configuration key, e.g. \fBSUREPUSH_LISTEN\fR, \fBSUREPUSH_PUSH__HEARTBEAT_SECS\fR.
Precedence: flag, then environment, then file, then default.
.TP
\fBSUREPUSH_LOG\fR
Log filter, e.g. \fBinfo\fR, \fBdebug\fR, \fBsurepush=trace\fR.
.TP
\fBSUREPUSH_TOKEN\fR
Access token of the client commands.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Graceful stop: streams are told to reconnect, in\-flight requests finish, the log is flushed.
.TP
\fBSIGHUP\fR
Reload the TLS certificate and key for new connections (\fBsystemctl reload surepush\fR).
.SH SEE ALSO
\fBsurepush\-serve\fR(1), \fBsurepush\-init\fR(1), \fBsurepush\-token\fR(1), \fBsystemctl\fR(1)
"#;

pub fn run(args: ManArgs) -> anyhow::Result<()> {
    let written = generate(&args.out)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes the pages into `out` (created if missing) and returns their paths.
pub fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut written = Vec::new();
    write_page(&root, out, &mut written)?;
    Ok(written)
}

fn write_page(cmd: &clap::Command, out: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("surepush manual");
    let path = out.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    if cmd.get_name() == "surepush" {
        page.extend_from_slice(ROOT_EXTRA.as_bytes());
    }
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, out, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_visible_subcommand_and_no_hidden_one() {
        let dir = tempfile::tempdir().unwrap();
        let pages = generate(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"surepush.1".to_string()), "{names:?}");
        assert!(names.contains(&"surepush-serve.1".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("-man")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("-help")), "{names:?}");
        let root = std::fs::read_to_string(dir.path().join("surepush.1")).unwrap();
        assert!(root.contains(".SH FILES"));
        let serve = std::fs::read_to_string(dir.path().join("surepush-serve.1")).unwrap();
        assert!(
            serve.contains("/etc/surepush/surepush.toml"),
            "examples section"
        );
    }

    #[test]
    fn every_visible_subcommand_has_examples() {
        let mut root = Cli::command();
        root.build();
        for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let after = sub
                .get_after_long_help()
                .or_else(|| sub.get_after_help())
                .map(|s| s.to_string())
                .unwrap_or_default();
            assert!(
                after.contains("Example"),
                "`surepush {} --help` has no after_help examples",
                sub.get_name()
            );
        }
    }
}
