//! The layer around every request, its steps in order: request id, body-size limit, request
//! timeout, then metrics and the access-log line. One layer rather than four: each extra
//! `from_fn` layer boxes a future and clones the inner service per request (bench/gateway).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Version};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::app::error_response;
use crate::logging;

/// Which service answered; set on responses by the router, read here.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTag(pub Arc<str>);

/// The id of a request, as a request extension (services may log it).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

const REQUEST_ID: &str = "x-request-id";

/// What the layer enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// The gateway layer (see the module doc for its steps).
pub(crate) async fn gateway_layer(
    State(limits): State<Limits>,
    mut request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let id = request_id(&request);
    request.extensions_mut().insert(RequestId(id.clone()));
    let record = logging::access_log_enabled().then(|| AccessRecord::new(&request, &id, start));
    let mut response = match over_body_limit(&request, limits.max_body_bytes) {
        Some(refusal) => refusal,
        None => with_timeout(limits.request_timeout, next.run(request)).await,
    };
    response.headers_mut().insert(REQUEST_ID, id);
    let service = response
        .extensions()
        .get::<ServiceTag>()
        .map(|tag| tag.0.clone());
    record_metrics(service.as_ref(), response.status(), start.elapsed());
    let Some(record) = record else {
        return response;
    };
    let record = record.finish(service, response.status());
    // A body of known size is logged now; a stream when it ends (or is cut off).
    match response.body().size_hint().exact() {
        Some(bytes) => {
            record.write(bytes, true);
            response
        }
        None => response.map(|body| Body::new(LoggedBody::new(body, record))),
    }
}

/// The client's `X-Request-Id` when it is sane, else a new one.
fn request_id(request: &Request) -> HeaderValue {
    let given = request.headers().get(REQUEST_ID).filter(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
    });
    match given {
        Some(value) => value.clone(),
        None => new_request_id(),
    }
}

fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(rand::random::<u32>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix:08x}-{n}")).expect("hex and digits are valid")
}

/// 413 for a declared `Content-Length` over the limit; chunked bodies are cut by the
/// `DefaultBodyLimit` that extractors obey.
fn over_body_limit(request: &Request, limit: usize) -> Option<Response> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())?;
    (declared > limit as u64).then(|| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body of {declared} bytes is over the limit of {limit} bytes"),
        )
    })
}

/// 504 when the service does not produce a response head within `limit`.
async fn with_timeout(
    limit: Duration,
    answer: impl std::future::Future<Output = Response>,
) -> Response {
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("the service did not answer within {}", duration_text(limit)),
        ),
    }
}

fn duration_text(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

type MetricKey = (usize, u16);

thread_local! {
    /// Handles by (service tag address, status): building a labelled key per request was a
    /// visible cost. Tags live as long as the router, so their addresses are stable.
    static COUNTERS: RefCell<HashMap<MetricKey, metrics::Counter>> = RefCell::new(HashMap::new());
    static DURATIONS: RefCell<HashMap<usize, metrics::Histogram>> = RefCell::new(HashMap::new());
}

fn record_metrics(service: Option<&Arc<str>>, status: StatusCode, elapsed: Duration) {
    let name: &str = service.map(|s| &**s).unwrap_or("none");
    let address = service
        .map(|s| Arc::as_ptr(s) as *const u8 as usize)
        .unwrap_or(0);
    COUNTERS.with_borrow_mut(|counters| {
        counters
            .entry((address, status.as_u16()))
            .or_insert_with(|| {
                metrics::counter!(
                    "portico_http_requests_total",
                    "service" => name.to_owned(),
                    "status" => status.as_str().to_owned()
                )
            })
            .increment(1)
    });
    DURATIONS.with_borrow_mut(|durations| {
        durations
            .entry(address)
            .or_insert_with(|| {
                metrics::histogram!("portico_http_request_duration_seconds", "service" => name.to_owned())
            })
            .record(elapsed.as_secs_f64())
    });
}

/// One access-log line, written when the response body ends (or the client goes away).
struct AccessRecord {
    client: Option<SocketAddr>,
    method: axum::http::Method,
    target: String,
    version: Version,
    id: HeaderValue,
    start: Instant,
    service: Option<Arc<str>>,
    status: u16,
}

impl AccessRecord {
    fn new(request: &Request, id: &HeaderValue, start: Instant) -> Self {
        AccessRecord {
            client: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
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

    fn finish(mut self, service: Option<Arc<str>>, status: StatusCode) -> Self {
        self.service = service;
        self.status = status.as_u16();
        self
    }

    /// `TIME CLIENT "METHOD TARGET VERSION" STATUS BYTES DURATION service=NAME id=ID`
    fn write(&self, bytes: u64, complete: bool) {
        let mut line = String::with_capacity(160);
        write_timestamp(&mut line);
        match self.client {
            Some(client) => {
                let _ = write!(line, " {client}");
            }
            None => line.push_str(" -"),
        }
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
            self.service.as_deref().unwrap_or("none"),
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

/// A response body that counts what it sends and writes the access-log line when it ends.
struct LoggedBody {
    inner: Body,
    bytes: u64,
    complete: bool,
    record: Option<AccessRecord>,
}

impl LoggedBody {
    fn new(inner: Body, record: AccessRecord) -> Self {
        LoggedBody {
            inner,
            bytes: 0,
            complete: false,
            record: Some(record),
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.complete = true,
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let complete = self.complete || self.inner.is_end_stream();
            record.write(self.bytes, complete);
        }
    }
}
