//! surepush-bench: load generator for surepush and its peers (Nchan, Pushpin), loopback
//! only, every phase bounded in time. See BENCHMARKS.md and bench/peers.sh.
//!
//!   surepush-bench quick                       # correctness smoke run (CI), < 60 s
//!   surepush-bench fanout --subs 1000,5000 --events 100
//!   surepush-bench idle --conns 9000
//!   surepush-bench publish --secs 5
//!   surepush-bench longpoll --subs 1000 --rate 100 --secs 10
//!   surepush-bench jobs --jobs 5000
//!   surepush-bench soak --secs 300                # retention's steady state (issue 14)
//!   surepush-bench suite                       # all of the above against surepush
//!   surepush-bench compare --nchan URL --pushpin URL --pushpin-pub URL ...   # peers.sh

/// The same allocator as surepush, so the raw sled ceiling is measured like for like.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod child;
mod client;
mod compare;
mod dirsize;
mod fanout;
mod h1;
mod idle;
mod jobs;
mod net;
mod publish;
mod report;
mod soak;
mod sse;
mod stats;
mod subscriber;
mod suite;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use target::{Kind, Proto, Target, Transport};

#[derive(Parser)]
#[command(
    name = "surepush-bench",
    about = "Load generator for surepush and its peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct Common {
    /// surepush binary to start (default: `surepush` next to this binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where temporary data directories go (same disk as the raw sled ceiling).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    data_parent: PathBuf,
    /// Where Markdown and SVG results are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

impl Common {
    pub fn bin(&self) -> PathBuf {
        self.bin.clone().unwrap_or_else(child::default_bin)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Correctness smoke run: ~100 subscribers, ~20 events, every transport over TLS h1,
    /// TLS h2 and plain HTTP, plus a jobs round trip. Exits non-zero on any loss.
    Quick {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        subs: usize,
        #[arg(long, default_value_t = 20)]
        events: u32,
    },
    /// Fan-out latency against surepush (started here) or a server given by URL.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Subscriber counts, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        subs: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        events: u32,
        /// sse, close, longpoll (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "sse")]
        transport: Vec<String>,
        /// plain, tls-h1, tls-h2 (comma separated; surepush only).
        #[arg(long, value_delimiter = ',', default_value = "tls-h1")]
        proto: Vec<String>,
        /// A running server instead of a child: surepush, nchan or pushpin.
        #[arg(long)]
        kind: Option<String>,
        /// Its subscriber address (host:port).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Its publish address (Pushpin's control port); default = addr.
        #[arg(long)]
        pub_addr: Option<SocketAddr>,
        #[arg(long, default_value_t = 100)]
        streams_per_conn: usize,
        /// Publish with `"receipt": true` (fan-out then marks deliveries).
        #[arg(long)]
        receipts: bool,
    },
    /// Idle capacity: connections held and server RSS per idle SSE connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,9000")]
        conns: Vec<usize>,
    },
    /// Durable publish throughput vs raw sled insert+flush on the same disk.
    Publish {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Only these publishers x batch scenarios (e.g. `4x1000,8x100`); default: all.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<publish::Scenario>,
        /// Only these durability modes (`flush_every_write`, `group_commit`); default: both.
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Skip the raw sled ceiling.
        #[arg(long)]
        no_ceiling: bool,
    },
    /// Long-poll request rate under steady publishing.
    Longpoll {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Jobs: enqueue -> lease -> complete -> result event.
    Jobs {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 5000)]
        jobs: u32,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        #[arg(long, default_value_t = 16)]
        enqueuers: usize,
    },
    /// Steady state with retention active: publishers keep publishing into a retained
    /// log; samples of rate, latency, db size and RSS, then a read-back check.
    Soak(soak::SoakArgs),
    /// Every surepush workload; writes bench/results/surepush.md.
    Suite(suite::SuiteArgs),
    /// surepush vs Nchan vs Pushpin, interleaved rounds; writes bench/results/compare.md
    /// and SVG plots.
    Compare(compare::CompareArgs),
}

pub fn parse_transport(s: &str) -> Result<Transport, String> {
    match s {
        "sse" => Ok(Transport::Sse),
        "close" | "sse-close" => Ok(Transport::Close),
        "longpoll" | "poll" => Ok(Transport::LongPoll),
        _ => Err(format!("unknown transport {s}")),
    }
}

