//! The proxy's metrics (`shared/specs/manager.md`, "Managing it").
//!
//! - Per service, requests by status and their latency to the response head: the gateway's
//!   `portico_http_requests_total{service="proxy",route=SERVICE,status}` and
//!   `portico_http_request_duration_seconds{service="proxy",route=SERVICE}` (the proxy labels
//!   each request with its managed service; the gateway counts it per worker at no cost).
//! - Events, through the `metrics` recorder (rare, so its cost does not matter): errors by
//!   kind, retries, ejections, allocations and their duration, upstream connections made.
//! - State, rendered at each scrape from what the proxy holds ([`render`]): instances by
//!   state, and per instance its latency estimate and requests in flight. Rendered rather
//!   than recorded so that it costs nothing per request and an instance's series go away
//!   with it.

use std::fmt::Write as _;

use registry::InstanceState;

use crate::instances::Upstream;
use crate::Shared;

/// Proxied requests answered by the proxy itself, by service and kind (`no_instance`,
/// `connect`, `upstream`, `timeout`, `body_too_large`, `client_body`).
pub const ERRORS: &str = "portico_proxy_errors_total";
/// Requests whose first path segment named no catalog service.
pub const UNKNOWN_SERVICE: &str = "portico_proxy_unknown_service_total";
/// Attempts made again on another instance (or connection), by service and reason
/// (`connect`, `after_send`, `stale_connection`).
pub const RETRIES: &str = "portico_proxy_retries_total";
/// Instances taken out of rotation, by service.
pub const EJECTIONS: &str = "portico_proxy_ejections_total";
/// Allocations asked for, by service and outcome (`ok`, `failed`).
pub const ALLOCATIONS: &str = "portico_proxy_allocations_total";
/// Time from asking for an instance to the agent's answer, by service.
pub const ALLOCATION_SECONDS: &str = "portico_proxy_allocation_duration_seconds";
/// TCP connections opened to instances.
pub const UPSTREAM_CONNECTIONS: &str = "portico_proxy_upstream_connections_total";

/// Appends the scrape-time series (see the module doc).
pub(crate) fn render(shared: &Shared, out: &mut String) {
    let states = shared.states();
    out.push_str("# TYPE portico_proxy_instances gauge\n");
    for state in &states {
        let all = shared.view.all_instances(&state.name);
        for kind in [
            InstanceState::Starting,
            InstanceState::Ready,
            InstanceState::Draining,
        ] {
            let count = all.iter().filter(|i| i.state == kind).count();
            let _ = writeln!(
                out,
                "portico_proxy_instances{{service=\"{}\",state=\"{}\"}} {count}",
                state.name,
                kind.as_str()
            );
        }
        let ejected = state
            .current()
            .list
            .iter()
            .filter(|u| u.endpoint().health().is_ejected())
            .count();
        let _ = writeln!(
            out,
            "portico_proxy_instances{{service=\"{}\",state=\"ejected\"}} {ejected}",
            state.name
        );
    }
    out.push_str("# TYPE portico_proxy_allocating gauge\n");
    for state in &states {
        let _ = writeln!(
            out,
            "portico_proxy_allocating{{service=\"{}\"}} {}",
            state.name,
            u8::from(state.scale.is_allocating())
        );
    }
    let upstreams: Vec<_> = states
        .iter()
        .flat_map(|state| state.current().list.clone())
        .collect();
    out.push_str("# TYPE portico_proxy_instance_latency_seconds gauge\n");
    for upstream in &upstreams {
        let estimate = upstream.endpoint().measured_estimate();
        let labels = instance_labels(upstream);
        let _ = writeln!(
            out,
            "portico_proxy_instance_latency_seconds{{{labels}}} {}",
            estimate.as_secs_f64()
        );
    }
    out.push_str("# TYPE portico_proxy_instance_in_flight gauge\n");
    for upstream in &upstreams {
        let in_flight = upstream.endpoint().in_flight();
        let labels = instance_labels(upstream);
        let _ = writeln!(
            out,
            "portico_proxy_instance_in_flight{{{labels}}} {in_flight}"
        );
    }
}

fn instance_labels(upstream: &Upstream) -> String {
    let instance = &upstream.instance;
    format!(
        "service=\"{}\",instance=\"{}\",addr=\"{}\",agent=\"{}\"",
        escaped(&instance.service),
        escaped(&instance.id),
        instance.addr,
        escaped(&instance.agent)
    )
}

/// A label value with `\\`, `"` and newlines escaped (the text format's rule).
fn escaped(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
