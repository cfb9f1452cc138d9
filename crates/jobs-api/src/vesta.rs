//! Error answers of the job API: the one place that says which HTTP status and which vesta
//! code each failure gets, and how the answer reads in JSON, XML or HTML.
//!
//! The JSON body is the original's: `{"description":"...","status":<int>,"vesta":{"code":<int>,
//! "message":"..."}}`. The codes are the original's (VestaRestPackage's exception register):
//! 202 unknown service, 203 unknown uuid, 204 worker version mismatch, 205 broker
//! unreachable, 206 missing parameter, 207 invalid document URL, 101 anything else; 202-207
//! were answered with 400 and still are. Deliberate fixes: authentication failures are 401
//! (the original answered 400 or crashed with 500), and both `description` and
//! `vesta.message` carry the readable sentence (the original's `vesta.message` was an empty
//! exception text plus a source line like ` [utility_rest.py:152 in validate_uuid]`).
//!
//! Portico's own conditions get their own statuses with code 101: 503 + `Retry-After` while a
//! store or broker is unavailable but may come back, 507 when the disk is full.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::jwt::AuthError;
use crate::negotiate::Format;
use crate::{html, pyjson, xml};

/// Vesta's generic code (any exception not in the register).
pub const GENERIC: u16 = 101;

/// Why a request to the job API failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("The request has been made for a service that is not supported : {0}")]
    UnknownService(String),
    #[error("User requested a UUID which did not exist : {0}")]
    UnknownUuid(String),
    #[error(
        "Service {service} declares the version {declared} in its config file but messages \
         received from its worker contain the version {reported}."
    )]
    VersionMismatch {
        service: String,
        declared: String,
        reported: String,
    },
    #[error("The job broker did not answer in time: {0}")]
    BrokerUnreachable(String),
    #[error("A {method} on the URI \"{uri}\" requires the following parameter : {parameter}")]
    MissingParameter {
        method: &'static str,
        uri: String,
        parameter: String,
    },
    #[error("User provided an invalid source URL : {0}")]
    InvalidDocumentUrl(String),
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("The job store is unavailable, retry later: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    #[error("The job store's disk is full: {0}")]
    DiskFull(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            // The original answered 400; a broker that is down is temporary (issue 11).
            ApiError::Unavailable { .. } | ApiError::BrokerUnreachable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The vesta code of the answer.
    pub fn vesta_code(&self) -> u16 {
        match self {
            ApiError::UnknownService(_) => 202,
            ApiError::UnknownUuid(_) => 203,
            ApiError::VersionMismatch { .. } => 204,
            ApiError::BrokerUnreachable(_) => 205,
            ApiError::MissingParameter { .. } => 206,
            ApiError::InvalidDocumentUrl(_) => 207,
            _ => GENERIC,
        }
    }

    /// The body's fields, as a JSON value (also rendered as XML and HTML).
    pub fn body(&self) -> Value {
        let message = self.to_string();
        json!({
            "description": message,
            "status": self.status().as_u16(),
            "vesta": {"code": self.vesta_code(), "message": message},
        })
    }

    /// The answer in `format`.
    pub fn response(&self, format: Format) -> Response {
        let text = match format {
            Format::Json => pyjson::body(&self.body()),
            Format::Xml => xml::document("error", &self.body()),
            Format::Html => self.html(),
        };
        let mut response = text_response(self.status(), format, text);
        let retry_after = match self {
            ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            ApiError::BrokerUnreachable(_) => Some(RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            let seconds = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if let ApiError::Unauthorized(_) = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }

    fn html(&self) -> String {
        let status = self.status();
        let title = format!(
            "{} : {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let detail = format!("{} : {}", self.vesta_code(), self);
        html::page(&title, &[("Error", detail.as_str())])
    }
}

/// How long a client should wait before retrying when the job store is unavailable.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<jobs::Error> for ApiError {
    /// The core's errors as the API answers them (the one mapping).
    fn from(error: jobs::Error) -> ApiError {
        match error {
            jobs::Error::UnknownService(name) => ApiError::UnknownService(name),
            jobs::Error::UnknownJob(id) => ApiError::UnknownUuid(id.to_string()),
            jobs::Error::UnknownLease(id) => ApiError::NotFound(format!(
                "The lease {id} is not held: it expired, ended, or Portico restarted"
            )),
            jobs::Error::Unavailable {
                reason,
                disk_full: true,
            } => ApiError::DiskFull(reason),
            jobs::Error::Unavailable { reason, .. } => ApiError::Unavailable {
                reason,
                retry_after: RETRY_AFTER,
            },
            jobs::Error::Draining => ApiError::Unavailable {
                reason: "Portico is shutting down".into(),
                retry_after: RETRY_AFTER,
            },
            // The original answered an unreachable broker with 400 and vesta 205; the
            // code is kept, the status is 503 with Retry-After (a deliberate fix).
            jobs::Error::BrokerUnreachable(reason) => ApiError::BrokerUnreachable(reason),
            jobs::Error::Invalid(reason) | jobs::Error::Unsupported(reason) => {
                ApiError::BadRequest(reason)
            }
            jobs::Error::Failed(reason) => ApiError::Internal(reason),
        }
    }
}

/// A response with `text` as the body and the format's content type.
pub fn text_response(status: StatusCode, format: Format, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

/// The vesta code of a worker exception type (the original's register), 101 when unknown.
pub fn code_of_exception(exc_type: &str) -> u16 {
    // The type may come with its module (`celery.exceptions.TaskRevokedError`).
    let name = exc_type.rsplit('.').next().unwrap_or(exc_type);
    KNOWN_EXCEPTIONS
        .iter()
        .find(|(_, known)| *known == name || *known == exc_type)
        .map(|(code, _)| *code)
        .unwrap_or(GENERIC)
}

/// The original's register of exception types and their codes.
const KNOWN_EXCEPTIONS: &[(u16, &str)] = &[
    (100, "NoneType"),
    (101, "Exception"),
    (102, "sqlite3.Error"),
    (103, "ConfigParser.Error"),
    (104, "TypeError"),
    (105, "ValueError"),
    (106, "socket.gaierror"),
    (107, "IOError"),
    (108, "KeyError"),
    (109, "TaskRevokedError"),
    (200, "SettingsException"),
    (201, "VersionException"),
    (202, "UnknownServiceError"),
    (203, "UnknownUUIDError"),
    (204, "VersionMismatchError"),
    (205, "AMQPError"),
    (206, "MissingParameterError"),
    (207, "DocumentUrlNotValidException"),
    (300, "InvalidAnnotationFormat"),
    (301, "DownloadError"),
    (302, "UploadError"),
    (303, "ConfigFileNotFound"),
    (304, "InvalidDocumentPath"),
    (305, "InvalidDocumentType"),
    (306, "RuntimeError"),
    (400, "InsufficientResources"),
    (401, "MinimumWorkersReached"),
    (500, "OverflowError"),
    (501, "NotImplementedError"),
    (502, "FFMpegError"),
    (503, "FFMpegConvertError"),
    (504, "ConverterError"),
    (505, "TranscoderError"),
    (506, "SwiftException"),
    (600, "CInternalError"),
    (630, "WavPathInvalid"),
    (631, "WavFormatInvalid"),
    (632, "WavHeaderInvalid"),
    (633, "SubprocessProblem"),
    (640, "PathInvalidError"),
    (641, "SegmentsTooLongException"),
    (642, "SubprocessError"),
    (643, "TranscriptionEmptyError"),
];

/// The vesta code of a revoked job (Celery's `TaskRevokedError`).
pub const REVOKED: u16 = 109;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn unknown_uuid_is_400_with_code_203_in_the_original_shape() {
        let error = ApiError::UnknownUuid("abc".into());
        let response = error.response(Format::Json);
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_text(response).await,
            "{\"description\":\"User requested a UUID which did not exist : abc\",\"status\":400,\
             \"vesta\":{\"code\":203,\"message\":\"User requested a UUID which did not exist : abc\"}}\n"
        );
    }

    #[test]
    fn every_code_of_the_original_and_its_status() {
        let missing = ApiError::MissingParameter {
            method: "POST",
            uri: "/annotate".into(),
            parameter: "doc_url".into(),
        };
        let cases = [
            (ApiError::UnknownService("x".into()), 400, 202),
            (ApiError::UnknownUuid("x".into()), 400, 203),
            (
                ApiError::VersionMismatch {
                    service: "s".into(),
                    declared: "1".into(),
                    reported: "2".into(),
                },
                400,
                204,
            ),
            (ApiError::BrokerUnreachable("x".into()), 503, 205),
            (missing.clone(), 400, 206),
            (ApiError::InvalidDocumentUrl("x".into()), 400, 207),
            (ApiError::Unauthorized(AuthError::Missing), 401, 101),
            (ApiError::BadRequest("x".into()), 400, 101),
            (ApiError::DiskFull("x".into()), 507, 101),
            (ApiError::Internal("x".into()), 500, 101),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.vesta_code(), code, "{error}");
        }
        assert_eq!(
            missing.to_string(),
            "A POST on the URI \"/annotate\" requires the following parameter : doc_url"
        );
    }

    #[tokio::test]
    async fn unavailable_says_when_to_retry_and_xml_and_html_carry_the_message() {
        let error = ApiError::Unavailable {
            reason: "reopening".into(),
            retry_after: Duration::from_millis(200),
        };
        let response = error.response(Format::Xml);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let text = body_text(response).await;
        assert!(text.contains("<vesta><code>101</code>"), "{text}");
        let html = body_text(ApiError::UnknownService("<x>".into()).response(Format::Html)).await;
        assert!(
            html.contains(
                "202 : The request has been made for a service that is not supported : &lt;x&gt;"
            ),
            "{html}"
        );
    }

    #[test]
    fn core_errors_map_to_their_statuses_and_codes() {
        let full = jobs::Error::Unavailable {
            reason: "disk full".into(),
            disk_full: true,
        };
        assert_eq!(ApiError::from(full).status(), 507);
        let down = jobs::Error::Unavailable {
            reason: "reopening".into(),
            disk_full: false,
        };
        assert_eq!(ApiError::from(down).status(), 503);
        assert_eq!(ApiError::from(jobs::Error::Draining).status(), 503);
        let broker = ApiError::from(jobs::Error::BrokerUnreachable("refused".into()));
        assert_eq!((broker.status().as_u16(), broker.vesta_code()), (503, 205));
        let unknown = ApiError::from(jobs::Error::UnknownService("x".into()));
        assert_eq!(unknown.vesta_code(), 202);
        assert_eq!(
            ApiError::from(jobs::Error::Failed("bug".into())).status(),
            500
        );
    }

    #[test]
    fn worker_exception_types_map_to_the_original_codes() {
        assert_eq!(code_of_exception("RuntimeError"), 306);
        assert_eq!(code_of_exception("celery.exceptions.TaskRevokedError"), 109);
        assert_eq!(code_of_exception("socket.gaierror"), 106);
        assert_eq!(code_of_exception("SomethingElse"), 101);
    }
}
