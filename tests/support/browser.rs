//! Real headless Chromium, driven over the WebDriver protocol (W3C, as spoken by
//! chromedriver) with plain HTTP requests.
//!
//! Each [`Browser`] is its own `chromedriver --port=N` child on 127.0.0.1 (N found by
//! binding port 0 first) with one session and a fresh profile directory, so tests share
//! no cookies or storage. Dropping it ends the session (Chromium quits) and kills the
//! driver.
//!
//! Without Chromium installed, [`Browser::launch`] returns `None` after a loud message;
//! under CI (`CI=true`) it panics instead: a browser test that did not run is a failure.
//!
//! The second half observes the demo page (`/demo`, `window.surepushDemo`): what
//! surepush.js delivered, which transport it chose and why, and its remembered fallback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    http: reqwest::Client,
    port: u16,
    session: String,
    driver: Child,
    profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. `None` when they are not
    /// installed (outside CI).
    pub async fn launch() -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let msg = format!(
                "browser tests need {} (Debian: apt-get install chromium chromium-driver; \
                 tests/run.sh installs them)",
                missing.join(" and ")
            );
            if under_ci() {
                panic!("CI=true and {msg}");
            }
            eprintln!(
                "\n{}\n!!! SKIPPED: {msg}\n{}\n",
                "!".repeat(78),
                "!".repeat(78)
            );
            return None;
        }
        super::init();
        let profile = tempfile::tempdir().expect("profile dir");
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .no_proxy()
            .build()
            .expect("http client");
        let mut b = Browser {
            http,
            port,
            session: String::new(),
            driver,
            profile,
        };
        b.wait_driver().await;
        b.new_session().await;
        Some(b)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_driver(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(self.url("/status")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return;
                    }
                }
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited: {status}\n{}", self.driver_log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver not ready within 30 s\n{}", self.driver_log());
    }

    async fn new_session(&mut self) {
        let user_data = self.profile.path().join("chromium");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            // The server's own certificate is self-signed (tests/admin_ui.rs goes to it
            // directly: its cookies are Secure); plain-HTTP pages are unaffected.
            "acceptInsecureCerts": true,
            "timeouts": {"script": 30000, "pageLoad": 30000, "implicit": 0},
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", user_data.display()),
                ]
            }
        }}});
        let v = self.call("POST", "/session", Some(caps)).await;
        match v["sessionId"].as_str() {
            Some(id) => self.session = id.to_string(),
            None => panic!("no WebDriver session: {v}\n{}", self.driver_log()),
        }
    }

    fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// One WebDriver command; returns its `value`, panics on a WebDriver error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let req = match method {
            "POST" => self
                .http
                .post(self.url(path))
                .json(&body.unwrap_or_else(|| json!({}))),
            "DELETE" => self.http.delete(self.url(path)),
            _ => self.http.get(self.url(path)),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: bad JSON: {e}"));
        if !status.is_success() {
            panic!("WebDriver {method} {path} -> {status}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Navigates and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    pub async fn refresh(&self) {
        self.call("POST", &self.session_path("/refresh"), None)
            .await;
    }

    /// Runs `body` as a function in the page (use `return ...`); returns its JSON value.
    pub async fn eval(&self, body: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": body, "args": [] })),
        )
        .await
    }

    /// Like [`Browser::eval`], but a WebDriver error (a page being replaced while the
    /// script runs, say) is `None` instead of a panic: for polling across navigations.
    pub async fn try_eval(&self, body: &str) -> Option<Value> {
        let r = self
            .http
            .post(self.url(&self.session_path("/execute/sync")))
            .json(&json!({ "script": body, "args": [] }))
            .send()
            .await
            .ok()?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.ok()?;
        ok.then(|| v["value"].clone())
    }

    /// Fixes the page's viewport (CSS pixels, scale 1) for screenshots that do not
    /// depend on the host.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    }

    /// Saves a PNG of the viewport to `path` (CDP `Page.captureScreenshot`).
    pub async fn screenshot(&self, path: &Path) {
        let v = self
            .cdp("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = v["data"].as_str().expect("screenshot data");
        let png = base64_decode(data).expect("screenshot: bad base64");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Runs `body` with a callback as its last argument (`arguments[arguments.length-1]`).
    pub async fn eval_async(&self, body: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/async"),
            Some(json!({ "script": body, "args": [] })),
        )
        .await
    }

    /// A Chrome DevTools Protocol command (chromedriver's `goog/cdp/execute`).
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/goog/cdp/execute"),
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await
    }

    /// Runs `script` before any script of every page loaded from now on.
    pub async fn before_page_scripts(&self, script: &str) {
        self.cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": script }),
        )
        .await;
    }

    /// The browser console so far (best effort, for failure messages).
    pub async fn console(&self) -> String {
        let r = self
            .http
            .post(self.url(&self.session_path("/se/log")))
            .json(&json!({"type": "browser"}))
            .send()
            .await;
        let Ok(r) = r else { return String::new() };
        let v: Value = r.json().await.unwrap_or_default();
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver quit Chromium; a blocking request because
        // Drop cannot await. Then the driver itself goes.
        if !self.session.is_empty() {
            let _ = delete_session(self.port, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding, no line breaks), as CDP returns binary data.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let take = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

fn delete_session(port: u16, session: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // chromedriver answers once Chromium has quit; it may keep the connection open, so
    // read the head and the Content-Length body instead of waiting for EOF.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The demo page (`/demo`), observed: what surepush.js delivered and decided
// ---------------------------------------------------------------------------------------

/// The event type the demo page listens for (and its publish form uses).
pub const TYPE: &str = "demo.message";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Publishes `n` events to `topic` in one batch; returns their ids.
pub async fn publish_batch(base: &str, topic: &str, n: usize, first: usize) -> Vec<String> {
    let body: Vec<Value> = (0..n)
        .map(|i| json!({"topic": topic, "type": TYPE, "data": {"n": first + i}}))
        .collect();
    let r = super::client()
        .post(format!("{base}/v1/publish"))
        .json(&body)
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 201, "publish: {:?}", r.text().await);
    let v: Value = r.json().await.expect("publish reply");
    v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_string())
        .collect()
}

/// A page script that makes the browser an old one (IE11): no EventSource.
pub const NO_EVENTSOURCE: &str = "delete window.EventSource; window.EventSource = undefined;";

/// What the demo page has seen: transport, reason, state, received ids (with arrival
/// times), resets, ready signals ({lastId, transport, at}), and the status events as
/// "event:transport:reason:time".
pub const STATE_JS: &str = r#"
  var d = window.surepushDemo;
  if (!d || !d.sub) return null;
  return {
    transport: d.sub.transport,
    reason: d.sub.reason,
    state: d.sub.state,
    ids: d.received.map(function (e) { return e.id; }),
    at: d.received.map(function (e) { return e.at; }),
    resets: d.resets,
    ready: d.ready,
    errors: d.errors,
    duplicates: d.sub.duplicates,
    statuses: d.statuses.map(function (s) {
      return s.event + ':' + s.transport + ':' + (s.reason || '') + ':' + s.at;
    })
  };
"#;

pub async fn state(b: &Browser) -> Value {
    b.eval(STATE_JS).await
}

pub fn ids(s: &Value) -> Vec<String> {
    s["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Status events as "event:transport:reason" (arrival time dropped).
pub fn statuses(s: &Value) -> Vec<String> {
    s["statuses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .map(|v| v.rsplit_once(':').map_or(v, |(head, _)| head).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Page time (ms) of the first status event starting with `prefix`.
pub fn status_time(s: &Value, prefix: &str) -> Option<i64> {
    s["statuses"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.starts_with(prefix))
        .and_then(|v| v.rsplit_once(':'))
        .and_then(|(_, t)| t.parse().ok())
}

/// Polls the page until `ok` holds; panics with the page's state and console after `within`.
pub async fn wait_for(
    b: &Browser,
    what: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = state(b).await;
        if !s.is_null() && ok(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {within:?} waiting for {what}\nids: {} received\nstate: transport={} reason={} state={}\nstatuses: {:#?}\nconsole:\n{}",
                ids(&s).len(),
                s["transport"],
                s["reason"],
                s["state"],
                statuses(&s),
                b.console().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts the page received exactly `want`, in order, with no copy delivered twice.
pub fn assert_exactly(s: &Value, want: &[String], what: &str) {
    let got = ids(s);
    if got != want {
        let extra: Vec<_> = got.iter().filter(|id| !want.contains(id)).collect();
        let missing: Vec<_> = want.iter().filter(|id| !got.contains(id)).collect();
        panic!(
            "{what}: got {} events, want {} (missing {missing:?}, unexpected {extra:?}, in order: {})\nstatuses: {:#?}",
            got.len(),
            want.len(),
            got.iter().filter(|id| want.contains(id)).eq(want.iter()),
            statuses(s)
        );
    }
}

/// The value of a Prometheus sample whose line starts with `name{` and contains `label`.
pub async fn metric(server: &super::TestServer, name: &str, label: &str) -> f64 {
    server
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Stores a remembered transport for the page's origin, as surepush.js does.
pub async fn remember(b: &Browser, transport: &str, reason: &str, age_ms: i64) -> i64 {
    let v = b
        .eval(&format!(
            "var t = Date.now() - ({age_ms});\
             localStorage.setItem('surepush.transport:' + location.origin,\
               JSON.stringify({{transport: '{transport}', reason: '{reason}', time: t}}));\
             return t;"
        ))
        .await;
    v.as_i64().expect("time")
}

pub async fn memory(b: &Browser) -> Value {
    let v = b
        .eval("return localStorage.getItem('surepush.transport:' + location.origin);")
        .await;
    match v.as_str() {
        Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        None => Value::Null,
    }
}
