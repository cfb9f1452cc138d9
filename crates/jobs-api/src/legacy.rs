//! Handlers of the original ServiceGateway routes (spec section 1). Each handler reads the
//! service name from the path's first segment (routes exist only for configured services),
//! checks the token where the original did (submit and cancel), and answers in the format the
//! client prefers ([`crate::negotiate`]); failures go through [`ApiError::response`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::api::{JobsApi, ServiceEntry};
use crate::canarie::{info_response, stats_response};
use crate::multipart::{self, Part};
use crate::negotiate::{self, Format};
use crate::submission::{build_message, RequestValues, Route, Submission, Target};
use crate::temporary::DEFAULT_CONTENT_TYPE;
use crate::uploads::Origin;
use crate::vesta::{text_response, ApiError};
use crate::{pyjson, status};

type Api = State<Arc<JobsApi>>;

/// The `Accept` header.
pub(crate) fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

/// The service named by the path's first segment.
fn service_name(uri: &Uri) -> &str {
    uri.path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
}

fn entry<'a>(api: &'a JobsApi, uri: &Uri) -> Result<&'a ServiceEntry, ApiError> {
    let name = service_name(uri);
    api.service(name)
        .ok_or_else(|| ApiError::UnknownService(name.to_string()))
}

/// Answers `result`, or its error in the format the client prefers for errors.
fn answer(headers: &HeaderMap, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error.response(negotiate::for_error(accept(headers))))
}

pub(crate) fn authorize(api: &JobsApi, headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    api.verifier.check(value).map_err(ApiError::Unauthorized)
}

async fn count(api: &JobsApi, service: &str) {
    if let Err(error) = api.jobs.count_invocation(service).await {
        tracing::warn!(service, error = %error, "counting an invocation failed");
    }
}

/// `POST /<svc>/annotate[/<storage_doc_id>]`.
pub(crate) async fn annotate(
    State(api): Api,
    origin: Origin,
    uri: Uri,
    stored: Option<Path<String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = stored.as_ref().map(|Path(id)| id.as_str());
    let result = submit(
        &api,
        &origin,
        &uri,
        Route::Annotate,
        id,
        query,
        &headers,
        body,
    )
    .await;
    answer(&headers, result)
}

/// `POST /<svc>/process[/<storage_doc_id>]`.
pub(crate) async fn process(
    State(api): Api,
    origin: Origin,
    uri: Uri,
    stored: Option<Path<String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = stored.as_ref().map(|Path(id)| id.as_str());
    let result = submit(
        &api,
        &origin,
        &uri,
        Route::Process,
        id,
        query,
        &headers,
        body,
    )
    .await;
    answer(&headers, result)
}

/// What the body of a submission holds.
enum Body {
    Form(Bytes),
    Multipart(Vec<Part>),
    Json(Map<String, Value>),
    None,
}

async fn read_body(headers: &HeaderMap, body: Bytes, route: Route) -> Result<Body, ApiError> {
    let raw_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let content_type = raw_type.to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Ok(Body::Form(body));
    }
    if multipart::is_multipart(&content_type) {
        return Ok(Body::Multipart(multipart::parse(raw_type, body).await?));
    }
    if content_type.starts_with("application/json") && route != Route::Annotate {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body::None);
        }
        return match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(Body::Json(map)),
            Ok(_) => Err(ApiError::BadRequest(
                "The JSON body must be an object (it becomes the job's misc)".into(),
            )),
            Err(error) => Err(ApiError::BadRequest(format!(
                "The request body is not valid JSON: {error}"
            ))),
        };
    }
    Ok(Body::None)
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    api: &JobsApi,
    origin: &Origin,
    uri: &Uri,
    route: Route,
    storage_doc_id: Option<&str>,
    query: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(api, headers)?;
    let entry = entry(api, uri)?;
    let (values, json_body) = match read_body(headers, body, route).await? {
        Body::Multipart(parts) => (
            multipart_values(api, origin, query.as_deref(), parts).await?,
            None,
        ),
        Body::Form(form) => (
            RequestValues::from_query_and_form(query.as_deref(), Some(&form)),
            None,
        ),
        Body::Json(map) => (
            RequestValues::from_query_and_form(query.as_deref(), None),
            Some(map),
        ),
        Body::None => (
            RequestValues::from_query_and_form(query.as_deref(), None),
            None,
        ),
    };
    let submission = Submission {
        route,
        storage_doc_id,
        values: &values,
        body: json_body,
    };
    let job = submit_message(api, entry, submission).await?;
    let body = pyjson::body(&json!({"uuid": job.id.to_string()}));
    Ok(text_response(StatusCode::OK, Format::Json, body))
}

/// Request values of a multipart submission: the query's, then each part's in order (first
/// value per key). A file part is stored as a temporary file and its URL given as
/// `<part name>_url` (so `-F doc=@a.wav` is `doc_url`).
async fn multipart_values(
    api: &JobsApi,
    origin: &Origin,
    query: Option<&str>,
    parts: Vec<Part>,
) -> Result<RequestValues, ApiError> {
    let mut values = RequestValues::from_query_and_form(query, None);
    for part in parts {
        match part {
            Part::Field { name, value } => values.push(&name, &value),
            Part::File {
                name,
                filename,
                content_type,
                data,
            } => {
                let key = format!("{name}_url");
                if values.get(&key).is_some() {
                    continue;
                }
                let content_type = content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE);
                let stored = api
                    .temporary
                    .store(None, data, content_type, Some(filename))
                    .await?;
                values.push(&key, &origin.file_url(&stored));
            }
        }
    }
    Ok(values)
}

