//! Responses: the JSON bodies (pretty-printed with a two-space indent and a final newline,
//! like the reference app's Flask `jsonify`) and `ApiError`, the one place where a failure
//! becomes a status code and an `err_msg`.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use store::{Digest, StoreError};

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No message under this digest (or it is not a digest at all): the text as the client
    /// sent it.
    #[error("Message not found for hash: {0}")]
    NotFound(String),
    /// The body is not a JSON object with a string `message`.
    #[error("{0}")]
    BadRequest(String),
    /// The body is longer than the limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The Content-Type is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The method is not served on this path; `allow` lists what is.
    #[error("method {method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: http::Method,
        path: String,
        allow: &'static str,
    },
    /// Storing a message failed.
    #[error("{}", store_text(.0))]
    Store(StoreError),
    /// Looking a message up failed.
    #[error("{}", lookup_text(.0))]
    Lookup(StoreError),
}

const UNAVAILABLE: &str = "message store is unavailable, try again later";
const FAILED: &str = "message store failed; the server log has the details";

fn store_text(error: &StoreError) -> &'static str {
    if error.is_disk_full() {
        "message store is out of disk space; the message was not stored, try again later"
    } else if error.is_retryable() {
        UNAVAILABLE
    } else {
        FAILED
    }
}

fn lookup_text(error: &StoreError) -> &'static str {
    if error.is_disk_full() {
        "message store is recovering from a full disk, try again later"
    } else if error.is_retryable() {
        UNAVAILABLE
    } else {
        FAILED
    }
}

impl ApiError {
    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            // 507 only where storing is what failed; a lookup waits for the store to heal.
            ApiError::Store(e) if e.is_disk_full() => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Store(e) | ApiError::Lookup(e) if e.is_retryable() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Store(_) | ApiError::Lookup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Serialize)]
struct ErrMsg<'a> {
    err_msg: &'a str,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let text = self.to_string();
        let status = self.status();
        let mut response = json_response(status, pretty(&ErrMsg { err_msg: &text }));
        if let ApiError::MethodNotAllowed { allow, .. } = &self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        // Every 503 here is a store that can come back (Redis down, embedded store reopening).
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `201 {"digest": "..."}`.
pub fn created(digest: &Digest) -> Response {
    let mut body = Vec::with_capacity(96);
    body.extend_from_slice(b"{\n  \"digest\": \"");
    body.extend_from_slice(digest.to_hex().as_bytes());
    body.extend_from_slice(b"\"\n}\n");
    json_response(StatusCode::CREATED, body)
}

/// `200 {"message": "..."}`.
pub fn found(message: &str) -> Response {
    json_response(StatusCode::OK, pretty(&MessageBody { message }))
}

fn pretty<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising a struct of strings into memory cannot fail.
    let mut body = serde_json::to_vec_pretty(value).expect("string fields always serialise");
    body.push(b'\n');
    body
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn created_body_matches_pretty_printed_json() {
        let digest = Digest([0xAB; 32]);
        let response = created(&digest);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        let expected =
            serde_json::to_string_pretty(&serde_json::json!({"digest": digest.to_hex()}))
                .expect("encode")
                + "\n";
        assert_eq!(String::from_utf8(body.to_vec()).expect("utf8"), expected);
    }

    fn down() -> StoreError {
        StoreError::Unavailable {
            backend: "redis",
            reason: "refused".into(),
        }
    }

    fn broken() -> StoreError {
        StoreError::Failed {
            backend: "redis",
            reason: "WRONGTYPE".into(),
        }
    }

    fn full() -> StoreError {
        StoreError::DiskFull {
            backend: "embedded",
            reason: "writing messages.redb: No space left on device (os error 28)".into(),
        }
    }

    #[test]
    fn store_errors_map_by_retryability() {
        for error in [ApiError::Store(down()), ApiError::Lookup(down())] {
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error.to_string(), UNAVAILABLE);
        }
        for error in [ApiError::Store(broken()), ApiError::Lookup(broken())] {
            assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(error.to_string(), FAILED);
        }
    }

    #[test]
    fn a_full_disk_is_507_for_a_store_and_503_for_a_lookup() {
        let storing = ApiError::Store(full());
        assert_eq!(storing.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(storing.to_string().contains("out of disk space"));
        let looking = ApiError::Lookup(full());
        assert_eq!(looking.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(looking.to_string().contains("full disk"));
    }

    #[tokio::test]
    async fn only_503_carries_retry_after() {
        for (error, retry_after) in [
            (ApiError::Store(down()), Some("1")),
            (ApiError::Lookup(full()), Some("1")),
            (ApiError::Store(full()), None),
            (ApiError::Store(broken()), None),
        ] {
            let response = error.into_response();
            let header = response.headers().get(header::RETRY_AFTER);
            assert_eq!(header.map(|v| v.to_str().expect("ASCII")), retry_after);
        }
    }
}
