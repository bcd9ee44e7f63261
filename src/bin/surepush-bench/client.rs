//! One request at a time over HTTP/1.1 (own connection, kept alive) or HTTP/2 (a stream on
//! a shared connection): the same calls for subscribers and publishers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rustls::ClientConfig;

use crate::h1::{self, Body, Head, H1};
use crate::net;

pub enum Client {
    H1 {
        addr: SocketAddr,
        tls: Option<Arc<ClientConfig>>,
        conn: Option<H1>,
        body: Body,
    },
    H2 {
        send: h2::client::SendRequest<Bytes>,
        base: String,
        body: Option<h2::RecvStream>,
    },
}

fn h2_err(e: h2::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// An HTTP/2 connection (TLS, ALPN h2) whose streams subscribers share; its driver task
/// runs until every handle is dropped.
pub async fn h2_connect(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
) -> io::Result<h2::client::SendRequest<Bytes>> {
    let io = net::connect(addr, Some(tls)).await?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(256 << 10)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

impl Client {
    pub fn h1(addr: SocketAddr, tls: Option<Arc<ClientConfig>>) -> Client {
        Client::H1 {
            addr,
            tls,
            conn: None,
            body: Body::Done,
        }
    }

    pub fn h2(send: h2::client::SendRequest<Bytes>, addr: SocketAddr) -> Client {
        Client::H2 {
            send,
            base: format!("https://{addr}"),
            body: None,
        }
    }

    /// Forgets the HTTP/1.1 connection (after an error); the next request reconnects.
    pub fn reset(&mut self) {
        match self {
            Client::H1 { conn, body, .. } => {
                *conn = None;
                *body = Body::Done;
            }
            Client::H2 { body, .. } => *body = None,
        }
    }

    /// Opens the HTTP/1.1 connection now if the next request would need a new one.
    pub async fn connect(&mut self) -> io::Result<()> {
        if let Client::H1 {
            addr,
            tls,
            conn,
            body,
        } = self
        {
            if *body != Body::Done || conn.as_ref().is_some_and(|c| c.closing) {
                *conn = None;
                *body = Body::Done;
            }
            if conn.is_none() {
                *conn = Some(H1::new(net::connect(*addr, tls.as_ref()).await?));
            }
        }
        Ok(())
    }

    /// Sends a request (GET without body, or POST with one) and reads the response head;
    /// the body follows with `next`. `headers` are extra header lines.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        payload: Option<&[u8]>,
    ) -> io::Result<Head> {
        match self {
            Client::H1 {
                addr,
                tls,
                conn,
                body,
            } => {
                if *body != Body::Done || conn.as_ref().is_some_and(|c| c.closing) {
                    *conn = None;
                }
                if conn.is_none() {
                    *conn = Some(H1::new(net::connect(*addr, tls.as_ref()).await?));
                }
                let c = conn.as_mut().expect("connected");
                let mut extra = String::new();
                for (n, v) in headers {
                    extra.push_str(&format!("{n}: {v}\r\n"));
                }
                let req = match payload {
                    Some(p) => {
                        let mut r = format!(
                            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\n\r\n",
                            p.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(p);
                        r
                    }
                    None => h1::get(&addr.to_string(), path, &extra),
                };
                let r = async {
                    c.send(&req).await?;
                    c.read_head(false).await
                }
                .await;
                match r {
                    Ok((head, b)) => {
                        *body = b;
                        Ok(head)
                    }
                    Err(e) => {
                        *conn = None;
                        Err(e)
                    }
                }
            }
            Client::H2 { send, base, body } => {
                let mut b = http::Request::builder()
                    .method(method)
                    .uri(format!("{base}{path}"));
                for (n, v) in headers {
                    b = b.header(*n, *v);
                }
                let req = b.body(()).map_err(io::Error::other)?;
                let mut ready = send.clone().ready().await.map_err(h2_err)?;
                let (resp, mut stream) =
                    ready.send_request(req, payload.is_none()).map_err(h2_err)?;
                if let Some(p) = payload {
                    stream
                        .send_data(Bytes::copy_from_slice(p), true)
                        .map_err(h2_err)?;
                }
                let resp = resp.await.map_err(h2_err)?;
                let head = Head {
                    status: resp.status().as_u16(),
                    headers: resp
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                };
                *body = Some(resp.into_body());
                Ok(head)
            }
        }
    }

    /// The next piece of the current response's body; None at its end.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Client::H1 { conn, body, .. } => match conn.as_mut() {
                Some(c) => match c.body_chunk(body).await {
                    Ok(b) => Ok(b),
                    Err(e) => {
                        *conn = None;
                        *body = Body::Done;
                        Err(e)
                    }
                },
                None => Ok(None),
            },
            Client::H2 { body, .. } => {
                let Some(stream) = body.as_mut() else {
                    return Ok(None);
                };
                match stream.data().await {
                    Some(Ok(b)) => {
                        let _ = stream.flow_control().release_capacity(b.len());
                        Ok(Some(b))
                    }
                    Some(Err(e)) => {
                        *body = None;
                        Err(h2_err(e))
                    }
                    None => {
                        *body = None;
                        Ok(None)
                    }
                }
            }
        }
    }

    /// The rest of the current body.
    pub async fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = self.next().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// A whole exchange: request, then the complete body.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        payload: Option<&[u8]>,
    ) -> io::Result<(Head, Vec<u8>)> {
        let head = self.request(method, path, headers, payload).await?;
        let body = self.read_all().await?;
        Ok((head, body))
    }
}
