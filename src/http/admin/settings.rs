//! Settings: the effective configuration (read-only: the config file and `SUREPUSH_*`
//! variables stay the one source of truth), version, data directory, uptime, admin users.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;

use super::{ago, html, require_session, when, AdminError, Chrome};
use crate::server::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/settings").route(web::get().to(settings)));
}

#[derive(Template)]
#[template(path = "admin/settings.html")]
struct SettingsPage {
    chrome: Chrome,
    config_toml: String,
    data_dir: String,
    listen: String,
    scheme: &'static str,
    uptime: String,
    users: Vec<(String, String)>,
    sessions: usize,
    users_file: String,
}

/// The configuration as TOML with the value of any key that names a secret replaced.
pub fn masked_toml(text: &str) -> String {
    text.lines()
        .map(|line| {
            let key = line
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let secret = ["secret", "password", "passphrase", "private"]
                .iter()
                .any(|w| key.contains(w))
                && !key.ends_with("_file")
                && !key.ends_with("_files");
            if secret && line.contains('=') {
                format!(
                    "{} = \"********\"",
                    line.split('=').next().unwrap_or("").trim_end()
                )
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn settings(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let users = st
        .admin
        .users
        .current()
        .map(|f| {
            f.users
                .into_iter()
                .map(|u| (u.name, when(u.created_ms)))
                .collect()
        })
        .unwrap_or_default();
    let page = SettingsPage {
        chrome: Chrome::new(&session, "settings"),
        config_toml: masked_toml(&st.config.to_toml()),
        data_dir: std::fs::canonicalize(&st.config.data_dir)
            .unwrap_or_else(|_| st.config.data_dir.clone())
            .display()
            .to_string(),
        listen: {
            // port 0 asks the system for a port: show the one it gave
            let mut a = st.config.listen;
            if a.port() == 0 {
                a.set_port(req.app_config().local_addr().port());
            }
            a.to_string()
        },
        scheme: if st.config.insecure_http {
            "http"
        } else {
            "https"
        },
        uptime: ago(st.started.elapsed().as_secs()),
        users,
        sessions: st.admin.sessions.count(),
        users_file: st.admin.users.path().display().to_string(),
    };
    Ok(html(page.render()?))
}

#[cfg(test)]
mod tests {
    use super::masked_toml;

    #[test]
    fn secrets_are_masked_and_paths_kept() {
        let t = "listen = \"1\"\nclient_secret = \"abc\"\nkey_file = \"/k\"\nadmin_password = 3";
        let m = masked_toml(t);
        assert!(m.contains("listen = \"1\""));
        assert!(m.contains("client_secret = \"********\""));
        assert!(m.contains("key_file = \"/k\""));
        assert!(m.contains("admin_password = \"********\""));
        assert!(!m.contains("abc"));
    }
}
