//! The running service: `GET /regionInfo` over the current region data, and reloads that swap
//! the data atomically (a request sees either the old data or the new, never a mix, and never
//! waits for a reload).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::{header, HeaderValue, Method, StatusCode};

use crate::client;
use crate::data::{BuildOptions, DataError, RegionData};
use crate::net::Net;
use crate::Config;

/// The one path of this service.
pub const PATH: &str = "/regionInfo";
/// The `Allow` header of every answer that is not a GET or HEAD.
pub const ALLOW: &str = "GET, HEAD, OPTIONS";
/// Body of the 404 (9 bytes, no newline), as the original.
pub const NOT_FOUND: &str = "Not found";

/// Errors opening or reloading the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("invalid [region] config:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    #[error("region data reload task failed: {0}")]
    Task(String),
}

/// What a successful load holds (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Regions loaded.
    pub regions: usize,
    /// IPv4 client prefixes.
    pub v4_prefixes: usize,
    /// IPv6 client prefixes.
    pub v6_prefixes: usize,
    /// Problems skipped (malformed ranges, unknown keys).
    pub warnings: usize,
}

struct Inner {
    data: ArcSwap<RegionData>,
    path: Option<PathBuf>,
    options: BuildOptions,
    trusted: Vec<Net<IpAddr>>,
    log_requests: bool,
}

/// The region service. Cheap to clone: clones share the data.
#[derive(Clone)]
pub struct RegionService {
    inner: Arc<Inner>,
}

impl RegionService {
    /// Validates the config and loads the region data; every problem is in the error. Warnings
    /// (malformed client ranges) are logged and skipped.
    pub fn open(config: &Config) -> Result<Self, Error> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        let options = BuildOptions {
            ipv6_only_server_ip_none: config.ipv6_only_server_ip_none,
        };
        let start = std::time::Instant::now();
        let data = match &config.data {
            Some(path) => RegionData::load(path, options)?,
            None => RegionData::default(),
        };
        log_loaded(config.data.as_deref(), &data, start, "region data loaded");
        Ok(RegionService {
            inner: Arc::new(Inner {
                data: ArcSwap::from_pointee(data),
                path: config.data.clone(),
                options,
                trusted: config.trusted_networks(),
                log_requests: config.log_requests,
            }),
        })
    }

    /// The routes of this service, with their full paths.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route(PATH, axum::routing::any(region_info))
            .with_state(self.inner.clone())
    }

    /// The data file this service reads, if any.
    pub fn data_path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The data currently served.
    pub fn data(&self) -> Arc<RegionData> {
        self.inner.data.load_full()
    }

    /// Reads the data file again; on success swaps it in, else keeps the old data. Blocking
    /// (file I/O and parsing): call from `spawn_blocking` or use [`RegionService::reload`].
    pub fn reload_blocking(&self) -> Result<Summary, Error> {
        let Some(path) = &self.inner.path else {
            return Ok(summary(&self.data()));
        };
        let start = std::time::Instant::now();
        let data = RegionData::load(path, self.inner.options)?;
        let result = summary(&data);
        log_loaded(Some(path), &data, start, "region data reloaded");
        self.inner.data.store(Arc::new(data));
        Ok(result)
    }

    /// [`RegionService::reload_blocking`] off the async runtime, logging the outcome: a bad
    /// file is logged with every problem and the old data keeps serving.
    pub async fn reload(&self) -> Result<Summary, Error> {
        let service = self.clone();
        let result = tokio::task::spawn_blocking(move || service.reload_blocking())
            .await
            .map_err(|e| Error::Task(e.to_string()))
            .and_then(|r| r);
        match &result {
            Ok(_) => {
                metrics::counter!("portico_region_reloads_total", "result" => "ok").increment(1)
            }
            Err(e) => {
                metrics::counter!("portico_region_reloads_total", "result" => "error").increment(1);
                let error = chain(e);
                tracing::error!(%error, "region data reload failed; still serving the previous data");
            }
        }
        result
    }
}

/// `error: cause: cause` (the way anyhow's `{:#}` prints), for logs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn summary(data: &RegionData) -> Summary {
    let (v4, v6) = data.prefix_counts();
    Summary {
        regions: data.regions().len(),
        v4_prefixes: v4,
        v6_prefixes: v6,
        warnings: data.warnings.len(),
    }
}

fn log_loaded(path: Option<&Path>, data: &RegionData, start: std::time::Instant, what: &str) {
    let shown = path.map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
    for warning in &data.warnings {
        tracing::warn!(file = %shown, "{warning}");
    }
    let s = summary(data);
    metrics::gauge!("portico_region_regions").set(s.regions as f64);
    tracing::info!(
        file = %shown,
        regions = s.regions,
        v4_prefixes = s.v4_prefixes,
        v6_prefixes = s.v6_prefixes,
        skipped = s.warnings,
        load_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        "{what}"
    );
}

/// `/regionInfo`, every method.
async fn region_info(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    match *request.method() {
        Method::GET | Method::HEAD => answer(&inner, &request),
        Method::OPTIONS => with_allow(StatusCode::OK),
        _ => with_allow(StatusCode::METHOD_NOT_ALLOWED),
    }
}

fn with_allow(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    response
}

/// Selection: a known hint, else the longest prefix of the client address, else 404.
fn answer(inner: &Inner, request: &Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = client::client_ip(peer, request.headers(), &inner.trusted);
    let hint = client::region_hint(request.uri().query());
    let data = inner.data.load();
    let by_hint = hint.as_deref().and_then(|h| data.by_name(h));
    let (region, by) = match by_hint {
        Some(region) => (Some(region), "hint"),
        None => (ip.and_then(|ip| data.by_ip(ip)), "ip"),
    };
    let client = ClientShown(ip);
    let hint_shown = hint.as_deref().unwrap_or("-");
    match region {
        Some(region) => {
            metrics::counter!("portico_region_answers_total", "by" => by).increment(1);
            if inner.log_requests {
                tracing::info!(%client, hint = hint_shown, region = %region.name, by, "provided");
            }
            xml_response(region.answer())
        }
        None => {
            metrics::counter!("portico_region_answers_total", "by" => "none").increment(1);
            if inner.log_requests {
                tracing::info!(%client, hint = hint_shown, "denied");
            }
            not_found()
        }
    }
}

/// The client address for logs, formatted only when a line is written.
struct ClientShown(Option<IpAddr>);

impl std::fmt::Display for ClientShown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("unknown"),
        }
    }
}

fn xml_response(body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

fn not_found() -> Response {
    let mut response = Response::new(Body::from(NOT_FOUND));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
