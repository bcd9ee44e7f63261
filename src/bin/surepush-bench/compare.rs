//! surepush vs Nchan vs Pushpin in the same run: the same fan-out (SSE) and idle-capacity
//! workloads, interleaved (each round visits every server at every size, in a rotating
//! order), several rounds; medians, spread and ratios surepush/peer; SVG plots.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;

use clap::Args;

use crate::fanout::{self, Outcome, Spec};
use crate::idle::{self, IdleOutcome};
use crate::report::{line_chart, num, ratio, table, write, Series};
use crate::stats::{median, range};
use crate::target::{Kind, Proto, Target, Transport};
use crate::{child, surepush_target, Common};

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub common: Common,
    /// Nchan's address (its `/sub` and `/pub` locations).
    #[arg(long)]
    pub nchan: Option<SocketAddr>,
    /// Nchan's master pid (RSS: master + workers).
    #[arg(long)]
    pub nchan_pid: Option<u32>,
    /// Pushpin's HTTP address (`/stream?ch=` routed to the origin).
    #[arg(long)]
    pub pushpin: Option<SocketAddr>,
    /// Pushpin's control address (`POST /publish/`).
    #[arg(long)]
    pub pushpin_pub: Option<SocketAddr>,
    /// Pushpin's runner pid (RSS: it and everything it started).
    #[arg(long)]
    pub pushpin_pid: Option<u32>,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,9000")]
    pub subs: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    pub events: u32,
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,9000")]
    pub idle_conns: Vec<usize>,
    /// Leave out surepush over TLS (h1 and h2).
    #[arg(long)]
    pub no_tls: bool,
    /// Free-form note about the machine's load, copied into the report.
    #[arg(long, default_value = "")]
    pub note: String,
}

fn key(t: &Target) -> String {
    format!("{} ({})", t.label, t.proto.name())
}

pub async fn run(a: &CompareArgs) -> io::Result<bool> {
    let bin = a.common.bin();
    let plain = child::spawn(&bin, &a.common.data_parent, false, &[])?;
    let tls = (!a.no_tls)
        .then(|| child::spawn(&bin, &a.common.data_parent, true, &[]))
        .transpose()?;
    let mut targets = vec![surepush_target(&plain, Proto::Plain)];
    if let Some(tls) = &tls {
        targets.push(surepush_target(tls, Proto::TlsH1));
        targets.push(surepush_target(tls, Proto::TlsH2));
    }
    if let Some(addr) = a.nchan {
        targets.push(Target {
            label: "nchan".into(),
            kind: Kind::Nchan,
            proto: Proto::Plain,
            addr,
            pub_addr: addr,
            pids: a.nchan_pid.into_iter().collect(),
            receipts: false,
        });
    }
    if let Some(addr) = a.pushpin {
        targets.push(Target {
            label: "pushpin".into(),
            kind: Kind::Pushpin,
            proto: Proto::Plain,
            addr,
            pub_addr: a.pushpin_pub.unwrap_or(addr),
            pids: a.pushpin_pid.into_iter().collect(),
            receipts: false,
        });
    }
    let mut fan: BTreeMap<(String, usize), Vec<Outcome>> = BTreeMap::new();
    let mut idle_res: BTreeMap<(String, usize), Vec<IdleOutcome>> = BTreeMap::new();
    let mut ok = true;
    // Idle capacity first, on processes that have not served anything yet (allocators keep
    // freed memory, so a server that ran a fan-out would look cheaper than it is): one
    // ramp per server over HTTP/1.1, all connections held; surepush gets fresh children.
    let mut checkpoints = a.idle_conns.clone();
    checkpoints.sort_unstable();
    for t in &targets {
        if t.proto == Proto::TlsH2 || checkpoints.is_empty() {
            continue;
        }
        let fresh;
        let target = if t.kind == Kind::Surepush {
            fresh = child::spawn(&bin, &a.common.data_parent, t.proto != Proto::Plain, &[])?;
            surepush_target(&fresh, t.proto)
        } else if t.pids.is_empty() {
            continue;
        } else {
            t.clone()
        };
        for o in idle::ramp(&target, &checkpoints).await? {
            idle_res.entry((key(t), o.conns)).or_default().push(o);
        }
    }
    for round in 0..a.rounds {
        println!("== round {} of {}", round + 1, a.rounds);
        for &n in &a.subs {
            for i in 0..targets.len() {
                let t = &targets[(i + round) % targets.len()];
                let o = fanout::run(t, &Spec::new(n, a.events, Transport::Sse)).await?;
                println!("round {}: {}", round + 1, o.line());
                ok &= o.correct();
                fan.entry((key(t), n)).or_default().push(o);
            }
        }
    }
    let md = render(a, &targets, &fan, &idle_res);
    write(&a.common.out, "compare.md", &md)?;
    plots(a, &targets, &fan, &idle_res)?;
    Ok(ok)
}

