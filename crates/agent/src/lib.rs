//! The agent: one per host, it starts, watches, restarts and stops the instances of catalog
//! services on that host (the original's "allocator").
//!
//! - **Allocation requests** for this agent's id (from proxies, through the registry) start
//!   an instance: a free port, `{port}`/`{host}` substituted in the command, env `PORT`, the
//!   process in its own process group, cwd `/`, output to `instances/SERVICE/ID.log` under
//!   the data directory (rotated). It is registered `starting`, then `ready` once `health`
//!   answers below 500 within `start_timeout`, with a lease renewed every third of it. If it
//!   does not get there, the request fails with the reason: exit status and the last lines
//!   of its output, or the health check's last error.
//! - **Crashes**: deregistered at once, restarted after 1 s doubling to 1 min while the
//!   service wants it (below `min`, or used within `idle_timeout`).
//! - **`min`** instances are kept running (one agent acts, see `supervisor`); instances above
//!   `min` idle for `idle_timeout` are stopped. The agent cannot see requests: proxies record
//!   uses with `Registry::mark_used` (at most once per second per instance).
//! - **Stopping** (idle, service removed, agent shutting down): `draining` for `drain`, then
//!   SIGTERM to the process group, SIGKILL after `stop_timeout`.
//! - **Leftovers**: pid records in `agent/ID/pids/` let a restarted agent stop what its
//!   previous run left running (pid + start time, so a reused pid is never signalled).
//! - **Heartbeat**: the agent's own record (advertised address, room, instances running) with
//!   a lease renewed every third of it; it is removed when the agent stops.
//!
//! While the registry is unreachable instances keep running and renewals keep trying; when
//! it is back, the next renewals register everything again.

#![forbid(unsafe_code)]

mod backoff;
mod health;
mod instance;
mod leftovers;
mod metrics;
mod process;
mod supervisor;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use registry::{AgentInfo, AnyRegistry, Registry, View};
use service::{Background, DataDir};
use tokio::sync::{mpsc, oneshot, watch};

pub use backoff::Backoff;
pub use metrics::{ALLOCATIONS, ALLOCATION_SECONDS, INSTANCES, RESTARTS};

use crate::supervisor::{Event, Supervisor};

/// Default lease of the agent and its instances.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default time a stopping instance keeps serving requests in flight.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one wait for an allocation request lasts before the agent asks again.
const ALLOCATION_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed registry call in the agent's loops.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Events queued for the supervisor at most.
const EVENT_QUEUE: usize = 256;

/// The agent's settings (validated by the caller).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Unique among agents; the host name by default.
    pub id: String,
    /// The address proxies reach this host's instances on (substituted for `{host}`).
    pub advertise: IpAddr,
    pub max_instances: u32,
    /// Lease of the agent's record and of its instances (renewed every third).
    pub lease: Duration,
    pub drain: Duration,
    pub stop_timeout: Duration,
    /// Rotation of instance logs.
    pub log_max_bytes: u64,
    pub log_backups: usize,
}

impl AgentConfig {
    /// Defaults for everything but the id and the address.
    pub fn new(id: &str, advertise: IpAddr) -> AgentConfig {
        AgentConfig {
            id: id.to_string(),
            advertise,
            max_instances: default_max_instances(),
            lease: DEFAULT_LEASE,
            drain: DEFAULT_DRAIN,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            log_max_bytes: 10 * 1024 * 1024,
            log_backups: 5,
        }
    }
}

/// 4 instances per core.
pub fn default_max_instances() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4) as u32
}

/// The host name, the default agent id.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its directories under the data directory could not be prepared.
    #[error("agent data directory: {0}")]
    DataDir(#[from] service::DataDirError),
    #[error("agent data directory {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// A running agent. Clones share it.
#[derive(Clone)]
pub struct Agent {
    id: String,
    registry: AnyRegistry,
    events: mpsc::Sender<Event>,
    /// `true` once the agent stops taking allocation requests.
    draining: watch::Sender<bool>,
    /// `true` once the agent stopped: no more heartbeats.
    stopped: watch::Sender<bool>,
    running: Arc<AtomicU32>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("running", &self.running())
            .finish()
    }
}

