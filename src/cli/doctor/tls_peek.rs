//! TLS as this client sees it: one handshake that accepts any certificate, only to read
//! the certificate's dates and the negotiated protocol (trust is judged by the real
//! requests, which verify).

use std::io::ErrorKind;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::remote::{Facts, SERVER};
use super::{der, keys, Report, Status};

#[derive(Debug, Serialize)]
pub struct TlsFacts {
    pub protocol: Option<String>,
    pub alpn: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
    /// Whether this machine trusts the certificate (None with --insecure).
    pub trusted: Option<bool>,
}

/// The `tls` check and facts from what a peek saw.
pub fn describe(t: TlsPeek, trusted: Option<bool>, facts: &mut Facts, report: &mut Report) {
    let mut facts_tls = TlsFacts {
        protocol: t.protocol.clone(),
        alpn: t.alpn.clone(),
        not_before: None,
        not_after: None,
        days_left: None,
        trusted,
    };
    let proto = t.protocol.as_deref().unwrap_or("TLS");
    let alpn = t.alpn.as_deref().unwrap_or("no ALPN");
    let (status, text) = match t.validity {
        Some((nb, na)) => {
            let (status, text, days) = keys::judge_validity(nb, na);
            facts_tls.not_before = Some(der::format_unix(nb));
            facts_tls.not_after = Some(der::format_unix(na));
            facts_tls.days_left = Some(days);
            (status, format!("certificate {text}"))
        }
        None => (
            Status::Warn,
            "the certificate could not be read".to_string(),
        ),
    };
    let trust = match trusted {
        Some(true) => ", trusted by this machine",
        Some(false) => ", NOT trusted by this machine",
        None => ", not verified (--insecure)",
    };
    report.add(
        SERVER,
        "tls",
        status,
        format!("{proto} ({alpn}), {text}{trust}"),
    );
    facts.tls = Some(facts_tls);
}

/// What one TLS handshake shows, independent of trust.
pub struct TlsPeek {
    protocol: Option<String>,
    alpn: Option<String>,
    validity: Option<(i64, i64)>,
}

/// A handshake that accepts any certificate, only to read the certificate's dates and
/// the negotiated protocol (trust is judged by the real requests).
pub fn peek(host: &str, port: u16, timeout: Duration) -> Result<TlsPeek, String> {
    use rustls::pki_types::ServerName;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let mut sock =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let _ = sock.set_read_timeout(Some(timeout));
    let _ = sock.set_write_timeout(Some(timeout));
    let recorder = Arc::new(Recorder::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("TLS handshake: {e}")),
        }
    }
    let validity = recorder
        .0
        .lock()
        .ok()
        .and_then(|certs| certs.first().and_then(|c| der::validity(c)));
    let peek = TlsPeek {
        protocol: conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_string(),
            other => format!("{other:?}"),
        }),
        alpn: conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        validity,
    };
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    Ok(peek)
}

/// Accepts any server certificate and keeps the end-entity one.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<Vec<u8>>>);

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Ok(mut certs) = self.0.lock() {
            certs.push(end_entity.to_vec());
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