fn med<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&v.iter().map(f).collect::<Vec<_>>())
}

fn spread<T>(v: &[T], f: impl Fn(&T) -> f64) -> String {
    let (lo, hi) = range(&v.iter().map(f).collect::<Vec<_>>());
    format!("{}–{}", num(lo), num(hi))
}

fn render(
    a: &CompareArgs,
    targets: &[Target],
    fan: &BTreeMap<(String, usize), Vec<Outcome>>,
    idle_res: &BTreeMap<(String, usize), Vec<IdleOutcome>>,
) -> String {
    let mut md = format!(
        "# surepush vs Nchan vs Pushpin (same run, interleaved)\n\n{} rounds; medians over rounds, with the min–max spread of p99 over rounds. \
         Fan-out: SSE, {} events published one at a time (the next once every subscriber had the previous one, plus 10 ms). \
         Latency: from just before the publish request is written to the subscriber parsing the event; \
         \"last\" = per event, when the last subscriber had it.{}\n\n",
        a.rounds,
        a.events,
        if a.note.is_empty() { String::new() } else { format!("\n\nMachine load: {}", a.note) }
    );
    let mut rows = Vec::new();
    for &n in &a.subs {
        for t in targets {
            let Some(v) = fan.get(&(key(t), n)) else {
                continue;
            };
            let lost: u64 = v.iter().map(|o| o.lost).sum();
            let dup: u64 = v.iter().map(|o| o.duplicated).sum();
            rows.push(vec![
                t.label.clone(),
                t.proto.name().into(),
                n.to_string(),
                num(med(v, |o| o.connected as f64)),
                num(med(v, |o| o.p50_ms)),
                num(med(v, |o| o.p99_ms)),
                spread(v, |o| o.p99_ms),
                num(med(v, |o| o.last_p50_ms)),
                num(med(v, |o| o.last_p99_ms)),
                spread(v, |o| o.last_p99_ms),
                num(med(v, |o| o.max_ms)),
                format!("{lost}/{dup}"),
            ]);
        }
    }
    md.push_str("## Fan-out latency (SSE stream)\n\n");
    md.push_str(&table(
        &[
            "server",
            "protocol",
            "subscribers",
            "connected",
            "p50 ms",
            "p99 ms",
            "p99 spread",
            "last p50 ms",
            "last p99 ms",
            "last p99 spread",
            "max ms",
            "lost/dup (all rounds)",
        ],
        &rows,
    ));
    // ratios: surepush plain and TLS h1 against each peer
    let mut rrows = Vec::new();
    for &n in &a.subs {
        for ours in targets
            .iter()
            .filter(|t| t.kind == Kind::Surepush && t.proto != Proto::TlsH2)
        {
            for peer in targets.iter().filter(|t| t.kind != Kind::Surepush) {
                let (Some(o), Some(p)) = (fan.get(&(key(ours), n)), fan.get(&(key(peer), n)))
                else {
                    continue;
                };
                rrows.push(vec![
                    n.to_string(),
                    format!("{} / {}", key(ours), peer.label),
                    ratio(med(o, |x| x.p50_ms), med(p, |x| x.p50_ms)),
                    ratio(med(o, |x| x.p99_ms), med(p, |x| x.p99_ms)),
                    ratio(med(o, |x| x.last_p99_ms), med(p, |x| x.last_p99_ms)),
                ]);
            }
        }
    }
    md.push_str("\n## Ratios surepush / peer (medians; below 1 = surepush faster)\n\n");
    md.push_str(&table(
        &["subscribers", "pair", "p50", "p99", "last p99"],
        &rrows,
    ));
    let mut irows = Vec::new();
    for &n in &a.idle_conns {
        for t in targets {
            let Some(v) = idle_res.get(&(key(t), n)) else {
                continue;
            };
            irows.push(vec![
                t.label.clone(),
                t.proto.name().into(),
                n.to_string(),
                num(med(v, |o| o.held as f64)),
                num(med(v, |o| o.rss_after_kib as f64 / 1024.0)),
                num(med(v, |o| o.kib_per_conn())),
                spread(v, |o| o.kib_per_conn()),
                num(med(v, |o| o.bench_kib_per_conn)),
            ]);
        }
    }
    md.push_str(
        "\n## Idle capacity (SSE streams over HTTP/1.1; server RSS from /proc, process tree)\n\n",
    );
    md.push_str(&table(
        &[
            "server",
            "protocol",
            "connections",
            "held",
            "RSS MiB with them",
            "KiB per connection",
            "spread",
            "bench KiB per connection",
        ],
        &irows,
    ));
    let mut irr = Vec::new();
    for &n in &a.idle_conns {
        for ours in targets
            .iter()
            .filter(|t| t.kind == Kind::Surepush && t.proto != Proto::TlsH2)
        {
            for peer in targets.iter().filter(|t| t.kind != Kind::Surepush) {
                let (Some(o), Some(p)) =
                    (idle_res.get(&(key(ours), n)), idle_res.get(&(key(peer), n)))
                else {
                    continue;
                };
                irr.push(vec![
                    n.to_string(),
                    format!("{} / {}", key(ours), peer.label),
                    ratio(med(o, |x| x.kib_per_conn()), med(p, |x| x.kib_per_conn())),
                ]);
            }
        }
    }
    md.push_str("\n## RSS per idle connection, ratio surepush / peer\n\n");
    md.push_str(&table(&["connections", "pair", "KiB per connection"], &irr));
    md.push_str("\n![p99 latency vs subscribers](latency_p99.svg)\n\n![last-subscriber p99 vs subscribers](last_p99.svg)\n\n![RSS vs idle connections](rss.svg)\n");
    md
}

