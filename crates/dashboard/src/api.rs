//! The routes: the page and its assets, the JSON API (Flower's shapes where Flower has the
//! same thing: `/api/tasks` keyed by id, `/api/task/info/<id>`, `/api/task/revoke/<id>`,
//! `/api/workers`), and the event stream.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use jobs::{Job, JobId, ListFilter, State as JobState};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::sources::WorkerRow;
use crate::{assets, Dashboard};

/// The log's tail shown in a job's detail.
const LOG_TAIL: usize = 8 * 1024;
/// Jobs in one answer of `/api/tasks` at most (`limit` is cut to this).
pub const MAX_TASKS: usize = 1000;

/// Every route of the dashboard, with full paths.
pub fn router(dashboard: Dashboard) -> Router {
    if !dashboard.inner.config.enabled {
        return Router::new();
    }
    Router::new()
        .route("/dashboard", get(assets::page))
        .route("/dashboard/", get(assets::page))
        .route("/dashboard/assets/{name}", get(assets::asset))
        .route("/dashboard/events", get(events))
        .route("/dashboard/api/overview", get(overview))
        .route("/dashboard/api/jobs", get(jobs_summary))
        .route("/dashboard/api/tasks", get(tasks))
        .route("/dashboard/api/task/info/{id}", get(task_info))
        .route("/dashboard/api/task/revoke/{id}", post(revoke))
        .route("/dashboard/api/workers", get(workers))
        .route("/dashboard/api/manager", get(manager))
        .route("/dashboard/api/capacity", get(capacity))
        .with_state(dashboard)
}

type Dash = State<Dashboard>;

fn json_answer(status: StatusCode, value: &Value) -> Response {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = service::json_response(status, Bytes::from(body));
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

fn error_answer(status: StatusCode, message: &str) -> Response {
    service::error_response(status, message)
}

async fn overview(State(dashboard): Dash) -> Response {
    json_answer(StatusCode::OK, &overview_json(&dashboard))
}

/// Version, uptime, listeners, and requests per series over the last minute.
pub(crate) fn overview_json(dashboard: &Dashboard) -> Value {
    let inner = &dashboard.inner;
    let series = inner
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .summaries();
    json!({
        "version": inner.sources.version,
        "uptime_seconds": inner.started.elapsed().as_secs(),
        "listeners": inner.sources.listeners,
        "services": series,
        "jobs": inner.sources.jobs.is_some(),
        "manager": inner.sources.manager.is_some(),
        "cancel_needs_token": inner.sources.jobs.as_ref().is_some_and(|j| j.needs_token()),
        "pages": inner.hub.pages(),
    })
}

async fn jobs_summary(State(dashboard): Dash) -> Response {
    let workers = all_workers(&dashboard).await;
    json_answer(StatusCode::OK, &jobs_summary_json(&dashboard, &workers))
}

/// Per job service: depth, workers busy/idle/lost, arrival and completion rates, waits.
pub(crate) fn jobs_summary_json(dashboard: &Dashboard, workers: &[WorkerRow]) -> Value {
    let Some(jobs) = &dashboard.inner.sources.jobs else {
        return json!([]);
    };
    let completion = dashboard
        .inner
        .capacity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .latest_completion_rates();
    let services: Vec<Value> = jobs
        .capacity()
        .into_iter()
        .map(|c| {
            let lost = workers
                .iter()
                .filter(|w| w.status == "lost" && w.services.contains(&c.service))
                .count();
            json!({
                "service": c.service,
                "queue_depth": c.queue_depth,
                "workers_busy": c.workers_busy,
                "workers_idle": c.workers_idle,
                "workers_lost": lost,
                "workers_needed": c.workers_needed,
                "arrival_rate": c.arrival_rate_1m,
                "completion_rate": completion.get(&c.service).copied().unwrap_or(0.0),
                "wait_seconds_mean": c.wait_seconds_mean,
                "run_seconds_mean": c.run_seconds_mean,
            })
        })
        .collect();
    Value::Array(services)
}

/// `?service=&state=&limit=&after=` (Flower's `taskname` and `workername`-less forms too).
fn list_filter(query: Option<&str>) -> Result<ListFilter, String> {
    let mut filter = ListFilter {
        limit: 100,
        ..ListFilter::default()
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "service" | "taskname" => filter.service = Some(value.into_owned()),
            "state" => {
                let state: JobState = value
                    .parse()
                    .map_err(|_| format!("unknown state {value}"))?;
                filter.state = Some(state);
            }
            "limit" => {
                let limit: usize = value
                    .parse()
                    .map_err(|_| format!("limit must be a number, not {value}"))?;
                filter.limit = limit.clamp(1, MAX_TASKS);
            }
            "after" => {
                let id: JobId = value.parse().map_err(|_| format!("bad job id {value}"))?;
                filter.after = Some(id);
            }
            _ => {}
        }
    }
    Ok(filter)
}

