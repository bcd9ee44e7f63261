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
    /// Prepare an installation: config (with --dir), self-signed certificate, signing key and
    /// the first admin user. It never overwrites anything.
    #[command(
        after_help = "With --dir, a new directory gets a commented surepush.toml too. With --config, the data\ndirectory that config names is prepared (what the packages' post-install does); running it\nagain changes nothing. The first\nadmin user, `admin`, gets a random password written to <data_dir>/initial-admin-password\n(mode 0600) and printed once.\n\nExamples:\n  surepush init --dir /srv/surepush && surepush serve --config /srv/surepush/surepush.toml\n  surepush init --config /etc/surepush/surepush.toml"
    )]
    Init(InitArgs),
    /// Manage the admin web UI's users (works while the server runs).
    #[command(
        subcommand,
        after_help = "Examples:\n  surepush admin add-user alice --config /etc/surepush/surepush.toml\n  surepush admin passwd admin --generate\n  echo \"$PW\" | surepush admin add-user ops --password-stdin\n  surepush admin list"
    )]
    Admin(AdminCommand),
    /// Print the effective configuration (file, environment and flags merged).
    #[command(
        after_help = "Examples:\n  surepush print-config\n  surepush print-config --config /etc/surepush/surepush.toml\n  SUREPUSH_PUSH__HEARTBEAT_SECS=10 surepush print-config --listen 0.0.0.0:443"
    )]
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
    /// Who got an event published with `--receipt` (or `"receipt": true`), over which
    /// transport, and who acknowledged it.
    #[command(
        after_help = "Needs a token allowed to publish to the event's topic, or an admin token.\n\nExamples:\n  ID=$(surepush publish https://127.0.0.1:8443 alarms/7 --data '\"pump 3\"' --receipt --insecure --token \"$JWT\")\n  surepush receipts https://127.0.0.1:8443 \"$ID\" --insecure --token \"$JWT\"\n  surepush receipts https://push.example 42-1a2b3c4d --json --token \"$JWT\"\n  surepush receipts https://push.example 42-1a2b3c4d --acknowledged 2 --timeout 60 || page-the-operator"
    )]
    Receipts(ReceiptsArgs),
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
    /// Find out what is wrong: check the local installation, or the network path to a server.
    #[command(after_help = DOCTOR_HELP)]
    Doctor(DoctorArgs),
    /// Write a consistent backup of the whole database, online from the running server
    /// (or offline when none listens).
    #[command(
        after_help = "The running server writes the snapshot while it holds writes for a moment; the command\nasks it with an admin token minted from the signing key (or --token), trusting the configured\ncertificate. When nothing listens on the configured address, it reads the database directly.\nThe file is written as FILE.tmp, verified, fsynced and renamed.\n\nExamples:\n  surepush backup --config /etc/surepush/surepush.toml --out /backups/surepush-$(date +%F).spbak\n  surepush backup --url https://push.example --token \"$ADMIN_JWT\" --out now.spbak"
    )]
    Backup(BackupArgs),
    /// Restore a backup into a data directory without a database.
    #[command(
        after_help = "The whole file is verified (checksum, format, schema) before anything is written; an older\nschema is migrated. The server must not be running on that data directory.\n\nExample:\n  surepush restore --data-dir /var/lib/surepush-new --from /backups/surepush-2026-10-01.spbak"
    )]
    Restore(RestoreArgs),
    /// Write the man pages (surepush.1 and one per subcommand) into a directory.
    #[command(
        hide = true,
        after_help = "Example:\n  surepush man --out target/man && man -l target/man/surepush.1"
    )]
    Man(ManArgs),
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
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Add an admin user.
    AddUser(AdminUserArgs),
    /// Set a new password for an admin user (ends the user's open sessions).
    Passwd(AdminUserArgs),
    /// Remove an admin user (ends the user's open sessions).
    Remove(AdminNameArgs),
    /// List the admin users.
    List(AdminListArgs),
}

#[derive(Args, Debug)]
pub struct AdminUserArgs {
    /// User name: letters, digits, '.', '_', '-', '@'.
    pub name: String,
    /// Read the password from the first line of stdin (for scripts).
    #[arg(long, conflicts_with = "generate")]
    pub password_stdin: bool,
    /// Generate a random password and print it.
    #[arg(long)]
    pub generate: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Args, Debug)]
pub struct AdminNameArgs {
    pub name: String,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Args, Debug)]
pub struct AdminListArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to create (becomes the data directory, with a new surepush.toml in it).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    pub dir: Option<PathBuf>,
    /// Prepare the data directory of this existing config file instead (left unchanged).
    #[arg(long, env = "SUREPUSH_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Ask for delivery receipts (read them with `surepush receipts`).
    #[arg(long)]
    pub receipt: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ReceiptsArgs {
    /// Server base URL, e.g. https://127.0.0.1:8443
    pub url: String,
    /// The event's id, as `publish` printed it (e.g. 42-1a2b3c4d).
    pub id: String,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Wait until this many subjects acknowledged it (up to --timeout); exit 3 when fewer did.
    #[arg(long, value_name = "N")]
    pub acknowledged: Option<usize>,
    /// Seconds to wait for --acknowledged (the server caps it at push.poll_timeout_max_secs).
    #[arg(long, default_value_t = 25)]
    pub timeout: u64,
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
    /// Operator rights (`surepush.admin`): may take online backups.
    #[arg(long)]
    pub admin: bool,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// File to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Server base URL (default: https://<listen> from the config). When given, the
    /// server must answer there: no offline fallback.
    #[arg(long)]
    pub url: Option<String>,
    /// Accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Trust this PEM certificate (default: the configured tls.cert_file).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Admin token (default: one minted from the signing key, valid 5 minutes).
    #[arg(long)]
    pub token: Option<String>,
    /// Read the database directly; no server may be running on it.
    #[arg(long, conflicts_with = "url")]
    pub offline: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Backup file to restore.
    #[arg(long)]
    pub from: PathBuf,
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

const DOCTOR_HELP: &str = "Without a URL: checks this machine's installation as `serve` would load it (config,
certificate, keys, data directory, disk, clock, listen port). With a URL: tests the path from
here to that server: reachability, TLS, HTTP version, clock, and for SSE streaming, SSE close
mode and long polling the time to the canary and to a test event published to a topic of its
own (surepush-doctor/<random>/...). Publishing needs a token allowed to publish and subscribe
surepush-doctor/**: --token, or one minted from the local signing key when the server's config
is here. Exit status 0 when nothing failed (warnings allowed), 1 when a check failed.

Examples:
  surepush doctor --config /etc/surepush/surepush.toml
  surepush doctor https://127.0.0.1:8443 --insecure --data-dir ./surepush-data
  surepush doctor https://push.example --token \"$JWT\" --json
  surepush token --sub doctor --publish 'surepush-doctor/**' --subscribe 'surepush-doctor/**' --ttl 10m";

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Server base URL to test from here, e.g. https://push.example:8443 (omit: local checks only).
    pub url: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds each probe step may wait.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout: u64,
}
