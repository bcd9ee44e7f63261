//! `surepush serve` and `surepush print-config`.

use anyhow::Context;

use super::args::ConfigArgs;
use crate::config::{Config, Overrides};

pub fn load(args: &ConfigArgs) -> anyhow::Result<(Config, Vec<String>)> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        insecure_http: args.insecure_http,
        log_format: args.log_format.clone(),
    };
    Ok(Config::load(
        args.config.as_deref(),
        std::env::vars(),
        &overrides,
    )?)
}

pub fn print_config(args: ConfigArgs) -> anyhow::Result<()> {
    let (config, warnings) = load(&args)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", config.to_toml());
    Ok(())
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    restrict_new_files();
    let (config, warnings) = load(&args)?;
    super::init_logging(&config.log_format);
    for w in warnings {
        tracing::warn!("{w}");
    }
    crate::tls::install_crypto_provider();
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    crate::server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Files the server creates (database, segments, keys, backups) are not for other users:
/// at most 0640 and directories 0750, also when it is not started by the packaged unit
/// (which sets `UMask=0027` too). Seen: database files 0644 from a plain `surepush serve`.
fn restrict_new_files() {
    // SAFETY: umask(2) only sets the process's file mode mask; it cannot fail.
    let old = unsafe { libc::umask(0o027) };
    // keep anything stricter the operator already set
    unsafe { libc::umask(old | 0o027) };
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
