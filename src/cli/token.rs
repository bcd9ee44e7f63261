//! `surepush token`: mints a JWT with the configured HS256 key.

use anyhow::Context;

use super::args::TokenArgs;
use crate::auth::{now_secs, Authenticator, Claims, Grants};
use crate::model::Pattern;

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let (mut config, _) = super::serve::load(&args.config)?;
    for p in args.subscribe.iter().chain(&args.publish) {
        Pattern::parse(p).with_context(|| format!("pattern {p:?}"))?;
    }
    if args.sub.trim().is_empty() {
        anyhow::bail!("--sub must not be empty");
    }
    let key = config.signing_key_path();
    if !key.exists() {
        anyhow::bail!(
            "no signing key at {}: run `surepush serve` or `surepush init` once, or pass --config / --data-dir",
            key.display()
        );
    }
    config.auth.enabled = true;
    let auth = Authenticator::from_config(&config)?;
    let now = now_secs();
    let claims = Claims {
        sub: args.sub,
        exp: now + args.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        surepush: Grants {
            subscribe: args.subscribe,
            publish: args.publish,
            jobs: args.jobs,
            work: args.work,
        },
    };
    let token = if args.admin {
        auth.mint_admin(&claims)?
    } else {
        auth.mint(&claims)?
    };
    println!("{token}");
    Ok(())
}
