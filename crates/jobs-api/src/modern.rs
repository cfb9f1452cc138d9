//! The modern job API beside the original (spec section 2):
//!
//! - `POST /jobs/<svc>` (JWT): a JSON object body becomes `misc` (`doc_url`, `ann_doc_id`,
//!   `storage_*_id` and `*_url` may be fields of it, as form fields were); `202`,
//!   `Location: /jobs/<id>` and the job;
//! - `GET /jobs/<id>`: the job; `DELETE /jobs/<id>` (JWT): cancel, then the job;
//! - `GET /jobs/<id>/events`: server-sent events, one per change (`id:` is the record's
//!   version, `event:` the state, `data:` the job), ending after a final state; a client that
//!   reconnects with `Last-Event-ID` gets every change after that version;
//! - `GET /jobs?service=&state=&limit=&after=`: newest first, `next` is the `after` of the
//!   next page;
//! - `GET /jobs/capacity`: what each service needs (spec section 4).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::api::JobsApi;
use crate::legacy::{accept, authorize, submit_message};
use crate::negotiate;
use crate::status::job_json;
use crate::submission::{RequestValues, Route, Submission};
use crate::vesta::{text_response, ApiError};
use crate::{pyjson, Format};

type Api = State<Arc<JobsApi>>;

/// The `/jobs` routes.
pub(crate) fn router() -> Router<Arc<JobsApi>> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/capacity", get(capacity))
        .route("/jobs/{key}", get(show).post(submit).delete(cancel))
        .route("/jobs/{id}/events", get(events))
}

fn answer(headers: &HeaderMap, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error.response(negotiate::for_error(accept(headers))))
}

fn json_answer(status: StatusCode, value: &Value) -> Response {
    text_response(status, Format::Json, pyjson::body(value))
}

fn parse_id(text: &str) -> Result<jobs::JobId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a job id (a UUID)")))
}

fn not_found(id: &jobs::JobId) -> ApiError {
    ApiError::NotFound(format!("No job has the id {id}"))
}

async fn submit(
    State(api): Api,
    Path(service): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        authorize(&api, &headers)?;
        let entry = api
            .service(&service)
            .ok_or_else(|| ApiError::UnknownService(service.clone()))?;
        let body = json_object(&body)?;
        let mut values = RequestValues::from_query_and_form(query.as_deref(), None);
        values.extend(
            body.iter()
                .filter_map(|(key, value)| value.as_str().map(|text| (key.as_str(), text))),
        );
        let submission = Submission {
            route: Route::Jobs,
            storage_doc_id: None,
            values: &values,
            body: Some(body),
        };
        let job = submit_message(&api, entry, submission).await?;
        let mut response = json_answer(StatusCode::ACCEPTED, &job_json(&job));
        if let Ok(location) = HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response)
    }
    .await;
    answer(&headers, result)
}

/// The body as a JSON object (empty: `{}`).
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest(
            "The body must be a JSON object".into(),
        )),
        Err(error) => Err(ApiError::BadRequest(format!(
            "The body is not valid JSON: {error}"
        ))),
    }
}

async fn show(State(api): Api, Path(key): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        let id = parse_id(&key)?;
        let job = api.jobs.job(&id).await?.ok_or_else(|| not_found(&id))?;
        Ok(json_answer(StatusCode::OK, &job_json(&job)))
    }
    .await;
    answer(&headers, result)
}

async fn cancel(State(api): Api, Path(key): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        authorize(&api, &headers)?;
        let id = parse_id(&key)?;
        let job = api.jobs.cancel(&id).await?.ok_or_else(|| not_found(&id))?;
        Ok(json_answer(StatusCode::OK, &job_json(&job)))
    }
    .await;
    answer(&headers, result)
}

async fn list(State(api): Api, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let result = async {
        let filter = list_filter(query.as_deref())?;
        let jobs = api.jobs.list(&filter).await?;
        let next = if jobs.len() == filter.page_size() {
            jobs.last().map(|job| job.id.to_string())
        } else {
            None
        };
        let items: Vec<Value> = jobs.iter().map(job_json).collect();
        Ok(json_answer(
            StatusCode::OK,
            &json!({"jobs": items, "next": next}),
        ))
    }
    .await;
    answer(&headers, result)
}

fn list_filter(query: Option<&str>) -> Result<jobs::ListFilter, ApiError> {
    let values = RequestValues::from_query_and_form(query, None);
    let mut filter = jobs::ListFilter {
        service: values.get("service").map(str::to_string),
        ..jobs::ListFilter::default()
    };
    if let Some(state) = values.get("state") {
        filter.state = Some(
            state
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("{state:?} is not a state")))?,
        );
    }
    if let Some(limit) = values.get("limit") {
        filter.limit = limit
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("limit {limit:?} is not a number")))?;
    }
    if let Some(after) = values.get("after") {
        filter.after = Some(parse_id(after)?);
    }
    Ok(filter)
}

async fn events(State(api): Api, Path(key): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        let id = parse_id(&key)?;
        api.jobs.job(&id).await?.ok_or_else(|| not_found(&id))?;
        let after = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let stream = api.jobs.changes(&id, after).map(|change| {
            let event = match change {
                Ok(job) => Event::default()
                    .id(job.version.to_string())
                    .event(job.state.as_str())
                    .data(pyjson::compact(&job_json(&job))),
                // The stream ends after this; the client reconnects with Last-Event-ID.
                Err(error) => Event::default().event("error").data(error.to_string()),
            };
            Ok::<Event, Infallible>(event)
        });
        Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response())
    }
    .await;
    answer(&headers, result)
}

async fn capacity(State(api): Api) -> Response {
    let services = serde_json::to_value(api.jobs.capacity()).unwrap_or(Value::Null);
    json_answer(StatusCode::OK, &json!({"services": services}))
}
