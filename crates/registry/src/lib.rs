//! The service manager's registry: the **catalog** (how to start each service), the
//! **agents** (one per host, with a lease renewed by heartbeats), the **instances** (each with
//! a lease its agent renews), **allocation requests** (a proxy asks one agent for an
//! instance; the agent answers once) and **change notices**, behind one seam, [`Registry`].
//!
//! Two real implementations, chosen by the binary:
//! - [`EmbeddedRegistry`]: in process, for one host. The catalog is a JSON file in the data
//!   directory (written atomically through the directory handle); leases are expiry times;
//!   allocation requests are in-memory queues per agent with wake-ups.
//! - [`RedisRegistry`]: many hosts sharing one Redis, with the documented key layout
//!   (`portico:svc:NAME`, `portico:svcs`, `portico:agent:ID`, `portico:inst:SERVICE:ID` with
//!   TTLs as leases, a stream per agent with a consumer group for allocation requests, a
//!   pub/sub channel for changes). Every call has a timeout; connections heal by themselves.
//!
//! Callers hold an [`AnyRegistry`] (a closed enum). Proxies and agents read through a
//! [`View`]: a local snapshot updated from the change notices and re-read every 2 s, kept as
//! it was while the registry is unreachable, so a Redis outage stops nothing that runs.
//!
//! Knows nothing of HTTP or of processes: the agent crate starts instances, the proxy routes.
//!
//! ## Seam rules other crates rely on
//!
//! - Instances and agents vanish when their lease runs out unless renewed (the agent renews
//!   every third of it). A removed instance is announced at once ([`Change::Instance`]).
//! - Idle tracking: the proxy calls [`Registry::mark_used`] for an instance that served a
//!   request, at most once per second per instance (the agent compares the last use with the
//!   service's `idle_timeout`, so a coarse clock is enough). [`UsageMarks`] does the
//!   once-per-second bookkeeping.
//! - An allocation request is taken by exactly one `next_allocation` and must be answered by
//!   `finish_allocation`; an agent that dies before answering gets it again when it restarts
//!   with the same id (Redis: it stays pending in the consumer group).

#![forbid(unsafe_code)]

mod catalog_file;
mod embedded;
mod error;
mod model;
mod redis_registry;
mod spec;
mod usage;
mod view;

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

pub use embedded::EmbeddedRegistry;
pub use error::Error;
pub use model::{
    new_id, AgentInfo, AllocReason, AllocationOutcome, AllocationRequest, Change, Instance,
    InstanceState,
};
pub use redis_registry::{RedisOptions, RedisRegistry, DEFAULT_KEY_PREFIX};
pub use spec::{is_dns_label, ServiceSpec, RESERVED_NAMES};
pub use usage::UsageMarks;
pub use view::{View, REREAD_INTERVAL};

/// Change notices buffered per subscriber; one that falls further behind gets
/// [`Change::Resync`] (it re-reads everything).
pub const CHANGE_BUFFER: usize = 1024;

/// How long an allocation's outcome is kept for `wait_allocation` after it was given.
pub const OUTCOME_TTL: Duration = Duration::from_secs(60);

/// The catalog, agents, instances and allocations (see the crate doc).
pub trait Registry: Send + Sync {
    /// Adds or replaces a catalog entry (the caller validated it).
    fn put_service(&self, spec: &ServiceSpec) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes a catalog entry; whether it was there.
    fn remove_service(&self, name: &str) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Every catalog entry, by name.
    fn services(&self) -> impl Future<Output = Result<Vec<ServiceSpec>, Error>> + Send;