impl Agent {
    /// Stops what a previous run with the same id left running, then starts the agent's tasks
    /// in `background`: the supervisor, the heartbeat and the allocation consumer.
    pub async fn start(
        config: AgentConfig,
        view: View,
        data_dir: &DataDir,
        background: &Background,
    ) -> Result<Agent, Error> {
        let registry = view.registry().clone();
        let (pids, logs) = prepare_dirs(data_dir, &config.id).await?;
        stop_leftovers(&registry, pids.clone(), config.stop_timeout).await;
        let context = Arc::new(instance::Context {
            registry: registry.clone(),
            agent_id: config.id.clone(),
            advertise: config.advertise,
            lease: config.lease,
            drain: config.drain,
            stop_timeout: config.stop_timeout,
            pids,
            logs,
            log_max_bytes: config.log_max_bytes,
            log_backups: config.log_backups,
            health: health::client(),
        });
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let running = Arc::new(AtomicU32::new(0));
        let supervisor = Supervisor::new(
            context,
            view,
            config.max_instances,
            events.clone(),
            running.clone(),
        );
        let agent = Agent {
            id: config.id.clone(),
            registry,
            events,
            draining: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
            running,
        };
        background.spawn("agent supervisor", supervisor.run(events_rx));
        background.spawn("agent heartbeat", agent.clone().heartbeat(config.clone()));
        background.spawn("agent allocations", agent.clone().take_allocations());
        tracing::info!(agent = %config.id, advertise = %config.advertise, max_instances = config.max_instances, "agent started");
        Ok(agent)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Instances with a running process.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Stops taking allocation requests (instances keep running).
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Stops every instance (drain, SIGTERM, SIGKILL), waits for them, stops the heartbeat
    /// and removes the agent from the registry.
    pub async fn stop(&self) {
        self.drain();
        let (done, stopped) = oneshot::channel();
        if self.events.send(Event::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
        self.stopped.send_replace(true);
        if let Err(error) = self.registry.remove_agent(&self.id).await {
            tracing::warn!(agent = %self.id, %error, "removing the agent from the registry (its lease will expire)");
        }
        tracing::info!(agent = %self.id, "agent stopped");
    }

    async fn heartbeat(self, config: AgentConfig) {
        let started_at = SystemTime::now();
        let mut stopped = self.stopped.subscribe();
        let mut failing = false;
        loop {
            let info = AgentInfo {
                id: config.id.clone(),
                advertise: config.advertise,
                max_instances: config.max_instances,
                running: self.running(),
                started_at,
            };
            match self.registry.heartbeat_agent(&info, config.lease).await {
                Ok(()) if failing => {
                    tracing::info!(agent = %config.id, "registry reachable again; agent registered");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    tracing::warn!(agent = %config.id, %error, "heartbeat failed; instances keep running, retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(config.lease / 3) => {}
                _ = stopped.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    async fn take_allocations(self) {
        let mut draining = self.draining.subscribe();
        loop {
            let next = tokio::select! {
                next = self.registry.next_allocation(&self.id, ALLOCATION_WAIT) => next,
                _ = draining.wait_for(|draining| *draining) => return,
            };
            match next {
                Ok(Some(request)) => {
                    tracing::info!(service = %request.service, request = %request.id, reason = ?request.reason, by = %request.requested_by, "allocation request");
                    let taken = tokio::time::Instant::now();
                    if self
                        .events
                        .send(Event::Allocate(request, taken))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(agent = %self.id, %error, "waiting for allocation requests");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

/// `agent/ID/pids` and `instances`, as handles.
async fn prepare_dirs(
    data_dir: &DataDir,
    id: &str,
) -> Result<(Arc<cap_std::fs::Dir>, DataDir), Error> {
    let data_dir = data_dir.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let pids = data_dir.subdir("agent")?.subdir(&id)?.subdir("pids")?;
        let logs = data_dir.subdir("instances")?;
        let handle = pids.dir().try_clone().map_err(|error| Error::Io {
            path: pids.path().display().to_string(),
            error,
        })?;
        Ok((Arc::new(handle), logs))
    })
    .await
    .expect("preparing directories does not panic")
}

/// Stops what the previous run left and removes its instances from the registry.
async fn stop_leftovers(
    registry: &AnyRegistry,
    pids: Arc<cap_std::fs::Dir>,
    stop_timeout: Duration,
) {
    let stopped = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        for record in leftovers::read_all(&pids) {
            if leftovers::still_running(&record) {
                let killed = leftovers::stop_group(&record, stop_timeout);
                tracing::warn!(service = %record.service, instance = %record.id, pid = record.pid, killed, "stopped an instance the previous run left");
            }
            leftovers::remove(&pids, &record.id);
            found.push(record);
        }
        found
    })
    .await
    .unwrap_or_default();
    for record in stopped {
        if let Err(error) = registry.remove_instance(&record.service, &record.id).await {
            tracing::warn!(instance = %record.id, %error, "removing a leftover instance from the registry (its lease will expire)");
        }
    }
}