fn plots(
    a: &CompareArgs,
    targets: &[Target],
    fan: &BTreeMap<(String, usize), Vec<Outcome>>,
    idle_res: &BTreeMap<(String, usize), Vec<IdleOutcome>>,
) -> io::Result<()> {
    let lat = |f: fn(&Outcome) -> f64| -> Vec<Series> {
        targets
            .iter()
            .map(|t| Series {
                name: key(t),
                points: a
                    .subs
                    .iter()
                    .filter_map(|&n| fan.get(&(key(t), n)).map(|v| (n as f64, med(v, f))))
                    .collect(),
            })
            .collect()
    };
    write(
        &a.common.out,
        "latency_p99.svg",
        &line_chart(
            "Fan-out p99 latency (SSE, median of rounds)",
            "subscribers",
            "p99 ms",
            &lat(|o| o.p99_ms),
        ),
    )?;
    write(
        &a.common.out,
        "last_p99.svg",
        &line_chart(
            "Time until the last subscriber has an event, p99",
            "subscribers",
            "last-subscriber p99 ms",
            &lat(|o| o.last_p99_ms),
        ),
    )?;
    let rss: Vec<Series> = targets
        .iter()
        .filter(|t| t.proto != Proto::TlsH2)
        .map(|t| Series {
            name: key(t),
            points: a
                .idle_conns
                .iter()
                .filter_map(|&n| {
                    idle_res.get(&(key(t), n)).map(|v| {
                        (
                            n as f64,
                            med(v, |o| {
                                o.rss_after_kib.saturating_sub(o.rss_before_kib) as f64 / 1024.0
                            }),
                        )
                    })
                })
                .collect(),
        })
        .collect();
    write(
        &a.common.out,
        "rss.svg",
        &line_chart(
            "Server RSS added by idle SSE connections",
            "idle connections",
            "RSS added, MiB",
            &rss,
        ),
    )
}
