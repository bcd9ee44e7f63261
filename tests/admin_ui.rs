//! The admin web UI (`/admin/`) and the network doctor (`/doctor`), proven in real headless
//! Chromium against the real server over TLS (its cookies are `Secure`, so the browser
//! talks to the server directly; the doctor is also loaded through the hostile proxy).
//!
//! Login with the first admin's generated password, the live dashboard, publishing from a
//! topic page, requeueing a dead letter through its confirmation page, ending a
//! subscriber's stream, minting a token that then works, logout. Plain HTTP checks for
//! what a browser hides: redirects without a session, 401 on the JSON API, the login
//! lockout, and 403 for form posts without the CSRF token.
//!
//! Each page is saved as a PNG under `docs/screenshots/` (1280x800) while the tests run.
//! Browser tests run one at a time (Chromium is heavy on two cores) and every test and
//! every wait is bounded.

mod support;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::admin::*;
use support::browser::Browser;
use support::proxy::{HostileProxy, ProxyMode};
use support::*;
use surepush::admin::users::INITIAL_PASSWORD_FILE;
use surepush::auth::{now_secs, Authenticator, Claims, Grants};
use surepush::config::Config;

/// One browser test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound on one whole test (after it got its turn).
const TEST_BOUND: Duration = Duration::from_secs(60);
/// Bound on one page reaching an expected state.
const PAGE_WAIT: Duration = Duration::from_secs(15);
/// Bound on one pushed event.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// Screenshot size (CSS pixels).
const VIEW: (u32, u32) = (1280, 800);

/// Runs a test body within [`TEST_BOUND`].
async fn bounded(name: &str, body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_BOUND, body).await.is_err() {
        panic!("{name}: not done within {TEST_BOUND:?}");
    }
}

// ---------------------------------------------------------------------------------------
// servers, plain HTTP
// ---------------------------------------------------------------------------------------

/// A server with a fast dashboard; returns it with the first admin's generated password.
async fn admin_server(f: impl FnOnce(&mut Config)) -> (TestServer, String) {
    let s = TestServer::start_with(|c| {
        c.admin.stats_interval_ms = 250;
        f(c)
    })
    .await;
    let pw = std::fs::read_to_string(s.data_dir.join(INITIAL_PASSWORD_FILE))
        .expect("the first start writes the initial admin password");
    (s, pw.trim().to_string())
}

async fn auth_admin_server() -> (TestServer, String) {
    admin_server(|c| {
        c.auth.enabled = true;
        c.auth.leeway_secs = 0;
    })
    .await
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The `next` a redirect to the login page carries.
fn next_of(loc: &str) -> Option<String> {
    let q = loc.strip_prefix("/admin/login?")?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.into_owned())
}

/// An admin session over plain HTTP: its cookie header and its CSRF token.
struct HttpSession {
    cookie: String,
    csrf: String,
}

async fn http_login(c: &reqwest::Client, base: &str, password: &str) -> HttpSession {
    let r = post_login(c, base, "admin", password, "/admin/").await;
    assert_eq!(r.status(), 303, "login: {:?}", r.text().await);
    assert_eq!(location(&r), "/admin/");
    let set = set_cookies(&r);
    let id = cookie_value(&set, "surepush_admin").expect("session cookie");
    let line = set
        .iter()
        .find(|l| l.starts_with("surepush_admin="))
        .unwrap()
        .to_ascii_lowercase();
    for attr in ["httponly", "secure", "samesite=strict", "path=/admin"] {
        assert!(line.contains(attr), "session cookie lacks {attr}: {line}");
    }
    let cookie = format!("surepush_admin={id}");
    let page = c
        .get(format!("{base}/admin/"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf = field(&page.text().await.unwrap(), "csrf").expect("the page's CSRF token");
    HttpSession { cookie, csrf }
}

fn minter(s: &TestServer) -> Authenticator {
    let mut c = Config {
        data_dir: s.data_dir.clone(),
        ..Config::default()
    };
    c.auth.enabled = true;
    Authenticator::from_config(&c).unwrap()
}

fn subscriber_token(s: &TestServer, sub: &str, topics: &[&str]) -> String {
    minter(s)
        .mint(&Claims {
            sub: sub.into(),
            exp: now_secs() + 600,
            nbf: None,
            iat: None,
            surepush: Grants {
                subscribe: topics.iter().map(|t| t.to_string()).collect(),
                ..Grants::default()
            },
        })
        .unwrap()
}

/// Opens an SSE stream and reads its first frame (the stream is registered by then).
async fn open_stream(c: &reqwest::Client, url: &str, token: Option<&str>) -> SseReader {
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "stream {url}: {:?}", r.text().await);
    let mut sse = SseReader::new(r);
    sse.next_any(EVENT_WAIT)
        .await
        .expect("the stream's first frame");
    sse
}

// ---------------------------------------------------------------------------------------
// the browser
// ---------------------------------------------------------------------------------------

async fn browser() -> Option<Browser> {
    let b = Browser::launch().await?;
    b.set_viewport(VIEW.0, VIEW.1).await;
    Some(b)
}

fn shot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/screenshots")
        .join(name)
}

