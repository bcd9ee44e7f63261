//! Command-line subcommands (definitions in `args`, one module per command).

pub mod admin;
pub mod args;
pub mod backup;
pub mod client;
pub mod doctor;
pub mod init;
mod log_escape;
pub mod man;
pub mod publish;
pub mod receipts;
pub mod serve;
pub mod tail;
pub mod token;
pub mod worker;

pub use args::{Cli, Command};

/// Routes tracing to stderr, human-readable or JSON.
pub fn init_logging(format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SUREPUSH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        use tracing_subscriber::field::MakeExt;
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(log_escape::write_field).delimited(" "),
            )
            .try_init()
    };
}
