//! The seams the dashboard reads through, and their implementations over Portico's own
//! parts. Each is read-only except [`JobsSource::cancel`].
//!
//! - [`JobsSource`]: jobs (a page at a time from the records store, never all of them),
//!   capacity, counts; implemented by [`PorticoJobs`] over `jobs::Jobs`.
//! - [`WorkerSource`]: one kind of worker, as rows of Flower's worker table. Portico's
//!   workers come from [`PorticoJobs`]; a Celery broker adds a source of its own (its
//!   workers' heartbeats and counts from Celery events) without touching the dashboard.
//! - [`ManagerSource`]: the service manager's catalog, instances and agents; implemented by
//!   [`RegistryManager`] over the registry's view.
//! - [`RequestSource`]: the gateway's request counters; the binary implements it over
//!   `gateway::request_metrics` (services do not depend on the gateway).

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use jobs::{Job, JobId, ListFilter, ServiceCapacity, ServiceTotals};
use serde::Serialize;

/// The job queue, as the dashboard reads it.
pub trait JobsSource: Send + Sync + 'static {
    /// A page of jobs, newest first (`jobs::Jobs::list`).
    fn list(&self, filter: ListFilter) -> BoxFuture<'static, Result<Vec<Job>, jobs::Error>>;
    fn job(&self, id: JobId) -> BoxFuture<'static, Result<Option<Job>, jobs::Error>>;
    /// Revokes the job (a running one is killed).
    fn cancel(&self, id: JobId) -> BoxFuture<'static, Result<Option<Job>, jobs::Error>>;
    /// Per service: depth, workers, rates, waits, workers needed.
    fn capacity(&self) -> Vec<ServiceCapacity>;
    /// Per service: submitted and finished since start.
    fn totals(&self) -> Vec<ServiceTotals>;
    /// Whether a cancel needs a token (`jobs.security.bypass` off).
    fn needs_token(&self) -> bool;
    /// Checks a cancel's `Authorization` header (`None`: none was sent).
    fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), String>;
}

/// One worker, as a row of Flower's worker table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    /// Its name, unique within its kind.
    pub name: String,
    /// `portico` or `celery`.
    pub kind: &'static str,
    /// The services (queues) it takes jobs of.
    pub services: Vec<String>,
    /// `busy`, `idle` or `lost`.
    pub status: &'static str,
    /// Seconds since its last heartbeat (or last sign of life).
    pub heartbeat_seconds: Option<f64>,
    /// Jobs it runs now.
    pub active: Vec<String>,
    /// Jobs it took since it (or this process) started.
    pub processed: u64,
    /// Runs on another host (`portico worker`), not in this process.
    pub remote: bool,
}

/// One kind of worker.
pub trait WorkerSource: Send + Sync + 'static {
    /// Every worker of this kind known now.
    fn workers(&self) -> BoxFuture<'static, Vec<WorkerRow>>;
}

/// `jobs::Jobs` as a [`JobsSource`] and a [`WorkerSource`] (its local slots and remote
/// workers).
#[derive(Clone)]
pub struct PorticoJobs {
    jobs: jobs::Jobs,
    verifier: jobs_api::jwt::Verifier,
}

impl PorticoJobs {
    /// Cancels are checked as the job API checks them (same key, audience and bypass).
    pub fn new(jobs: jobs::Jobs) -> PorticoJobs {
        let security = &jobs.config().security;
        let verifier = match &security.jwt_key {
            Some(key) => jobs_api::jwt::Verifier::new(key, &security.jwt_audience, security.bypass),
            // `Jobs::open` always sets a key; without one nothing but bypass passes.
            None => jobs_api::jwt::Verifier::from_secret(
                &rand_secret(),
                &security.jwt_audience,
                security.bypass,
            ),
        };
        PorticoJobs { jobs, verifier }
    }
}

/// A secret nobody knows (two v7 ids: 148 random bits), so that no token passes.
fn rand_secret() -> Vec<u8> {
    let mut secret = JobId::new().as_u128().to_le_bytes().to_vec();
    secret.extend_from_slice(&JobId::new().as_u128().to_le_bytes());
    secret
}

