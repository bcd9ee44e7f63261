//! Token text and claims: raw `Authorization` text never panics the verifier, and any
//! claims JSON signed with the right key yields a principal only when its grants are
//! valid patterns and it has not expired.
#![no_main]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use surepush::auth::Authenticator;
use surepush::config::Config;
use surepush::model::Pattern;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("surepush-fuzz-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("signing.key"), SECRET).expect("key file");
        let mut config = Config {
            data_dir: dir,
            ..Config::default()
        };
        config.auth.enabled = true;
        Authenticator::from_config(&config).expect("authenticator")
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fuzz_target!(|data: &[u8]| {
    let auth = authenticator();
    let (mode, rest) = match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => return,
    };
    let token = if mode % 2 == 0 {
        // text as it arrives
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // claims signed with the right key: the claim parser is what is tried
        let Ok(mut claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        if mode % 4 == 1 {
            if let Some(obj) = claims.as_object_mut() {
                obj.insert("exp".into(), (now() + 3600).into());
            }
        }
        let Ok(t) = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        ) else {
            return;
        };
        t
    };
    if let Ok(p) = auth.verify(&token) {
        assert!(p.exp + 120 >= now(), "an expired token was accepted");
        for g in p.subscribe.iter().chain(&p.publish) {
            assert_eq!(Pattern::parse(&g.to_string()).as_ref(), Ok(g));
        }
    }
});
