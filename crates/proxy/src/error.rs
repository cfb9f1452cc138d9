//! `ProxyError`: why the proxy answers instead of an instance, and the one place that turns it
//! into an HTTP answer (status, JSON `{"error": ...}` naming the service and what failed,
//! `Retry-After` on 503). Turning an error into a response has no side effects: the request
//! path logs and counts before it returns one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::response::Response;
use http::{HeaderValue, StatusCode};

/// Why a proxied request was not answered by an instance. Each variant prints its cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The first path segment names no catalog service.
    #[error("unknown service \"{name}\"")]
    UnknownService { name: String },
    /// No instance could be had within `alloc_timeout`, or starting one failed.
    #[error("service \"{service}\": no instance available: {reason}")]
    NoInstance {
        service: String,
        reason: String,
        retry_after: Duration,
    },
    /// No instance could be connected to.
    #[error("service \"{service}\": no instance could be reached: {error}")]
    Connect { service: String, error: String },
    /// The instance broke the exchange (reset, closed, unparsable answer).
    #[error("service \"{service}\": instance {addr} failed: {error}")]
    Upstream {
        service: String,
        addr: SocketAddr,
        error: String,
    },
    /// The instance sent no response head in time.
    #[error("service \"{service}\": instance {addr} sent no response within {}", humantime::format_duration(*.after))]
    Timeout {
        service: String,
        addr: SocketAddr,
        after: Duration,
    },
    /// The request body passed the gateway's limit while it streamed.
    #[error("request body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The client's request body could not be read (the client went away mid-body).
    #[error("service \"{service}\": reading the request body failed: {error}")]
    ClientBody { service: String, error: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownService { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoInstance { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The metric label of this kind of failure.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::UnknownService { .. } => "unknown_service",
            ProxyError::NoInstance { .. } => "no_instance",
            ProxyError::Connect { .. } => "connect",
            ProxyError::Upstream { .. } => "upstream",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::ClientBody { .. } => "client_body",
        }
    }

    /// The answer: the status, the message as JSON, `Retry-After` (whole seconds, at least 1)
    /// when no instance could be had.
    pub fn response(&self) -> Response {
        let mut response = service::error_response(self.status(), &self.to_string());
        if let ProxyError::NoInstance { retry_after, .. } = self {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn an_unknown_service_is_a_404_with_the_spec_s_message() {
        let response = ProxyError::UnknownService {
            name: "nope".into(),
        }
        .response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body(response).await,
            "{\"error\":\"unknown service \\\"nope\\\"\"}\n"
        );
    }

    #[tokio::test]
    async fn no_instance_is_a_503_with_retry_after_rounded_up() {
        let error = ProxyError::NoInstance {
            service: "hello".into(),
            reason: "exit status 1".into(),
            retry_after: Duration::from_millis(2100),
        };
        let response = error.response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "3");
        let text = body(response).await;
        assert!(text.contains("service \\\"hello\\\""), "{text}");
        assert!(text.contains("exit status 1"), "{text}");
    }

    #[test]
    fn upstream_failures_name_the_instance_and_map_to_502_and_504() {
        let addr: SocketAddr = "10.0.0.2:4100".parse().unwrap();
        let broken = ProxyError::Upstream {
            service: "hello".into(),
            addr,
            error: "connection reset".into(),
        };
        assert_eq!(broken.status(), StatusCode::BAD_GATEWAY);
        assert!(broken.to_string().contains("10.0.0.2:4100"));
        let slow = ProxyError::Timeout {
            service: "hello".into(),
            addr,
            after: Duration::from_secs(30),
        };
        assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(slow.to_string().ends_with("within 30s"), "{slow}");
    }
}
