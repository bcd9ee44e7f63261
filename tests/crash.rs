//! Crash safety: publishers run against the real binary, which is killed with SIGKILL at
//! a random moment; after a restart every acknowledged (201) event is in the log, in
//! order, with no gap in what was acknowledged, and ids are never reused.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const PUBLISHERS: usize = 4;
const ROUNDS: usize = 4;

#[derive(Default)]
struct Acked {
    /// per publisher: (n, id) in publish order
    by_publisher: HashMap<usize, Vec<(u64, String)>>,
}

async fn publisher(base: String, p: usize, start_n: u64, acked: Arc<Mutex<Acked>>) {
    let c = client_h1();
    let mut n = start_n;
    loop {
        // publisher 0 sends batches of 5 (all-or-nothing), the others single events
        let batch = if p == 0 { 5 } else { 1 };
        let body: Vec<Value> = (0..batch)
            .map(|i| json!({"topic": format!("crash/{p}"), "type": "c", "data": {"p": p, "n": n + i}}))
            .collect();
        let r = c
            .post(format!("{base}/v1/publish"))
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(r) = r else { return };
        if r.status() != 201 {
            return;
        }
        let Ok(v) = r.json::<Value>().await else {
            return;
        };
        let ids = v["ids"].as_array().unwrap();
        let mut a = acked.lock().unwrap();
        for (i, id) in ids.iter().enumerate() {
            a.by_publisher
                .entry(p)
                .or_default()
                .push((n + i as u64, id.as_str().unwrap().to_string()));
        }
        n += batch;
    }
}

async fn read_all(base: &str) -> Vec<Value> {
    read_events(base, "crash/**", "0").await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_loses_no_acknowledged_event() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let env = [("SUREPUSH_STORAGE__RETENTION_MAX_EVENTS_PER_TOPIC", "0")];
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut max_seq_before = 0u64;
    let mut total_checked = 0usize;
    for round in 0..ROUNDS {
        let mut server = ChildServer::spawn_env(dir.path(), &[], &env);
        // resume each publisher after what the log holds (unacked tails may be there)
        let log = read_all(&server.base_url).await;
        let mut next_n: HashMap<usize, u64> = HashMap::new();
        for e in &log {
            let p = e["data"]["p"].as_u64().unwrap() as usize;
            let n = e["data"]["n"].as_u64().unwrap();
            let slot = next_n.entry(p).or_default();
            *slot = (*slot).max(n + 1);
        }
        let tasks: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                tokio::spawn(publisher(
                    server.base_url.clone(),
                    p,
                    next_n.get(&p).copied().unwrap_or(0),
                    acked.clone(),
                ))
            })
            .collect();
        let ms = 300 + rand::random_range(0..1200);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("publisher did not notice the crash")
                .unwrap();
        }
        drop(server);

        let server = ChildServer::spawn_env(dir.path(), &[], &env);
        let log = read_all(&server.base_url).await;
        // ids strictly increasing in log order
        let seqs: Vec<u64> = log
            .iter()
            .map(|e| seq_of(e["id"].as_str().unwrap()))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "round {round}: log out of order"
        );
        let in_log: HashMap<&str, &Value> =
            log.iter().map(|e| (e["id"].as_str().unwrap(), e)).collect();
        let a = acked.lock().unwrap();
        let mut acked_count = 0;
        for (p, list) in &a.by_publisher {
            for (n, id) in list {
                let e = in_log
                    .get(id.as_str())
                    .unwrap_or_else(|| panic!("round {round}: acknowledged {id} (p{p} n{n}) lost"));
                assert_eq!(e["data"]["n"].as_u64(), Some(*n), "{id} holds other data");
                acked_count += 1;
            }
            // per publisher, the log holds 0..m without gaps, m >= what was acknowledged
            let ns: Vec<u64> = log
                .iter()
                .filter(|e| e["data"]["p"].as_u64() == Some(*p as u64))
                .map(|e| e["data"]["n"].as_u64().unwrap())
                .collect();
            assert!(
                ns.iter().enumerate().all(|(i, n)| *n == i as u64),
                "round {round}: publisher {p} has a gap or duplicate"
            );
            assert!(ns.len() >= list.len());
            if *p == 0 {
                assert_eq!(ns.len() % 5, 0, "a batch was partly written");
            }
        }
        // ids are never reused across restarts
        let new_max = seqs.last().copied().unwrap_or(0);
        assert!(new_max >= max_seq_before);
        max_seq_before = new_max;
        total_checked = acked_count;
        eprintln!(
            "crash round {round}: killed after {ms} ms, {acked_count} acknowledged events checked, log holds {}",
            log.len()
        );
        drop(a);
        drop(server);
    }
    assert!(total_checked > 0, "publishers never got an acknowledgement");
}
