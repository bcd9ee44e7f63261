//! `surepush init --dir D`: a data directory ready for a real install.

use std::path::Path;

use anyhow::Context;

use super::args::InitArgs;
use crate::config::{Config, EXAMPLE_CONFIG};

/// The example config with this install's listen address and data directory.
pub fn render_config(listen: &str, data_dir: &Path) -> String {
    EXAMPLE_CONFIG
        .replace(
            "listen = \"127.0.0.1:8443\"",
            &format!("listen = \"{listen}\""),
        )
        .replace(
            "data_dir = \"./surepush-data\"",
            &format!(
                "data_dir = {}",
                toml::Value::String(data_dir.display().to_string())
            ),
        )
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let config_path = dir.join("surepush.toml");
    if config_path.exists() {
        anyhow::bail!(
            "{} already exists; init never overwrites a configuration",
            config_path.display()
        );
    }
    let text = render_config(&args.listen.to_string(), &dir);
    let config: Config = toml::from_str(&text).context("the generated config does not parse")?;
    let mut names = crate::tls::default_names();
    names.extend(args.names);
    crate::tls::ensure_self_signed(&config.cert_path(), &config.key_path(), &names)?;
    crate::tls::ensure_signing_key(&dir.join("signing.key"))?;
    crate::tls::write_file(&config_path, text.as_bytes(), 0o640)?;
    println!("wrote {}", config_path.display());
    println!("certificate {}", config.cert_path().display());
    println!("signing key {}", dir.join("signing.key").display());
    println!(
        "start with: surepush serve --config {}",
        config_path.display()
    );
    Ok(())
}
