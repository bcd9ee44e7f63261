//! Admin UI helpers shared by tests/admin.rs and tests/admin_ui.rs: a client that shows
//! redirects, form posts, cookies and hidden fields, and the login form.

use std::time::Duration;

use super::init;

/// HTTPS client that does not follow redirects (we assert them).
pub fn http() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `application/x-www-form-urlencoded` bodies, as a browser posts forms.
pub trait FormPost {
    fn form_pairs(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormPost for reqwest::RequestBuilder {
    fn form_pairs(self, pairs: &[(&str, &str)]) -> Self {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

pub fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect()
}

/// The value a `Set-Cookie` header gives `name` (None when absent).
pub fn cookie_value(set: &[String], name: &str) -> Option<String> {
    set.iter().find_map(|line| {
        let first = line.split(';').next()?;
        let (k, v) = first.split_once('=')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

/// The `value` of the first `<input name="{name}" value="...">` in a page.
pub fn field(html: &str, name: &str) -> Option<String> {
    let key = format!("name=\"{name}\" value=\"");
    let start = html.find(&key)? + key.len();
    let len = html[start..].find('"')?;
    Some(html[start..start + len].to_string())
}

/// Posts the login form (with a fresh double-submit pair); returns the answer.
pub async fn post_login(
    c: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
    next: &str,
) -> reqwest::Response {
    let r = c.get(format!("{base}/admin/login")).send().await.unwrap();
    assert_eq!(r.status(), 200, "login page");
    let pair = cookie_value(&set_cookies(&r), "surepush_login").expect("login CSRF cookie");
    let csrf = field(&r.text().await.unwrap(), "csrf").expect("login CSRF field");
    assert_eq!(
        pair, csrf,
        "double-submit: cookie and field carry one value"
    );
    c.post(format!("{base}/admin/login"))
        .header("Cookie", format!("surepush_login={pair}"))
        .form_pairs(&[
            ("user", user),
            ("password", password),
            ("csrf", &csrf),
            ("next", next),
        ])
        .send()
        .await
        .unwrap()
}
