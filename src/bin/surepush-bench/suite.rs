//! The surepush-only workloads (fan-out per transport and protocol, idle capacity,
//! durable publish, long-poll rate, jobs) and the single-workload commands.

use std::io;
use std::net::SocketAddr;

use clap::Args;

use crate::fanout::{self, Outcome, Spec};
use crate::idle::{self, IdleOutcome};
use crate::report::{num, table, write};
use crate::target::{Kind, Proto, Target, Transport};
use crate::{child, jobs, parse_proto, parse_transport, publish, surepush_target, Common};

pub struct FanoutArgs {
    pub subs: Vec<usize>,
    pub events: u32,
    pub transports: Vec<String>,
    pub protos: Vec<String>,
    pub kind: Option<String>,
    pub addr: Option<SocketAddr>,
    pub pub_addr: Option<SocketAddr>,
    pub streams_per_conn: usize,
    pub receipts: bool,
}

fn bad(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m)
}

/// Children for the protocols asked (one TLS server serves h1 and h2).
struct Children {
    tls: Option<child::Server>,
    plain: Option<child::Server>,
}

impl Children {
    fn start(common: &Common, protos: &[Proto], env: &[(&str, &str)]) -> io::Result<Children> {
        let tls = protos.iter().any(|p| *p != Proto::Plain);
        let plain = protos.contains(&Proto::Plain);
        Ok(Children {
            tls: tls
                .then(|| child::spawn(&common.bin(), &common.data_parent, true, env))
                .transpose()?,
            plain: plain
                .then(|| child::spawn(&common.bin(), &common.data_parent, false, env))
                .transpose()?,
        })
    }

    fn target(&self, proto: Proto) -> Target {
        let s = match proto {
            Proto::Plain => self.plain.as_ref(),
            _ => self.tls.as_ref(),
        };
        surepush_target(s.expect("started for this protocol"), proto)
    }
}

pub async fn fanout_cmd(common: &Common, a: FanoutArgs) -> io::Result<bool> {
    let transports: Vec<Transport> = a
        .transports
        .iter()
        .map(|t| parse_transport(t).map_err(bad))
        .collect::<Result<_, _>>()?;
    let protos: Vec<Proto> = a
        .protos
        .iter()
        .map(|p| parse_proto(p).map_err(bad))
        .collect::<Result<_, _>>()?;
    let mut targets = Vec::new();
    let _children;
    if let Some(kind) = &a.kind {
        let addr = a
            .addr
            .ok_or_else(|| bad("--addr is needed with --kind".into()))?;
        let kind = match kind.as_str() {
            "surepush" => Kind::Surepush,
            "nchan" => Kind::Nchan,
            "pushpin" => Kind::Pushpin,
            k => return Err(bad(format!("unknown kind {k}"))),
        };
        targets.push(Target {
            label: format!("{kind:?}").to_lowercase(),
            kind,
            proto: protos.first().copied().unwrap_or(Proto::Plain),
            addr,
            pub_addr: a.pub_addr.unwrap_or(addr),
            pids: Vec::new(),
            receipts: false,
        });
    } else {
        let c = Children::start(common, &protos, &[])?;
        targets.extend(protos.iter().map(|p| c.target(*p)));
        _children = c;
    }
    for t in &mut targets {
        t.receipts = a.receipts && t.kind == Kind::Surepush;
    }
    let mut ok = true;
    for n in &a.subs {
        for t in &targets {
            for tr in &transports {
                let mut spec = Spec::new(*n, a.events, *tr);
                spec.streams_per_conn = a.streams_per_conn;
                let o = fanout::run(t, &spec).await?;
                println!("{}", o.line());
                ok &= o.correct();
            }
        }
    }
    Ok(ok)
}

pub async fn idle_cmd(common: &Common, conns: &[usize]) -> io::Result<bool> {
    for n in conns {
        for tls in [true, false] {
            let server = child::spawn(&common.bin(), &common.data_parent, tls, &[])?;
            let proto = if tls { Proto::TlsH1 } else { Proto::Plain };
            let o = idle::run(&surepush_target(&server, proto), *n).await?;
            println!("{}", o.line());
        }
    }
    Ok(true)
}

pub async fn longpoll_cmd(common: &Common, subs: usize, rate: f64, secs: u64) -> io::Result<bool> {
    let server = child::spawn(&common.bin(), &common.data_parent, true, &[])?;
    let o = longpoll_rate(&surepush_target(&server, Proto::TlsH1), subs, rate, secs).await?;
    println!("{}", longpoll_line(&o));
    Ok(o.correct())
}

async fn longpoll_rate(t: &Target, subs: usize, rate: f64, secs: u64) -> io::Result<Outcome> {
    let mut spec = Spec::new(subs, (rate * secs as f64) as u32, Transport::LongPoll);
    spec.rate = Some(rate);
    fanout::run(t, &spec).await
}

fn longpoll_line(o: &Outcome) -> String {
    format!(
        "long-poll rate: {} pollers, {} events at {:.0}/s: {:.0} poll requests/s completed; {}",
        o.connected,
        o.events,
        f64::from(o.events) / o.publish_secs.max(1e-9),
        o.requests as f64 / o.publish_secs.max(1e-9),
        o.line()
    )
}

