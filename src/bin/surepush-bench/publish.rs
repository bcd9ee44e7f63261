//! Durable publish throughput: events/s acknowledged (201) by surepush with the default
//! durability (flush every write, concurrent publishes share a flush) and with group
//! commit, one and many publishers, single events and batches; and the ceiling: raw sled
//! insert + flush in this process, on the same disk.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::child;
use crate::target::Proto;
use crate::Common;

#[derive(Clone, Debug)]
pub struct PubRow {
    pub what: String,
    pub publishers: usize,
    pub batch: usize,
    pub events_per_sec: f64,
    pub errors: u64,
}

impl PubRow {
    pub fn line(&self) -> String {
        format!(
            "publish {}: {} publishers x batch {}: {:.0} events/s ({} errors)",
            self.what, self.publishers, self.batch, self.events_per_sec, self.errors
        )
    }
}

const SCENARIOS: [Scenario; 5] = [
    Scenario(1, 1),
    Scenario(16, 1),
    Scenario(64, 1),
    Scenario(8, 100),
    Scenario(4, 1000),
];

/// `publishers x batch`, written `4x1000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario(pub usize, pub usize);

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not PUBLISHERSxBATCH, e.g. 4x1000");
        let (p, b) = s.split_once('x').ok_or_else(bad)?;
        let p: usize = p.trim().parse().map_err(|_| bad())?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        if p == 0 || b == 0 {
            return Err(bad());
        }
        Ok(Scenario(p, b))
    }
}

/// Which runs (e.g. one case to profile); empty lists mean the default set.
#[derive(Clone, Debug)]
pub struct Only {
    pub scenarios: Vec<Scenario>,
    pub modes: Vec<String>,
    pub ceiling: bool,
}

impl Default for Only {
    fn default() -> Self {
        Only {
            scenarios: Vec::new(),
            modes: Vec::new(),
            ceiling: true,
        }
    }
}

pub async fn run(common: &Common, secs: u64, only: &Only) -> io::Result<Vec<PubRow>> {
    let mut rows = Vec::new();
    for (mode, what, env) in [
        (
            "flush_every_write",
            "surepush flush_every_write (default)",
            vec![],
        ),
        (
            "group_commit",
            "surepush group_commit 2 ms",
            vec![("SUREPUSH_STORAGE__DURABILITY", "group_commit")],
        ),
    ] {
        if !only.modes.is_empty() && !only.modes.iter().any(|m| m == mode) {
            continue;
        }
        let scenarios = if only.scenarios.is_empty() {
            &SCENARIOS[..]
        } else {
            &only.scenarios[..]
        };
        for &scenario in scenarios {
            let Scenario(publishers, batch) = scenario;
            let server = child::spawn(&common.bin(), &common.data_parent, true, &env)?;
            let target = crate::surepush_target(&server, Proto::TlsH1);
            let (rate, errors) = publish_rate(&target, publishers, batch, secs).await;
            rows.push(PubRow {
                what: what.into(),
                publishers,
                batch,
                events_per_sec: rate,
                errors,
            });
            println!("{}", rows.last().expect("pushed").line());
        }
    }
    if !only.ceiling {
        return Ok(rows);
    }
    let dir = common.data_parent.clone();
    for (fsync, batch) in [false, true]
        .into_iter()
        .flat_map(|f| [1usize, 100, 1000].map(|b| (f, b)))
    {
        let d = dir.clone();
        let rate = tokio::task::spawn_blocking(move || raw_sled(&d, batch, fsync, secs))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        rows.push(PubRow {
            what: if fsync {
                "raw sled insert+flush+fdatasync (ceiling, as durable as surepush)".into()
            } else {
                "raw sled insert+flush (ceiling)".into()
            },
            publishers: 1,
            batch,
            events_per_sec: rate,
            errors: 0,
        });
        println!("{}", rows.last().expect("pushed").line());
    }
    Ok(rows)
}

async fn publish_rate(
    target: &crate::target::Target,
    publishers: usize,
    batch: usize,
    secs: u64,
) -> (f64, u64) {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (mut c, count, errors) = (target.publisher(), count.clone(), errors.clone());
            tokio::spawn(async move {
                let one = |i: usize| {
                    format!(
                        "{{\"topic\":\"bench/{p}\",\"data\":{{\"i\":{i},\"pad\":\"0123456789abcdef0123456789abcdef\"}}}}"
                    )
                };
                let body = if batch == 1 {
                    one(0)
                } else {
                    format!("[{}]", (0..batch).map(one).collect::<Vec<_>>().join(","))
                };
                while Instant::now() < deadline {
                    match c
                        .call(
                            "POST",
                            "/v1/publish",
                            &[("Content-Type", "application/json")],
                            Some(body.as_bytes()),
                        )
                        .await
                    {
                        Ok((h, _)) if h.status == 201 => {
                            count.fetch_add(batch as u64, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            c.reset();
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (
        count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    )
}

/// sled alone: `batch` inserts of an event-sized record, then one flush, repeated;
/// with `fsync`, an fdatasync of sled's data file after each flush, as surepush does.
fn raw_sled(parent: &Path, batch: usize, fsync: bool, secs: u64) -> io::Result<f64> {
    let dir = parent.join(format!("surepush-bench-sled-{:08x}", rand::random::<u32>()));
    let result = (|| {
        let db = sled::Config::new()
            .path(&dir)
            .open()
            .map_err(io::Error::other)?;
        let tree = db.open_tree("events").map_err(io::Error::other)?;
        let data_file = std::fs::File::open(dir.join(surepush::store::SLED_DATA_FILE))?;
        let value = vec![b'x'; 160];
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(secs);
        let mut seq: u64 = 0;
        while Instant::now() < deadline {
            let mut b = sled::Batch::default();
            for _ in 0..batch {
                seq += 1;
                b.insert(&seq.to_be_bytes(), value.as_slice());
            }
            tree.apply_batch(b).map_err(io::Error::other)?;
            db.flush().map_err(io::Error::other)?;
            if fsync {
                data_file.sync_data()?;
            }
        }
        Ok(seq as f64 / t0.elapsed().as_secs_f64())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