async fn tasks(State(dashboard): Dash, RawQuery(query): RawQuery) -> Response {
    let Some(jobs) = dashboard.inner.sources.jobs.clone() else {
        return json_answer(StatusCode::OK, &json!({}));
    };
    let filter = match list_filter(query.as_deref()) {
        Ok(filter) => filter,
        Err(problem) => return error_answer(StatusCode::BAD_REQUEST, &problem),
    };
    match jobs.list(filter).await {
        Ok(page) => {
            let map: Map<String, Value> = page
                .iter()
                .map(|job| (job.id.to_string(), task_row(job)))
                .collect();
            json_answer(StatusCode::OK, &Value::Object(map))
        }
        Err(error) => error_answer(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
    }
}

fn unix(at: OffsetDateTime) -> f64 {
    at.unix_timestamp_nanos() as f64 / 1e9
}

/// A job as a row of Flower's task list (times in seconds since the epoch).
pub(crate) fn task_row(job: &Job) -> Value {
    let finished = job.finished_at.map(unix);
    let at_state = |state: JobState| finished.filter(|_| job.state == state);
    let runtime = match (job.started_at, job.finished_at) {
        (Some(start), Some(end)) => Some((end - start).as_seconds_f64()),
        _ => None,
    };
    json!({
        "uuid": job.id.to_string(),
        "name": job.service,
        "state": job.state.as_str(),
        "progress": job.progress,
        "received": unix(job.submitted_at),
        "started": job.started_at.map(unix),
        "succeeded": at_state(JobState::Success),
        "failed": at_state(JobState::Failure),
        "revoked": at_state(JobState::Revoked),
        "timestamp": finished.or(job.started_at.map(unix)).unwrap_or(unix(job.submitted_at)),
        "runtime": runtime,
        "worker": job.worker,
        "attempts": job.attempts,
        "retries": job.attempts.saturating_sub(1),
    })
}

/// The row with everything else: meta, result, error, message and the log's tail.
fn task_detail(job: &Job) -> Value {
    let mut row = task_row(job);
    let tail_from = job.log.len().saturating_sub(LOG_TAIL);
    let tail_from = (tail_from..=job.log.len())
        .find(|i| job.log.is_char_boundary(*i))
        .unwrap_or(job.log.len());
    if let Value::Object(map) = &mut row {
        map.insert("meta".into(), job.meta.clone());
        map.insert("result".into(), job.result.clone());
        map.insert(
            "exception".into(),
            json!(job.error.as_ref().map(|e| &e.message)),
        );
        map.insert(
            "exc_type".into(),
            json!(job.error.as_ref().and_then(|e| e.exc_type.as_ref())),
        );
        map.insert("args".into(), job.message.clone());
        map.insert("log".into(), json!(&job.log[tail_from..]));
    }
    row
}

/// The id in the path, or the 400 that says it is not one.
fn parse_id(text: &str) -> Result<JobId, Box<Response>> {
    text.parse().map_err(|_| {
        Box::new(error_answer(
            StatusCode::BAD_REQUEST,
            &format!("bad job id {text}"),
        ))
    })
}

async fn task_info(State(dashboard): Dash, Path(id): Path<String>) -> Response {
    let Some(jobs) = dashboard.inner.sources.jobs.clone() else {
        return error_answer(StatusCode::NOT_FOUND, "this process runs no job queue");
    };
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match jobs.job(id).await {
        Ok(Some(job)) => json_answer(StatusCode::OK, &task_detail(&job)),
        Ok(None) => error_answer(StatusCode::NOT_FOUND, &format!("no job {id}")),
        Err(error) => error_answer(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
    }
}

/// Flower's `POST /api/task/revoke/<id>`; needs the job API's token unless bypass is on.
async fn revoke(State(dashboard): Dash, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(jobs) = dashboard.inner.sources.jobs.clone() else {
        return error_answer(StatusCode::NOT_FOUND, "this process runs no job queue");
    };
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if let Err(problem) = jobs.authorize(authorization) {
        return error_answer(StatusCode::UNAUTHORIZED, &problem);
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match jobs.cancel(id).await {
        Ok(Some(job)) => json_answer(
            StatusCode::OK,
            &json!({"message": format!("Revoked '{id}'"), "task": task_row(&job)}),
        ),
        Ok(None) => error_answer(StatusCode::NOT_FOUND, &format!("no job {id}")),
        Err(error) => error_answer(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
    }
}

/// Every worker of every kind.
pub(crate) async fn all_workers(dashboard: &Dashboard) -> Vec<WorkerRow> {
    let sources = &dashboard.inner.sources.workers;
    let lists = futures::future::join_all(sources.iter().map(|s| s.workers())).await;
    lists.into_iter().flatten().collect()
}

async fn workers(State(dashboard): Dash) -> Response {
    let rows = all_workers(&dashboard).await;
    let map: BTreeMap<String, &WorkerRow> = rows.iter().map(|w| (w.name.clone(), w)).collect();
    json_answer(StatusCode::OK, &json!(map))
}

pub(crate) fn manager_json(dashboard: &Dashboard) -> Value {
    match &dashboard.inner.sources.manager {
        Some(manager) => json!(manager.snapshot()),
        None => Value::Null,
    }
}

async fn manager(State(dashboard): Dash) -> Response {
    json_answer(StatusCode::OK, &manager_json(&dashboard))
}

pub(crate) fn capacity_json(dashboard: &Dashboard) -> Value {
    let now = dashboard
        .inner
        .sources
        .jobs
        .as_ref()
        .map(|j| j.capacity())
        .unwrap_or_default();
    let history = dashboard
        .inner
        .capacity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .to_json();
    json!({"now": now, "history": history})
}

async fn capacity(State(dashboard): Dash) -> Response {
    json_answer(StatusCode::OK, &capacity_json(&dashboard))
}

async fn events(State(dashboard): Dash, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let stream = dashboard.inner.hub.stream(last);
    let body = axum::body::Body::from_stream(stream);
    (
        [
            (http::header::CONTENT_TYPE, "text/event-stream"),
            (http::header::CACHE_CONTROL, "no-store"),
            (
                http::header::HeaderName::from_static("x-accel-buffering"),
                "no",
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_takes_flower_and_portico_names_and_cuts_the_limit() {
        let filter = list_filter(Some("taskname=echo&state=SUCCESS&limit=99999")).unwrap();
        assert_eq!(filter.service.as_deref(), Some("echo"));
        assert_eq!(filter.state, Some(JobState::Success));
        assert_eq!(filter.limit, MAX_TASKS);
        assert!(list_filter(Some("limit=x")).is_err());
        assert!(list_filter(Some("after=nope")).is_err());
        assert_eq!(list_filter(None).unwrap().limit, 100);
    }
}