async fn shot(b: &Browser, name: &str) {
    // let layout settle (fonts, the chart)
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.screenshot(&shot_path(name)).await;
}

/// Polls `js` (a function body) until it returns something other than null/false/"".
async fn wait_page(b: &Browser, what: &str, js: &str) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        if let Some(v) = b.try_eval(js).await {
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
        }
        if Instant::now() >= deadline {
            let here = b
                .try_eval("return location.href + '\\n' + document.body.innerText.slice(0, 2000);")
                .await
                .unwrap_or_default();
            panic!(
                "timed out after {PAGE_WAIT:?} waiting for {what}\npage: {}\nconsole:\n{}",
                here.as_str().unwrap_or(""),
                b.console().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Sets form fields by CSS selector.
async fn fill(b: &Browser, fields: &[(&str, &str)]) {
    for (sel, value) in fields {
        let ok = b
            .eval(&format!(
                "var el = document.querySelector({}); if (!el) return false; el.value = {}; return true;",
                js(sel),
                js(value)
            ))
            .await;
        assert_eq!(ok, true, "no field {sel}");
    }
}

/// Clicks the element `el_js` (an expression) and waits for the next page to be loaded
/// and `ready_js` (an expression) to hold on it.
async fn click_to(b: &Browser, el_js: &str, what: &str, ready_js: &str) -> Value {
    let ok = b
        .eval(&format!(
            "var el = ({el_js}); if (!el) return false; window.__leaving = true;\
             setTimeout(function () {{ el.click(); }}, 0); return true;"
        ))
        .await;
    assert_eq!(ok, true, "nothing to click for {what}: {el_js}");
    wait_page(
        b,
        what,
        &format!(
            "if (window.__leaving || document.readyState !== 'complete') return null; return ({ready_js});"
        ),
    )
    .await
}

fn sel(css: &str) -> String {
    format!("document.querySelector({})", js(css))
}

/// Goes to `path` without a session, is sent to the login page, logs in as `admin` and
/// lands back on `path`. Saves the login page as `shot_name` if given.
async fn login(b: &Browser, s: &TestServer, password: &str, path: &str, shot_name: Option<&str>) {
    b.goto(&s.url(path)).await;
    let at = b.eval("return location.pathname + location.search;").await;
    let want: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", path)
        .finish();
    assert_eq!(
        at.as_str(),
        Some(format!("/admin/login?{want}").as_str()),
        "without a session {path} leads to the login page"
    );
    fill(b, &[("#user", "admin"), ("#password", password)]).await;
    if let Some(name) = shot_name {
        shot(b, name).await;
    }
    click_to(
        b,
        &sel("#login"),
        &format!("landing on {path} after login"),
        &format!(
            "location.pathname + location.search === {} && !!document.getElementById('who')",
            js(path)
        ),
    )
    .await;
    let who = b
        .eval("return document.getElementById('who').textContent;")
        .await;
    assert_eq!(who, "admin");
}

async fn text(b: &Browser, css: &str) -> String {
    b.eval(&format!(
        "var el = document.querySelector({}); return el ? el.textContent.trim() : null;",
        js(css)
    ))
    .await
    .as_str()
    .unwrap_or_else(|| panic!("no element {css}"))
    .to_string()
}

/// Rows of a table as cell texts.
async fn rows(b: &Browser, table_css: &str) -> Vec<Vec<String>> {
    let v = b
        .eval(&format!(
            "var t = document.querySelector({}); if (!t) return null;\
             return Array.prototype.map.call(t.tBodies[0].rows, function (r) {{\
               return Array.prototype.map.call(r.cells, function (c) {{ return c.textContent.trim(); }});\
             }});",
            js(table_css)
        ))
        .await;
    serde_json::from_value(v).unwrap_or_else(|e| panic!("no table {table_css}: {e}"))
}

fn number(text: &str) -> u64 {
    let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

// ---------------------------------------------------------------------------------------
// 1. no session: redirects and 401
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pages_need_a_session() {
    bounded("pages_need_a_session", async {
        let (s, _) = admin_server(|_| {}).await;
        let c = http();
        for path in [
            "/admin/",
            "/admin/topics",
            "/admin/topic?name=a/b",
            "/admin/jobs",
            "/admin/jobs/dead?queue=email",
            "/admin/connections",
            "/admin/settings",
            "/admin/tokens",
        ] {
            let r = c.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 303, "{path}");
            let loc = location(&r);
            assert_eq!(next_of(&loc).as_deref(), Some(path), "{path} -> {loc}");
        }
        let r = c.get(s.url("/admin")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), location(&r)), (303, "/admin/".into()));
        // a made-up session id is no session either
        let r = c
            .get(s.url("/admin/settings"))
            .header("Cookie", format!("surepush_admin={}", "ab".repeat(32)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        for path in ["/admin/api/stats", "/admin/api/stream-token"] {
            let r = c.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path}");
            assert!(r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json")));
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "login_required", "{path}: {v}");
        }
        // the login page and the doctor are public
        for path in ["/admin/login", "/doctor"] {
            let r = c.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 2. wrong password, lockout
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_refused_and_repeated_failures_lock_out() {
    bounded("lockout", async {
        let (s, pw) = admin_server(|c| {
            c.admin.lockout_failures = 3;
            c.admin.lockout_secs = 300;
        })
        .await;
        let c = http();
        for i in 1..=3 {
            let r = post_login(&c, &s.base_url, "admin", "not-the-password", "/admin/").await;
            assert_eq!(r.status(), 401, "failure {i}");
            assert_eq!(cookie_value(&set_cookies(&r), "surepush_admin"), None);
            let body = r.text().await.unwrap();
            assert!(
                body.contains("id=\"login-error\"")
                    && body.contains("Wrong user name or password."),
                "failure {i}: the page says why"
            );
            assert!(
                body.contains("value=\"admin\""),
                "the user name is kept in the form"
            );
        }
        // locked out: the right password is refused too
        let r = post_login(&c, &s.base_url, "admin", &pw, "/admin/").await;
        assert_eq!(r.status(), 429);
        assert_eq!(cookie_value(&set_cookies(&r), "surepush_admin"), None);
        let body = r.text().await.unwrap();
        assert!(body.contains("Too many failed logins"), "{body}");
        // the lock is this address's for this name: another name is still checked,
        let r = post_login(&c, &s.base_url, "someone", "whatever-long", "/admin/").await;
        assert_eq!(r.status(), 401);
        // and the admin logs in from another address (seen: five failures from
        // anywhere locked `admin` out for everyone)
        let elsewhere = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap();
        let r = post_login(&elsewhere, &s.base_url, "admin", &pw, "/admin/").await;
        assert_eq!(r.status(), 303);
        assert!(cookie_value(&set_cookies(&r), "surepush_admin").is_some());

        // on a fresh server the right password works at once
        let (s2, pw2) = admin_server(|_| {}).await;
        let r = post_login(&c, &s2.base_url, "admin", &pw2, "/admin/").await;
        assert_eq!(r.status(), 303);
        assert!(cookie_value(&set_cookies(&r), "surepush_admin").is_some());
        // a login post without the double-submit cookie is refused
        let r = c
            .post(s2.url("/admin/login"))
            .form_pairs(&[
                ("user", "admin"),
                ("password", pw2.as_str()),
                ("csrf", "00ff"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    })
    .await;
}

/// A client at loopback address `local` whose requests say they are forwarded for `client`.
fn forwarding_client(local: &str, client: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", client.parse().unwrap());
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Behind a trusted reverse proxy the lockout is per forwarded client: one client's
/// failures do not lock out the admin for the others behind the same proxy, and a peer
/// that is not a listed proxy cannot dodge its lockout by claiming another address.
#[tokio::test(flavor = "multi_thread")]
async fn lockout_behind_a_trusted_proxy_is_per_forwarded_client() {
    bounded("proxied lockout", async {
        let (s, pw) = admin_server(|c| {
            c.admin.lockout_failures = 2;
            c.admin.lockout_secs = 300;
            c.server.trusted_proxies = vec!["127.0.0.5".parse().unwrap()];
        })
        .await;
        let guesser = forwarding_client("127.0.0.5", "198.51.100.66");
        for _ in 0..2 {
            let r = post_login(&guesser, &s.base_url, "admin", "wrong-guess", "/admin/").await;
            assert_eq!(r.status(), 401);
        }
        let r = post_login(&guesser, &s.base_url, "admin", &pw, "/admin/").await;
        assert_eq!(r.status(), 429, "the guessing client is locked out");
        let colleague = forwarding_client("127.0.0.5", "198.51.100.67");
        let r = post_login(&colleague, &s.base_url, "admin", &pw, "/admin/").await;
        assert_eq!(r.status(), 303, "another client behind the proxy logs in");

        // not a listed proxy: its header is ignored, so a new claim does not help
        let direct = forwarding_client("127.0.0.6", "198.51.100.70");
        for _ in 0..2 {
            let r = post_login(&direct, &s.base_url, "admin", "wrong-guess", "/admin/").await;
            assert_eq!(r.status(), 401);
        }
        let dodger = forwarding_client("127.0.0.6", "198.51.100.71");
        let r = post_login(&dodger, &s.base_url, "admin", &pw, "/admin/").await;
        assert_eq!(
            r.status(),
            429,
            "an untrusted peer's X-Forwarded-For is ignored"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. login and the live dashboard
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn login_lands_on_a_dashboard_kept_live_by_push() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    bounded("dashboard", async {
        let (s, pw) = admin_server(|_| {}).await;
        login(&b, &s, &pw, "/admin/", Some("login.png")).await;

        let live = wait_page(
            &b,
            "the live badge",
            "var t = document.getElementById('live').textContent; return t.indexOf('live') === 0 ? t : null;",
        )
        .await;
        assert_eq!(live, "live · sse", "the dashboard's figures are pushed over SSE");
        // read the figures from a pushed snapshot (the server's own snapshots are taken
        // one after another; the one rendered into the page races with them)
        let first = b
            .eval("return document.body.getAttribute('data-updated');")
            .await;
        wait_page(
            &b,
            "a pushed snapshot",
            &format!(
                "return document.body.getAttribute('data-updated') !== {};",
                first
            ),
        )
        .await;
        // the page's own stream counts
        let subs = number(&text(&b, "#subscribers").await);
        let before = number(&text(&b, "#published").await);
        b.eval("window.__samePage = 'still here'; return true;").await;

        for i in 0..3 {
            s.publish("orders/1", json!({"n": i})).await;
        }
        let got = wait_page(
            &b,
            "#published to count the three events",
            &format!(
                "var n = Number(document.getElementById('published').textContent.replace(/\\D/g, ''));\
                 return n >= {} ? n : null;",
                before + 3
            ),
        )
        .await;
        assert_eq!(got, before + 3, "the dashboard's own snapshots are not counted");
        assert_eq!(
            b.eval("return window.__samePage || null;").await,
            "still here",
            "updated without a reload"
        );
        assert!(b
            .eval("return Number(document.body.getAttribute('data-updated')) > 0;")
            .await
            .as_bool()
            .unwrap_or(false));
        assert_eq!(text(&b, "#live").await, "live · sse");

        // some traffic for the picture: a subscriber, a queue, a few seconds of events
        let c = client();
        let mut sse = open_stream(&c, &s.url("/v1/stream?topic=orders/**"), None).await;
        for (q, n) in [("email", 3), ("reports", 1)] {
            for i in 0..n {
                let r = c
                    .post(s.url("/v1/jobs"))
                    .json(&json!({"queue": q, "payload": {"n": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        }
        for round in 0..12 {
            let body: Vec<Value> = (0..(5 + round % 4 * 3))
                .map(|i| json!({"topic": format!("orders/{}", i % 3), "type": "order.created", "data": {"i": i}}))
                .collect();
            let r = c.post(s.url("/v1/publish")).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 201);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(sse.next_event(EVENT_WAIT).await.is_some());
        wait_page(
            &b,
            "two subscribers and the queues on the dashboard",
            &format!(
                "return Number(document.getElementById('subscribers').textContent) >= {}\
                 && document.querySelectorAll('#queues tbody tr').length === 2;",
                subs + 1
            ),
        )
        .await;
        shot(&b, "dashboard.png").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 4. publishing from a topic page
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn topic_page_form_publishes_an_event() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    bounded("topic page", async {
        let (s, pw) = admin_server(|_| {}).await;
        for i in 0..2 {
            s.publish("chat/room-1", json!({"text": format!("earlier message {i}")}))
                .await;
        }
        s.publish("chat/room-2", json!({"text": "elsewhere"})).await;
        s.publish("users/42", json!({"unread": 3})).await;
        login(&b, &s, &pw, "/admin/topics", None).await;
        let t = rows(&b, "#topics").await;
        let names: Vec<&str> = t.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, ["chat/room-1", "chat/room-2", "users/42"]);
        assert_eq!(t[0][1], "2", "events kept");
        shot(&b, "topics.png").await;

        click_to(
            &b,
            "Array.prototype.find.call(document.querySelectorAll('#topics a'), function (a) { return a.textContent === 'chat/room-1'; })",
            "the topic page",
            "!!document.getElementById('publish-form')",
        )
        .await;
        assert_eq!(rows(&b, "#events").await.len(), 2);
        let data = r#"{"text": "hello from the admin UI", "n": 3}"#;
        fill(&b, &[("#type", "chat.message"), ("#data", data)]).await;
        click_to(
            &b,
            &sel("#publish"),
            "the published notice",
            "!!document.getElementById('published-notice')",
        )
        .await;
        let id = text(&b, "#published-notice code").await;
        let ev = rows(&b, "#events").await;
        assert_eq!(ev.len(), 3);
        assert_eq!((ev[0][0].as_str(), ev[0][1].as_str()), (id.as_str(), "chat.message"));
        assert!(ev[0][3].contains("hello from the admin UI"), "{:?}", ev[0]);
        shot(&b, "topic.png").await;

        // readable over the API, exactly as typed
        let all = read_events(&s.base_url, "chat/room-1", "0").await;
        assert_eq!(all.len(), 3);
        let last = &all[2];
        assert_eq!(last["id"], id.as_str());
        assert_eq!(last["type"], "chat.message");
        assert_eq!(last["data"], json!({"text": "hello from the admin UI", "n": 3}));

        // bad JSON is explained, the form keeps what was typed, nothing is published
        fill(&b, &[("#data", "{not json")]).await;
        click_to(
            &b,
            &sel("#publish"),
            "the publish error",
            "!!document.getElementById('publish-error')",
        )
        .await;
        assert!(text(&b, "#publish-error").await.contains("not valid JSON"));
        assert_eq!(
            b.eval("return document.getElementById('data').value;").await,
            "{not json"
        );
        assert_eq!(read_events(&s.base_url, "chat/room-1", "0").await.len(), 3);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 5. dead letters: requeue through the confirmation page
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_is_requeued_after_confirmation() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    bounded("dead letters", async {
        let (s, pw) = admin_server(|_| {}).await;
        let c = client();
        let post = |path: &str, body: Value| {
            let req = c.post(s.url(path)).json(&body);
            async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (st, v) = post(
            "/v1/jobs",
            json!({"queue": "email", "payload": {"to": "ops@example.com", "subject": "weekly report"}, "max_attempts": 1}),
        )
        .await;
        assert_eq!(st, 202, "{v}");
        let id = v["job_id"].as_str().unwrap().to_string();
        let (st, v) = post("/v1/queues/email/lease", json!({"worker": "mailer-1"})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["jobs"][0]["job_id"], id.as_str());
        let (st, v) = post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"worker": "mailer-1", "attempt": 1, "error": "smtp: connection refused"}),
        )
        .await;
        assert_eq!((st, v["status"].as_str()), (200, Some("dead")), "{v}");
        // company for the picture: queued jobs
        for q in ["email", "email", "reports"] {
            assert_eq!(post("/v1/jobs", json!({"queue": q, "payload": 1})).await.0, 202);
        }

        login(&b, &s, &pw, "/admin/jobs", None).await;
        let q = rows(&b, "#queues").await;
        assert_eq!(q[0], ["email", "2", "0", "0", "0", "1"], "{q:?}");
        shot(&b, "jobs.png").await;

        click_to(
            &b,
            &sel("#queues a[href^='/admin/jobs/dead']"),
            "the dead letters of email",
            "!!document.getElementById('dead')",
        )
        .await;
        let d = rows(&b, "#dead").await;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0][0].as_str(), d[0][1].as_str()), (id.as_str(), "dead"));
        assert_eq!(d[0][2], "1/1");
        assert_eq!(d[0][3], "smtp: connection refused");
        shot(&b, "dead-letters.png").await;

        click_to(
            &b,
            &sel(&format!("#dead a[href='/admin/jobs/{id}']")),
            "the job's page",
            "!!document.getElementById('job-state')",
        )
        .await;
        assert_eq!(text(&b, "#job-state").await, "dead");
        assert!(b
            .eval("return document.body.textContent.indexOf('weekly report') >= 0;")
            .await
            .as_bool()
            .unwrap());
        shot(&b, "job.png").await;

        // back to the dead letters; Requeue… asks first
        click_to(
            &b,
            &sel(".crumbs a[href^='/admin/jobs/dead']"),
            "the dead letters again",
            "!!document.getElementById('dead')",
        )
        .await;
        click_to(
            &b,
            &sel(&format!("#dead a[href='/admin/jobs/{id}/requeue']")),
            "the confirmation page",
            "!!document.getElementById('confirm-form')",
        )
        .await;
        assert!(text(&b, "#question").await.starts_with(&format!("Requeue job {id}?")));
        // nothing happens until confirmed
        let j: Value = c.get(s.url(&format!("/v1/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(j["status"], "dead");
        shot(&b, "confirm.png").await;
        click_to(
            &b,
            &sel("#confirm"),
            "the requeued notice",
            "!!document.getElementById('notice')",
        )
        .await;
        assert!(text(&b, "#notice").await.contains(&format!("Job {id} was requeued")));
        assert!(rows(&b, "#dead").await.is_empty());

        let j: Value = c.get(s.url(&format!("/v1/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(j["status"], "queued", "{j}");
        assert_eq!(j["attempts"], 0, "{j}");
        let (st, v) = post("/v1/queues/email/lease", json!({"worker": "mailer-2", "max": 10})).await;
        assert_eq!(st, 200, "{v}");
        let leased: Vec<&str> = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|j| j["job_id"].as_str())
            .collect();
        assert!(leased.contains(&id.as_str()), "a worker takes it again: {v}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 6. CSRF
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn form_posts_without_the_csrf_token_are_refused() {
    bounded("csrf", async {
        let (s, pw) = admin_server(|_| {}).await;
        let c = http();
        let me = http_login(&c, &s.base_url, &pw).await;
        let other = http_login(&c, &s.base_url, &pw).await;
        assert_ne!(me.csrf, other.csrf, "each session has its own token");

        let publish = |csrf: Option<&str>| {
            let mut form = vec![
                ("topic", "csrf/t"),
                ("type", "test"),
                ("data", "{\"x\": 1}"),
            ];
            if let Some(t) = csrf {
                form.push(("csrf", t));
            }
            c.post(s.url("/admin/topics/publish"))
                .header("Cookie", &me.cookie)
                .form_pairs(&form)
                .send()
        };
        let wrong = "0".repeat(me.csrf.len());
        for (label, token) in [
            ("missing", None),
            ("empty", Some("")),
            ("wrong", Some(wrong.as_str())),
            ("another session's", Some(other.csrf.as_str())),
        ] {
            let r = publish(token).await.unwrap();
            assert_eq!(r.status(), 403, "{label} token");
            assert!(
                r.text().await.unwrap().contains("CSRF"),
                "{label}: says why"
            );
        }
        assert!(
            read_events(&s.base_url, "csrf/t", "0").await.is_empty(),
            "nothing published"
        );

        // every other form too
        for path in [
            "/admin/tokens",
            "/admin/connections/1/disconnect",
            "/admin/jobs/j1/requeue",
            "/admin/jobs/j1/discard",
            "/admin/logout",
        ] {
            let r = c
                .post(s.url(path))
                .header("Cookie", &me.cookie)
                .form_pairs(&[
                    ("csrf", wrong.as_str()),
                    ("sub", "x"),
                    ("topics", "a"),
                    ("role", "subscriber"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path}");
        }
        // the refused logout did not end the session
        let r = c
            .get(s.url("/admin/settings"))
            .header("Cookie", &me.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // with its token the same post goes through
        let r = publish(Some(&me.csrf)).await.unwrap();
        assert_eq!(r.status(), 303);
        assert!(location(&r).starts_with("/admin/topic?name=csrf%2Ft&published="));
        assert_eq!(read_events(&s.base_url, "csrf/t", "0").await.len(), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 7. connections: list and disconnect
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connections_page_lists_a_subscriber_and_disconnect_ends_its_stream() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    bounded("connections", async {
        let (s, pw) = auth_admin_server().await;
        let sensor = subscriber_token(&s, "sensor-7", &["plant/**"]);
        let tv = subscriber_token(&s, "lobby-display", &["news/**"]);
        let mut stream = open_stream(&client(), &s.url("/v1/stream?topic=plant/boiler"), Some(&sensor)).await;
        let _other = open_stream(&client_h1(), &s.url("/v1/stream?topic=news/**"), Some(&tv)).await;

        login(&b, &s, &pw, "/admin/connections", None).await;
        let t = rows(&b, "#subscribers").await;
        let row = t
            .iter()
            .find(|r| r[1] == "sensor-7")
            .unwrap_or_else(|| panic!("no row for sensor-7: {t:?}"));
        assert_eq!((row[2].as_str(), row[3].as_str(), row[4].as_str()), ("SSE stream", "2", "plant/boiler"));
        let other = t.iter().find(|r| r[1] == "lobby-display").expect("the other stream");
        assert_eq!(other[3], "1.1");
        shot(&b, "connections.png").await;

        let ended = click_to(
            &b,
            "Array.prototype.find.call(document.querySelectorAll('#subscribers tbody tr'), function (r) {\
               return r.cells[1].textContent.trim() === 'sensor-7'; }).querySelector('button')",
            "the ended notice",
            "location.search.indexOf('ended=') >= 0 && document.querySelector('.notice').textContent",
        )
        .await;
        assert!(ended.as_str().unwrap().contains("was ended"), "{ended}");

        // the client is told, then its stream ends
        let mut seen = Vec::new();
        loop {
            match stream.next_any(EVENT_WAIT).await {
                Some(e) if e.event == "surepush.disconnected" => break,
                Some(e) => seen.push(e.event),
                None => panic!("no surepush.disconnected; saw {seen:?}"),
            }
        }
        let (after, ended) = stream.until_end(EVENT_WAIT).await;
        assert!(ended && after.is_empty(), "the stream ends right after");
        let t = rows(&b, "#subscribers").await;
        assert!(t.iter().all(|r| r[1] != "sensor-7"), "gone from the list: {t:?}");
        assert!(t.iter().any(|r| r[1] == "lobby-display"), "the other stays");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 8. the network doctor
// ---------------------------------------------------------------------------------------

async fn doctor_verdict(b: &Browser, url: &str) -> (String, String) {
    b.goto(url).await;
    let v = wait_page(
        b,
        "the doctor's verdict",
        "return document.getElementById('verdict').getAttribute('data-verdict');",
    )
    .await;
    let stream = b
        .eval("return document.getElementById('r-stream').getAttribute('data-state');")
        .await;
    (
        v.as_str().unwrap().to_string(),
        stream.as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn network_doctor_tells_streaming_from_a_buffering_proxy() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    bounded("doctor", async {
        let (s, _) = admin_server(|_| {}).await;
        let (verdict, stream) = doctor_verdict(&b, &s.url("/doctor")).await;
        assert_eq!((verdict.as_str(), stream.as_str()), ("sse", "ok"));
        for id in ["r-close", "r-longpoll"] {
            assert_eq!(
                b.eval(&format!(
                    "return document.getElementById('{id}').getAttribute('data-state');"
                ))
                .await,
                "ok",
                "{id}"
            );
        }
        let conn = text(&b, "#r-http").await;
        assert!(
            conn.starts_with("HTTP/2 at the server") && conn.ends_with("https"),
            "HTTP/2 straight to the server: {conn:?}"
        );
        shot(&b, "doctor.png").await;

        let proxy = HostileProxy::start(ProxyMode::BufferUntilClose, s.addr, true).await;
        let (verdict, stream) = doctor_verdict(&b, &format!("{}/doctor", proxy.base_url())).await;
        assert!(
            verdict == "sse-close" || verdict == "longpoll",
            "through a buffering proxy: {verdict}"
        );
        assert_eq!(stream, "buffered", "the stream row is marked buffered");
        assert!(text(&b, "#r-stream").await.starts_with("held back"));
        let conn = text(&b, "#r-http").await;
        assert!(
            conn.starts_with("HTTP/1.1 at the server") && conn.ends_with("http"),
            "the proxy speaks HTTP/1.1 to the server: {conn:?}"
        );
        assert!(
            !text(&b, "#advice").await.is_empty(),
            "advice for the network team"
        );
        shot(&b, "doctor-buffering-proxy.png").await;

        // HAProxy's default: every streamed write held ~200 ms. Streaming works, late,
        // and the advice names the setting.
        let slow = HostileProxy::start(
            ProxyMode::DelayWrites(std::time::Duration::from_millis(300)),
            s.addr,
            true,
        )
        .await;
        let (verdict, stream) = doctor_verdict(&b, &format!("{}/doctor", slow.base_url())).await;
        assert_eq!((verdict.as_str(), stream.as_str()), ("sse", "ok"));
        let said = text(&b, "#verdict").await + &text(&b, "#advice").await;
        assert!(
            said.contains("late") && said.contains("http-no-delay"),
            "{said}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 9. tokens
// ---------------------------------------------------------------------------------------

/// Mints a token with the form on /admin/tokens; returns it.
async fn mint(b: &Browser, sub: &str, role: &str, topics: &str) -> String {
    fill(b, &[("#sub", sub), ("#topics", topics), ("#ttl", "1h")]).await;
    b.eval(&format!(
        "document.querySelector('input[name=role][value={role}]').checked = true; return true;"
    ))
    .await;
    click_to(
        b,
        &sel("#mint"),
        "the minted token",
        "!!document.getElementById('token')",
    )
    .await;
    let summary = text(b, "#minted p").await;
    assert!(
        summary.starts_with(&format!("For {sub}: may ")),
        "{summary}"
    );
    assert!(summary.contains(topics), "{summary}");
    b.eval("return document.getElementById('token').value;")
        .await
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn minted_token_is_shown_once_and_works() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    bounded("tokens", async {
        let (s, pw) = auth_admin_server().await;
        login(&b, &s, &pw, "/admin/tokens", None).await;
        let sub_token = mint(&b, "phone-42", "subscriber", "users/42").await;
        assert_eq!(sub_token.split('.').count(), 3, "a JWT");
        shot(&b, "tokens.png").await;
        let pub_token = mint(&b, "backend", "publisher", "users/**").await;
        assert_ne!(sub_token, pub_token);

        // shown once: the page itself never shows it again
        b.goto(&s.url("/admin/tokens")).await;
        assert_eq!(
            b.eval("return !!document.getElementById('minted');").await,
            false
        );

        // the tokens verify, with exactly the rights asked for
        let c = client();
        let mut sse = open_stream(&c, &s.url("/v1/stream?topic=users/42"), Some(&sub_token)).await;
        let r = c
            .get(s.url("/v1/stream?topic=users/43"))
            .bearer_auth(&sub_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "only users/42");
        let r = c
            .get(s.url("/v1/stream?topic=users/42"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "auth is on");
        let publish = |token: &str| {
            c.post(s.url("/v1/publish"))
                .bearer_auth(token)
                .json(&json!({"topic": "users/42", "type": "note", "data": {"hi": 1}}))
                .send()
        };
        assert_eq!(
            publish(&sub_token).await.unwrap().status(),
            403,
            "a subscriber may not publish"
        );
        let r = publish(&pub_token).await.unwrap();
        assert_eq!(r.status(), 201);
        let ev = sse
            .next_event(EVENT_WAIT)
            .await
            .expect("the event, to the token's holder");
        assert_eq!(ev.event, "note");
        assert_eq!(
            serde_json::from_str::<Value>(&ev.data).unwrap()["data"],
            json!({"hi": 1})
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 10. settings and logout
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_the_session() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    bounded("logout", async {
        let (s, pw) = admin_server(|_| {}).await;
        login(&b, &s, &pw, "/admin/settings", None).await;
        let config = text(&b, "#config").await;
        assert!(
            config.contains("stats_interval_ms = 250"),
            "the effective configuration"
        );
        let listening = b
            .eval("return document.querySelector('.facts code').textContent;")
            .await;
        assert_eq!(
            listening,
            s.base_url.as_str(),
            "the port the server really listens on"
        );
        shot(&b, "settings.png").await;

        let cookies = b
            .cdp("Network.getCookies", json!({"urls": [s.url("/admin/")]}))
            .await;
        let session = cookies["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "surepush_admin")
            .cloned()
            .unwrap_or_else(|| panic!("no session cookie: {cookies}"));
        assert_eq!(
            (
                &session["httpOnly"],
                &session["secure"],
                &session["sameSite"],
                &session["path"]
            ),
            (
                &json!(true),
                &json!(true),
                &json!("Strict"),
                &json!("/admin")
            )
        );
        assert_eq!(
            b.eval("return document.cookie.indexOf('surepush_admin') >= 0;")
                .await,
            false,
            "scripts cannot read it"
        );
        let old = format!("surepush_admin={}", session["value"].as_str().unwrap());
        let c = http();
        let r = c
            .get(s.url("/admin/api/stats"))
            .header("Cookie", &old)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the cookie works before logout");

        click_to(
            &b,
            &sel("form.logout button"),
            "the login page after logout",
            "location.pathname === '/admin/login'",
        )
        .await;
        let r = c
            .get(s.url("/admin/"))
            .header("Cookie", &old)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(next_of(&location(&r)).as_deref(), Some("/admin/"));
        let r = c
            .get(s.url("/admin/api/stats"))
            .header("Cookie", &old)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        b.goto(&s.url("/admin/settings")).await;
        assert_eq!(
            b.eval("return location.pathname;").await,
            "/admin/login",
            "the browser is logged out too"
        );
    })
    .await;
}
