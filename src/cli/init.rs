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
    match (&args.dir, &args.config) {
        (Some(dir), None) => init_dir(dir, &args),
        (None, Some(config)) => init_from_config(config, &args),
        _ => anyhow::bail!("give either --dir DIR (a new installation) or --config FILE"),
    }
}

/// A new directory with its own config.
fn init_dir(dir: &Path, args: &InitArgs) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let config_path = dir.join("surepush.toml");
    if config_path.exists() {
        anyhow::bail!(
            "{} already exists; init never overwrites a configuration",
            config_path.display()
        );
    }
    let text = render_config(&args.listen.to_string(), &dir);
    let config: Config = toml::from_str(&text).context("the generated config does not parse")?;
    prepare(&config, args)?;
    crate::tls::write_file(&config_path, text.as_bytes(), 0o640)?;
    println!("wrote {}", config_path.display());
    println!(
        "start with: surepush serve --config {}",
        config_path.display()
    );
    Ok(())
}

/// The data directory of an existing config (the packages' post-install). Idempotent.
fn init_from_config(config_path: &Path, args: &InitArgs) -> anyhow::Result<()> {
    let (config, warnings) = super::serve::load(&super::args::ConfigArgs {
        config: Some(config_path.to_path_buf()),
        ..Default::default()
    })?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    create_private_dir(&config.data_dir)?;
    prepare(&config, args)?;
    println!(
        "ready: surepush serve --config {} (the packages run it as surepush.service)",
        config_path.display()
    );
    Ok(())
}

/// The data directory, readable by its owner (and group) only: it holds keys.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Certificate, signing key and first admin user, each only when missing.
fn prepare(config: &Config, args: &InitArgs) -> anyhow::Result<()> {
    let mut names = crate::tls::default_names();
    names.extend(args.names.iter().cloned());
    let (cert, key) = (config.cert_path(), config.key_path());
    if config.insecure_http {
        println!("plain HTTP configured: no certificate needed");
    } else if crate::tls::ensure_self_signed(&cert, &key, &names)? {
        println!("certificate {} (self-signed)", cert.display());
    } else {
        println!("certificate {} (kept)", cert.display());
    }
    let signing = config.signing_key_path();
    if config.auth.key_file.is_some() || config.auth.algorithm != "HS256" {
        println!("signing key: configured by auth.key_file / auth.algorithm (left alone)");
    } else if crate::tls::ensure_signing_key(&signing)? {
        println!("signing key {}", signing.display());
    } else {
        println!("signing key {} (kept)", signing.display());
    }
    match crate::admin::users::ensure_first_admin(&config.data_dir)? {
        Some(password) => {
            let file = config
                .data_dir
                .join(crate::admin::users::INITIAL_PASSWORD_FILE);
            println!("admin user \"admin\" created; password: {password}");
            println!(
                "  (also in {}, mode 0600: delete it once noted)",
                file.display()
            );
        }
        None => println!("admin users: kept ({})", crate::admin::users::USERS_FILE),
    }
    Ok(())
}
