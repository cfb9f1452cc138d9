//! A job's record as clients read it: the ServiceGateway status (`{"result":...,"status":
//! "...","uuid":"..."}`, JSON or XML) and the modern API's job object.
//!
//! The original's status rules: `result` is null while pending or started, the worker's meta
//! for PROGRESS (and STORING, and custom states), the return value on SUCCESS; FAILURE,
//! REVOKED and RETRY answer 200 with `{"code":<vesta code>,"message":"..."}` as the result
//! (the code from the worker's exception type, 109 for a revoke, else 101). A PROGRESS meta
//! whose `worker_id_version` differs from the service's `version` is an error (vesta 204).

use axum::http::StatusCode;
use axum::response::Response;
use jobs::{Job, State};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::negotiate::Format;
use crate::vesta::{self, text_response, ApiError};
use crate::{pyjson, xml};

/// The original's status triple for `job`, checking the worker's version against
/// `service_version`.
pub fn legacy_status(job: &Job, service_version: &str) -> Result<(String, Value), ApiError> {
    let result = match &job.state {
        State::Pending | State::Started | State::Expired => Value::Null,
        State::Progress => {
            check_worker_version(job, service_version)?;
            job.meta.clone()
        }
        State::Storing | State::Custom(_) => job.meta.clone(),
        State::Success => job.result.clone(),
        State::Failure | State::Revoked | State::Retry => failure_result(job),
    };
    Ok((job.state.as_str().to_string(), result))
}

fn check_worker_version(job: &Job, declared: &str) -> Result<(), ApiError> {
    match job.meta.get("worker_id_version").and_then(Value::as_str) {
        Some(reported) if reported != declared => Err(ApiError::VersionMismatch {
            service: job.service.clone(),
            declared: declared.to_string(),
            reported: reported.to_string(),
        }),
        _ => Ok(()),
    }
}

fn failure_result(job: &Job) -> Value {
    let (code, message) = match &job.error {
        Some(failure) => {
            let code = match (&failure.exc_type, &job.state) {
                (Some(exc_type), _) => vesta::code_of_exception(exc_type),
                (None, State::Revoked) => vesta::REVOKED,
                (None, _) => vesta::GENERIC,
            };
            (code, failure.message.clone())
        }
        None if job.state == State::Revoked => (vesta::REVOKED, "the job was cancelled".into()),
        None => (vesta::GENERIC, String::new()),
    };
    json!({"code": code, "message": message})
}

/// The status answer for `job` in `format` (JSON or XML).
pub fn legacy_response(
    job: &Job,
    service_version: &str,
    format: Format,
) -> Result<Response, ApiError> {
    let (status, result) = legacy_status(job, service_version)?;
    let uuid = job.id.to_string();
    let text = match format {
        Format::Xml => xml::process_status(&status, &uuid, &result),
        _ => pyjson::body(&json!({"result": result, "status": status, "uuid": uuid})),
    };
    let format = if format == Format::Xml {
        Format::Xml
    } else {
        Format::Json
    };
    Ok(text_response(StatusCode::OK, format, text))
}

/// The modern API's job object.
pub fn job_json(job: &Job) -> Value {
    let error = job
        .error
        .as_ref()
        .map(|failure| json!({"message": failure.message, "exc_type": failure.exc_type}));
    json!({
        "id": job.id.to_string(),
        "service": job.service,
        "state": job.state.as_str(),
        "progress": job.progress,
        "meta": job.meta,
        "result": job.result,
        "error": error,
        "submitted_at": rfc3339(job.submitted_at),
        "started_at": job.started_at.map(rfc3339),
        "finished_at": job.finished_at.map(rfc3339),
        "attempts": job.attempts,
        "worker": job.worker,
    })
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobs::Failure;

    fn job(state: State) -> Job {
        let mut job = Job::new("transcoder", json!({}), OffsetDateTime::UNIX_EPOCH);
        job.state = state;
        job
    }

    #[test]
    fn pending_is_null_and_progress_is_the_meta() {
        let (status, result) = legacy_status(&job(State::Pending), "1").unwrap();
        assert_eq!((status.as_str(), result), ("PENDING", Value::Null));
        let mut running = job(State::Progress);
        running.meta = json!({"current": 40, "total": 100, "worker_id_version": "1"});
        let (status, result) = legacy_status(&running, "1").unwrap();
        assert_eq!(status, "PROGRESS");
        assert_eq!(result["current"], 40);
    }

    #[test]
    fn a_worker_of_another_version_is_a_204() {
        let mut running = job(State::Progress);
        running.meta = json!({"current": 40, "worker_id_version": "0.9"});
        let error = legacy_status(&running, "1.0").unwrap_err();
        assert_eq!(error.vesta_code(), 204);
        assert!(
            error.to_string().contains("declares the version 1.0"),
            "{error}"
        );
    }

    #[test]
    fn failures_carry_a_vesta_code_and_the_message() {
        let mut failed = job(State::Failure);
        failed.error = Some(Failure::new("exit status 3: bad input"));
        let (_, result) = legacy_status(&failed, "1").unwrap();
        assert_eq!(
            result,
            json!({"code": 101, "message": "exit status 3: bad input"})
        );
        let mut typed = job(State::Failure);
        typed.error = Some(Failure {
            message: "x".into(),
            exc_type: Some("RuntimeError".into()),
        });
        assert_eq!(legacy_status(&typed, "1").unwrap().1["code"], 306);
        let (status, result) = legacy_status(&job(State::Revoked), "1").unwrap();
        assert_eq!((status.as_str(), &result["code"]), ("REVOKED", &json!(109)));
    }

    #[test]
    fn the_modern_object_has_every_field() {
        let value = job_json(&job(State::Success));
        for field in [
            "id",
            "service",
            "state",
            "progress",
            "meta",
            "result",
            "error",
            "submitted_at",
            "started_at",
            "finished_at",
            "attempts",
            "worker",
        ] {
            assert!(value.get(field).is_some(), "{field}");
        }
        assert_eq!(value["submitted_at"], "1970-01-01T00:00:00Z");
    }
}
