//! The admin side over plain HTTP (the pages in Chromium are in tests/admin_ui.rs): the
//! session's life (a password changed or a user removed with `surepush admin` ends it at
//! once), reserved topics, the dashboard's statistics topic published only while watched,
//! ending a subscriber's connection, `admin.enabled = false`, and `surepush init --config`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::admin::*;
use support::*;

const PASSWORD: &str = "a long test password";

/// The login form's answer (the shared helper, with the `next` these tests follow).
async fn login(c: &reqwest::Client, base: &str, user: &str, password: &str) -> reqwest::Response {
    post_login(c, base, user, password, "/admin/topics").await
}

/// `name=value` for a Cookie header, from a response's Set-Cookie.
fn cookie_of(resp: &reqwest::Response, name: &str) -> Option<String> {
    cookie_value(&set_cookies(resp), name).map(|v| format!("{name}={v}"))
}

fn hidden(html: &str, name: &str) -> String {
    field(html, name).expect("hidden field")
}

fn add_user(data_dir: &std::path::Path, name: &str) {
    let path = surepush::admin::users::users_path(data_dir);
    let mut f = surepush::admin::UsersFile::load(&path).unwrap();
    f.add(name, PASSWORD).unwrap();
    f.save(&path).unwrap();
}

async fn session(c: &reqwest::Client, base: &str, user: &str) -> String {
    let r = login(c, base, user, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/admin/topics", "follows next=");
    let set = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("surepush_admin="))
        .expect("session cookie")
        .to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attr), "session cookie lacks {attr}: {set}");
    }
    cookie_of(&r, "surepush_admin").unwrap()
}

async fn get_status(c: &reqwest::Client, url: &str, cookie: &str) -> StatusCode {
    c.get(url)
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
}

