//! `POST /simple_workflow/process` (JWT), `GET /simple_workflow/status?uuid=`, `GET
//! /simple_workflow/cancel?uuid=` (JWT): chains of configured services (the driver is the
//! core's [`jobs::workflow`]).
//!
//! The body is a JSON object:
//!
//! ```json
//! {"steps": ["transcoder", {"service": "diarisation", "misc": {"speakers": 2}}],
//!  "doc_url": "https://host/a.wav",
//!  "misc": {"lang": "fr"}}
//! ```
//!
//! - `steps` (required, at least one): service route keywords, or objects with `service`
//!   and an optional `misc` object for that step only;
//! - every other top-level string (`doc_url`, `ann_doc_id`, `storage_<x>_id`, ...) and the
//!   query's values are request values of every step, as a form of `/<svc>/process`;
//! - `misc` (optional object): the base of every step's `misc`, a step's own `misc` over it.
//!
//! Each step's task message is built and checked now, as `/<svc>/process` would (an unknown
//! service is 400/202, a missing `doc_url` 400/206, a bad URL 400/207), so a workflow that
//! is accepted does not fail later for its input. Step 2 and later get the previous step's
//! result as `misc.previous_result`. The answer is `{"uuid":...}`; the status is the
//! original's (`PROGRESS` with `{"current":..,"total":100,"step":..,"service":..,"job":..}`,
//! the last step's result on `SUCCESS`, the failed step named on `FAILURE`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use jobs::workflow::Step;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::api::JobsApi;
use crate::legacy::{accept, authorize};
use crate::negotiate::{self, Format};
use crate::submission::{build_message, RequestValues, Route, Submission, Target};
use crate::vesta::{text_response, ApiError};
use crate::{pyjson, status};

type Api = State<Arc<JobsApi>>;

fn answer(headers: &HeaderMap, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error.response(negotiate::for_error(accept(headers))))
}

/// One step as the client named it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRequest {
    pub service: String,
    pub misc: Map<String, Value>,
}

/// The parsed body: steps, request values, the shared `misc`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRequest {
    pub steps: Vec<StepRequest>,
    pub values: RequestValues,
    pub misc: Map<String, Value>,
}

fn bad(text: impl Into<String>) -> ApiError {
    ApiError::BadRequest(text.into())
}

/// Reads the body (and the query's values, which come first).
pub fn parse_request(query: Option<&str>, body: &[u8]) -> Result<WorkflowRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "A workflow is a JSON object ({{\"steps\": [\"svc\", ...], \"doc_url\": ...}}): {e}"
        ))
    })?;
    let Value::Object(mut object) = value else {
        return Err(bad("A workflow is a JSON object, not another JSON value"));
    };
    let steps = match object.remove("steps") {
        Some(Value::Array(steps)) if !steps.is_empty() => steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| parse_step(i, step))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("\"steps\" must be a non-empty list of service names")),
        None => {
            return Err(ApiError::MissingParameter {
                method: "POST",
                uri: "/simple_workflow/process".into(),
                parameter: "steps".into(),
            })
        }
    };
    let misc = match object.remove("misc") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(misc)) => misc,
        Some(_) => return Err(bad("\"misc\" must be a JSON object")),
    };
    let mut values = RequestValues::from_query_and_form(query, None);
    for (key, value) in object {
        match value {
            Value::String(text) => values.push(&key, &text),
            _ => {
                return Err(bad(format!(
                    "The workflow field {key:?} must be a string (request values are \
                     strings; put other values in \"misc\")"
                )))
            }
        }
    }
    Ok(WorkflowRequest {
        steps,
        values,
        misc,
    })
}

fn parse_step(index: usize, step: Value) -> Result<StepRequest, ApiError> {
    let invalid = || {
        bad(format!(
            "steps[{index}] must be a service name or {{\"service\": name, \"misc\": {{...}}}}"
        ))
    };
    match step {
        Value::String(service) => Ok(StepRequest {
            service,
            misc: Map::new(),
        }),
        Value::Object(mut object) => {
            let service = match object.remove("service") {
                Some(Value::String(service)) => service,
                _ => return Err(invalid()),
            };
            let misc = match object.remove("misc") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(misc)) => misc,
                Some(_) => return Err(invalid()),
            };
            if let Some(key) = object.keys().next() {
                return Err(bad(format!("steps[{index}] has an unknown key {key:?}")));
            }
            Ok(StepRequest { service, misc })
        }
        _ => Err(invalid()),
    }
}

