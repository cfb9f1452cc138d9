//! The REST face: `GET /fib/<n>` answers `{"N": n, "result": "F(0) .. F(n-1)"}` in the
//! original's exact layout, streamed with an exact `Content-Length`; every bad N is a JSON 400.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::body::FramedBody;
use crate::cache::FibCache;
use crate::client::BackendClient;
use crate::error::FibError;
use crate::metrics;
use crate::parse::parse_n;
use crate::text::Text;
use crate::{Config, Error};

/// Answers up to this size are assembled into one buffer (one write, no chunk bookkeeping).
const COALESCE_LIMIT: u64 = 64 * 1024;

/// Where the numbers come from.
enum Source {
    /// Computed in this process, from the shared cache.
    Local(Arc<FibCache>),
    /// Asked of remote `fib-backend`s.
    Remote(BackendClient),
}

struct Inner {
    limit: u64,
    source: Source,
}

/// The running service.
pub struct FibService {
    inner: Arc<Inner>,
}

impl FibService {
    /// Builds the service: the in-process cache, or the back-end client when back ends are
    /// configured. Refuses an invalid config with every problem listed.
    pub fn open(config: &Config) -> Result<Self, Error> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        let source = if config.backends.is_empty() {
            Source::Local(Arc::new(FibCache::new(config.cache_bytes)))
        } else {
            Source::Remote(BackendClient::new(
                &config.backends,
                config.backend_timeout,
                config.pool_size,
                config.client_cache_bytes,
            ))
        };
        let inner = Inner {
            limit: config.limit,
            source,
        };
        Ok(FibService {
            inner: Arc::new(inner),
        })
    }

    /// The routes this service owns, with their full paths (`/fib`, `/fib/...`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/fib", get(answer))
            .route("/fib/", get(answer))
            .route("/fib/{*n}", get(answer))
            .with_state(Arc::clone(&self.inner))
    }
}

async fn answer(State(inner): State<Arc<Inner>>, uri: Uri) -> Response {
    // The raw path, not a decoded one: N is ASCII digits, so `%31` is refused, not read as 1.
    let raw = uri.path().strip_prefix("/fib").unwrap_or_default();
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    let n = match parse_n(raw, inner.limit) {
        Ok(n) => n,
        Err(bad) => {
            count(metrics::INVALID_BUCKET, "bad_request");
            return FibError::from(bad).into_response();
        }
    };
    match numbers(&inner, n).await {
        Ok(text) => {
            count(metrics::n_bucket(n), "ok");
            json_response(n, text)
        }
        Err(error) => {
            count(metrics::n_bucket(n), "error");
            error.into_response()
        }
    }
}

fn count(bucket: &'static str, outcome: &'static str) {
    ::metrics::counter!(metrics::REQUESTS, "bucket" => bucket, "outcome" => outcome).increment(1);
}

async fn numbers(inner: &Inner, n: u64) -> Result<Text, FibError> {
    match &inner.source {
        Source::Local(cache) => cache
            .text(n)
            .await
            .map_err(|e| FibError::Internal(e.to_string())),
        Source::Remote(client) => Ok(client.text(n).await?),
    }
}

/// `{\n  "N": n,\n  "result": "` + text + `"\n}`, as the original printed it.
fn json_response(n: u64, mut text: Text) -> Response {
    let head = format!("{{\n  \"N\": {n},\n  \"result\": \"");
    const TAIL: &[u8] = b"\"\n}";
    let body = if text.rest.is_none() && text.len <= COALESCE_LIMIT {
        let mut whole = Vec::with_capacity(head.len() + text.len as usize + TAIL.len());
        whole.extend_from_slice(head.as_bytes());
        for part in text.ready.drain(..) {
            whole.extend_from_slice(&part);
        }
        whole.extend_from_slice(TAIL);
        Body::from(whole)
    } else {
        Body::new(FramedBody::new(
            Bytes::from(head),
            text,
            Bytes::from_static(TAIL),
        ))
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(config: &Config, path: &str) -> (StatusCode, String, Option<String>) {
        let service = FibService::open(config).expect("opens");
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = service.router().oneshot(request).await.expect("infallible");
        let status = response.status();
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().expect("ascii").to_string());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            String::from_utf8(body.to_vec()).expect("utf-8"),
            length,
        )
    }

    #[tokio::test]
    async fn ten_is_the_original_layout_byte_for_byte() {
        let (status, body, _) = get(&Config::default(), "/fib/10").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\n  \"N\": 10,\n  \"result\": \"0 1 1 2 3 5 8 13 21 34\"\n}"
        );
    }

    #[tokio::test]
    async fn leading_zeros_are_accepted() {
        let (_, body, _) = get(&Config::default(), "/fib/007").await;
        assert_eq!(body, "{\n  \"N\": 7,\n  \"result\": \"0 1 1 2 3 5 8\"\n}");
    }

    #[tokio::test]
    async fn bad_n_is_a_json_400_naming_the_limit() {
        for path in [
            "/fib/0",
            "/fib/-1",
            "/fib/abc",
            "/fib/1.5",
            "/fib/+1",
            "/fib/1/",
            "/fib/",
            "/fib",
            "/fib/%31",
            "/fib/100001",
        ] {
            let (status, body, _) = get(&Config::default(), path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            let json: serde_json::Value = serde_json::from_str(&body).expect("json");
            let message = json["error"].as_str().expect("error string");
            assert!(message.contains("100000"), "{path}: {message}");
        }
    }

    #[tokio::test]
    async fn streamed_answers_announce_their_exact_length() {
        let config = Config {
            cache_bytes: 1000,
            ..Config::default()
        };
        let (status, body, length) = get(&config, "/fib/3000").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(length, Some(body.len().to_string()));
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["N"], 3000);
        assert_eq!(
            json["result"].as_str().expect("string").split(' ').count(),
            3000
        );
    }
}
