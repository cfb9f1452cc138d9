//! The live dashboard (`GET /dashboard`): one page compiled into the binary, the JSON API it
//! and scripts use (`/dashboard/api/...`, shaped like Celery Flower's), and one server-sent
//! event stream per open page (`/dashboard/events`).
//!
//! The dashboard reads, it never owns: what it shows comes through the read-only seams in
//! [`sources`] (the job queue, workers of any kind, the service manager, the gateway's request
//! counters, sampled once a second by [`sampler`]). The binary builds a [`Dashboard`]
//! from whatever services it opened and mounts [`Dashboard::router`] wherever `admin` is.
//!
//! Memory does not grow with time or with the number of pages: every history is a ring of
//! fixed size ([`sampler`]), every event is built once and shared by all streams, each stream
//! may fall at most `client_buffer` events behind before it is dropped ([`events`]).
//! `docs/dashboard.md` has the design and its traps.

#![forbid(unsafe_code)]

mod api;
mod assets;
pub mod config;
pub mod events;
mod live;
pub mod sampler;
pub mod sources;

use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use config::DashboardConfig;
pub use sources::{
    CeleryWorkers, JobsSource, ListenerInfo, ManagerSnapshot, ManagerSource, PorticoJobs,
    RegistryManager, RequestSource, RequestTotals, WorkerRow, WorkerSource,
};

/// What the dashboard is built from.
#[derive(Clone, Default)]
pub struct Sources {
    /// The job queue, when this process runs it.
    pub jobs: Option<Arc<dyn JobsSource>>,
    /// Every kind of worker (Portico's own; Celery's, once a broker gives them).
    pub workers: Vec<Arc<dyn WorkerSource>>,
    /// The service manager, when this process opened it.
    pub manager: Option<Arc<dyn ManagerSource>>,
    /// The gateway's request counters.
    pub requests: Option<Arc<dyn RequestSource>>,
    /// The listeners, as configured.
    pub listeners: Vec<ListenerInfo>,
    /// The program's version.
    pub version: String,
}

/// The dashboard: clones share it.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    config: DashboardConfig,
    sources: Sources,
    started: Instant,
    requests: Mutex<sampler::RequestSampler>,
    capacity: Mutex<sampler::CapacityHistory>,
    hub: events::Hub,
}

impl Dashboard {
    /// A dashboard over `sources`; call [`Dashboard::start`] to sample and publish.
    pub fn new(config: DashboardConfig, sources: Sources) -> Dashboard {
        let hub = events::Hub::new(config.replay_events, config.client_buffer);
        let bounds = sources
            .requests
            .as_ref()
            .map(|r| r.bounds_micros().to_vec())
            .unwrap_or_default();
        Dashboard {
            inner: Arc::new(Inner {
                config,
                sources,
                started: Instant::now(),
                requests: Mutex::new(sampler::RequestSampler::new(&bounds)),
                capacity: Mutex::new(sampler::CapacityHistory::default()),
                hub,
            }),
        }
    }

    /// Starts the sampler and the publisher of live events on `background`.
    pub fn start(&self, background: &service::Background) {
        let dashboard = self.clone();
        background.spawn_with_token("dashboard-sampler", move |token| async move {
            live::run(dashboard, token).await
        });
    }

    /// `/dashboard`, `/dashboard/api/...` and `/dashboard/events`.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// The event hub (tests look at its ring).
    pub fn hub(&self) -> &events::Hub {
        &self.inner.hub
    }
}