impl JobsSource for PorticoJobs {
    fn list(&self, filter: ListFilter) -> BoxFuture<'static, Result<Vec<Job>, jobs::Error>> {
        let jobs = self.jobs.clone();
        Box::pin(async move { jobs.list(&filter).await })
    }

    fn job(&self, id: JobId) -> BoxFuture<'static, Result<Option<Job>, jobs::Error>> {
        let jobs = self.jobs.clone();
        Box::pin(async move { jobs.job(&id).await })
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'static, Result<Option<Job>, jobs::Error>> {
        let jobs = self.jobs.clone();
        Box::pin(async move { jobs.cancel(&id).await })
    }

    fn capacity(&self) -> Vec<ServiceCapacity> {
        self.jobs.capacity()
    }

    fn totals(&self) -> Vec<ServiceTotals> {
        self.jobs.totals()
    }

    fn needs_token(&self) -> bool {
        !self.verifier.bypassed()
    }

    fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), String> {
        self.verifier
            .check(authorization)
            .map_err(|error| error.to_string())
    }
}

impl WorkerSource for PorticoJobs {
    fn workers(&self) -> BoxFuture<'static, Vec<WorkerRow>> {
        let rows = self.jobs.workers().into_iter().map(worker_row).collect();
        Box::pin(std::future::ready(rows))
    }
}

/// The Celery workers on the AMQP broker's queues (Python ones and `portico worker
/// --broker`), from their `celeryev` heartbeats and task events.
#[derive(Clone)]
pub struct CeleryWorkers(pub jobs::Jobs);

impl WorkerSource for CeleryWorkers {
    fn workers(&self) -> BoxFuture<'static, Vec<WorkerRow>> {
        let rows = self
            .0
            .celery_workers()
            .into_iter()
            .map(celery_row)
            .collect();
        Box::pin(std::future::ready(rows))
    }
}

fn celery_row(worker: jobs::CeleryWorker) -> WorkerRow {
    let status = match (worker.lost, worker.active.is_empty()) {
        (true, _) => "lost",
        (false, false) => "busy",
        (false, true) => "idle",
    };
    WorkerRow {
        name: worker.name,
        kind: "celery",
        services: Vec::new(),
        status,
        heartbeat_seconds: Some(worker.last_seen_seconds),
        active: worker.active.iter().map(JobId::to_string).collect(),
        processed: worker.processed,
        remote: true,
    }
}

fn worker_row(worker: jobs::WorkerInfo) -> WorkerRow {
    let status = match (worker.lost, worker.active.is_empty()) {
        (true, _) => "lost",
        (false, false) => "busy",
        (false, true) => "idle",
    };
    WorkerRow {
        name: worker.name,
        kind: "portico",
        services: vec![worker.service],
        status,
        heartbeat_seconds: Some(worker.last_seen_seconds),
        active: worker.active.iter().map(JobId::to_string).collect(),
        processed: worker.processed,
        remote: worker.remote,
    }
}

/// A listener, as the overview shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerInfo {
    pub addr: String,
    pub tls: bool,
    pub services: Vec<String>,
}

/// The service manager at one instant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManagerSnapshot {
    /// Whether the registry answers (the view is kept through an outage).
    pub reachable: bool,
    pub services: Vec<ManagedService>,
    pub agents: Vec<AgentRow>,
}

/// A catalog service and its instances.
#[derive(Debug, Clone, Serialize)]
pub struct ManagedService {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub instances: Vec<InstanceRow>,
    /// An allocation is under way (this process's proxy).
    pub allocating: bool,
    /// Recent allocations, newest first.
    pub allocations: Vec<AllocationRow>,
}

/// One instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRow {
    pub id: String,
    pub agent: String,
    pub addr: String,
    /// `starting`, `ready`, `stopping`...
    pub state: String,
    pub age_seconds: f64,
    /// This process's proxy's measurements (none without a proxy, or before its first
    /// request to the service).
    pub latency_ms: Option<f64>,
    pub in_flight: Option<u32>,
    pub ejected: Option<bool>,
    pub ejections: Option<u64>,
}

/// One allocation this process's proxy asked for.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationRow {
    /// `cold`, `soft_limit` or `min`.
    pub reason: String,
    /// `ok`, or why it failed.
    pub outcome: String,
    pub seconds: f64,
    pub ago_seconds: f64,
}

/// One agent and its load.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub id: String,
    pub advertise: String,
    /// As the agent last reported it.
    pub running: u32,
    /// Instances the registry lists on it now (ahead of its next report).
    pub instances: usize,
    pub max_instances: u32,
    pub age_seconds: f64,
}

