//! The HTTP handlers: `POST /messages` and `GET /messages/{digest}`, and the 405 answers for
//! every other method on those paths.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{header, HeaderMap, Method, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest as _, Sha256};
use store::{AnyStore, Digest, Store};

use crate::request::{check_content_type, parse_message};
use crate::response::{created, found, ApiError};

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    pub store: AnyStore,
    pub max_body_bytes: usize,
}

/// The routes, with their full paths.
pub fn router(app: Arc<App>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/messages", post(post_message).fallback(only_post))
        .route("/messages/{digest}", get(get_message).fallback(only_get))
        .with_state(app)
}

/// `POST /messages`: store the message, answer its digest once it is durable.
async fn post_message(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_content_type(headers.get(header::CONTENT_TYPE))?;
    let bytes = read_limited(&headers, body, app.max_body_bytes).await?;
    let message = parse_message(&bytes)?;
    let digest = Digest(Sha256::digest(message.as_bytes()).into());
    app.store.put(&digest, &message).await.map_err(|error| {
        tracing::warn!(%error, store = app.store.kind(), "storing a message failed");
        metrics::counter!("portico_messages_store_errors_total", "op" => "put").increment(1);
        ApiError::Store(error)
    })?;
    metrics::counter!("portico_messages_posted_total").increment(1);
    Ok(created(&digest))
}

/// `GET /messages/{digest}`: the message, found case-insensitively.
async fn get_message(
    State(app): State<Arc<App>>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        metrics::counter!("portico_messages_lookups_total", "outcome" => "not_found").increment(1);
        ApiError::NotFound(text.clone())
    };
    let digest = Digest::from_hex(&text).map_err(|_| not_found())?;
    let message = app.store.get(&digest).await.map_err(|error| {
        tracing::warn!(%error, store = app.store.kind(), "looking up a message failed");
        metrics::counter!("portico_messages_store_errors_total", "op" => "get").increment(1);
        ApiError::Lookup(error)
    })?;
    let message = message.ok_or_else(not_found)?;
    metrics::counter!("portico_messages_lookups_total", "outcome" => "found").increment(1);
    Ok(found(&message))
}

async fn only_post(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_string(),
        allow: "POST",
    }
}

async fn only_get(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_string(),
        allow: "GET, HEAD",
    }
}

/// The whole body, or 413 as soon as it is known to exceed `limit` (from Content-Length
/// before reading, else while reading).
async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if is_length_limit(error.as_ref()) => Err(ApiError::TooLarge { limit }),
        Err(error) => Err(ApiError::BadRequest(format!(
            "reading the request body failed: {error}"
        ))),
    }
}

/// Whether `error` or anything in its source chain is a body length limit (ours, or one the
/// gateway put around the body).
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}
