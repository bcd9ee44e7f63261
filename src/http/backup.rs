//! `GET /v1/admin/backup`: a consistent snapshot of the whole database, streamed.
//!
//! Always needs a token with `surepush.admin: true`, even with `auth.enabled = false`
//! (a backup is every event, job and admin user). The writer thread writes the snapshot
//! to a temporary file in the data directory while no other write runs; the handler
//! opens it, unlinks it (the open handle keeps it readable) and streams it.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::auth::AuthError;
use crate::error::ApiError;
use crate::server::AppState;
use crate::store::backup::ADMIN_USERS;

const TEMP_PREFIX: &str = ".backup-";
const CHUNK: usize = 256 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/v1/admin/backup").route(web::get().to(backup)));
}

async fn backup(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (token, _) = super::auth::token(&req).ok_or(AuthError::Missing)?;
    let who = st.auth.verify(&token)?;
    if !who.admin {
        return Err(AuthError::Forbidden("backups (an admin token is required)".into()).into());
    }
    let dir = st.config.data_dir.clone();
    remove_stale(&dir).await;
    let path = dir.join(format!(
        "{TEMP_PREFIX}{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let files = vec![(ADMIN_USERS.to_string(), dir.join(ADMIN_USERS))];
    let summary = st.log.backup(path.clone(), files).await?;
    let file = tokio::fs::File::open(&path).await;
    let _ = tokio::fs::remove_file(&path).await;
    let file = file.map_err(|e| ApiError::Internal(format!("cannot read the snapshot: {e}")))?;
    tracing::info!(
        sub = %who.sub,
        bytes = summary.bytes,
        events = summary.events,
        jobs = summary.jobs,
        pause_ms = summary.pause_ms,
        "backup taken"
    );
    let body = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let name = format!(
        "surepush-{}.spbak",
        crate::store::record::rfc3339(summary.created_ms).replace(':', "")
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header(("X-Surepush-Backup-Pause-Ms", summary.pause_ms.to_string()))
        .insert_header(("X-Surepush-Backup-Events", summary.events.to_string()))
        .insert_header(("X-Surepush-Backup-Jobs", summary.jobs.to_string()))
        .no_chunking(summary.bytes)
        .streaming(body))
}

/// Removes snapshot files left by another process (one that died while streaming).
async fn remove_stale(dir: &std::path::Path) {
    let own = format!("{TEMP_PREFIX}{}-", std::process::id());
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) && name.ends_with(".tmp") && !name.starts_with(&own) {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}
