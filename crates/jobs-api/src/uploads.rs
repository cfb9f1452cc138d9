//! The temporary file routes (the store is [`crate::temporary`]):
//!
//! - `GET /temporary_upload_path` (JWT) -> `{"name":"<32 hex>","url":"<base>/temporary_file/<name>"}`,
//!   a fresh name nobody can guess; nothing is stored until the upload.
//! - `POST /temporary_file` and `POST /temporary_file/<name>` (JWT): the raw body (its
//!   `Content-Type` kept) or the `file` part of a `multipart/form-data` body ->
//!   `{"name":...,"url":...}` once the bytes are on disk.
//! - `GET /temporary_file/<name>` (no token: the name is the capability, as the original's
//!   storage URLs) -> the bytes with their content type; `404` (vesta body) when unknown or
//!   expired, `400` when `<name>` is not a name.
//!
//! URLs start with `jobs.public_url`, else the request's scheme and `Host` ([`Origin`]).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;
use service::ClientTls;

use crate::api::JobsApi;
use crate::legacy::{accept, authorize};
use crate::multipart::{self, Part};
use crate::negotiate::{self, Format};
use crate::pyjson;
use crate::temporary::DEFAULT_CONTENT_TYPE;
use crate::vesta::{text_response, ApiError};

type Api = State<Arc<JobsApi>>;

/// The gateway's URL as the client reached it: `jobs.public_url`, else `http(s)://<Host>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(pub String);

impl Origin {
    /// The URL of the temporary file `name`.
    pub fn file_url(&self, name: &str) -> String {
        format!("{}/temporary_file/{name}", self.0)
    }
}

impl FromRequestParts<Arc<JobsApi>> for Origin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<JobsApi>,
    ) -> Result<Self, Self::Rejection> {
        if !api.public_url.is_empty() {
            return Ok(Origin(api.public_url.clone()));
        }
        let tls = parts.extensions.get::<ClientTls>().is_some_and(|t| t.0);
        let scheme = if tls { "https" } else { "http" };
        // HTTP/2 carries the authority in the URI, HTTP/1 in Host.
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| valid_host(h))
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(ToString::to_string))
            .unwrap_or_else(|| "localhost".to_string());
        Ok(Origin(format!("{scheme}://{host}")))
    }
}

/// A `Host` value safe to put in a URL (host, `[v6]`, port; no path, user or spaces).
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

fn answer(headers: &HeaderMap, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error.response(negotiate::for_error(accept(headers))))
}

fn located(origin: &Origin, name: &str) -> Response {
    let body = json!({"name": name, "url": origin.file_url(name)});
    text_response(StatusCode::OK, Format::Json, pyjson::body(&body))
}

/// `GET /temporary_upload_path`.
pub(crate) async fn upload_path(State(api): Api, origin: Origin, headers: HeaderMap) -> Response {
    let result =
        authorize(&api, &headers).map(|()| located(&origin, &crate::temporary::new_name()));
    answer(&headers, result)
}

/// `POST /temporary_file`.
pub(crate) async fn upload_new(
    State(api): Api,
    origin: Origin,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = upload(&api, &origin, None, &headers, body).await;
    answer(&headers, result)
}

/// `POST /temporary_file/<name>`.
pub(crate) async fn upload_named(
    State(api): Api,
    origin: Origin,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = upload(&api, &origin, Some(&name), &headers, body).await;
    answer(&headers, result)
}

async fn upload(
    api: &JobsApi,
    origin: &Origin,
    name: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(api, headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_CONTENT_TYPE);
    let (data, content_type, filename) = if multipart::is_multipart(content_type) {
        file_part(content_type, body).await?
    } else {
        (body, content_type.to_string(), None)
    };
    let name = api
        .temporary
        .store(name, data, &content_type, filename)
        .await?;
    Ok(located(origin, &name))
}

/// The `file` part of a multipart upload: its bytes, content type and file name.
async fn file_part(
    content_type: &str,
    body: Bytes,
) -> Result<(Bytes, String, Option<String>), ApiError> {
    let parts = multipart::parse(content_type, body).await?;
    parts
        .into_iter()
        .find_map(|part| match part {
            Part::File {
                name,
                filename,
                content_type,
                data,
            } if name == "file" => Some((
                data,
                content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
                Some(filename),
            )),
            _ => None,
        })
        .ok_or_else(|| {
            ApiError::BadRequest(
                "The multipart/form-data upload has no part named \"file\" with a filename \
                 (curl -F file=@path)"
                    .into(),
            )
        })
}

/// `GET /temporary_file/<name>`: streamed from disk.
pub(crate) async fn download(
    State(api): Api,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let download = api.temporary.open_file(&name).await?;
        let file = tokio::fs::File::from_std(download.file);
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        let content_type = HeaderValue::from_str(&download.meta.content_type)
            .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(header::CONTENT_LENGTH, download.meta.size.into());
        // The content type is the uploader's: never let a browser run it as this origin's.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        Ok(response)
    }
    .await;
    answer(&headers, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_hosts_go_into_urls() {
        assert!(valid_host("gw.example.org:8443"));
        assert!(valid_host("[::1]:80"));
        assert!(!valid_host("evil.org/x?"));
        assert!(!valid_host("a b"));
        assert!(!valid_host("user@h"));
        assert!(!valid_host(""));
    }
}
