//! The command line, as clap derives it. `surepush help <command>` shows each one.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "surepush",
    version,
    about = "Server-to-browser push that always arrives",
    long_about = "surepush delivers server-to-browser events over SSE, SSE close-after-batch, \
long polling and polling, from a durable event log, through proxies that buffer or cut \
connections.\n\nRun `surepush serve` with no arguments to start on https://127.0.0.1:8443 \
with a data directory ./surepush-data (created, with a self-signed certificate, on first run)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    #[command(
        after_help = "Examples:\n  surepush serve\n  surepush serve --config /etc/surepush/surepush.toml\n  SUREPUSH_LISTEN=0.0.0.0:443 surepush serve --data-dir /var/lib/surepush"
    )]
    Serve(ConfigArgs),
    /// Write a commented config, a self-signed certificate and a signing key into a directory.
    #[command(
        after_help = "Example:\n  surepush init --dir /var/lib/surepush\n  surepush serve --config /var/lib/surepush/surepush.toml"
    )]
    Init(InitArgs),
    /// Print the effective configuration (file, environment and flags merged).
    PrintConfig(ConfigArgs),
    /// Mint an access token (JWT) signed with the server's key.
    #[command(
        after_help = "Examples:\n  surepush token --sub u42 --subscribe 'users/42' --ttl 1h\n  surepush token --config /etc/surepush/surepush.toml --sub backend --publish 'users/**' --jobs reports --ttl 30d\n  surepush token --sub worker-1 --work reports --ttl 7d"
    )]
    Token(TokenArgs),
    /// Publish one event over the HTTP API.
    #[command(
        after_help = "Examples:\n  surepush publish https://127.0.0.1:8443 users/42 --type greeting --data '{\"hi\":1}' --insecure\n  echo '[1,2,3]' | surepush publish https://push.example users/42 --data - --token \"$JWT\""
    )]
    Publish(PublishArgs),
    /// Print events of topics as JSON lines, following them over a chosen transport.
    #[command(
        after_help = "Examples:\n  surepush tail https://127.0.0.1:8443 'users/**' --insecure\n  surepush tail https://127.0.0.1:8443 users/42 --transport longpoll --since 0 --count 10 --insecure"
    )]
    Tail(TailArgs),
    /// Run a command for each job of a queue: payload on stdin, stdout as the result.
    #[command(
        after_help = "The command runs without a shell, once per job, with the job's payload (JSON) on stdin and\nSUREPUSH_JOB_ID, SUREPUSH_QUEUE and SUREPUSH_ATTEMPT set. Exit 0 completes the job with stdout\n(JSON if it parses, else a string); any other exit fails it with the exit code and the end of\nstderr, to be retried. SIGTERM/SIGINT: finish running jobs, then exit; twice: kill them.\n\nExamples:\n  surepush worker https://127.0.0.1:8443 --queue reports --insecure -- ./make-report.sh\n  SUREPUSH_TOKEN=\"$JWT\" surepush worker https://push.example --queue thumbs --concurrency 4 -- convert-job --size 256"
    )]
    Worker(WorkerArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML config file.
    #[arg(long, env = "SUREPUSH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8443).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (default ./surepush-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve plain HTTP: only behind a TLS-terminating load balancer.
    #[arg(long)]
    pub insecure_http: bool,
    /// Log format on stderr.
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to create (becomes the data directory).
    #[arg(long)]
    pub dir: PathBuf,
    /// Address the written config listens on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Extra DNS names or IPs for the self-signed certificate.
    #[arg(long = "name")]
    pub names: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Accept any server certificate (the self-signed one of a default install).
    #[arg(long)]
    pub insecure: bool,
    /// Trust this PEM CA/certificate for the server.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Access token (JWT) sent as a Bearer token.
    #[arg(long, env = "SUREPUSH_TOKEN")]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Server base URL, e.g. https://127.0.0.1:8443
    pub url: String,
    /// Topic, e.g. users/42
    pub topic: String,
    /// Event type.
    #[arg(long = "type", default_value = "message")]
    pub kind: String,
    /// Event data as JSON; `-` reads it from stdin.
    #[arg(long, default_value = "null")]
    pub data: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SSE, response kept open.
    Sse,
    /// SSE, response closed after each batch.
    Close,
    /// Long polling.
    Longpoll,
    /// Polling once a second.
    Poll,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Server base URL.
    pub url: String,
    /// Topics or patterns (`users/*`, `users/**`).
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Start after this id (`0` = everything retained); default: only new events.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "sse")]
    pub transport: Transport,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Subject: who the token is for (shown in logs and the admin UI).
    #[arg(long)]
    pub sub: String,
    /// Topic patterns the holder may subscribe to (repeatable).
    #[arg(long)]
    pub subscribe: Vec<String>,
    /// Topic patterns the holder may publish to (repeatable).
    #[arg(long)]
    pub publish: Vec<String>,
    /// Job queues the holder may enqueue to (repeatable).
    #[arg(long)]
    pub jobs: Vec<String>,
    /// Job queues the holder may work (repeatable).
    #[arg(long)]
    pub work: Vec<String>,
    /// Lifetime, e.g. 15m, 1h, 30d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Server base URL, e.g. https://127.0.0.1:8443
    pub url: String,
    /// Queue to take jobs from.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub queue: String,
    /// Jobs run at the same time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Lease length in seconds; a running job's lease is renewed every third of it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// How long one lease request waits for jobs when the queue is empty (long polling).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub wait_secs: u64,
    /// Worker name the server records (default: hostname-pid).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub name: Option<String>,
    /// Exit after this many jobs were run and reported.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The command to run for each job, and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}
