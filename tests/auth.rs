//! Who may read and write what: the authorization matrix over real TLS, token sources,
//! wildcard and replay isolation, token expiry on streams, and CORS.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use surepush::auth::{now_secs, Authenticator, Claims, Grants};
use surepush::config::Config;

const WAIT: Duration = Duration::from_secs(5);

struct Tokens {
    right: String,
    wrong: String,
    expired: String,
    bad_signature: String,
}

fn minter(s: &TestServer) -> Authenticator {
    let mut c = Config {
        data_dir: s.data_dir.clone(),
        ..Config::default()
    };
    c.auth.enabled = true;
    Authenticator::from_config(&c).unwrap()
}

fn claims(subscribe: &[&str], publish: &[&str], exp: u64) -> Claims {
    Claims {
        sub: "u42".into(),
        exp,
        nbf: None,
        iat: None,
        surepush: Grants {
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            ..Grants::default()
        },
    }
}

fn tokens(s: &TestServer) -> Tokens {
    let m = minter(s);
    let later = now_secs() + 600;
    let right = m
        .mint(&claims(&["users/42"], &["users/42"], later))
        .unwrap();
    // same claims, signature of another key
    let other_dir = tempfile::tempdir().unwrap();
    let mut oc = Config {
        data_dir: other_dir.path().to_path_buf(),
        ..Config::default()
    };
    oc.auth.enabled = true;
    surepush::tls::ensure_signing_key(&oc.signing_key_path()).unwrap();
    let other = Authenticator::from_config(&oc).unwrap();
    Tokens {
        bad_signature: other
            .mint(&claims(&["users/42"], &["users/42"], later))
            .unwrap(),
        wrong: m
            .mint(&claims(&["users/43"], &["users/43"], later))
            .unwrap(),
        expired: m
            .mint(&claims(&["users/42"], &["users/42"], now_secs() - 3600))
            .unwrap(),
        right,
    }
}

async fn auth_server() -> TestServer {
    TestServer::start_with(|c| {
        c.auth.enabled = true;
        c.auth.leeway_secs = 0;
        c.auth.public_topics = vec!["news/**".into()];
    })
    .await
}