pub fn parse_proto(s: &str) -> Result<Proto, String> {
    match s {
        "plain" => Ok(Proto::Plain),
        "tls-h1" | "tls" => Ok(Proto::TlsH1),
        "tls-h2" | "h2" => Ok(Proto::TlsH2),
        _ => Err(format!("unknown protocol {s}")),
    }
}

/// A surepush child as a target.
pub fn surepush_target(server: &child::Server, proto: Proto) -> Target {
    Target {
        label: "surepush".into(),
        kind: Kind::Surepush,
        proto,
        addr: server.addr,
        pub_addr: server.addr,
        pids: vec![server.pid],
        receipts: false,
    }
}

fn main() -> ExitCode {
    surepush::tls::install_crypto_provider();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async move {
        match cli.cmd {
            Cmd::Quick {
                common,
                subs,
                events,
            } => quick(&common, subs, events).await,
            Cmd::Fanout {
                common,
                subs,
                events,
                transport,
                proto,
                kind,
                addr,
                pub_addr,
                streams_per_conn,
                receipts,
            } => {
                suite::fanout_cmd(
                    &common,
                    suite::FanoutArgs {
                        subs,
                        events,
                        transports: transport,
                        protos: proto,
                        kind,
                        addr,
                        pub_addr,
                        streams_per_conn,
                        receipts,
                    },
                )
                .await
            }
            Cmd::Idle { common, conns } => suite::idle_cmd(&common, &conns).await,
            Cmd::Publish {
                common,
                secs,
                scenarios,
                modes,
                no_ceiling,
            } => {
                let only = publish::Only {
                    scenarios,
                    modes,
                    ceiling: !no_ceiling,
                };
                let rows = publish::run(&common, secs, &only).await?;
                for r in &rows {
                    println!("{}", r.line());
                }
                Ok(true)
            }
            Cmd::Longpoll {
                common,
                subs,
                rate,
                secs,
            } => suite::longpoll_cmd(&common, subs, rate, secs).await,
            Cmd::Jobs {
                common,
                jobs,
                workers,
                enqueuers,
            } => {
                let server = child::spawn(&common.bin(), &common.data_parent, true, &[])?;
                let o = jobs::run(
                    &surepush_target(&server, Proto::TlsH1),
                    jobs,
                    workers,
                    enqueuers,
                )
                .await?;
                println!("{}", o.line());
                Ok(o.correct())
            }
            Cmd::Soak(a) => soak::run(&a).await,
            Cmd::Suite(a) => suite::run(&a).await,
            Cmd::Compare(a) => compare::run(&a).await,
        }
    });
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("surepush-bench: FAILED (lost, duplicated or out-of-order events, or failed subscribers)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("surepush-bench: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The CI smoke run: correctness only, no timing judged.
async fn quick(common: &Common, subs: usize, events: u32) -> std::io::Result<bool> {
    let bin = common.bin();
    let tls = child::spawn(&bin, &common.data_parent, true, &[])?;
    let plain = child::spawn(&bin, &common.data_parent, false, &[])?;
    let (mut lost, mut dup, mut ooo, mut failed, mut delivered) = (0, 0, 0, 0, 0u64);
    let mut ok = true;
    for (server, proto) in [
        (&tls, Proto::TlsH1),
        (&tls, Proto::TlsH2),
        (&plain, Proto::Plain),
    ] {
        let target = surepush_target(server, proto);
        for transport in [Transport::Sse, Transport::Close, Transport::LongPoll] {
            let mut spec = fanout::Spec::new(subs, events, transport);
            spec.streams_per_conn = 25;
            spec.settle = std::time::Duration::from_millis(100);
            let o = fanout::run(&target, &spec).await?;
            println!("{}", o.line());
            lost += o.lost;
            dup += o.duplicated;
            ooo += o.out_of_order;
            failed += o.failed as u64 + (o.subs - o.connected) as u64;
            delivered += o.connected as u64 * u64::from(events) - o.lost;
            ok &= o.correct();
        }
    }
    let j = jobs::run(&surepush_target(&tls, Proto::TlsH1), 50, 2, 4).await?;
    println!("{}", j.line());
    lost += j.lost;
    dup += j.duplicated;
    delivered += j.received;
    ok &= j.correct();
    println!(
        "summary: {delivered} deliveries checked, {lost} lost, {dup} duplicated, {ooo} out of order, {failed} failed subscribers"
    );
    Ok(ok)
}
