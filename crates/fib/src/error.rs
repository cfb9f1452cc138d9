//! The one place where the service's errors become HTTP answers: a JSON body
//! `{"error": "..."}` and a status that says whose fault it was.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::client::ClientError;
use crate::parse::BadN;

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum FibError {
    /// The client asked for an N that is not served.
    #[error(transparent)]
    BadN(#[from] BadN),
    /// The back ends could not answer (already retried on every one).
    #[error(transparent)]
    Backend(#[from] ClientError),
    /// A bug or a panic in the computation.
    #[error("internal error: {0}")]
    Internal(String),
}

impl FibError {
    fn status(&self) -> StatusCode {
        match self {
            FibError::BadN(_) => StatusCode::BAD_REQUEST,
            FibError::Backend(ClientError::TimedOut(_)) => StatusCode::GATEWAY_TIMEOUT,
            FibError::Backend(ClientError::Busy(_)) => StatusCode::SERVICE_UNAVAILABLE,
            FibError::Backend(_) => StatusCode::BAD_GATEWAY,
            FibError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for FibError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}
