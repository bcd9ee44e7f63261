//! `surepush receipts`: who got an event and who acknowledged it.

use anyhow::Context;

use super::args::ReceiptsArgs;
use super::client;

pub async fn run(args: ReceiptsArgs) -> anyhow::Result<()> {
    let http = client::build(&args.client)?;
    let path = format!("/v1/events/{}/receipts", args.id);
    let url = match args.acknowledged {
        Some(n) => client::url_with_query(
            &args.url,
            &path,
            &[
                ("acknowledged", n.to_string()),
                ("timeout", args.timeout.to_string()),
            ],
        ),
        None => client::endpoint(&args.url, &path),
    };
    let req = http.get(url);
    let resp = client::with_token(req, &args.client)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", args.url))?;
    let resp = client::check(resp).await?;
    let v: serde_json::Value = resp.json().await.context("reading the reply")?;
    if args.json {
        println!("{v}");
    } else {
        print!("{}", table(&v));
    }
    if let Some(n) = args.acknowledged {
        let got = v["acknowledged"].as_u64().unwrap_or(0);
        if got < n as u64 {
            eprintln!(
                "surepush receipts: only {got} of {n} acknowledged within {} s",
                args.timeout
            );
            std::process::exit(3);
        }
    }
    Ok(())
}

/// The answer as a few lines for people: a summary, then one row per subject.
fn table(v: &serde_json::Value) -> String {
    let text = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "event {} on {}: delivered to {}, acknowledged by {}\n",
        text(&v["id"]),
        text(&v["topic"]),
        v["delivered"],
        v["acknowledged"]
    );
    let rows: Vec<[String; 4]> = v["receipts"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    [
                        text(&r["subject"]),
                        text(&r["delivered_at"]),
                        text(&r["transport"]),
                        text(&r["acknowledged_at"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let head = ["SUBJECT", "DELIVERED", "TRANSPORT", "ACKNOWLEDGED"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    let line = |cells: [&str; 4]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    out.push_str(&line(head));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_lines_up_and_names_what_is_missing() {
        let v = serde_json::json!({
            "id": "5-00000001", "topic": "alarms/7", "delivered": 2, "acknowledged": 1,
            "receipts": [
                {"subject": "alice", "delivered_at": "2026-12-04T03:42:05.857Z", "transport": "sse_stream", "acknowledged_at": "2026-12-04T03:42:06.062Z"},
                {"subject": "bob", "delivered_at": "2026-12-04T03:42:05.900Z", "transport": "longpoll", "acknowledged_at": null}
            ]
        });
        let t = super::table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "event 5-00000001 on alarms/7: delivered to 2, acknowledged by 1"
        );
        assert!(lines[1].starts_with("SUBJECT  DELIVERED"));
        assert!(
            lines[3].starts_with("bob    ") && lines[3].ends_with("longpoll    -"),
            "{t}"
        );
        assert_eq!(lines[2].find("sse_stream"), lines[3].find("longpoll"));
    }
}
