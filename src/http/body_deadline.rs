//! Request bodies that must arrive in time.
//!
//! `limits.header_timeout_ms` bounds the headers only: a client that sends the headers of
//! a POST and then its body a byte a minute (or never, under a Content-Length it does
//! not meet, or a chunked body without its last chunk) held its connection for as long
//! as it liked, and about 25 addresses filled the global limit with no credential at all
//! (every admin form reads its body before any check). Every request's body is read
//! through [`Deadline`]: it fails once no byte came for `limits.body_idle_timeout_ms`,
//! or the whole body took longer than `limits.body_timeout_ms`. The handler then
//! answers 408 and the connection is closed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::HttpMessage;
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{sleep_until, Instant, Sleep};

/// The text of the error a late body ends with; `is_timeout` recognises it.
const TIMED_OUT: &str = "the request body did not arrive in time";

/// Puts the request's body behind the deadlines.
pub fn apply(req: &mut ServiceRequest, idle: Duration, total: Duration) {
    let inner = req.take_payload();
    let deadline = Deadline {
        inner,
        idle,
        total_at: Instant::now() + total,
        timer: Box::pin(sleep_until(Instant::now() + idle.min(total))),
        done: false,
    };
    req.set_payload(Payload::from(
        Box::pin(deadline) as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>
    ));
}

/// True when a body read failed because a deadline passed.
pub fn is_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut && io.to_string() == TIMED_OUT)
}

struct Deadline {
    inner: Payload,
    idle: Duration,
    total_at: Instant,
    timer: Pin<Box<Sleep>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let next = (Instant::now() + self.idle).min(self.total_at);
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => {
                self.done = true;
                Poll::Ready(other)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.done = true;
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        TIMED_OUT,
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
