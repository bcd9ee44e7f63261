use clap::Parser;
use surepush::cli::{self, Cli, Command};

/// jemalloc: threads free what others allocated (the writer's records, sled's buffers)
/// without contending on glibc's arena locks, which held durable publish throughput back
/// by a quarter; and a connection's memory stays as small (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => cli::serve::run(a).await,
        Command::PrintConfig(a) => cli::serve::print_config(a),
        Command::Init(a) => cli::init::run(a),
        Command::Admin(a) => cli::admin::run(a),
        Command::Token(a) => cli::token::run(a),
        Command::Publish(a) => cli::publish::run(a).await,
        Command::Receipts(a) => cli::receipts::run(a).await,
        Command::Tail(a) => cli::tail::run(a).await,
        Command::Worker(a) => cli::worker::run(a).await,
        Command::Doctor(a) => cli::doctor::run(a).await,
        Command::Backup(a) => cli::backup::backup(a).await,
        Command::Restore(a) => cli::backup::restore(a).await,
        Command::Man(a) => cli::man::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surepush: {e:#}");
            // 75 (EX_TEMPFAIL) when storage failed for good: a restart heals it.
            match e.downcast_ref::<surepush::server::ServerError>() {
                Some(e) => std::process::ExitCode::from(e.exit_code()),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
