//! The worker pull API that `portico worker --gateway` uses (embedded broker only). Every
//! route needs a token, as submissions do.
//!
//! - `POST /jobs/workers/lease` `{"service","worker","wait"}` (wait in seconds, at most
//!   [`MAX_WAIT`]): a long poll; `200 {"lease","expires_in_ms","job"}` (the record, task
//!   message included) or `204` when no job came within `wait`;
//! - `POST /jobs/leases/<lease>/renew`: `{"status":"held"|"cancelled"|"lost"}`; a worker
//!   stops the job on anything but `held`;
//! - `POST /jobs/leases/<lease>/progress` `{"percent","meta"}`: `204`;
//! - `POST /jobs/leases/<lease>/finish` `{"outcome":{"success":v}|{"failure":"..."}|
//!   {"retry":"..."},"log":"..."}`: `204` once durable; `404` when the lease is gone (the
//!   job runs elsewhere).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use jobs::{LeaseId, LeaseStatus, Outcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::JobsApi;
use crate::legacy::{accept, authorize};
use crate::vesta::{text_response, ApiError};
use crate::{negotiate, pyjson, Format};

/// The longest long poll a worker may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

type Api = State<Arc<JobsApi>>;

/// A lease request.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub service: String,
    pub worker: String,
    /// Seconds to wait for a job.
    pub wait: u64,
}

/// A granted lease.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub lease: String,
    pub expires_in_ms: u64,
    pub job: jobs::Job,
}

/// A progress report.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProgressReport {
    pub percent: u8,
    #[serde(default)]
    pub meta: Value,
}

/// The end of a run.
#[derive(Debug, Serialize, Deserialize)]
pub struct FinishReport {
    pub outcome: Outcome,
    #[serde(default)]
    pub log: String,
}

/// The pull routes.
pub(crate) fn router() -> Router<Arc<JobsApi>> {
    Router::new()
        .route("/jobs/workers/lease", post(lease))
        .route("/jobs/leases/{lease}/renew", post(renew))
        .route("/jobs/leases/{lease}/progress", post(progress))
        .route("/jobs/leases/{lease}/finish", post(finish))
}

fn answer(headers: &HeaderMap, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error.response(negotiate::for_error(accept(headers))))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::BadRequest(format!("The body is not the expected JSON: {error}"))
    })
}

fn lease_id(text: &str) -> Result<LeaseId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a lease id")))
}

fn no_content() -> Response {
    text_response(StatusCode::NO_CONTENT, Format::Json, String::new())
}

async fn lease(State(api): Api, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        authorize(&api, &headers)?;
        let request: LeaseRequest = parse(&body)?;
        let wait = Duration::from_secs(request.wait).min(MAX_WAIT);
        let lease = api
            .jobs
            .lease(&request.service, &request.worker, wait)
            .await?;
        let Some(lease) = lease else {
            return Ok(no_content());
        };
        let grant = LeaseGrant {
            lease: lease.id.to_string(),
            expires_in_ms: u64::try_from(lease.expires_in.as_millis()).unwrap_or(u64::MAX),
            job: lease.job,
        };
        let body = serde_json::to_string(&grant)
            .map_err(|error| ApiError::Internal(format!("writing the lease: {error}")))?;
        Ok(text_response(StatusCode::OK, Format::Json, body))
    }
    .await;
    answer(&headers, result)
}

async fn renew(State(api): Api, Path(lease): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        authorize(&api, &headers)?;
        let status = match api.jobs.renew(&lease_id(&lease)?).await {
            Ok(LeaseStatus::Held) => "held",
            Ok(LeaseStatus::Cancelled) => "cancelled",
            Ok(LeaseStatus::Lost) | Err(jobs::Error::UnknownLease(_)) => "lost",
            Err(error) => return Err(error.into()),
        };
        let body = pyjson::body(&json!({"status": status}));
        Ok(text_response(StatusCode::OK, Format::Json, body))
    }
    .await;
    answer(&headers, result)
}

async fn progress(
    State(api): Api,
    Path(lease): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        authorize(&api, &headers)?;
        let report: ProgressReport = parse(&body)?;
        let percent = report.percent.min(100);
        api.jobs
            .progress(&lease_id(&lease)?, percent, report.meta)
            .await?;
        Ok(no_content())
    }
    .await;
    answer(&headers, result)
}

async fn finish(
    State(api): Api,
    Path(lease): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        authorize(&api, &headers)?;
        let report: FinishReport = parse(&body)?;
        api.jobs
            .finish(&lease_id(&lease)?, report.outcome, report.log)
            .await?;
        Ok(no_content())
    }
    .await;
    answer(&headers, result)
}
