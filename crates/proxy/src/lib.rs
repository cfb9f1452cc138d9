//! The service manager's proxy (`shared/specs/manager.md`, "The proxy" and "Choosing an
//! instance"): the built-in service `proxy` answers `/{service}/{rest}?{query}` for every
//! catalog service by sending the request to one of its instances as `/{rest}?{query}`.
//!
//! Module map, in the order a request meets them:
//! - [`route`](crate::route): the first path segment and the instance's path;
//! - `headers`: hop-by-hop headers out, `X-Forwarded-*` and `X-Request-Id` in;
//! - `forward`: one request through its attempts and retries (its module doc has the rules);
//! - `instances`: the service's instances as this proxy measures them, and the pick
//!   (peak-EWMA, power of two choices, local instances win ties: the `balance` crate);
//! - `scale` and `allocate`: one more instance when the best is over the soft limit, the one
//!   shared allocation of a cold start, asked of an agent through the registry;
//! - `pool`: keep-alive connections to instances, per gateway worker;
//! - `h1`: the proxy's own HTTP/1.1 client for body-less `GET` and `HEAD` (hyper's serves
//!   the rest);
//! - `body`: the request body streamed out, with 64 KiB kept for a retry;
//! - `upgrade`: WebSocket pass-through;
//! - `probe`: health probes that bring ejected instances back;
//! - `external`: instances of other programs this process registers (legacy server mode);
//! - `metrics`: what the proxy counts, and its scrape-time series.
//!
//! The proxy reads the registry through a `registry::View` (local, lock-free, kept through a
//! registry outage) and writes to it only to ask for instances and to report that an
//! instance served requests (for the agents' idle stop). It knows nothing of processes or of
//! which registry it holds. Built-in routes win over catalog names: the proxy's routes are
//! `/{service}`, `/{service}/` and `/{service}/{*rest}`, which the router matches only when
//! no built-in route does (and the catalog refuses names of built-in routes). On a listener
//! that mounts the proxy alone, the gateway skips the router and calls [`Proxy::answer`]
//! (`service::Service::with_direct`): a quarter of a proxied request's instructions.

#![forbid(unsafe_code)]

mod allocate;
mod body;
mod config;
mod error;
mod external;
mod forward;
mod h1;
mod headers;
mod instances;
mod metrics;
mod pool;
mod probe;
mod route;
mod scale;
mod snapshot;
mod upgrade;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use balance::ScalePolicy;
// Read on every request: foldhash, not SipHash.
use foldhash::HashMap;
use registry::{Registry, ServiceSpec, View};
use service::{Background, ClientFacts, RouteLabel};
use tokio::sync::mpsc;

pub use body::RETRY_BUFFER;

/// The parsers of the proxy's own HTTP/1.1 client, for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::h1::{parse_head, Chunks, Decoded};
}
pub use config::{External, ProxyConfig, Settings};
pub use error::ProxyError;
pub use metrics::{
    ALLOCATIONS, ALLOCATION_SECONDS, EJECTIONS, ERRORS, RETRIES, UNKNOWN_SERVICE,
    UPSTREAM_CONNECTIONS,
};
pub use snapshot::{AllocationRecord, InstanceStats, ServiceStats, RECENT_ALLOCATIONS};

use instances::{Limits, Members, ServiceState, Upstream};

/// Usage reports waiting to be written to the registry (one per instance per second at
/// most); when full, reports are dropped (the next second sends another).
const USAGE_QUEUE: usize = 1024;

/// The proxy: its routes and its background tasks. Clones share everything.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("local_agent", &self.shared.settings.local_agent)
            .field("services", &self.shared.states().len())
            .finish()
    }
}

impl Proxy {
    /// A proxy over `view`, its tasks (allocations, usage reports, health probes) started in
    /// `background` on the current runtime (the main one: requests run on the gateway's
    /// workers and hand those tasks their work through bounded queues).
    pub fn start(settings: Settings, view: View, background: &Background) -> Proxy {
        let (jobs, job_queue) = mpsc::channel(allocate::QUEUE);
        let (usage, used) = mpsc::channel(USAGE_QUEUE);
        let shared = Arc::new(Shared {
            settings,
            view,
            services: ArcSwap::from_pointee(HashMap::default()),
            adding: Mutex::new(()),
            jobs,
            usage,
            epoch: std::time::Instant::now(),
            allocations: Default::default(),
        });
        background.spawn("proxy allocator", allocate::run(shared.clone(), job_queue));
        background.spawn(
            "proxy usage reports",
            report_usage(shared.view.clone(), used),
        );
        background.spawn("proxy health probes", probe::run(shared.clone()));
        let settings = &shared.settings;
        if !settings.register.is_empty() {
            let (view, externals) = (shared.view.clone(), settings.register.clone());
            let (agent, lease) = (settings.local_agent.clone(), settings.register_lease);
            background.spawn_with_token("proxy registered instances", move |stop| {
                external::keep_registered(view, externals, agent, lease, stop)
            });
        }
        Proxy { shared }
    }

