//! The page and its assets, compiled into the binary (no CDN, no build step): `index.html`,
//! `app.css` and `app.js` under `crates/dashboard/assets/`.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");
const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

pub(crate) async fn page() -> Response {
    with_type(INDEX, "text/html; charset=utf-8")
}

pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.css" => with_type(CSS, "text/css; charset=utf-8"),
        "app.js" => with_type(JS, "text/javascript; charset=utf-8"),
        _ => service::error_response(StatusCode::NOT_FOUND, "no such asset"),
    }
}

fn with_type(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
                ),
            ),
        ],
        body,
    )
        .into_response()
}
