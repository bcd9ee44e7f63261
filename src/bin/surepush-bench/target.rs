//! The servers under test and how to drive each ("drivers"): where subscribers connect,
//! what they ask for, how to resume, and how to publish one event.
//!
//! - surepush: `GET /v1/stream?topic=CH&since=ID` (SSE, `mode=close`), `GET /v1/poll`,
//!   `POST /v1/publish` (201 once durable).
//! - Nchan: `GET /sub?id=CH` with `Accept: text/event-stream`; `POST /pub?id=CH`
//!   (answers after delivery to local subscribers).
//! - Pushpin: `GET /stream?ch=CH` through the proxy (the origin answers with
//!   `Grip-Hold: stream` and `Grip-Channel: CH`); `POST <control>/publish/` with an
//!   `http-stream` item.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::client::Client;
use crate::net;
use crate::sse::json_str;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Surepush,
    Nchan,
    Pushpin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SSE, the response stays open.
    Sse,
    /// SSE close-after-batch: reconnect with the last id after each response.
    Close,
    /// Long polling with the last id.
    LongPoll,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Close => "sse-close",
            Transport::LongPoll => "longpoll",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Plain,
    TlsH1,
    TlsH2,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Plain => "plain h1",
            Proto::TlsH1 => "TLS h1",
            Proto::TlsH2 => "TLS h2",
        }
    }
}

#[derive(Clone)]
pub struct Target {
    pub label: String,
    pub kind: Kind,
    pub proto: Proto,
    /// Where subscribers connect.
    pub addr: SocketAddr,
    /// Where publishes go (Pushpin: its control port).
    pub pub_addr: SocketAddr,
    /// Processes whose RSS (with their descendants) is the server's.
    pub pids: Vec<u32>,
    /// surepush: publish with `"receipt": true` (delivery receipts marked on fan-out).
    pub receipts: bool,
}

/// Where a subscriber resumes from.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    pub id: Option<String>,
}

impl Target {
    /// TLS config for subscribers (ALPN per protocol).
    pub fn sub_tls(&self) -> Option<Arc<ClientConfig>> {
        match self.proto {
            Proto::Plain => None,
            Proto::TlsH1 => Some(net::tls_config(b"http/1.1")),
            Proto::TlsH2 => Some(net::tls_config(b"h2")),
        }
    }

    /// Publishers always use HTTP/1.1 (over TLS when the target is TLS).
    pub fn publisher(&self) -> Client {
        let tls = match (self.kind, self.proto) {
            (Kind::Surepush, Proto::TlsH1 | Proto::TlsH2) => Some(net::tls_config(b"http/1.1")),
            _ => None,
        };
        Client::h1(self.pub_addr, tls)
    }

    /// Path and extra headers of a subscribe request.
    pub fn subscribe(
        &self,
        t: Transport,
        ch: &str,
        cur: &Cursor,
    ) -> (String, Vec<(&'static str, String)>) {
        let sse = vec![("Accept", "text/event-stream".to_string())];
        match self.kind {
            Kind::Surepush => {
                let since = cur.id.as_deref().unwrap_or("0");
                match t {
                    Transport::Sse => (format!("/v1/stream?topic={ch}&since={since}"), sse),
                    Transport::Close => (
                        format!("/v1/stream?topic={ch}&mode=close&timeout=60&since={since}"),
                        sse,
                    ),
                    Transport::LongPoll => (
                        format!("/v1/poll?topic={ch}&timeout=60&since={since}"),
                        Vec::new(),
                    ),
                }
            }
            Kind::Nchan => (format!("/sub?id={ch}"), sse),
            Kind::Pushpin => (format!("/stream?ch={ch}"), sse),
        }
    }

    /// Publishes event `k` (data carries the marker) and returns surepush's id.
    pub async fn publish(
        &self,
        c: &mut Client,
        ch: &str,
        k: Option<u32>,
    ) -> io::Result<Option<String>> {
        let marker = match k {
            Some(k) => format!("SPB{k};"),
            None => "base".to_string(),
        };
        let ct = [("Content-Type", "application/json")];
        let (head, body) = match self.kind {
            Kind::Surepush => {
                let receipt = if self.receipts {
                    ",\"receipt\":true"
                } else {
                    ""
                };
                let body = format!("{{\"topic\":\"{ch}\",\"data\":\"{marker}\"{receipt}}}");
                c.call("POST", "/v1/publish", &ct, Some(body.as_bytes()))
                    .await?
            }
            Kind::Nchan => {
                let path = format!("/pub?id={ch}");
                c.call(
                    "POST",
                    &path,
                    &[("Content-Type", "text/plain")],
                    Some(marker.as_bytes()),
                )
                .await?
            }
            Kind::Pushpin => {
                let body = format!(
                    "{{\"items\":[{{\"channel\":\"{ch}\",\"formats\":{{\"http-stream\":{{\"content\":\"data: {marker}\\n\\n\"}}}}}}]}}"
                );
                c.call("POST", "/publish/", &ct, Some(body.as_bytes()))
                    .await?
            }
        };
        if !(200..300).contains(&head.status) {
            return Err(io::Error::other(format!(
                "publish answered {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(match self.kind {
            Kind::Surepush => {
                let text = String::from_utf8_lossy(&body);
                text.split('"').nth(3).map(str::to_string)
            }
            _ => None,
        })
    }

    /// The cursor a surepush long-poll answer moves to.
    pub fn poll_cursor(body: &[u8]) -> Option<String> {
        json_str(body, "last_id").map(str::to_string)
    }
}
