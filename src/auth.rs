//! Tokens: JWT verification and minting, and what a verified token may do.
//!
//! Claims (contract): `sub`, `exp`, optional `nbf`, and
//! `surepush: {"subscribe": [patterns], "publish": [patterns], "jobs": [queues], "work": [queues]}`.
//! A requested subscription pattern is allowed when a granted pattern (or a public topic
//! pattern) covers every topic it could match, so `users/42` can never reach `users/43`,
//! whatever wildcard or replay it asks for.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::model::{Pattern, Topic};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a token is required: send Authorization: Bearer <jwt>, the surepush_token cookie or access_token")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token does not allow {0}")]
    Forbidden(String),
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not a usable {algorithm} key: {message}")]
    Parse {
        path: std::path::PathBuf,
        algorithm: String,
        message: String,
    },
    #[error(
        "this server verifies {0} tokens with a public key; mint them where the private key is"
    )]
    CannotMint(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grants {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub work: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default)]
    pub surepush: Grants,
}

/// `surepush.admin: true`: operator rights (online backups). Read beside [`Claims`], not
/// as a [`Grants`] field, so code that builds `Grants` field by field keeps compiling.
#[derive(Debug, Default, Deserialize)]
struct AdminClaim {
    #[serde(default)]
    surepush: AdminGrant,
}

#[derive(Debug, Default, Deserialize)]
struct AdminGrant {
    #[serde(default)]
    admin: bool,
}

/// A verified token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    pub subscribe: Vec<Pattern>,
    pub publish: Vec<Pattern>,
    pub jobs: Vec<String>,
    pub work: Vec<String>,
    /// `surepush.admin`: may take backups.
    pub admin: bool,
}

fn parse_patterns(list: &[String], what: &str) -> Result<Vec<Pattern>, AuthError> {
    list.iter()
        .map(|p| {
            Pattern::parse(p).map_err(|e| AuthError::Invalid(format!("claim surepush.{what}: {e}")))
        })
        .collect()
}

impl Principal {
    fn from_json(v: serde_json::Value) -> Result<Principal, AuthError> {
        let admin = serde_json::from_value::<AdminClaim>(v.clone())
            .map_err(|e| AuthError::Invalid(format!("claim surepush.admin: {e}")))?
            .surepush
            .admin;
        let c: Claims = serde_json::from_value(v).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut p = Principal::from_claims(c)?;
        p.admin = admin;
        Ok(p)
    }

    fn from_claims(c: Claims) -> Result<Principal, AuthError> {
        Ok(Principal {
            admin: false,
            subscribe: parse_patterns(&c.surepush.subscribe, "subscribe")?,
            publish: parse_patterns(&c.surepush.publish, "publish")?,
            jobs: c.surepush.jobs,
            work: c.surepush.work,
            sub: c.sub,
            exp: c.exp,
        })
    }

    pub fn may_publish(&self, topic: &Topic) -> bool {
        self.publish.iter().any(|g| g.matches(topic.as_str()))
    }
}