    /// The routes: `/{service}`, `/{service}/` and `/{service}/{*rest}`, any method.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/{service}", any(handle))
            .route("/{service}/", any(handle))
            .route("/{service}/{*rest}", any(handle))
            .with_state(self.shared.clone())
    }

    /// The answer to one request for `/{service}...`, as the routes give it: for the gateway
    /// to call without the router when the proxy is its listener's only service
    /// (`service::Service::with_direct`).
    pub fn answer(
        &self,
        request: Request,
        client: ClientFacts,
    ) -> impl Future<Output = (Response, Option<RouteLabel>)> + Send + 'static {
        let client = forward::ClientInfo::from_facts(client);
        forward::proxy(self.shared.clone(), request, client)
    }

    /// Appends the proxy's scrape-time series to a `/metrics` answer.
    pub fn render_metrics(&self, out: &mut String) {
        metrics::render(&self.shared, out);
    }

    /// Every service that had a request here, with its instances as this proxy measures
    /// them, and the recent allocations, newest first (the dashboard).
    pub fn snapshot(&self) -> (Vec<ServiceStats>, Vec<AllocationRecord>) {
        snapshot::take(&self.shared)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let client = forward::ClientInfo::from_extensions(request.extensions());
    let (mut response, route) = forward::proxy(shared, request, client).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// What every request and task of one proxy shares.
pub(crate) struct Shared {
    pub settings: Settings,
    pub view: View,
    /// Per catalog service that had a request: its instances and its scale gate.
    services: ArcSwap<HashMap<Arc<str>, Arc<ServiceState>>>,
    /// Adding or removing a service's state (rare) takes this.
    adding: Mutex<()>,
    pub jobs: mpsc::Sender<allocate::AllocJob>,
    usage: mpsc::Sender<Used>,
    /// The zero of usage-report times.
    epoch: std::time::Instant,
    /// Recent allocations (the dashboard).
    allocations: snapshot::Allocations,
}

/// An instance served a request.
struct Used {
    service: String,
    instance: String,
}

impl Shared {
    /// The state of the service `spec` names (made on its first request).
    pub fn service(&self, spec: &Arc<ServiceSpec>) -> Arc<ServiceState> {
        if let Some(state) = self.services.load().get(spec.name.as_str()) {
            return state.clone();
        }
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.services.load_full();
        if let Some(state) = current.get(spec.name.as_str()) {
            return state.clone();
        }
        let state = Arc::new(ServiceState::new(spec.clone(), self.limits(spec)));
        let mut next = HashMap::clone(&current);
        next.insert(state.name.clone(), state.clone());
        self.services.store(Arc::new(next));
        state
    }

    /// Every service's state.
    pub fn states(&self) -> Vec<Arc<ServiceState>> {
        let mut states: Vec<_> = self.services.load().values().cloned().collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Drops the state of services no longer in the catalog.
    pub fn forget_removed_services(&self) {
        let current = self.services.load_full();
        if current.keys().all(|name| self.view.service(name).is_some()) {
            return;
        }
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&self.services.load_full());
        next.retain(|name, _| self.view.service(name).is_some());
        self.services.store(Arc::new(next));
    }

    /// The latency limits `spec`'s instances are judged by here.
    pub fn limits(&self, spec: &ServiceSpec) -> Limits {
        Limits::of(spec, self.settings.soft_latency, self.settings.hard_latency)
    }

    /// The service's members as of the view now.
    pub fn members(
        &self,
        state: &ServiceState,
        spec: &Arc<ServiceSpec>,
        limits: Limits,
    ) -> arc_swap::Guard<Arc<Members>> {
        let ready = self.view.instances(&spec.name);
        state.sync(spec, &ready, limits, &self.settings.local_agent)
    }

    /// When the service may grow, in this proxy.
    pub fn scale_policy(&self, spec: &ServiceSpec, limits: Limits) -> ScalePolicy {
        ScalePolicy {
            soft_latency: limits.soft,
            max_instances: spec.max as usize,
            cooldown: self.settings.alloc_cooldown,
        }
    }

    /// `upstream` served a request at `now`: reported to the registry at most once a second.
    pub fn report_usage(&self, upstream: &Upstream, now: std::time::Instant) {
        let since = now.saturating_duration_since(self.epoch);
        let now_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        if upstream.usage_due(now_ms) {
            let used = Used {
                service: upstream.instance.service.clone(),
                instance: upstream.instance.id.clone(),
            };
            let _ = self.usage.try_send(used);
        }
    }
}

/// Writes usage reports to the registry (for the agents' idle stop).
async fn report_usage(view: View, mut used: mpsc::Receiver<Used>) {
    while let Some(Used { service, instance }) = used.recv().await {
        let marked = view
            .registry()
            .mark_used(&service, &instance, SystemTime::now())
            .await;
        if let Err(error) = marked {
            tracing::debug!(service, instance, %error, "reporting an instance's use failed");
        }
    }
}