/// Each step's task message, checked as `/<svc>/process` checks a submission.
fn build_steps(api: &JobsApi, request: &WorkflowRequest) -> Result<Vec<Step>, ApiError> {
    let now = OffsetDateTime::now_utc();
    request
        .steps
        .iter()
        .map(|step| {
            let entry = api
                .service(&step.service)
                .ok_or_else(|| ApiError::UnknownService(step.service.clone()))?;
            let description = &entry.description;
            let target = Target {
                celery_task_name: &description.celery_task_name,
                noparams: description.noparams,
                storage: &api.storage,
            };
            let mut misc = request.misc.clone();
            misc.extend(step.misc.clone());
            let submission = Submission {
                route: Route::Process,
                storage_doc_id: None,
                values: &request.values,
                body: Some(misc),
            };
            let message = build_message(&target, submission, now)?;
            Ok(Step {
                service: step.service.clone(),
                message,
            })
        })
        .collect()
}

/// `POST /simple_workflow/process`.
pub(crate) async fn process(
    State(api): Api,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        authorize(&api, &headers)?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return Err(bad(format!(
                "A workflow is sent as Content-Type: application/json, not {content_type:?}"
            )));
        }
        let request = parse_request(query.as_deref(), &body)?;
        let steps = build_steps(&api, &request)?;
        let kept = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        let job = api.jobs.submit_workflow(steps, kept).await?;
        let body = pyjson::body(&json!({"uuid": job.id.to_string()}));
        Ok(text_response(StatusCode::OK, Format::Json, body))
    }
    .await;
    answer(&headers, result)
}

/// `GET /simple_workflow/status?uuid=`.
pub(crate) async fn status(
    State(api): Api,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = status_or_cancel(&api, query, &headers, false).await;
    answer(&headers, result)
}

/// `GET /simple_workflow/cancel?uuid=`.
pub(crate) async fn cancel(
    State(api): Api,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = status_or_cancel(&api, query, &headers, true).await;
    answer(&headers, result)
}

async fn status_or_cancel(
    api: &JobsApi,
    query: Option<String>,
    headers: &HeaderMap,
    cancel: bool,
) -> Result<Response, ApiError> {
    if cancel {
        authorize(api, headers)?;
    }
    let values = RequestValues::from_query_and_form(query.as_deref(), None);
    let task = if cancel { "/cancel" } else { "/status" };
    let uuid = values
        .get("uuid")
        .ok_or_else(|| ApiError::MissingParameter {
            method: "GET",
            uri: task.to_string(),
            parameter: "uuid".into(),
        })?;
    let unknown = || ApiError::UnknownUuid(uuid.to_string());
    let id: jobs::JobId = uuid.parse().map_err(|_| unknown())?;
    let job = if cancel {
        api.jobs.cancel_workflow(&id).await?
    } else {
        api.jobs.workflow(&id).await?
    };
    let job = job.ok_or_else(unknown)?;
    status::legacy_response(&job, "", negotiate::for_status(accept(headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_values_and_misc_are_read_from_the_body() {
        let body = br#"{"steps": ["a", {"service": "b", "misc": {"k": 2}}],
                        "doc_url": "http://h/x", "misc": {"k": 1, "lang": "fr"}}"#;
        let request = parse_request(Some("doc_url=http://q/y&extra=1"), body).unwrap();
        assert_eq!(request.steps.len(), 2);
        assert_eq!(request.steps[1].service, "b");
        assert_eq!(request.steps[1].misc["k"], 2);
        assert_eq!(
            request.values.get("doc_url"),
            Some("http://q/y"),
            "query first"
        );
        assert_eq!(request.values.get("extra"), Some("1"));
        assert_eq!(request.misc["lang"], "fr");
    }

    #[test]
    fn bad_workflows_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"[1]", "JSON object"),
            (b"{", "JSON object"),
            (br#"{"steps": []}"#, "non-empty"),
            (br#"{"steps": [3]}"#, "steps[0]"),
            (br#"{"steps": [{"service": "a", "x": 1}]}"#, "unknown key"),
            (br#"{"steps": ["a"], "misc": 3}"#, "misc"),
            (br#"{"steps": ["a"], "n": 3}"#, "\"n\""),
        ];
        for (body, expected) in cases {
            let error = parse_request(None, body).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        let missing = parse_request(None, b"{}").unwrap_err();
        assert_eq!(missing.vesta_code(), 206, "{missing}");
    }
}