pub struct Authenticator {
    enabled: bool,
    algorithm: Algorithm,
    decoding: Vec<DecodingKey>,
    encoding: Option<EncodingKey>,
    leeway: u64,
    public: Vec<Pattern>,
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// An HS256 secret file holds text (the generated one is hex); surrounding whitespace is not part of it.
fn secret(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

impl Authenticator {
    pub fn from_config(config: &Config) -> Result<Authenticator, KeyError> {
        let a = &config.auth;
        let algorithm = match a.algorithm.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => Algorithm::HS256,
        };
        let parse_err = |path: &Path, e: jsonwebtoken::errors::Error| KeyError::Parse {
            path: path.to_path_buf(),
            algorithm: a.algorithm.clone(),
            message: e.to_string(),
        };
        let decode_key = |path: &Path| -> Result<DecodingKey, KeyError> {
            let bytes = read(path)?;
            match algorithm {
                Algorithm::RS256 => {
                    DecodingKey::from_rsa_pem(&bytes).map_err(|e| parse_err(path, e))
                }
                Algorithm::ES256 => {
                    DecodingKey::from_ec_pem(&bytes).map_err(|e| parse_err(path, e))
                }
                _ => Ok(DecodingKey::from_secret(secret(&bytes))),
            }
        };
        let mut decoding = Vec::new();
        let mut encoding = None;
        if a.enabled || config.signing_key_path().exists() {
            if algorithm == Algorithm::HS256 {
                let path = config.signing_key_path();
                let bytes = read(&path)?;
                if secret(&bytes).len() < 16 {
                    return Err(KeyError::Parse {
                        path,
                        algorithm: a.algorithm.clone(),
                        message: "an HS256 secret must be at least 16 bytes".into(),
                    });
                }
                decoding.push(DecodingKey::from_secret(secret(&bytes)));
                encoding = Some(EncodingKey::from_secret(secret(&bytes)));
            } else if let Some(p) = &a.public_key_file {
                decoding.push(decode_key(p)?);
            }
            for p in &a.previous_key_files {
                decoding.push(decode_key(p)?);
            }
        }
        Ok(Authenticator {
            enabled: a.enabled,
            algorithm,
            decoding,
            encoding,
            leeway: a.leeway_secs,
            public: a
                .public_topics
                .iter()
                .filter_map(|p| Pattern::parse(p).ok())
                .collect(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Verifies signature, `exp` and `nbf` (with leeway) and the claim shapes.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let mut last = AuthError::Invalid("no verification key is configured".into());
        for key in &self.decoding {
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                Ok(data) => return Principal::from_json(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => {
                            return Err(AuthError::Invalid(
                                "the token is not valid yet (nbf)".into(),
                            ))
                        }
                        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                        _ => AuthError::Invalid(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }

    /// Signs claims with the configured HS256 secret.
    pub fn mint(&self, claims: &Claims) -> Result<String, KeyError> {
        self.sign(claims)
    }

    /// Signs claims with `surepush.admin: true` added.
    pub fn mint_admin(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut v = serde_json::to_value(claims).map_err(|e| KeyError::Parse {
            path: Default::default(),
            algorithm: "HS256".into(),
            message: e.to_string(),
        })?;
        v["surepush"]["admin"] = serde_json::Value::Bool(true);
        self.sign(&v)
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or_else(|| KeyError::CannotMint(format!("{:?}", self.algorithm)))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).map_err(|e| {
            KeyError::Parse {
                path: Default::default(),
                algorithm: "HS256".into(),
                message: e.to_string(),
            }
        })
    }

    /// May this principal (or anyone, with None) subscribe to all these patterns?
    pub fn authorize_subscribe(
        &self,
        who: Option<&Principal>,
        patterns: &[Pattern],
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        for p in patterns {
            if self.public.iter().any(|g| g.covers(p)) {
                continue;
            }
            let who = who.ok_or(AuthError::Missing)?;
            if !who.subscribe.iter().any(|g| g.covers(p)) {
                return Err(AuthError::Forbidden(format!("subscribing to {p}")));
            }
        }
        Ok(())
    }

    pub fn authorize_publish<'a>(
        &self,
        who: Option<&Principal>,
        topics: impl IntoIterator<Item = &'a Topic>,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let who = who.ok_or(AuthError::Missing)?;
        for t in topics {
            if !who.may_publish(t) {
                return Err(AuthError::Forbidden(format!("publishing to {t}")));
            }
        }
        Ok(())
    }
}

pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(dir: &Path, f: impl FnOnce(&mut Config)) -> Authenticator {
        let mut c = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        f(&mut c);
        crate::tls::ensure_signing_key(&c.signing_key_path()).unwrap();
        Authenticator::from_config(&c).unwrap()
    }

    fn claims(sub: &[&str], publish: &[&str], exp: u64) -> Claims {
        Claims {
            sub: "u42".into(),
            exp,
            nbf: None,
            iat: None,
            surepush: Grants {
                subscribe: sub.iter().map(|s| s.to_string()).collect(),
                publish: publish.iter().map(|s| s.to_string()).collect(),
                ..Grants::default()
            },
        }
    }

    #[test]
    fn admin_claim() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth_with(dir.path(), |_| {});
        let c = claims(&["a"], &[], now_secs() + 60);
        assert!(!a.verify(&a.mint(&c).unwrap()).unwrap().admin);
        let p = a.verify(&a.mint_admin(&c).unwrap()).unwrap();
        assert!(p.admin);
        assert_eq!(p.subscribe.len(), 1);
        let mut v = serde_json::to_value(&c).unwrap();
        v["surepush"]["admin"] = serde_json::json!("yes");
        assert!(matches!(
            a.verify(&a.sign(&v).unwrap()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn mint_verify_and_authorize() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth_with(dir.path(), |c| {
            c.auth.public_topics = vec!["news/**".into()]
        });
        let t = a
            .mint(&claims(&["users/42"], &["users/*"], now_secs() + 60))
            .unwrap();
        let p = a.verify(&t).unwrap();
        assert_eq!(p.sub, "u42");
        let pat = |s: &str| vec![Pattern::parse(s).unwrap()];
        assert!(a.authorize_subscribe(Some(&p), &pat("users/42")).is_ok());
        assert!(matches!(
            a.authorize_subscribe(Some(&p), &pat("users/43")),
            Err(AuthError::Forbidden(_))
        ));
        assert!(a.authorize_subscribe(Some(&p), &pat("users/*")).is_err());
        assert!(a.authorize_subscribe(None, &pat("news/today")).is_ok());
        assert_eq!(
            a.authorize_subscribe(None, &pat("users/42")),
            Err(AuthError::Missing)
        );
        let topic = Topic::parse("users/9").unwrap();
        assert!(a.authorize_publish(Some(&p), [&topic]).is_ok());
        let deep = Topic::parse("users/9/x").unwrap();
        assert!(a.authorize_publish(Some(&p), [&deep]).is_err());
        assert_eq!(a.authorize_publish(None, [&topic]), Err(AuthError::Missing));
    }

    #[test]
    fn expiry_leeway_signature_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth_with(dir.path(), |c| c.auth.leeway_secs = 5);
        let expired = a.mint(&claims(&[], &[], now_secs() - 60)).unwrap();
        assert_eq!(a.verify(&expired).unwrap_err(), AuthError::Expired);
        let within_leeway = a.mint(&claims(&[], &[], now_secs() - 2)).unwrap();
        assert!(a.verify(&within_leeway).is_ok());
        let mut future = claims(&[], &[], now_secs() + 600);
        future.nbf = Some(now_secs() + 300);
        assert!(matches!(
            a.verify(&a.mint(&future).unwrap()),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(a.verify("not.a.jwt"), Err(AuthError::Invalid(_))));

        // another server's key: bad signature; accepted once listed as a previous key
        let other_dir = tempfile::tempdir().unwrap();
        let other = auth_with(other_dir.path(), |_| {});
        let foreign = other.mint(&claims(&[], &[], now_secs() + 60)).unwrap();
        assert!(matches!(a.verify(&foreign), Err(AuthError::Invalid(_))));
        let rotated = auth_with(dir.path(), |c| {
            c.auth.previous_key_files = vec![other_dir.path().join("signing.key")]
        });
        assert!(rotated.verify(&foreign).is_ok());
        // a token with a malformed pattern claim is refused
        let bad = a.mint(&claims(&["a//b"], &[], now_secs() + 60)).unwrap();
        assert!(matches!(a.verify(&bad), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn es256_with_a_public_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = dir.path().join("jwt-public.pem");
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let a = auth_with(dir.path(), |c| {
            c.auth.algorithm = "ES256".into();
            c.auth.public_key_file = Some(public.clone());
        });
        let signer = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let c = claims(&["a"], &[], now_secs() + 60);
        let t = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &signer).unwrap();
        assert_eq!(a.verify(&t).unwrap().sub, "u42");
        // an HS256 token made with the (now irrelevant) secret is refused
        let hs = auth_with(dir.path(), |_| {}).mint(&c).unwrap();
        assert!(matches!(a.verify(&hs), Err(AuthError::Invalid(_))));
        // this server cannot mint ES256 tokens
        assert!(matches!(a.mint(&c), Err(KeyError::CannotMint(_))));
    }

    #[test]
    fn disabled_allows_everything() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth_with(dir.path(), |c| c.auth.enabled = false);
        let p = vec![Pattern::parse("**").unwrap()];
        assert!(a.authorize_subscribe(None, &p).is_ok());
        assert!(a
            .authorize_publish(None, [&Topic::parse("x").unwrap()])
            .is_ok());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn cases() -> u32 {
            crate::test_support::proptest_cases(300)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases()))]

            /// Arbitrary token text: refused, never a panic, never accepted.
            #[test]
            fn fuzz_token_text(t in "\\PC{0,400}") {
                let dir = tempfile::tempdir().unwrap();
                let a = auth_with(dir.path(), |_| {});
                prop_assert!(a.verify(&t).is_err());
            }

            /// Correctly signed tokens with arbitrary claim shapes: either a principal or
            /// a clear error, never a panic.
            #[test]
            fn fuzz_signed_claims(sub in "\\PC{0,20}", subscribe in prop::collection::vec("\\PC{0,30}", 0..4), extra in any::<i64>()) {
                let dir = tempfile::tempdir().unwrap();
                let a = auth_with(dir.path(), |_| {});
                let claims = serde_json::json!({
                    "sub": sub, "exp": now_secs() + 60, "surepush": {"subscribe": subscribe, "weird": extra}
                });
                let key = EncodingKey::from_secret(secret(&std::fs::read(dir.path().join("signing.key")).unwrap()));
                let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
                match a.verify(&t) {
                    Ok(p) => prop_assert_eq!(p.subscribe.len(), subscribe.len()),
                    Err(e) => prop_assert!(matches!(e, AuthError::Invalid(_))),
                }
            }
        }
    }
}
