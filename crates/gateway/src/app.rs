//! What one listener answers with (`ListenerApp`): the router of the services it mounts,
//! `/healthz`, the admin service (`/readyz`, `/metrics`), and the gateway's JSON errors.

use std::sync::OnceLock;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use service::{MetricsText, Readiness, Service};
use tower::util::MapResponseLayer;

use crate::config::{LimitsConfig, ListenerConfig};
use crate::middleware::ServiceTag;
use crate::request::{DirectService, Limits, ListenerApp};
use crate::request_metrics;
use crate::ADMIN;

pub(crate) use service::{error_response, json_response};

/// The built-in services of a process, each one value with its routes, background tasks and
/// lifecycle hooks (`service::Service`), in the order they were opened.
#[derive(Default)]
pub struct Services {
    list: Vec<Service>,
}

impl Services {
    pub fn new() -> Self {
        Services::default()
    }

    /// Adds a service. `admin` is the gateway's own and needs none.
    pub fn insert(&mut self, service: Service) {
        self.list.retain(|s| s.name() != service.name());
        self.list.push(service);
    }

    fn get(&self, name: &str) -> Option<&Service> {
        self.list.iter().find(|s| s.name() == name)
    }

    fn router(&self, name: &str) -> Option<&Router> {
        self.get(name).map(Service::router)
    }

    /// The direct handler of a listener mounting `mounted`: the one service's, when it is
    /// alone and has one (`Service::with_direct`).
    fn direct(&self, mounted: &[String]) -> Option<DirectService> {
        let [name] = mounted else { return None };
        let handler = self.get(name)?.direct()?.clone();
        Some(DirectService {
            handler,
            tag: ServiceTag::new(name),
        })
    }

    /// Names a listener may mount: every inserted service and `admin`.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.list.iter().map(|s| s.name().to_string()).collect();
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
            .filter(|name| name.as_str() == ADMIN || self.router(name).is_some())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every service's scrape-time metrics (`/metrics` is the whole process's).
    fn metrics_texts(&self) -> Vec<MetricsText> {
        self.list
            .iter()
            .filter_map(|s| s.metrics().cloned())
            .collect()
    }

    /// Every service's drain hook, all at once.
    pub(crate) async fn drain(&mut self) {
        futures::future::join_all(self.list.iter_mut().map(Service::drain)).await;
    }

    /// Every service's stop hook and background tasks, in reverse order of opening (a service
    /// opened later may use one opened earlier).
    pub(crate) async fn stop(&mut self, grace: std::time::Duration) {
        for service in self.list.iter_mut().rev() {
            service.stop(grace).await;
        }
    }
}

/// What a listener answers with: its mounted services (each response tagged with the
/// service's name), `/healthz`, the admin service when mounted, and JSON 404s. The gateway's
/// layer around it is `request::ConnectionService`.
pub(crate) fn listener_app(
    listener: &ListenerConfig,
    services: &Services,
    limits: &LimitsConfig,
    readiness: &Readiness,
) -> ListenerApp {
    let mounted = services.expand(&listener.services);
    let healthz = healthz_body(&mounted);
    // `ConnectionService` answers GET and HEAD itself; the route stays so that other methods
    // get axum's 405 with `Allow`, and so the router alone is a complete listener.
    let healthz_route = Router::new().route("/healthz", get(healthz_handler(healthz.clone())));
    let mut router = tag(healthz_route, GATEWAY);
    for name in &mounted {
        router = router.merge(mount(name, services, readiness));
    }
    ListenerApp {
        router: router
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        healthz,
        direct: services.direct(&mounted),
        limits: Limits {
            max_body_bytes: limits.max_body_bytes,
            request_timeout: limits.request_timeout,
        },
        gateway: ServiceTag::new(GATEWAY),
    }
}

/// The service name of the gateway's own answers in logs and metrics.
const GATEWAY: &str = "gateway";

fn mount(name: &str, services: &Services, readiness: &Readiness) -> Router {
    let router = match services.router(name) {
        Some(router) => router.clone(),
        None => admin_router(readiness.clone(), services.metrics_texts()),
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

fn admin_router(readiness: Readiness, texts: Vec<MetricsText>) -> Router {
    let texts: std::sync::Arc<[MetricsText]> = texts.into();
    Router::new()
        .route("/readyz", get(move || readyz(readiness.clone())))
        .route("/metrics", get(move || metrics_text(texts.clone())))
}

/// 200 `{"status":"ready"}`; 503 `{"status":"draining"}` after SIGTERM; 503 `{"status":"not
/// ready","problems":[{"service":..,"reason":..}]}` while a service's check fails.
async fn readyz(readiness: Readiness) -> Response {
    if readiness.is_draining() {
        let body = Bytes::from_static(b"{\"status\":\"draining\"}\n");
        return json_response(StatusCode::SERVICE_UNAVAILABLE, body);
    }
    let problems = readiness.problems();
    if problems.is_empty() {
        let body = Bytes::from_static(b"{\"status\":\"ready\"}\n");
        return json_response(StatusCode::OK, body);
    }
    let listed: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{{\"service\":{},\"reason\":{}}}",
                service::json_string(&p.service),
                service::json_string(&p.reason)
            )
        })
        .collect();
    let body = format!(
        "{{\"status\":\"not ready\",\"problems\":[{}]}}\n",
        listed.join(",")
    );
    json_response(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(body))
}

async fn metrics_text(services: std::sync::Arc<[MetricsText]>) -> Response {
    let mut text = metrics_handle().render();
    text.push_str(&request_metrics::render());
    for render in services.iter() {
        render(&mut text);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_mounts_every_service_and_admin() {
        let mut services = Services::new();
        services.insert(Service::new("messages", Router::new()));
        assert_eq!(services.expand(&["*".into()]), vec!["admin", "messages"]);
        assert_eq!(services.expand(&["messages".into()]), vec!["messages"]);
    }
}