/// Builds the task message and submits it (durable before this returns).
pub(crate) async fn submit_message(
    api: &JobsApi,
    entry: &ServiceEntry,
    submission: Submission<'_>,
) -> Result<jobs::Job, ApiError> {
    let description = &entry.description;
    let target = Target {
        celery_task_name: &description.celery_task_name,
        noparams: description.noparams,
        storage: &api.storage,
    };
    let message = build_message(&target, submission, OffsetDateTime::now_utc())?;
    let job = api.jobs.submit(&description.route, message).await?;
    count(api, &description.route).await;
    Ok(job)
}

pub(crate) async fn status(
    State(api): Api,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = status_or_cancel(&api, &uri, query, &headers, false).await;
    answer(&headers, result)
}

pub(crate) async fn cancel(
    State(api): Api,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = status_or_cancel(&api, &uri, query, &headers, true).await;
    answer(&headers, result)
}

async fn status_or_cancel(
    api: &JobsApi,
    uri: &Uri,
    query: Option<String>,
    headers: &HeaderMap,
    cancel: bool,
) -> Result<Response, ApiError> {
    if cancel {
        authorize(api, headers)?;
    }
    let entry = entry(api, uri)?;
    let service = entry.description.route.as_str();
    let values = RequestValues::from_query_and_form(query.as_deref(), None);
    let task = if cancel { "/cancel" } else { "/status" };
    let uuid = values
        .get("uuid")
        .ok_or_else(|| ApiError::MissingParameter {
            method: "GET",
            uri: task.to_string(),
            parameter: "uuid".into(),
        })?;
    count(api, service).await;
    // The original looked the uuid up among the service's requests: a malformed one, or
    // another service's, is as unknown as one never issued.
    let unknown = || ApiError::UnknownUuid(uuid.to_string());
    let id: jobs::JobId = uuid.parse().map_err(|_| unknown())?;
    let job = match api.jobs.job(&id).await? {
        Some(job) if job.service == service => job,
        _ => return Err(unknown()),
    };
    let job = if cancel {
        api.jobs.cancel(&id).await?.ok_or_else(unknown)?
    } else {
        job
    };
    let format = negotiate::for_status(accept(headers));
    status::legacy_response(&job, &entry.description.version, format)
}

pub(crate) async fn info(State(api): Api, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let entry = entry(&api, &uri)?;
        let workers = api.jobs.active_workers(&entry.description.route).await?;
        let info = entry.description.info(&api.api_version, workers);
        Ok(info_response(&info, negotiate::for_page(accept(&headers))))
    }
    .await;
    answer(&headers, result)
}

pub(crate) async fn stats(State(api): Api, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let entry = entry(&api, &uri)?;
        let invocations = api.jobs.invocations(Some(&entry.description.route)).await?;
        let format = negotiate::for_page(accept(&headers));
        Ok(stats_response(
            invocations.invocations,
            invocations.last_reset,
            format,
        ))
    }
    .await;
    answer(&headers, result)
}

pub(crate) async fn global_stats(State(api): Api, headers: HeaderMap) -> Response {
    let result = async {
        let invocations = api.jobs.invocations(None).await?;
        let format = negotiate::for_page(accept(&headers));
        Ok(stats_response(
            invocations.invocations,
            invocations.last_reset,
            format,
        ))
    }
    .await;
    answer(&headers, result)
}

/// `/info`: every service as the original's config described it, and the API version.
pub(crate) async fn global_info(State(api): Api) -> Response {
    let services: Map<String, Value> = api
        .services
        .iter()
        .map(|(name, entry)| (name.clone(), entry.description.summary()))
        .collect();
    let info = json!({"services": services, "version": api.api_version});
    text_response(StatusCode::OK, Format::Json, pyjson::body(&info))
}

pub(crate) async fn page(State(api): Api, uri: Uri, headers: HeaderMap) -> Response {
    let name = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    answer(&headers, page_answer(&api, &uri, &name))
}

pub(crate) async fn home(State(api): Api, uri: Uri, headers: HeaderMap) -> Response {
    answer(&headers, page_answer(&api, &uri, "home"))
}

fn page_answer(api: &JobsApi, uri: &Uri, page: &str) -> Result<Response, ApiError> {
    let entry = entry(api, uri)?;
    entry
        .pages
        .get(page)
        .and_then(|answer| answer.response())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "The service {} has no {page} page",
                entry.description.route
            ))
        })
        .map(IntoResponse::into_response)
}

/// A route of the original for a service that is not configured (submit and cancel check
/// the token first, as the original did).
pub(crate) async fn unknown_service_submit(
    State(api): Api,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = authorize(&api, &headers)
        .and_then(|()| Err(ApiError::UnknownService(service_name(&uri).to_string())));
    answer(&headers, result)
}

/// A route of the original for a service that is not configured.
pub(crate) async fn unknown_service(uri: Uri, headers: HeaderMap) -> Response {
    let error = ApiError::UnknownService(service_name(&uri).to_string());
    error.response(negotiate::for_error(accept(&headers)))
}