/// Status of one request: `endpoint` x `topic` with an optional bearer token.
async fn status(s: &TestServer, endpoint: &str, topic: &str, token: Option<&str>) -> u16 {
    let c = client();
    let req = match endpoint {
        "publish" => c
            .post(s.url("/v1/publish"))
            .json(&json!({"topic": topic, "data": 1})),
        "stream" => c.get(s.url(&format!("/v1/stream?topic={topic}"))),
        "stream-close" => c.get(s.url(&format!("/v1/stream?topic={topic}&mode=close&timeout=0"))),
        "poll" => c.get(s.url(&format!("/v1/poll?topic={topic}&timeout=0"))),
        "events" => c.get(s.url(&format!("/v1/events?topic={topic}"))),
        _ => unreachable!(),
    };
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let r = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap();
    let st = r.status().as_u16();
    if st >= 400 {
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
    st
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    let s = auth_server().await;
    let t = tokens(&s);
    let endpoints = ["publish", "stream", "stream-close", "poll", "events"];
    // (case, token, topic, expected for publish, expected for the subscribe endpoints)
    let cases: Vec<(&str, Option<&str>, &str, u16, u16)> = vec![
        ("no token", None, "users/42", 401, 401),
        ("expired", Some(&t.expired), "users/42", 401, 401),
        (
            "bad signature",
            Some(&t.bad_signature),
            "users/42",
            401,
            401,
        ),
        ("garbage", Some("not-a-jwt"), "users/42", 401, 401),
        ("wrong pattern", Some(&t.wrong), "users/42", 403, 403),
        ("right pattern", Some(&t.right), "users/42", 201, 200),
        ("public, no token", None, "news/today", 401, 200),
        ("public, token", Some(&t.right), "news/today", 403, 200),
        ("wildcard beyond grant", Some(&t.right), "users/*", 422, 403),
        ("everything", Some(&t.right), "**", 422, 403),
    ];
    let mut n = 0;
    let mut table = String::new();
    for (name, token, topic, publish, subscribe) in &cases {
        for e in endpoints {
            let want = if e == "publish" { *publish } else { *subscribe };
            let got = status(&s, e, topic, *token).await;
            assert_eq!(got, want, "{e} / {name} / {topic}");
            table.push_str(&format!("{e:<13} {name:<22} {topic:<11} {got}\n"));
            n += 1;
        }
    }
    eprintln!("authorization matrix: {n} cells\n{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_sources_header_cookie_query() {
    let s = auth_server().await;
    let t = tokens(&s);
    let c = client();
    let url = s.url("/v1/events?topic=users/42");
    let r = c.get(&url).bearer_auth(&t.right).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&url)
        .header("Cookie", format!("theme=dark; surepush_token={}", t.right))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{url}&access_token={}", t.right))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // the scheme is case-insensitive (RFC 7235)
    for scheme in ["bearer", "BEARER"] {
        let r = c
            .get(&url)
            .header("Authorization", format!("{scheme}  {}", t.right))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"surepush\"");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "token_required");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_of_users_42_never_sees_users_43() {
    let s = auth_server().await;
    let m = minter(&s);
    let later = now_secs() + 600;
    let publisher = m.mint(&claims(&[], &["users/**"], later)).unwrap();
    let reader = m
        .mint(&claims(&["users/42", "users/42/**"], &[], later))
        .unwrap();
    let c = client();
    for (topic, data) in [
        ("users/43", 1),
        ("users/42", 2),
        ("users/43/x", 3),
        ("users/42/x", 4),
    ] {
        let r = c
            .post(s.url("/v1/publish"))
            .bearer_auth(&publisher)
            .json(&json!({"topic": topic, "data": data}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // replay, by polling and by SSE, with the allowed patterns
    let v: Value = c
        .get(s.url("/v1/events?topic=users/42&topic=users/42/**&since=0"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let topics: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["users/42", "users/42/x"]);
    let r = c
        .get(s.url("/v1/stream?topic=users/42/**&since=0"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(r);
    let e = sse.next_event(WAIT).await.unwrap();
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["topic"], "users/42/x");
    // every way of widening the subscription is refused
    for pattern in ["users/*", "users/**", "**", "*", "users/43", "users/4"] {
        let r = c
            .get(s.url(&format!("/v1/events?topic={pattern}&since=0")))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{pattern}");
    }
    // one forbidden pattern among allowed ones refuses the whole subscription
    let r = c
        .get(s.url("/v1/events?topic=users/42&topic=users/43&since=0"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_when_its_token_expires() {
    let s = auth_server().await;
    let m = minter(&s);
    let short = m.mint(&claims(&["users/42"], &[], now_secs() + 2)).unwrap();
    let r = client()
        .get(s.url("/v1/stream?topic=users/42"))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut sse = SseReader::new(r);
    let mut last = None;
    while let Some(e) = sse.next_any(Duration::from_secs(6)).await {
        last = Some(e.event.clone());
        if e.event == "surepush.token_expired" {
            break;
        }
    }
    assert_eq!(last.as_deref(), Some("surepush.token_expired"));
    assert!(
        sse.next_any(Duration::from_secs(3)).await.is_none(),
        "stream ended"
    );
}

/// What CORS granted an answer: `Access-Control-Allow-Origin` and `-Allow-Credentials`.
fn cors_grant(r: &reqwest::Response) -> (Option<String>, Option<String>) {
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    (
        h("access-control-allow-origin"),
        h("access-control-allow-credentials"),
    )
}

/// A read of `/v1/events` from a page of `origin`.
async fn cors_read(c: &reqwest::Client, s: &TestServer, origin: &str) -> reqwest::Response {
    c.get(s.url("/v1/events?topic=a"))
        .header("Origin", origin)
        .send()
        .await
        .unwrap()
}

/// The preflight of a publish from a page of `origin`.
async fn cors_preflight(c: &reqwest::Client, s: &TestServer, origin: &str) -> reqwest::Response {
    c.request(reqwest::Method::OPTIONS, s.url("/v1/publish"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap()
}

fn granted(origin: &str, credentials: bool) -> (Option<String>, Option<String>) {
    (
        Some(origin.to_string()),
        credentials.then(|| "true".to_string()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_for_allowed_origins_only() {
    let s = TestServer::start_with(|c| {
        c.cors.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let c = client();
    let pre = c
        .request(reqwest::Method::OPTIONS, s.url("/v1/publish"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Last-Event-ID"));
    let r = cors_read(&c, &s, "https://app.example").await;
    assert_eq!(cors_grant(&r), granted("https://app.example", true));
    let r = cors_read(&c, &s, "https://evil.example").await;
    assert_eq!(cors_grant(&r), (None, None));
    let pre = cors_preflight(&c, &s, "https://evil.example").await;
    assert_eq!(cors_grant(&pre), (None, None));
}

/// `*` grants pages of any origin what needs no credentials: answers carry
/// `Access-Control-Allow-Origin: *` and never `Allow-Credentials` (seen: any Origin,
/// `null` too, echoed with credentials, so any site read a cookie holder's events).
#[tokio::test(flavor = "multi_thread")]
async fn cors_star_is_anonymous_and_null_is_never_credentialed() {
    let s = TestServer::start_with(|c| {
        c.cors.allowed_origins = vec!["*".into(), "https://app.example".into()];
    })
    .await;
    let c = client();
    for origin in ["https://evil.example", "null"] {
        let r = cors_read(&c, &s, origin).await;
        assert_eq!(cors_grant(&r), granted("*", false), "{origin}");
        let pre = cors_preflight(&c, &s, origin).await;
        assert_eq!(pre.status(), 204);
        assert_eq!(cors_grant(&pre), granted("*", false), "{origin}");
    }
    // an origin listed by name keeps its credentials
    let r = cors_read(&c, &s, "https://app.example").await;
    assert_eq!(cors_grant(&r), granted("https://app.example", true));
}

/// A write authenticated by the cookie needs a page of this server or of an origin
/// listed by name (seen: `Content-Type: text/plain`, `Origin: https://evil.example`,
/// the cookie: 201). Bearer tokens are not sent by browsers on their own: no check.
#[tokio::test(flavor = "multi_thread")]
async fn cookie_writes_need_an_allowed_origin() {
    let s = TestServer::start_with(|c| {
        c.auth.enabled = true;
        c.cors.allowed_origins = vec!["*".into(), "https://app.example".into()];
    })
    .await;
    let t = tokens(&s);
    let c = client();
    let own = s.base_url.clone();
    let body = r#"{"topic":"users/42","data":1}"#;
    let publish = |origin: Option<&str>, referer: Option<&str>, cookie: bool| {
        let mut r = c
            .post(s.url("/v1/publish"))
            .header("Content-Type", "text/plain")
            .body(body);
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        if let Some(o) = referer {
            r = r.header("Referer", o);
        }
        r = if cookie {
            r.header("Cookie", format!("surepush_token={}", t.right))
        } else {
            r.bearer_auth(&t.right)
        };
        r.send()
    };
    let own_page = format!("{own}/app/page.html");
    // (case, Origin, Referer, authenticated by the cookie, expected status)
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, bool, u16);
    let cases: Vec<Case> = vec![
        (
            "evil origin, cookie",
            Some("https://evil.example"),
            None,
            true,
            403,
        ),
        ("null origin, cookie", Some("null"), None, true, 403),
        ("no origin or referer, cookie", None, None, true, 403),
        (
            "evil referer, cookie",
            None,
            Some("https://evil.example/x"),
            true,
            403,
        ),
        (
            "listed origin, cookie",
            Some("https://app.example"),
            None,
            true,
            201,
        ),
        ("own origin, cookie", Some(own.as_str()), None, true, 201),
        (
            "own page as referer (IE11), cookie",
            None,
            Some(own_page.as_str()),
            true,
            201,
        ),
        (
            "evil origin, bearer",
            Some("https://evil.example"),
            None,
            false,
            201,
        ),
    ];
    for (name, origin, referer, cookie, want) in cases {
        let r = publish(origin, referer, cookie).await.unwrap();
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(got, want, "{name}: {v}");
        if want == 403 {
            assert_eq!(v["error"], "cross_site_write", "{name}: {v}");
        }
    }
    // reads with the cookie are unchanged
    let r = c
        .get(s.url("/v1/events?topic=users/42"))
        .header("Origin", "https://evil.example")
        .header("Cookie", format!("surepush_token={}", t.right))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
