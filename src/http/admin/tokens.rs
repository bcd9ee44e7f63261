//! Tokens: mint a subscriber or publisher token from a form. The token is shown once,
//! on the answer to the POST (never stored, never cached).

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::{html, require_form, require_session, AdminError, Chrome};
use crate::auth::{now_secs, Claims, Grants};
use crate::model::Pattern;
use crate::server::AppState;

/// Longest lifetime the form mints (the CLI can mint longer ones).
const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/admin/tokens")
            .route(web::get().to(form_page))
            .route(web::post().to(mint)),
    );
}

#[derive(Template)]
#[template(path = "admin/tokens.html")]
struct TokensPage {
    chrome: Chrome,
    can_mint: bool,
    auth_enabled: bool,
    form: TokenForm,
    token: Option<String>,
    summary: String,
    error: Option<String>,
}

#[derive(Clone, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub sub: String,
    /// "subscriber" or "publisher".
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub topics: String,
    #[serde(default)]
    pub ttl: String,
}

impl Default for TokenForm {
    fn default() -> Self {
        TokenForm {
            csrf: String::new(),
            sub: String::new(),
            role: "subscriber".into(),
            topics: String::new(),
            ttl: "1h".into(),
        }
    }
}

impl TokenForm {
    pub fn is_publisher(&self) -> bool {
        self.role == "publisher"
    }
}

fn can_mint(st: &AppState) -> bool {
    st.config.auth.algorithm.eq_ignore_ascii_case("HS256")
}

async fn form_page(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, AdminError> {
    let session = require_session(&req, &st)?;
    let page = TokensPage {
        chrome: Chrome::new(&session, "tokens"),
        can_mint: can_mint(&st),
        auth_enabled: st.auth.enabled(),
        form: TokenForm::default(),
        token: None,
        summary: String::new(),
        error: None,
    };
    Ok(html(page.render()?))
}

/// The claims the form asks for, or what is wrong with it.
fn claims_of(form: &TokenForm, now: u64) -> Result<Claims, String> {
    let sub = form.sub.trim();
    if sub.is_empty() || sub.len() > 200 {
        return Err("Give a subject of 1-200 characters: who the token is for.".into());
    }
    let topics: Vec<String> = form
        .topics
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if topics.is_empty() {
        return Err("Give at least one topic or pattern, e.g. users/42 or users/**.".into());
    }
    for t in &topics {
        Pattern::parse(t).map_err(|e| e.to_string())?;
    }
    let ttl = humantime::parse_duration(form.ttl.trim())
        .map_err(|e| format!("Lifetime {:?}: {e} (use e.g. 15m, 1h, 30d).", form.ttl))?
        .as_secs();
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err("The lifetime must be between 1 s and 366 days.".into());
    }
    let mut grants = Grants::default();
    match form.role.as_str() {
        "subscriber" => grants.subscribe = topics,
        "publisher" => grants.publish = topics,
        other => return Err(format!("Unknown role {other:?}.")),
    }
    Ok(Claims {
        sub: sub.to_string(),
        exp: now + ttl,
        nbf: None,
        iat: Some(now),
        surepush: grants,
    })
}

async fn mint(
    req: HttpRequest,
    st: web::Data<AppState>,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, AdminError> {
    let form = form.into_inner();
    let session = require_form(&req, &st, &form.csrf)?;
    let mut page = TokensPage {
        chrome: Chrome::new(&session, "tokens"),
        can_mint: can_mint(&st),
        auth_enabled: st.auth.enabled(),
        form: form.clone(),
        token: None,
        summary: String::new(),
        error: None,
    };
    match claims_of(&form, now_secs()) {
        Err(problem) => page.error = Some(problem),
        Ok(claims) => match st.auth.mint(&claims) {
            Ok(token) => {
                let what = if form.is_publisher() {
                    "publish to"
                } else {
                    "subscribe to"
                };
                let topics = if form.is_publisher() {
                    claims.surepush.publish.join(" ")
                } else {
                    claims.surepush.subscribe.join(" ")
                };
                page.summary = format!(
                    "For {}: may {what} {topics}; expires {}.",
                    claims.sub,
                    super::when(claims.exp * 1000)
                );
                tracing::info!(target: "audit", user = %session.user, sub = %claims.sub, role = %form.role, topics = %topics, exp = claims.exp, "admin minted a token");
                page.token = Some(token);
            }
            Err(e) => page.error = Some(e.to_string()),
        },
    }
    let status = if page.error.is_some() {
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        actix_web::http::StatusCode::OK
    };
    let mut resp = html(page.render()?);
    *resp.status_mut() = status;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(sub: &str, role: &str, topics: &str, ttl: &str) -> TokenForm {
        TokenForm {
            csrf: String::new(),
            sub: sub.into(),
            role: role.into(),
            topics: topics.into(),
            ttl: ttl.into(),
        }
    }

    #[test]
    fn form_to_claims() {
        let c = claims_of(&form("u42", "subscriber", "users/42, news/**", "2h"), 1000).unwrap();
        assert_eq!(c.surepush.subscribe, vec!["users/42", "news/**"]);
        assert!(c.surepush.publish.is_empty());
        assert_eq!(c.exp, 1000 + 7200);
        let c = claims_of(&form("backend", "publisher", "users/**", "30d"), 0).unwrap();
        assert_eq!(c.surepush.publish, vec!["users/**"]);
        assert!(claims_of(&form("", "subscriber", "a", "1h"), 0).is_err());
        assert!(claims_of(&form("x", "subscriber", "", "1h"), 0).is_err());
        assert!(claims_of(&form("x", "subscriber", "a/*/b", "1h"), 0).is_err());
        assert!(claims_of(&form("x", "subscriber", "a", "forever"), 0).is_err());
        assert!(claims_of(&form("x", "subscriber", "a", "400d"), 0).is_err());
        assert!(claims_of(&form("x", "root", "a", "1h"), 0).is_err());
    }
}
