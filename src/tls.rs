//! TLS: the self-signed certificate made on first run, and the rustls server config
//! (TLS 1.2 and 1.3 only, ring provider, ALPN h2 + http/1.1).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("certificate and key are not usable together: {0}")]
    Rustls(String),
    #[error("only one of certificate {cert} and key {key} exists; provide both or neither")]
    HalfPair { cert: PathBuf, key: PathBuf },
}

/// Names the self-signed certificate is valid for.
pub fn default_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    names
}

/// Creates a self-signed certificate and key at these paths unless both exist.
/// Returns true when it created them.
pub fn ensure_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => {
            return Err(TlsError::HalfPair {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
    }
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_file(cert, ck.cert.pem().as_bytes(), 0o644)?;
    write_file(key, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(true)
}

/// Writes a file with the given mode, creating parent directories (mode 0700 for new ones).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

/// The serving certificate, swappable at run time (SIGHUP) without touching open
/// connections: each new handshake asks the resolver for the current one.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let ck = CertifiedKey::new(certs, signing);
    // the key must belong to the certificate
    ck.keys_match()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(ck)
}

impl CertStore {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        Ok(Arc::new(CertStore {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: std::sync::RwLock::new(Arc::new(certified_key(cert, key)?)),
        }))
    }

    /// Re-reads the files; on any error the current certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(certified_key(&self.cert_path, &self.key_path)?);
        if let Ok(mut cur) = self.current.write() {
            *cur = fresh;
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

pub fn server_config(certs: Arc<CertStore>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    // http/1.0 too: old clients that offer only it must not fail the handshake.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(config)
}

/// Installs ring as the process-wide rustls provider (clients use it too). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Creates the token signing key (32 random bytes, hex) unless it exists.
pub fn ensure_signing_key(path: &Path) -> Result<bool, TlsError> {
    if path.exists() {
        return Ok(false);
    }
    let key: [u8; 32] = rand::random();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write_file(path, format!("{hex}\n").as_bytes(), 0o600)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_created_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls/cert.pem");
        let key = dir.path().join("tls/key.pem");
        assert!(ensure_self_signed(&cert, &key, &default_names()).unwrap());
        assert!(!ensure_self_signed(&cert, &key, &default_names()).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let store = CertStore::load(&cert, &key).unwrap();
        let cfg = server_config(store.clone()).unwrap();
        assert_eq!(cfg.alpn_protocols[0], b"h2");
        // a reload with a broken file keeps the old certificate
        let good = fs::read(&cert).unwrap();
        fs::write(&cert, b"garbage").unwrap();
        assert!(store.reload().is_err());
        fs::write(&cert, good).unwrap();
        assert!(store.reload().is_ok());
        fs::remove_file(&key).unwrap();
        assert!(matches!(
            ensure_self_signed(&cert, &key, &default_names()),
            Err(TlsError::HalfPair { .. })
        ));
        assert!(matches!(
            CertStore::load(&cert, &dir.path().join("nope")),
            Err(TlsError::Read { .. })
        ));
    }
}
