//! The access log's line per request and the response body that writes it when the response
//! ends (or the client goes away), counting the bytes sent. The body also carries the
//! request's `InProgress` mark, which the connection's watchdog reads: it ends when the body
//! is dropped, and on HTTP/2 it tells when hyper holds a frame it has not come back for.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, Version};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::logging;
use crate::middleware::ServiceTag;
use crate::watchdog::InProgress;

/// One access-log line, written when the response body ends (or the client goes away).
pub(crate) struct AccessRecord {
    client: SocketAddr,
    method: axum::http::Method,
    target: String,
    version: Version,
    id: HeaderValue,
    start: Instant,
    service: Option<ServiceTag>,
    status: u16,
}

impl AccessRecord {
    pub(crate) fn new<B>(
        client: SocketAddr,
        request: &Request<B>,
        id: &HeaderValue,
        start: Instant,
    ) -> Self {
        AccessRecord {
            client,
            method: request.method().clone(),
            target: request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_owned(),
            version: request.version(),
            id: id.clone(),
            start,
            service: None,
            status: 0,
        }
    }

    pub(crate) fn finish(mut self, service: Option<ServiceTag>, status: StatusCode) -> Self {
        self.service = service;
        self.status = status.as_u16();
        self
    }

    /// `TIME CLIENT "METHOD TARGET VERSION" STATUS BYTES DURATION service=NAME id=ID`
    fn write(&self, bytes: u64, complete: bool) {
        let mut line = String::with_capacity(160);
        write_timestamp(&mut line);
        let _ = write!(line, " {}", self.client);
        let micros = self.start.elapsed().as_micros();
        let _ = writeln!(
            line,
            " \"{} {} {:?}\" {} {}{} {}.{:03}ms service={} id={}",
            self.method,
            self.target,
            self.version,
            self.status,
            bytes,
            if complete { "" } else { " (aborted)" },
            micros / 1000,
            micros % 1000,
            self.service.as_ref().map(|s| &*s.0).unwrap_or("none"),
            self.id.to_str().unwrap_or("-"),
        );
        logging::access_line(line.as_bytes());
    }
}

thread_local! {
    /// The formatted date and time of the current second, reused by every line in it.
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T06:20:01.123Z`.
fn write_timestamp(line: &mut String) {
    let now = time::OffsetDateTime::now_utc();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.unix_timestamp() {
            *second = now.unix_timestamp();
            text.clear();
            let _ = write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            );
        }
        line.push_str(text);
    });
    let _ = write!(line, ".{:03}Z", now.millisecond());
}

/// A response body: bytes the gateway made itself (no boxing), or a service's body.
pub(crate) enum Payload {
    Fixed(Option<Bytes>),
    Service(Body),
}

impl HttpBody for Payload {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut() {
            Payload::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Payload::Service(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Payload::Fixed(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Payload::Service(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Payload::Fixed(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Payload::Service(body) => body.size_hint(),
        }
    }
}

/// The response body hyper sends: the service's body, counted, writing the access-log line
/// and ending the request's `InProgress` mark when it is dropped (after its last byte, or
/// when the client went away first). Between a frame it yields and the next poll, hyper
/// holds that frame: on HTTP/2 the mark counts it, so a peer that withholds flow-control
/// credit shows as a stall (`watchdog`).
pub(crate) struct GatewayBody {
    inner: Payload,
    sent: u64,
    ended: bool,
    /// hyper asked for the body at all (not for HEAD, 204 or 304 answers).
    polled: bool,
    /// A body of known size is logged complete once all of it was handed to hyper (which
    /// need not poll it to its end), and with that size when hyper did not want it.
    known_size: Option<u64>,
    record: Option<AccessRecord>,
    in_progress: Option<InProgress>,
}

impl GatewayBody {
    pub(crate) fn new(
        inner: Payload,
        record: Option<AccessRecord>,
        mut in_progress: Option<InProgress>,
    ) -> Self {
        // The head goes out first: until hyper polls the body, it is the frame out.
        if let Some(mark) = &mut in_progress {
            mark.frame_out();
        }
        GatewayBody {
            known_size: inner.size_hint().exact(),
            inner,
            sent: 0,
            ended: false,
            polled: false,
            record,
            in_progress,
        }
    }
}

impl HttpBody for GatewayBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        this.polled = true;
        if let Some(mark) = &mut this.in_progress {
            mark.polled();
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if let Some(mark) = &mut this.in_progress {
                        mark.frame_out();
                    }
                }
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GatewayBody {
    fn drop(&mut self) {
        let Some(record) = self.record.take() else {
            return;
        };
        match self.known_size {
            Some(size) if !self.polled || self.sent >= size => record.write(size, true),
            Some(_) => record.write(self.sent, false),
            None => record.write(self.sent, self.ended || self.inner.is_end_stream()),
        }
    }
}