    /// Announces (or renews) an agent for `lease`.
    fn heartbeat_agent(
        &self,
        agent: &AgentInfo,
        lease: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes an agent at once (it is shutting down).
    fn remove_agent(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Agents whose lease is valid.
    fn agents(&self) -> impl Future<Output = Result<Vec<AgentInfo>, Error>> + Send;

    /// Puts (or renews) an instance for `lease`.
    fn put_instance(
        &self,
        instance: &Instance,
        lease: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes an instance at once.
    fn remove_instance(
        &self,
        service: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Instances whose lease is valid (every state), of one service or of every catalog
    /// service.
    fn instances(
        &self,
        service: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Instance>, Error>> + Send;

    /// Queues `request` for the agent `agent`.
    fn request_allocation(
        &self,
        agent: &str,
        request: &AllocationRequest,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// The next request for `agent`, waiting at most `wait` (then `None`). Requests taken but
    /// not answered by a previous run of the same agent come first.
    fn next_allocation(
        &self,
        agent: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<AllocationRequest>, Error>> + Send;
    /// Answers a request taken by `next_allocation` (acknowledges it and publishes the
    /// outcome for [`OUTCOME_TTL`]).
    fn finish_allocation(
        &self,
        agent: &str,
        request: &AllocationRequest,
        outcome: &AllocationOutcome,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// The outcome of request `request_id`, waiting at most `timeout` (then `None`).
    fn wait_allocation(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<AllocationOutcome>, Error>> + Send;

    /// Records that `instance` of `service` served a request at `at` (see the crate doc).
    fn mark_used(
        &self,
        service: &str,
        instance: &str,
        at: SystemTime,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// The last recorded use of each of `instances` of `service`, in order.
    fn last_used(
        &self,
        service: &str,
        instances: &[String],
    ) -> impl Future<Output = Result<Vec<Option<SystemTime>>, Error>> + Send;

    /// Change notices from now on (every process's changes, for Redis).
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}

/// The registry a process holds: one of the implementations, dispatched by `match`.
#[derive(Debug, Clone)]
pub enum AnyRegistry {
    Embedded(EmbeddedRegistry),
    Redis(RedisRegistry),
}

impl AnyRegistry {
    /// `embedded` or `redis`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyRegistry::Embedded(_) => "embedded",
            AnyRegistry::Redis(_) => "redis",
        }
    }

    /// One catalog entry.
    pub async fn service(&self, name: &str) -> Result<Option<ServiceSpec>, Error> {
        let all = self.services().await?;
        Ok(all.into_iter().find(|spec| spec.name == name))
    }
}

/// Forwards each method to the variant.
macro_rules! dispatch {
    ($self:ident, $registry:ident => $call:expr) => {
        match $self {
            AnyRegistry::Embedded($registry) => $call,
            AnyRegistry::Redis($registry) => $call,
        }
    };
}

impl Registry for AnyRegistry {
    async fn put_service(&self, spec: &ServiceSpec) -> Result<(), Error> {
        dispatch!(self, r => r.put_service(spec).await)
    }
    async fn remove_service(&self, name: &str) -> Result<bool, Error> {
        dispatch!(self, r => r.remove_service(name).await)
    }
    async fn services(&self) -> Result<Vec<ServiceSpec>, Error> {
        dispatch!(self, r => r.services().await)
    }
    async fn heartbeat_agent(&self, agent: &AgentInfo, lease: Duration) -> Result<(), Error> {
        dispatch!(self, r => r.heartbeat_agent(agent, lease).await)
    }
    async fn remove_agent(&self, id: &str) -> Result<(), Error> {
        dispatch!(self, r => r.remove_agent(id).await)
    }
    async fn agents(&self) -> Result<Vec<AgentInfo>, Error> {
        dispatch!(self, r => r.agents().await)
    }
    async fn put_instance(&self, instance: &Instance, lease: Duration) -> Result<(), Error> {
        dispatch!(self, r => r.put_instance(instance, lease).await)
    }
    async fn remove_instance(&self, service: &str, id: &str) -> Result<(), Error> {
        dispatch!(self, r => r.remove_instance(service, id).await)
    }
    async fn instances(&self, service: Option<&str>) -> Result<Vec<Instance>, Error> {
        dispatch!(self, r => r.instances(service).await)
    }
    async fn request_allocation(
        &self,
        agent: &str,
        request: &AllocationRequest,
    ) -> Result<(), Error> {
        dispatch!(self, r => r.request_allocation(agent, request).await)
    }
    async fn next_allocation(
        &self,
        agent: &str,
        wait: Duration,
    ) -> Result<Option<AllocationRequest>, Error> {
        dispatch!(self, r => r.next_allocation(agent, wait).await)
    }
    async fn finish_allocation(
        &self,
        agent: &str,
        request: &AllocationRequest,
        outcome: &AllocationOutcome,
    ) -> Result<(), Error> {
        dispatch!(self, r => r.finish_allocation(agent, request, outcome).await)
    }
    async fn wait_allocation(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Option<AllocationOutcome>, Error> {
        dispatch!(self, r => r.wait_allocation(request_id, timeout).await)
    }
    async fn mark_used(&self, service: &str, instance: &str, at: SystemTime) -> Result<(), Error> {
        dispatch!(self, r => r.mark_used(service, instance, at).await)
    }
    async fn last_used(
        &self,
        service: &str,
        instances: &[String],
    ) -> Result<Vec<Option<SystemTime>>, Error> {
        dispatch!(self, r => r.last_used(service, instances).await)
    }
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        dispatch!(self, r => r.subscribe())
    }
}
