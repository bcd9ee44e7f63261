//! `surepush backup` and `surepush restore`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::args::{BackupArgs, ClientArgs, RestoreArgs};
use crate::auth::{now_secs, Authenticator, Claims, Grants};
use crate::config::Config;
use crate::store::backup::{self, Summary, ADMIN_USERS};

/// Lifetime of the admin token the command mints for itself.
const TOKEN_TTL_SECS: u64 = 300;

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let (config, warnings) = super::serve::load(&args.config)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let start = Instant::now();
    let tmp = with_suffix(&args.out, ".tmp");
    let _ = std::fs::remove_file(&tmp);
    let url = args.url.clone().unwrap_or_else(|| default_url(&config));
    let online = !args.offline && (args.url.is_some() || listening(config.listen));
    let result = if online {
        fetch(&args, &config, &url, &tmp).await
    } else {
        offline(&config, &tmp).await
    };
    let pause_ms = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let verified = {
        let tmp = tmp.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Summary> {
            std::fs::File::open(&tmp)?.sync_all()?;
            Ok(backup::verify_file(&tmp)?)
        })
        .await?
    };
    let summary = match verified {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context("the backup written does not verify"));
        }
    };
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    sync_parent(&args.out)?;
    let how = if online {
        format!("online from {url}, writes paused {pause_ms} ms")
    } else {
        format!("offline from {}", config.db_path().display())
    };
    println!(
        "backup: {} ({} bytes, {how}, took {:.2} s)",
        args.out.display(),
        summary.bytes,
        start.elapsed().as_secs_f64()
    );
    print_contents(&summary);
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let (config, warnings) = super::serve::load(&args.config)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    tokio::task::spawn_blocking(move || restore_blocking(&config, &args.from)).await?
}

fn restore_blocking(config: &Config, from: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let verified = backup::verify_file(from)
        .with_context(|| format!("{} cannot be restored", from.display()))?;
    let db_dir = config.db_path();
    if has_database(&db_dir) {
        anyhow::bail!(
            "{} already has a database ({}); restore into a new data directory (--data-dir) or move the old database away first",
            config.data_dir.display(),
            db_dir.display()
        );
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
    }
    // Written beside, renamed into place when complete: an interrupted restore leaves
    // no half database where the server would open it.
    let staging = config.data_dir.join("db.restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let restored = match backup::restore_db(from, &staging) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("restoring {}", from.display()));
        }
    };
    if let Some(parent) = db_dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(&staging, &db_dir)
        .with_context(|| format!("renaming {} to {}", staging.display(), db_dir.display()))?;
    sync_parent(&db_dir)?;
    let mut notes = Vec::new();
    for (name, data) in &restored.files {
        if name != ADMIN_USERS {
            eprintln!(
                "warning: the backup holds a file {name:?} this version does not know; skipped"
            );
            continue;
        }
        let path = config.data_dir.join(ADMIN_USERS);
        if path.exists() {
            let kept = with_suffix(&path, ".before-restore");
            std::fs::rename(&path, &kept)?;
            notes.push(format!(
                "the previous {ADMIN_USERS} is kept as {}",
                kept.display()
            ));
        }
        write_private(&path, data)?;
    }
    let s = &restored.summary;
    println!(
        "restored: {} into {} (took {:.2} s)",
        from.display(),
        config.data_dir.display(),
        start.elapsed().as_secs_f64()
    );
    print_contents(&verified);
    println!(
        "  backup taken {} by surepush {}",
        crate::store::record::rfc3339(s.created_ms),
        s.version
    );
    if !restored.migration.steps.is_empty() {
        println!(
            "  migrated from schema {} to {}: {}",
            s.schema,
            restored.migration.schema,
            restored.migration.steps.join("; ")
        );
    }
    println!(
        "  new events start at seq {}: ids {}..{} are left unused, so a client holding an id the old server issued after the backup is reset instead of skipping events",
        restored.gap.1, restored.gap.0, restored.gap.1
    );
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}

fn print_contents(s: &Summary) {
    let trees: Vec<String> = s
        .trees
        .iter()
        .map(|t| format!("{}={}", t.name, t.pairs))
        .collect();
    let files: Vec<String> = s.files.iter().map(|(n, l)| format!("{n}={l}")).collect();
    println!(
        "  events {}, jobs {}, schema {}, trees [{}], files [{}]",
        s.events,
        s.jobs,
        s.schema,
        trees.join(" "),
        files.join(" ")
    );
}

/// Downloads the snapshot into `tmp`; returns the server's write pause in ms.
async fn fetch(args: &BackupArgs, config: &Config, url: &str, tmp: &Path) -> anyhow::Result<u64> {
    let token = match &args.token {
        Some(t) => t.clone(),
        None => mint_admin(config)?,
    };
    let cacert = match &args.cacert {
        Some(c) => Some(c.clone()),
        None if !args.insecure && config.cert_path().exists() => Some(config.cert_path()),
        None => None,
    };
    let client = super::client::build(&ClientArgs {
        insecure: args.insecure,
        cacert,
        token: None,
    })?;
    let endpoint = super::client::endpoint(url, "/v1/admin/backup");
    let resp = client
        .get(&endpoint)
        .bearer_auth(&token)
        .send()
        .await
        .with_context(|| format!("asking {endpoint} for a backup"))?;
    let resp = super::client::check(resp).await?;
    let pause_ms = resp
        .headers()
        .get("x-surepush-backup-pause-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the backup download broke off")?;
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(pause_ms)
}

async fn offline(config: &Config, tmp: &Path) -> anyhow::Result<u64> {
    let db_dir = config.db_path();
    let files = vec![(ADMIN_USERS.to_string(), config.data_dir.join(ADMIN_USERS))];
    let storage = config.storage.clone();
    let tmp = tmp.to_path_buf();
    let listen = config.listen;
    let r = tokio::task::spawn_blocking(move || {
        backup::snapshot_offline(&db_dir, &tmp, &files, &storage)
    })
    .await?;
    match r {
        Ok(s) => Ok(s.pause_ms),
        Err(crate::store::StoreError::Db(e)) if e.to_string().contains("lock") => Err(anyhow::anyhow!(
            "the database is in use ({e}); is a server running on this data directory but not listening on {listen}? pass --url"
        )),
        Err(e) => Err(e.into()),
    }
}

fn mint_admin(config: &Config) -> anyhow::Result<String> {
    let mut config = config.clone();
    if !config.signing_key_path().exists() {
        anyhow::bail!(
            "no signing key at {} to mint an admin token: pass --token, or --config / --data-dir",
            config.signing_key_path().display()
        );
    }
    config.auth.enabled = true;
    let auth = Authenticator::from_config(&config)?;
    let now = now_secs();
    let claims = Claims {
        sub: "surepush-backup".into(),
        exp: now + TOKEN_TTL_SECS,
        nbf: None,
        iat: Some(now),
        surepush: Grants::default(),
    };
    auth.mint_admin(&claims)
        .context("minting an admin token (pass --token with one)")
}

/// The configured listen address as a URL to connect to (a wildcard address becomes loopback).
fn default_url(config: &Config) -> String {
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{}", connect_addr(config.listen))
}

fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// False only when the connection is refused: nothing listens there.
fn listening(listen: SocketAddr) -> bool {
    match std::net::TcpStream::connect_timeout(&connect_addr(listen), Duration::from_secs(3)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::ConnectionRefused,
    }
}

fn has_database(db_dir: &Path) -> bool {
    match std::fs::read_dir(db_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))
}

/// Writes `data` as a new 0600 file via a temporary name, fsynced.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}
