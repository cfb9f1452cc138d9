//! The gateway's per-request rules, used by `request`: the request id, the body-size limit
//! and the text of durations in error messages.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use crate::app::error_response;

/// Which service answered: set on responses by the router (`app::tag`) or by the gateway's
/// own answers, read for metrics and the access log.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTag(pub Arc<str>);

impl ServiceTag {
    pub(crate) fn new(name: &str) -> Self {
        ServiceTag(Arc::from(name))
    }
}

pub use service::RequestId;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// `PPPPPPPP-N`: a random per-process prefix in hex and a number unique in the process.
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<[u8; 9]> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let mut text = [b'-'; 9];
        let hex = format!("{:08x}", rand::random::<u32>());
        text[..8].copy_from_slice(hex.as_bytes());
        text
    });
    let mut digits = itoa::Buffer::new();
    let number = digits.format(next_request_number()).as_bytes();
    let mut text = [0u8; 9 + 20];
    text[..9].copy_from_slice(prefix);
    text[9..9 + number.len()].copy_from_slice(number);
    HeaderValue::from_bytes(&text[..9 + number.len()])
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Request numbers are handed to each thread in blocks, so workers do not contend for one
/// counter on every request; numbers are unique, not ordered across workers.
fn next_request_number() -> u64 {
    const BLOCK: u64 = 1024;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        range.set((next + 1, end));
        next
    })
}

/// 413 for a body whose declared length (`Content-Length`, as hyper parsed it) is over the
/// limit; other bodies are counted as they stream (`body_limit`).
pub(crate) fn over_body_limit(declared: Option<u64>, limit: usize) -> Option<Response> {
    let declared = declared?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn new_request_ids_are_unique_across_threads_and_well_formed() {
        let per_thread: Vec<Vec<String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..3000)
                            .map(|_| new_request_id().to_str().unwrap().to_owned())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: Vec<&String> = per_thread.iter().flatten().collect();
        let unique: HashSet<&&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "duplicate request ids");
        let prefix = &all[0][..9];
        for id in &all {
            let (hex, number) = id.split_once('-').unwrap();
            assert!(
                hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(number.parse::<u64>().is_ok(), "{id}");
            assert_eq!(&id[..9], prefix, "one prefix per process");
        }
    }

    #[test]
    fn a_sane_client_request_id_is_kept_and_a_bad_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
    }
}
