//! What one listener answers with (`ListenerApp`): the router of the services it mounts,
//! `/healthz`, the admin service (`/readyz`, `/metrics`), and the gateway's JSON errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::util::MapResponseLayer;

use crate::config::{LimitsConfig, ListenerConfig};
use crate::middleware::ServiceTag;
use crate::request::{Limits, ListenerApp};
use crate::request_metrics;
use crate::ADMIN;

/// Built-in services by name; each router carries its routes' full paths.
#[derive(Clone, Default)]
pub struct Services {
    routers: BTreeMap<String, Router>,
}

impl Services {
    pub fn new() -> Self {
        Services::default()
    }

    /// Adds a service. `admin` is the gateway's own and needs no router.
    pub fn insert(&mut self, name: &str, router: Router) {
        self.routers.insert(name.to_string(), router);
    }

    /// Names a listener may mount: every inserted service and `admin`.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routers.keys().cloned().collect();
        names.push(ADMIN.to_string());
        names.sort();
        names
    }

    /// The names a listener mounts, `*` expanded.
    pub fn expand(&self, wanted: &[String]) -> Vec<String> {
        if wanted.iter().any(|name| name == "*") {
            return self.names();
        }
        let mut names: Vec<String> = wanted
            .iter()
            .filter(|name| name.as_str() == ADMIN || self.routers.contains_key(*name))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// What a listener answers with: its mounted services (each response tagged with the
/// service's name), `/healthz`, the admin service when mounted, and JSON 404s. The gateway's
/// layer around it is `request::ConnectionService`.
pub(crate) fn listener_app(
    listener: &ListenerConfig,
    services: &Services,
    limits: &LimitsConfig,
    ready: &Arc<AtomicBool>,
) -> ListenerApp {
    let mounted = services.expand(&listener.services);
    let healthz = healthz_body(&mounted);
    // `ConnectionService` answers GET and HEAD itself; the route stays so that other methods
    // get axum's 405 with `Allow`, and so the router alone is a complete listener.
    let healthz_route = Router::new().route("/healthz", get(healthz_handler(healthz.clone())));
    let mut router = tag(healthz_route, GATEWAY);
    for name in &mounted {
        router = router.merge(mount(name, services, ready));
    }
    ListenerApp {
        router: router
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        healthz,
        limits: Limits {
            max_body_bytes: limits.max_body_bytes,
            request_timeout: limits.request_timeout,
        },
        gateway: ServiceTag::new(GATEWAY),
    }
}

/// The service name of the gateway's own answers in logs and metrics.
const GATEWAY: &str = "gateway";

fn mount(name: &str, services: &Services, ready: &Arc<AtomicBool>) -> Router {
    let router = match services.routers.get(name) {
        Some(router) => router.clone(),
        None => admin_router(ready.clone()),
    };
    tag(router, name)
}

/// Marks the responses of `router` as `name`'s, for the access log and metrics.
fn tag(router: Router, name: &str) -> Router {
    let tag = ServiceTag::new(name);
    router.layer(MapResponseLayer::new(move |mut response: Response| {
        response.extensions_mut().insert(tag.clone());
        response
    }))
}

/// `/healthz` answers liveness and which services this listener mounts (used by
/// `portico check`).
fn healthz_handler(body: Bytes) -> impl Fn() -> std::future::Ready<Response> + Clone {
    move || std::future::ready(json_response(StatusCode::OK, body.clone()))
}

fn healthz_body(mounted: &[String]) -> Bytes {
    let names: Vec<String> = mounted.iter().map(|n| format!("\"{n}\"")).collect();
    Bytes::from(format!(
        "{{\"status\":\"ok\",\"services\":[{}]}}\n",
        names.join(",")
    ))
}

fn admin_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/readyz", get(move || readyz(ready.clone())))
        .route("/metrics", get(metrics_text))
}

async fn readyz(ready: Arc<AtomicBool>) -> Response {
    if ready.load(Ordering::SeqCst) {
        json_response(
            StatusCode::OK,
            Bytes::from_static(b"{\"status\":\"ready\"}\n"),
        )
    } else {
        let body = Bytes::from_static(b"{\"status\":\"draining\"}\n");
        json_response(StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn metrics_text() -> Response {
    let mut text = metrics_handle().render();
    text.push_str(&request_metrics::render());
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4");
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// The Prometheus recorder, installed once per process.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        spawn_upkeep(handle.clone());
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// Histogram samples pile up until upkeep folds them: run it periodically even when nobody
/// scrapes `/metrics`.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the metrics upkeep thread");
    }
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no service at this path")
}

/// The gateway's own error answers: JSON `{"error": "..."}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let body = format!("{{\"error\":{}}}\n", json_string(message));
    json_response(status, Bytes::from(body))
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON string literal for `text` (quotes, backslashes and control characters escaped).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_mounts_every_service_and_admin() {
        let mut services = Services::new();
        services.insert("messages", Router::new());
        assert_eq!(services.expand(&["*".into()]), vec!["admin", "messages"]);
        assert_eq!(services.expand(&["messages".into()]), vec!["messages"]);
    }

    #[test]
    fn error_messages_are_escaped_json() {
        assert_eq!(json_string("a \"b\"\n"), "\"a \\\"b\\\"\\u000a\"");
    }
}