/// The service manager, as the dashboard reads it.
pub trait ManagerSource: Send + Sync + 'static {
    fn snapshot(&self) -> ManagerSnapshot;
}

/// The registry's view as a [`ManagerSource`], with this process's proxy's measurements
/// when it runs one.
#[derive(Clone)]
pub struct RegistryManager {
    view: registry::View,
    proxy: Option<proxy::Proxy>,
}

impl RegistryManager {
    pub fn new(view: registry::View, proxy: Option<proxy::Proxy>) -> RegistryManager {
        RegistryManager { view, proxy }
    }
}

fn reason_text(reason: registry::AllocReason) -> &'static str {
    match reason {
        registry::AllocReason::Cold => "cold",
        registry::AllocReason::SoftLimit => "soft_limit",
        registry::AllocReason::Min => "min",
    }
}

fn allocation_row(record: &proxy::AllocationRecord, now: SystemTime) -> AllocationRow {
    AllocationRow {
        reason: reason_text(record.reason).to_string(),
        outcome: record.failure.clone().unwrap_or_else(|| "ok".to_string()),
        seconds: record.took.as_secs_f64(),
        ago_seconds: now
            .duration_since(record.at)
            .unwrap_or_default()
            .as_secs_f64(),
    }
}

impl ManagerSource for RegistryManager {
    fn snapshot(&self) -> ManagerSnapshot {
        let now = SystemTime::now();
        let (stats, allocations) = self
            .proxy
            .as_ref()
            .map(proxy::Proxy::snapshot)
            .unwrap_or_default();
        let services: Vec<ManagedService> = self
            .view
            .services()
            .iter()
            .map(|spec| {
                let stats = stats.iter().find(|s| s.name == spec.name);
                ManagedService {
                    name: spec.name.clone(),
                    min: spec.min,
                    max: spec.max,
                    instances: self
                        .view
                        .all_instances(&spec.name)
                        .iter()
                        .map(|i| instance_row(i, stats, now))
                        .collect(),
                    allocating: stats.is_some_and(|s| s.allocating),
                    allocations: allocations
                        .iter()
                        .filter(|a| a.service == spec.name)
                        .map(|a| allocation_row(a, now))
                        .collect(),
                }
            })
            .collect();
        let on_agent = |id: &str| {
            services
                .iter()
                .flat_map(|s| &s.instances)
                .filter(|i| i.agent == id)
                .count()
        };
        let agents = self
            .view
            .agents()
            .iter()
            .map(|a| AgentRow {
                id: a.id.clone(),
                advertise: a.advertise.to_string(),
                running: a.running,
                instances: on_agent(&a.id),
                max_instances: a.max_instances,
                age_seconds: age(a.started_at, now),
            })
            .collect();
        ManagerSnapshot {
            reachable: self.view.reachable(),
            services,
            agents,
        }
    }
}

fn age(at: SystemTime, now: SystemTime) -> f64 {
    now.duration_since(at).unwrap_or_default().as_secs_f64()
}

fn instance_row(
    instance: &registry::Instance,
    stats: Option<&proxy::ServiceStats>,
    now: SystemTime,
) -> InstanceRow {
    let measured = stats.and_then(|s| s.instances.iter().find(|i| i.id == instance.id));
    InstanceRow {
        id: instance.id.clone(),
        agent: instance.agent.clone(),
        addr: instance.addr.to_string(),
        state: instance.state.as_str().to_string(),
        age_seconds: age(instance.started_at, now),
        latency_ms: measured
            .and_then(|m| m.latency)
            .map(|l| l.as_secs_f64() * 1000.0),
        in_flight: measured.map(|m| m.in_flight),
        ejected: measured.map(|m| m.ejected),
        ejections: measured.map(|m| m.ejections),
    }
}

/// One series of request counters since the process started (a service, or a managed
/// service behind the proxy: `route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTotals {
    pub service: Arc<str>,
    pub route: Option<Arc<str>>,
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Durations per bucket of [`RequestSource::bounds_micros`] (not cumulative; one more
    /// than the bounds: the last is over them).
    pub buckets: Vec<u64>,
}

/// The gateway's request counters.
pub trait RequestSource: Send + Sync + 'static {
    /// Upper bounds of the duration buckets, in microseconds.
    fn bounds_micros(&self) -> &[u64];
    /// Every series now.
    fn totals(&self) -> Vec<RequestTotals>;
}
