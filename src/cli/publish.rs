//! `surepush publish`.

use std::io::Read;

use anyhow::Context;

use super::args::PublishArgs;
use super::client;

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let data_text = if args.data == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading data from stdin")?;
        s
    } else {
        args.data.clone()
    };
    let data: serde_json::Value =
        serde_json::from_str(&data_text).context("--data is not valid JSON")?;
    let http = client::build(&args.client)?;
    let mut body = serde_json::json!({"topic": args.topic, "type": args.kind, "data": data});
    if args.receipt {
        body["receipt"] = serde_json::Value::Bool(true);
    }
    let req = http
        .post(client::endpoint(&args.url, "/v1/publish"))
        .json(&body);
    let resp = client::with_token(req, &args.client)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", args.url))?;
    let resp = client::check(resp).await?;
    let v: serde_json::Value = resp.json().await.context("reading the reply")?;
    if let Some(ids) = v.get("ids").and_then(|i| i.as_array()) {
        for id in ids {
            println!("{}", id.as_str().unwrap_or_default());
        }
    }
    Ok(())
}
