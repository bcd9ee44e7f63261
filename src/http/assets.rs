//! `GET /surepush.js`, `/surepush.mjs` and the demo page `GET /demo`.
//!
//! Static files are compiled into the binary from an explicit allow-list (path, content
//! type, bytes). Each carries a strong `ETag` (a hash of its content, computed once) and
//! `Cache-Control: public, max-age=300`, so browsers reuse it for five minutes and then
//! revalidate with `If-None-Match` (304). Pages that reference an asset add `?v=<hash>`, so
//! a new binary's file is fetched at once. `/demo` is an askama template.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use askama::Template;
use askama_web::WebTemplate;

use super::resource;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const CACHE_CONTROL: &str = "public, max-age=300";

/// The allow-list: nothing else under `static/` is served.
static ASSETS: [Asset; 7] = [
    Asset {
        path: "/surepush.js",
        content_type: JS,
        body: include_bytes!("../../static/surepush.js"),
    },
    Asset {
        path: "/surepush.mjs",
        content_type: JS,
        body: include_bytes!("../../static/surepush.mjs"),
    },
    Asset {
        path: "/demo.js",
        content_type: JS,
        body: include_bytes!("../../static/demo.js"),
    },
    Asset {
        path: "/demo.css",
        content_type: CSS,
        body: include_bytes!("../../static/demo.css"),
    },
    Asset {
        path: "/admin/static/admin.css",
        content_type: CSS,
        body: include_bytes!("../../static/admin.css"),
    },
    Asset {
        path: "/admin/static/admin.js",
        content_type: JS,
        body: include_bytes!("../../static/admin.js"),
    },
    Asset {
        path: "/doctor.js",
        content_type: JS,
        body: include_bytes!("../../static/doctor.js"),
    },
];

/// An asset with its validator.
struct Served {
    asset: &'static Asset,
    /// `"<16 hex digits>"`, quotes included.
    etag: String,
}

static SERVED: LazyLock<Vec<Served>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| Served {
            asset,
            etag: format!("\"{:016x}\"", fnv1a64(asset.body)),
        })
        .collect()
});

pub fn configure(cfg: &mut web::ServiceConfig) {
    for served in SERVED.iter() {
        let get = move |req: HttpRequest| std::future::ready(serve(&req, served));
        cfg.service(
            resource(served.asset.path)
                .route(web::get().to(get))
                .route(web::head().to(get)),
        );
    }
    cfg.service(
        resource("/demo")
            .route(web::get().to(demo))
            .route(web::head().to(demo)),
    );
}

/// 64-bit FNV-1a: a stable content hash for validators (not a security boundary).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `If-None-Match` uses the weak comparison (RFC 9110 13.1.2): `W/` prefixes are ignored.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn serve(req: &HttpRequest, served: &Served) -> HttpResponse {
    let fresh = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .any(|v| etag_matches(v, &served.etag));
    let mut resp = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::ETAG, served.etag.as_str()))
        .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if fresh {
        resp.finish()
    } else {
        resp.content_type(served.asset.content_type)
            .body(served.asset.body)
    }
}

/// `/surepush.js?v=<hash>`: the URL changes whenever the content does.
pub fn versioned(path: &str) -> String {
    match SERVED.iter().find(|s| s.asset.path == path) {
        Some(s) => format!("{path}?v={}", s.etag.trim_matches('"')),
        None => path.to_string(),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "demo.html")]
struct DemoPage {
    /// The subscribed topics, space-separated (the input field's value).
    topics: String,
    first_topic: String,
    event_type: String,
    /// This server as the browser addressed it, for copy-paste examples.
    base_url: String,
    css_url: String,
    js_url: String,
    demo_js_url: String,
}

/// Longest query value echoed into the page; topics are at most 256 bytes anyway.
const MAX_ECHO: usize = 300;

async fn demo(req: HttpRequest) -> impl Responder {
    let mut topics: Vec<String> = Vec::new();
    let mut event_type = None;
    for (k, v) in form_urlencoded::parse(req.query_string().as_bytes()) {
        let v: String = v.chars().take(MAX_ECHO).collect();
        match k.as_ref() {
            "topic" if topics.len() < 32 && !v.is_empty() => topics.push(v),
            "type" if !v.is_empty() => event_type = Some(v),
            _ => {}
        }
    }
    if topics.is_empty() {
        topics.push("demo".to_string());
    }
    // the address the browser used, never a forwarded host a client made up
    let base_url = {
        let scheme = if req.app_config().secure() {
            "https"
        } else {
            "http"
        };
        let host = super::request_host(&req).unwrap_or("localhost");
        format!("{scheme}://{host}")
    };
    let page = DemoPage {
        first_topic: topics[0].clone(),
        topics: topics.join(" "),
        event_type: event_type.unwrap_or_else(|| "demo.message".to_string()),
        base_url,
        css_url: versioned("/demo.css"),
        js_url: versioned("/surepush.js"),
        demo_js_url: versioned("/demo.js"),
    };
    page.customize()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn if_none_match() {
        let tag = "\"0123456789abcdef\"";
        assert!(etag_matches(tag, tag));
        assert!(etag_matches("W/\"0123456789abcdef\"", tag));
        assert!(etag_matches("\"x\", \"0123456789abcdef\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"0123456789abcdee\"", tag));
        assert!(!etag_matches("", tag));
    }

    #[test]
    fn every_asset_has_a_distinct_validator() {
        let tags: std::collections::HashSet<_> = SERVED.iter().map(|s| &s.etag).collect();
        assert_eq!(tags.len(), ASSETS.len());
        assert!(versioned("/surepush.js").starts_with("/surepush.js?v="));
    }

    #[test]
    fn demo_page_escapes_what_it_echoes() {
        let page = DemoPage {
            topics: "a\"><script>x</script>".into(),
            first_topic: "a".into(),
            event_type: "t".into(),
            base_url: "https://h".into(),
            css_url: versioned("/demo.css"),
            js_url: versioned("/surepush.js"),
            demo_js_url: versioned("/demo.js"),
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>x</script>"));
        assert!(html.contains("/surepush.js?v="));
    }
}
