//! The gateway's per-request rules, used by `service`: the request id, the body-size limit,
//! the text of durations in error messages, and the metrics per service and status.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use crate::app::error_response;

/// Which service answered; set on responses by the router, read here.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTag(pub Arc<str>);

impl ServiceTag {
    pub(crate) fn new(name: &str) -> Self {
        ServiceTag(Arc::from(name))
    }
}

/// The id of a request, as a request extension (services may log it).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

pub(crate) const REQUEST_ID: &str = "x-request-id";

/// The client's `X-Request-Id` when it is sane, else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    let given = headers.get(REQUEST_ID).filter(|value| {
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
pub(crate) fn over_body_limit(headers: &HeaderMap, limit: usize) -> Option<Response> {
    let declared = headers
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

pub(crate) fn duration_text(duration: Duration) -> String {
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

pub(crate) fn record_metrics(service: Option<&ServiceTag>, status: StatusCode, elapsed: Duration) {
    let name: &str = service.map(|s| &*s.0).unwrap_or("none");
    let address = service
        .map(|s| Arc::as_ptr(&s.0) as *const u8 as usize)
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
