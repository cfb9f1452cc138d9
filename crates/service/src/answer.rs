//! The gateway's own error answers, JSON `{"error": "..."}`, for services that have no error
//! format of their own (the proxy, the manager API) and for the gateway itself.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;

/// `status` with the body `{"error":"<message>"}` and a newline.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = format!("{{\"error\":{}}}\n", json_string(message));
    json_response(status, Bytes::from(body))
}

/// `status` with `body` as `application/json`.
pub fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON string literal for `text` (quotes, backslashes and control characters escaped).
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn messages_are_escaped_json() {
        assert_eq!(json_string("a \"b\"\n"), "\"a \\\"b\\\"\\u000a\"");
    }

    #[tokio::test]
    async fn error_answers_are_json_with_the_message() {
        let response = error_response(StatusCode::BAD_GATEWAY, "instance 10.0.0.1:80 reset");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"error\":\"instance 10.0.0.1:80 reset\"}\n");
    }
}