fn surepush_cmd(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_surepush"));
    cmd.args(args)
        .env_remove("SUREPUSH_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = surepush_cmd(args).spawn().expect("spawn surepush");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("surepush finished")
        .unwrap()
}

#[tokio::test]
async fn cli_password_change_and_removal_end_sessions_at_once() {
    let server = TestServer::start().await;
    let dir = server.data_dir.to_str().unwrap().to_string();
    let c = http();
    // the admin CLI adds a user while the server runs
    let o = run_with_stdin(
        &[
            "admin",
            "add-user",
            "ops",
            "--password-stdin",
            "--data-dir",
            &dir,
        ],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cookie = session(&c, &server.base_url, "ops").await;
    let settings = server.url("/admin/settings");
    assert_eq!(get_status(&c, &settings, &cookie).await, 200);
    let o = surepush_cmd(&["admin", "list", "--data-dir", &dir])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        listed.contains("admin") && listed.contains("ops"),
        "{listed}"
    );

    // a short password is refused, with a clear message
    let o = run_with_stdin(
        &[
            "admin",
            "passwd",
            "ops",
            "--password-stdin",
            "--data-dir",
            &dir,
        ],
        "short\n",
    )
    .await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("too short"));
    assert_eq!(get_status(&c, &settings, &cookie).await, 200, "unchanged");

    // a new password ends the open session
    let o = run_with_stdin(
        &[
            "admin",
            "passwd",
            "ops",
            "--password-stdin",
            "--data-dir",
            &dir,
        ],
        "another long password\n",
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        get_status(&c, &settings, &cookie).await,
        StatusCode::SEE_OTHER
    );
    let r = login(&c, &server.base_url, "ops", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "old password refused");
    let r = login(&c, &server.base_url, "ops", "another long password").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = cookie_of(&r, "surepush_admin").unwrap();
    assert_eq!(get_status(&c, &settings, &cookie).await, 200);

    // removal ends it too
    let o = surepush_cmd(&["admin", "remove", "ops", "--data-dir", &dir])
        .output()
        .await
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        get_status(&c, &settings, &cookie).await,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn reserved_topics_cannot_be_published_and_root_wildcards_skip_them() {
    let server = TestServer::start_with(|c| c.admin.stats_interval_ms = 200).await;
    let c = client();
    let r = c
        .post(server.url("/v1/publish"))
        .json(&json!({"topic": "surepush.admin/stats", "data": {"fake": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "reserved_topic");

    // `**` follows everything but the server's own topics
    let all = c
        .get(server.url("/v1/stream?topic=**"))
        .send()
        .await
        .unwrap();
    let mut all = SseReader::new(all);
    // nobody watches the statistics yet: none are published
    tokio::time::sleep(Duration::from_millis(600)).await;
    let page = read_events(&server.base_url, "surepush.admin/stats", "0").await;
    assert!(page.is_empty(), "no statistics without a watcher: {page:?}");

    let watcher = c
        .get(server.url("/v1/stream?topic=surepush.admin/stats"))
        .send()
        .await
        .unwrap();
    let mut watcher = SseReader::new(watcher);
    let stats = watcher
        .next_event(Duration::from_secs(10))
        .await
        .expect("statistics while watched");
    assert_eq!(stats.event, "stats");
    let data: Value = serde_json::from_str(&stats.data).unwrap();
    let snapshot = &data["data"];
    assert!(snapshot["subscribers"].as_u64().unwrap() >= 2, "{snapshot}");
    assert!(snapshot["connections_total"].as_u64().unwrap() >= 2);
    // storage as retention sees it: segment files, free disk, the budget met
    assert!(snapshot["storage_segments"].is_u64(), "{snapshot}");
    assert!(
        snapshot["disk_free_bytes"].as_u64().unwrap() > 0,
        "{snapshot}"
    );
    assert_eq!(snapshot["budget_unmet"], false, "{snapshot}");

    let id = server.publish("news/1", json!("hello")).await;
    let e = all
        .next_event(Duration::from_secs(10))
        .await
        .expect("the client event");
    assert_eq!(
        e.id, id,
        "`**` got the client's event, not a statistics event"
    );
    // the next statistics count the client's event but not their own
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = watcher
            .next_event(Duration::from_secs(5))
            .await
            .expect("more statistics");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        if v["data"]["published"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "published stays {v}"
        );
    }
    drop(watcher);
    let n = read_events(&server.base_url, "surepush.admin/stats", "0")
        .await
        .len();
    assert!(n >= 2);
    assert!(
        all.next_event(Duration::from_millis(500)).await.is_none(),
        "statistics never reach `**`"
    );
}

#[tokio::test]
async fn an_operator_ends_a_subscriber_and_its_client_resumes() {
    let server = TestServer::start().await;
    add_user(&server.data_dir, "ops");
    let c = http();
    let cookie = session(&c, &server.base_url, "ops").await;
    let first = server.publish("conn/a", json!(1)).await;
    let sse = client()
        .get(server.url("/v1/stream?topic=conn/a&since=0"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(sse);
    assert_eq!(
        sse.next_event(Duration::from_secs(5)).await.unwrap().id,
        first
    );

    let page = c
        .get(server.url("/admin/connections"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("conn/a") && page.contains("SSE stream"),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");
    let action = {
        let start = page.find("/admin/connections/").unwrap();
        page[start..start + page[start..].find('"').unwrap()].to_string()
    };
    // without the CSRF token: refused, the stream stays
    let r = c
        .post(server.url(&action))
        .header(COOKIE, &cookie)
        .form_pairs(&[("csrf", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(server.url(&action))
        .header(COOKIE, &cookie)
        .form_pairs(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[LOCATION].to_str().unwrap().contains("ended="));
    // the stream says goodbye and ends
    let mut saw_goodbye = false;
    while let Some(e) = sse.next_any(Duration::from_secs(5)).await {
        if e.event == "surepush.disconnected" {
            saw_goodbye = true;
        }
    }
    assert!(saw_goodbye, "the client was told why the stream ended");
    // the client resumes from its last id and loses nothing
    let second = server.publish("conn/a", json!(2)).await;
    let again = client()
        .get(server.url("/v1/stream?topic=conn/a"))
        .header("Last-Event-ID", first)
        .send()
        .await
        .unwrap();
    let mut again = SseReader::new(again);
    assert_eq!(
        again.next_event(Duration::from_secs(5)).await.unwrap().id,
        second
    );
}

#[tokio::test]
async fn disabled_admin_answers_404_and_creates_no_user() {
    let server = TestServer::start_with(|c| c.admin.enabled = false).await;
    let c = http();
    for path in [
        "/admin/",
        "/admin/login",
        "/admin/topics",
        "/admin/api/stats",
    ] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert!(!server
        .data_dir
        .join(surepush::admin::users::INITIAL_PASSWORD_FILE)
        .exists());
    // the doctor page is public and independent of the admin UI
    let r = c.get(server.url("/doctor")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn doctor_probes_send_a_canary_then_an_event() {
    let server = TestServer::start().await;
    let c = client();
    for mode in ["stream", "close"] {
        let started = std::time::Instant::now();
        let r = c
            .get(server.url(&format!("/v1/stream/probe?mode={mode}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut s = SseReader::new(r);
        let hello = s.next_any(Duration::from_secs(5)).await.unwrap();
        assert_eq!(hello.event, "surepush.hello");
        let probe = s.next_event(Duration::from_secs(5)).await.unwrap();
        assert_eq!(probe.event, "probe");
        assert!(started.elapsed() >= Duration::from_millis(900), "{mode}");
        let (_, ended) = s.until_end(Duration::from_secs(6)).await;
        assert!(ended, "{mode} probe ends");
    }
    let r = c.get(server.url("/v1/poll/probe")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["probe"], true);
}

#[tokio::test]
async fn init_with_a_config_prepares_its_data_dir_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("var/lib/surepush");
    let config = tmp.path().join("surepush.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {}\n",
            toml::Value::String(data.display().to_string())
        ),
    )
    .unwrap();
    let before = std::fs::read(&config).unwrap();
    let cfg = config.to_str().unwrap();
    let o = surepush_cmd(&["init", "--config", cfg])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let password_file = data.join("initial-admin-password");
    let password = std::fs::read_to_string(&password_file).unwrap();
    assert!(out.contains(password.trim()), "printed once: {out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&password_file), 0o600);
    assert_eq!(mode(&data.join("admin-users.json")), 0o600);
    for f in ["tls/cert.pem", "tls/key.pem", "signing.key"] {
        assert!(data.join(f).is_file(), "{f}");
    }
    let users = std::fs::read(data.join("admin-users.json")).unwrap();
    let cert = std::fs::read(data.join("tls/cert.pem")).unwrap();

    // again: nothing changes, no new password
    let o = surepush_cmd(&["init", "--config", cfg])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success());
    assert!(out.contains("kept"), "{out}");
    assert!(!out.contains("password:"), "{out}");
    assert_eq!(std::fs::read(data.join("admin-users.json")).unwrap(), users);
    assert_eq!(std::fs::read(data.join("tls/cert.pem")).unwrap(), cert);
    assert_eq!(std::fs::read(&config).unwrap(), before, "config untouched");

    // the password init printed logs in to a server on that data dir
    let mut child = ChildServer::spawn_env(&data, &["--config", cfg], &[]);
    let c = http();
    let r = login(&c, &child.base_url, "admin", password.trim()).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    child.sigterm();
    assert!(child.wait_exit(Duration::from_secs(15)).is_some());
}

/// What a client types reaches the audit log escaped: a newline cannot start a forged
/// line, an ANSI escape cannot repaint the terminal. A CR/LF in `next=` is not followed
/// (seen: 500 `failed to parse header value`, with the session cookie already set).
#[tokio::test]
async fn login_input_cannot_forge_log_lines_or_break_the_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    add_user(&data, "ops");
    let child = ChildServer::spawn(&data, &[]);
    let c = http();
    let forged = "nobody\nINFO audit: admin logged in user=root\u{1b}[2J";
    let r = post_login(&c, &child.base_url, forged, "wrong", "/admin/").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = post_login(
        &c,
        &child.base_url,
        "ops",
        PASSWORD,
        "/admin/x\r\nSet-Cookie: evil=1",
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/admin/");
    assert!(cookie_of(&r, "surepush_admin").is_some());
    assert!(cookie_of(&r, "evil").is_none());

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !child.log_text().contains("admin logged in") {
        assert!(std::time::Instant::now() < deadline, "{}", child.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = child.log_text();
    let mut failed = 0;
    for line in log.lines() {
        assert!(
            !line.contains('\u{1b}'),
            "an escape reached the log: {line:?}"
        );
        if line.contains("user=root") {
            assert!(line.contains("login failed"), "a forged line: {line:?}");
            assert!(line.contains("\\n") && line.contains("\\u{1b}"), "{line:?}");
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "{log}");
}

/// Admin error pages and `/doctor` may not be framed and carry the admin UI's content
/// policy; every answer has `nosniff`; HSTS over TLS unless set to 0.
#[tokio::test]
async fn pages_and_answers_carry_security_headers() {
    let server = TestServer::start().await;
    let c = http();
    let csrf_refusal = c
        .post(server.url("/admin/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("user=x&password=y")
        .send()
        .await
        .unwrap();
    assert_eq!(csrf_refusal.status(), StatusCode::FORBIDDEN);
    let doctor = c.get(server.url("/doctor")).send().await.unwrap();
    assert_eq!(doctor.status(), 200);
    for (what, r) in [("admin error page", &csrf_refusal), ("doctor", &doctor)] {
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with("text/html"),
            "{what}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{what}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["strict-transport-security"], "max-age=15552000", "{what}");
    }
    let json = c
        .get(server.url("/v1/events?topic=a&since=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(json.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        json.headers()["strict-transport-security"],
        "max-age=15552000"
    );

    let off = TestServer::start_with(|c| c.tls.hsts_max_age_secs = 0).await;
    let r = c.get(off.url("/healthz")).send().await.unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

/// The topic page marks events that asked for receipts and links to who got them; the
/// receipts page lists each subject with its delivery and, until it comes, "not yet".
#[tokio::test(flavor = "multi_thread")]
async fn topic_page_links_to_the_receipts_of_an_event() {
    let server = TestServer::start().await;
    add_user(&server.data_dir, "ops");
    let c = http();
    let cookie = session(&c, &server.base_url, "ops").await;
    let r = client()
        .post(server.url("/v1/publish"))
        .json(&json!([
            {"topic": "plant/alarms", "data": "pump 3", "receipt": true},
            {"topic": "plant/alarms", "data": "no receipt"}
        ]))
        .send()
        .await
        .unwrap();
    let ids: Value = r.json().await.unwrap();
    let wanted = ids["ids"][0].as_str().unwrap().to_string();
    // delivered once (a poll, no token: "anonymous"), not acknowledged
    let page = read_events(&server.base_url, "plant/alarms", "0").await;
    assert_eq!(page.len(), 2);
    let get = |url: String| {
        let (c, cookie) = (c.clone(), cookie.clone());
        async move {
            let r = c.get(url).header(COOKIE, cookie).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let topic = loop {
        let (status, html) = get(server.url("/admin/topic?name=plant/alarms")).await;
        assert_eq!(status, StatusCode::OK);
        if html.contains("delivered to 1, acknowledged by 0") {
            break html;
        }
        assert!(std::time::Instant::now() < deadline, "{html}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let link = format!("/admin/receipts?id={wanted}");
    assert!(topic.contains(&format!("href=\"{link}\"")), "{topic}");
    assert_eq!(
        topic.matches("class=\"small receipts\"").count(),
        1,
        "one event asked"
    );
    let (status, html) = get(server.url(&link)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<code>anonymous</code>") && html.contains("not yet"),
        "{html}"
    );
    // acknowledged: the page says when
    let r = client()
        .post(server.url("/v1/receipts"))
        .body(json!({"ids": [wanted]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, html) = get(server.url(&link)).await;
    assert!(
        html.contains("delivered to 1, acknowledged by 1") && !html.contains("not yet"),
        "{html}"
    );
    // without a session: the login page; an event that did not ask: 404
    assert_eq!(
        get_status(&c, &server.url(&link), "").await,
        StatusCode::SEE_OTHER
    );
    let plain = ids["ids"][1].as_str().unwrap();
    let (status, _) = get(server.url(&format!("/admin/receipts?id={plain}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
