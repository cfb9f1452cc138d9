//! Layers around every request: request id, access log line and metrics (`observe`), the
//! request timeout and the body-size limit. Errors here are the gateway's own answers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::app::error_response;

/// Which service answered; set on responses by the router, read by `observe`.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTag(pub Arc<str>);

const REQUEST_ID: &str = "x-request-id";

/// Request id, access log and metrics.
pub(crate) async fn observe(mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = request_id(&request);
    request.extensions_mut().insert(RequestId(id.clone()));
    let record = AccessRecord::new(&request, &id, start);
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID, id);
    let service = response
        .extensions()
        .get::<ServiceTag>()
        .map(|tag| tag.0.clone())
        .unwrap_or_else(|| Arc::from("none"));
    record_metrics(&service, response.status(), start.elapsed());
    let record = record.finish(service, response.status());
    response.map(|body| Body::new(LoggedBody::new(body, record)))
}

/// The id of a request, as a request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

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

fn record_metrics(service: &Arc<str>, status: StatusCode, elapsed: Duration) {
    let service = service.to_string();
    metrics::counter!(
        "portico_http_requests_total",
        "service" => service.clone(),
        "status" => status.as_str().to_owned()
    )
    .increment(1);
    metrics::histogram!("portico_http_request_duration_seconds", "service" => service)
        .record(elapsed.as_secs_f64());
}

/// Answers 504 when the service does not produce a response head within `limit`.
pub(crate) async fn timeout(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "the service did not answer within {}",
                humantime_like(limit)
            ),
        ),
    }
}

fn humantime_like(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Answers 413 for a declared `Content-Length` over `limit`; chunked bodies are cut by the
/// `DefaultBodyLimit` that extractors obey.
pub(crate) async fn body_limit(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body of {length} bytes is over the limit of {limit} bytes"),
        ),
        _ => next.run(request).await,
    }
}

/// One access-log line, written when the response body ends (or the client goes away).
struct AccessRecord {
    client: String,
    method: String,
    target: String,
    version: &'static str,
    id: HeaderValue,
    start: Instant,
    service: Arc<str>,
    status: u16,
}

impl AccessRecord {
    fn new(request: &Request, id: &HeaderValue, start: Instant) -> Self {
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.to_string())
            .unwrap_or_else(|| "-".into());
        AccessRecord {
            client,
            method: request.method().to_string(),
            target: request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            version: version_name(request.version()),
            id: id.clone(),
            start,
            service: Arc::from(""),
            status: 0,
        }
    }

    fn finish(mut self, service: Arc<str>, status: StatusCode) -> Self {
        self.service = service;
        self.status = status.as_u16();
        self
    }

    fn write(&self, bytes: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        tracing::info!(
            target: "access",
            "{} \"{} {} {}\" {} {}{} {:.3}ms service={} id={}",
            self.client,
            self.method,
            self.target,
            self.version,
            self.status,
            bytes,
            if complete { "" } else { " (aborted)" },
            elapsed.as_secs_f64() * 1000.0,
            self.service,
            self.id.to_str().unwrap_or("-"),
        );
    }
}

fn version_name(version: axum::http::Version) -> &'static str {
    match version {
        axum::http::Version::HTTP_09 => "HTTP/0.9",
        axum::http::Version::HTTP_10 => "HTTP/1.0",
        axum::http::Version::HTTP_11 => "HTTP/1.1",
        axum::http::Version::HTTP_2 => "HTTP/2.0",
        axum::http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
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
