//! A minimal HTTP/1.1 client connection: write a request, parse the response head
//! (httparse), then hand out the body de-chunked, piece by piece, as it arrives. One
//! small buffer per connection; keep-alive when the response allows it.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::BoxIo;

const READ_SIZE: usize = 4096;

pub struct H1 {
    io: BoxIo,
    buf: BytesMut,
    /// The server said `Connection: close` (or the body ends at close).
    pub closing: bool,
}

/// Status and headers of a response (names in lower case).
#[derive(Debug, Default)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where the body reader is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Body {
    Length(usize),
    ChunkSize,
    ChunkData(usize),
    ChunkEnd,
    Trailer,
    UntilClose,
    Done,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
}

fn bad(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_string())
}

impl H1 {
    pub fn new(io: BoxIo) -> H1 {
        H1 {
            io,
            buf: BytesMut::new(),
            closing: false,
        }
    }

    pub async fn send(&mut self, req: &[u8]) -> io::Result<()> {
        self.io.write_all(req).await?;
        self.io.flush().await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_SIZE);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads the response head; returns it with the body reader's start state.
    pub async fn read_head(&mut self, head_request: bool) -> io::Result<(Head, Body)> {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 48];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut head = Head {
                        status,
                        headers: Vec::with_capacity(resp.headers.len()),
                    };
                    for h in resp.headers.iter() {
                        head.headers.push((
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        ));
                    }
                    let http10 = resp.version == Some(0);
                    self.buf.advance(n);
                    let conn = head.header("connection").unwrap_or("").to_ascii_lowercase();
                    self.closing =
                        conn.contains("close") || (http10 && !conn.contains("keep-alive"));
                    let body = if head_request || status == 204 || status == 304 {
                        Body::Done
                    } else if head
                        .header("transfer-encoding")
                        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
                    {
                        Body::ChunkSize
                    } else if let Some(l) = head.header("content-length") {
                        Body::Length(l.trim().parse().map_err(|_| bad("bad content-length"))?)
                    } else {
                        self.closing = true;
                        Body::UntilClose
                    };
                    return Ok((head, body));
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > 64 << 10 {
                        return Err(bad("response head too large"));
                    }
                    if self.fill().await? == 0 {
                        return Err(eof());
                    }
                }
                Err(e) => return Err(bad(&format!("bad response head: {e}"))),
            }
        }
    }

    /// The next piece of the body, de-chunked; None at its end.
    pub async fn body_chunk(&mut self, state: &mut Body) -> io::Result<Option<Bytes>> {
        loop {
            match *state {
                Body::Done => return Ok(None),
                Body::Length(0) => {
                    *state = Body::Done;
                    return Ok(None);
                }
                Body::Length(n) | Body::ChunkData(n) => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        return Err(eof());
                    }
                    let take = n.min(self.buf.len());
                    *state = match *state {
                        Body::Length(_) => Body::Length(n - take),
                        _ if n == take => Body::ChunkEnd,
                        _ => Body::ChunkData(n - take),
                    };
                    return Ok(Some(self.buf.split_to(take).freeze()));
                }
                Body::UntilClose => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        *state = Body::Done;
                        return Ok(None);
                    }
                    let n = self.buf.len();
                    return Ok(Some(self.buf.split_to(n).freeze()));
                }
                Body::ChunkEnd => {
                    while self.buf.len() < 2 {
                        if self.fill().await? == 0 {
                            return Err(eof());
                        }
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(bad("chunk not followed by CRLF"));
                    }
                    self.buf.advance(2);
                    *state = Body::ChunkSize;
                }
                Body::ChunkSize | Body::Trailer => {
                    let line = self.line().await?;
                    if *state == Body::Trailer {
                        if line.is_empty() {
                            *state = Body::Done;
                        }
                        continue;
                    }
                    let hex = line.split(|b| *b == b';').next().unwrap_or(&[]);
                    let hex = std::str::from_utf8(hex).map_err(|_| bad("bad chunk size"))?;
                    let size =
                        usize::from_str_radix(hex.trim(), 16).map_err(|_| bad("bad chunk size"))?;
                    *state = if size == 0 {
                        Body::Trailer
                    } else {
                        Body::ChunkData(size)
                    };
                }
            }
        }
    }

    /// One CRLF-terminated line (without the CRLF), taken from the buffer.
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(i).to_vec();
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err(bad("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(eof());
            }
        }
    }

    /// The whole body (long poll answers, publish answers).
    pub async fn read_body(&mut self, mut state: Body) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = self.body_chunk(&mut state).await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// Sends a request and reads the whole answer.
    pub async fn roundtrip(&mut self, req: &[u8]) -> io::Result<(Head, Vec<u8>)> {
        self.send(req).await?;
        let (head, body) = self.read_head(false).await?;
        let body = self.read_body(body).await?;
        Ok((head, body))
    }
}

/// A GET request with extra header lines (each ending in CRLF).
pub fn get(host: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(raw: &'static [u8]) -> (Head, Vec<u8>) {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // written in small pieces, so chunk boundaries fall anywhere
            for piece in raw.chunks(3) {
                server.write_all(piece).await.unwrap();
            }
        });
        let mut c = H1::new(Box::new(client));
        let (head, body) = c.read_head(false).await.unwrap();
        let body = c.read_body(body).await.unwrap();
        (head, body)
    }

    #[tokio::test]
    async fn chunked_and_length_bodies() {
        let (h, b) = body_of(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(h.status, 200);
        assert_eq!(b, b"hello!");
        let (_, b) = body_of(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc").await;
        assert_eq!(b, b"abc");
    }
}