#[derive(Args)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,9000")]
    pub subs: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    pub events: u32,
    #[arg(long, value_delimiter = ',', default_value = "sse,close,longpoll")]
    pub transports: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "tls-h1,tls-h2,plain")]
    pub protos: Vec<String>,
    #[arg(long, default_value_t = 9000)]
    pub idle_conns: usize,
    #[arg(long, default_value_t = 5)]
    pub publish_secs: u64,
    #[arg(long, default_value_t = 5000)]
    pub jobs: u32,
}

pub async fn run(a: &SuiteArgs) -> io::Result<bool> {
    let mut md = String::from("# surepush alone: every workload\n\n");
    let transports: Vec<Transport> = a
        .transports
        .iter()
        .map(|t| parse_transport(t).map_err(bad))
        .collect::<Result<_, _>>()?;
    let protos: Vec<Proto> = a
        .protos
        .iter()
        .map(|p| parse_proto(p).map_err(bad))
        .collect::<Result<_, _>>()?;
    let mut ok = true;
    let mut rows = Vec::new();
    {
        let c = Children::start(&a.common, &protos, &[])?;
        for n in &a.subs {
            for p in &protos {
                for tr in &transports {
                    let o = fanout::run(&c.target(*p), &Spec::new(*n, a.events, *tr)).await?;
                    println!("{}", o.line());
                    ok &= o.correct();
                    rows.push(fanout_row(&o));
                }
            }
        }
    }
    md.push_str(&format!(
        "## Fan-out ({} events one at a time, lockstep + 10 ms gap)\n\n",
        a.events
    ));
    md.push_str(&table(&FANOUT_HEADER, &rows));
    let mut idle_rows = Vec::new();
    for tls in [true, false] {
        let server = child::spawn(&a.common.bin(), &a.common.data_parent, tls, &[])?;
        let proto = if tls { Proto::TlsH1 } else { Proto::Plain };
        let o = idle::run(&surepush_target(&server, proto), a.idle_conns).await?;
        println!("{}", o.line());
        idle_rows.push(idle_row(&o));
    }
    md.push_str("\n## Idle capacity (SSE streams, HTTP/1.1)\n\n");
    md.push_str(&table(&IDLE_HEADER, &idle_rows));
    let pubs = publish::run(&a.common, a.publish_secs, &publish::Only::default()).await?;
    md.push_str("\n## Durable publish throughput (TLS h1, events acknowledged 201)\n\n");
    md.push_str(&table(
        &["what", "publishers", "batch", "events/s", "errors"],
        &pubs
            .iter()
            .map(|r| {
                vec![
                    r.what.clone(),
                    r.publishers.to_string(),
                    r.batch.to_string(),
                    format!("{:.0}", r.events_per_sec),
                    r.errors.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    {
        let server = child::spawn(&a.common.bin(), &a.common.data_parent, true, &[])?;
        let o = longpoll_rate(&surepush_target(&server, Proto::TlsH1), 1000, 100.0, 10).await?;
        println!("{}", longpoll_line(&o));
        ok &= o.correct();
        md.push_str("\n## Long-poll request rate under steady publishing (TLS h1)\n\n");
        md.push_str(&format!("{}\n", longpoll_line(&o)));
        let j = jobs::run(&surepush_target(&server, Proto::TlsH1), a.jobs, 4, 16).await?;
        println!("{}", j.line());
        ok &= j.correct();
        md.push_str("\n## Jobs round trip (TLS h1)\n\n");
        md.push_str(&format!("{}\n", j.line()));
    }
    write(&a.common.out, "surepush.md", &md)?;
    Ok(ok)
}

pub const FANOUT_HEADER: [&str; 13] = [
    "server",
    "protocol",
    "transport",
    "subscribers",
    "p50 ms",
    "p99 ms",
    "max ms",
    "last p50 ms",
    "last p99 ms",
    "last max ms",
    "lost",
    "dup",
    "connect s",
];

pub fn fanout_row(o: &Outcome) -> Vec<String> {
    vec![
        o.label.clone(),
        o.proto.into(),
        o.transport.into(),
        format!("{}/{}", o.connected, o.subs),
        num(o.p50_ms),
        num(o.p99_ms),
        num(o.max_ms),
        num(o.last_p50_ms),
        num(o.last_p99_ms),
        num(o.last_max_ms),
        o.lost.to_string(),
        o.duplicated.to_string(),
        num(o.connect_secs),
    ]
}

pub const IDLE_HEADER: [&str; 6] = [
    "server",
    "protocol",
    "connections held",
    "RSS before MiB",
    "RSS after MiB",
    "KiB per connection",
];

pub fn idle_row(o: &IdleOutcome) -> Vec<String> {
    vec![
        o.label.clone(),
        o.proto.into(),
        format!("{}/{}", o.held, o.conns),
        num(o.rss_before_kib as f64 / 1024.0),
        num(o.rss_after_kib as f64 / 1024.0),
        num(o.kib_per_conn()),
    ]
}
