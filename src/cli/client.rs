//! The HTTP client the CLI commands share.

use anyhow::Context;

use super::args::ClientArgs;

pub fn build(args: &ClientArgs) -> anyhow::Result<reqwest::Client> {
    crate::tls::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("surepush-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10));
    if args.insecure {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    if let Some(path) = &args.cacert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().context("building the HTTP client")
}

pub fn with_token(req: reqwest::RequestBuilder, args: &ClientArgs) -> reqwest::RequestBuilder {
    match &args.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

pub fn endpoint(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// Turns an error response into a readable error.
pub async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or(body);
    anyhow::bail!("server answered {status}: {message}")
}

/// `base` + `path` + `?k=v&...`, percent-encoded.
pub fn url_with_query(base: &str, path: &str, query: &[(&str, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        s.append_pair(k, v);
    }
    format!("{}?{}", endpoint(base, path), s.finish())
}
