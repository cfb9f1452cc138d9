//! `EmbeddedRegistry`: the registry of one host, in process.
//!
//! Everything is in memory behind one lock (never held across an await); the catalog is also
//! written to `catalog.json` in the directory it was opened with (see `catalog_file`), and
//! read back at open, so services added at run time survive a restart. Leases are expiry
//! times on tokio's clock (tests run them on paused time): expired agents and instances are
//! dropped on the next call. Allocation requests wait in a queue per agent, whose consumer is
//! woken when one arrives. Outcomes are kept for [`OUTCOME_TTL`].
//!
//! Agents, instances and queued requests are not persisted: after a restart the agent (in the
//! same process) stops what its previous run left and registers again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use service::DataDir;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::catalog_file;
use crate::{
    AgentInfo, AllocationOutcome, AllocationRequest, Change, Error, Instance, Registry,
    ServiceSpec, CHANGE_BUFFER, OUTCOME_TTL,
};

const BACKEND: &str = "embedded";

/// See the module doc. Clones share the same registry.
#[derive(Clone)]
pub struct EmbeddedRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRegistry")
            .field(
                "catalog",
                &self.inner.catalog_dir.as_ref().map(DataDir::path),
            )
            .finish()
    }
}

struct Inner {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    /// Where the catalog is persisted; `None` for a registry that lives in memory only.
    catalog_dir: Option<DataDir>,
    /// One catalog write at a time, so the file always holds the latest catalog.
    catalog_writes: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, ServiceSpec>,
    agents: BTreeMap<String, Leased<AgentInfo>>,
    instances: BTreeMap<(String, String), Leased<Instance>>,
    queues: HashMap<String, Queue>,
    outcomes: HashMap<String, (Instant, AllocationOutcome)>,
    used: HashMap<(String, String), SystemTime>,
}

struct Leased<T> {
    value: T,
    expires: Instant,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<AllocationRequest>,
    wake: Arc<Notify>,
}

impl EmbeddedRegistry {
    /// Opens the registry whose catalog lives in `dir` (`catalog.json`, created on the first
    /// change). Reads the file on a blocking thread.
    pub async fn open(dir: DataDir) -> Result<EmbeddedRegistry, Error> {
        let reader = dir.clone();
        let specs = tokio::task::spawn_blocking(move || catalog_file::read(&reader))
            .await
            .map_err(|e| Error::failed(BACKEND, format!("reading the catalog: {e}")))??;
        let registry = EmbeddedRegistry::build(Some(dir));
        registry.lock().services = specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        Ok(registry)
    }

    /// A registry whose catalog is not persisted (tests, and tools that only look).
    pub fn in_memory() -> EmbeddedRegistry {
        EmbeddedRegistry::build(None)
    }

    fn build(catalog_dir: Option<DataDir>) -> EmbeddedRegistry {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        EmbeddedRegistry {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                changes,
                catalog_dir,
                catalog_writes: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The state, with expired leases and outcomes dropped (and announced).
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent: a poisoned lock is still usable.
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for change in state.purge(Instant::now()) {
            self.announce(change);
        }
        state
    }

    fn announce(&self, change: Change) {
        // No subscriber is not an error.
        let _ = self.inner.changes.send(change);
    }

    /// Applies `edit` to a copy of the catalog, persists the copy, then makes it current.
    async fn change_catalog(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, ServiceSpec>) -> bool,
    ) -> Result<bool, Error> {
        let _writing = self.inner.catalog_writes.lock().await;
        let mut catalog = self.lock().services.clone();
        let changed = edit(&mut catalog);
        if let Some(dir) = self.inner.catalog_dir.clone() {
            let specs: Vec<ServiceSpec> = catalog.values().cloned().collect();
            tokio::task::spawn_blocking(move || catalog_file::write(&dir, &specs))
                .await
                .map_err(|e| Error::failed(BACKEND, format!("writing the catalog: {e}")))??;
        }
        self.lock().services = catalog;
        Ok(changed)
    }

    fn queue_wake(&self, agent: &str) -> Arc<Notify> {
        self.lock()
            .queues
            .entry(agent.to_string())
            .or_default()
            .wake
            .clone()
    }

    fn take_request(&self, agent: &str) -> Option<AllocationRequest> {
        let mut state = self.lock();
        state.queues.get_mut(agent)?.waiting.pop_front()
    }
}

impl State {
    fn purge(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        self.agents.retain(|id, agent| {
            let alive = agent.expires > now;
            if !alive {
                changes.push(Change::Agent(id.clone()));
            }
            alive
        });
        let mut gone = Vec::new();
        self.instances.retain(|key, instance| {
            let alive = instance.expires > now;
            if !alive {
                gone.push(key.clone());
                changes.push(Change::Instance(key.0.clone()));
            }
            alive
        });
        for key in gone {
            self.used.remove(&key);
        }
        self.outcomes
            .retain(|_, (given, _)| now.duration_since(*given) < OUTCOME_TTL);
        changes
    }
}

impl Registry for EmbeddedRegistry {
    async fn put_service(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let spec = spec.clone();
        let name = spec.name.clone();
        self.change_catalog(move |catalog| catalog.insert(spec.name.clone(), spec).is_none())
            .await?;
        self.announce(Change::Service(name));
        Ok(())
    }

    async fn remove_service(&self, name: &str) -> Result<bool, Error> {
        let removed = self
            .change_catalog(|catalog| catalog.remove(name).is_some())
            .await?;
        if removed {
            self.announce(Change::Service(name.to_string()));
        }
        Ok(removed)
    }

    async fn services(&self) -> Result<Vec<ServiceSpec>, Error> {
        Ok(self.lock().services.values().cloned().collect())
    }

    async fn heartbeat_agent(&self, agent: &AgentInfo, lease: Duration) -> Result<(), Error> {
        let leased = Leased {
            value: agent.clone(),
            expires: Instant::now() + lease,
        };
        let previous = self.lock().agents.insert(agent.id.clone(), leased);
        if previous.map(|p| p.value) != Some(agent.clone()) {
            self.announce(Change::Agent(agent.id.clone()));
        }
        Ok(())
    }

    async fn remove_agent(&self, id: &str) -> Result<(), Error> {
        if self.lock().agents.remove(id).is_some() {
            self.announce(Change::Agent(id.to_string()));
        }
        Ok(())
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, Error> {
        Ok(self
            .lock()
            .agents
            .values()
            .map(|a| a.value.clone())
            .collect())
    }

    async fn put_instance(&self, instance: &Instance, lease: Duration) -> Result<(), Error> {
        let key = (instance.service.clone(), instance.id.clone());
        let leased = Leased {
            value: instance.clone(),
            expires: Instant::now() + lease,
        };
        let previous = self.lock().instances.insert(key, leased);
        if previous.map(|p| p.value) != Some(instance.clone()) {
            self.announce(Change::Instance(instance.service.clone()));
        }
        Ok(())
    }

    async fn remove_instance(&self, service: &str, id: &str) -> Result<(), Error> {
        let key = (service.to_string(), id.to_string());
        let removed = {
            let mut state = self.lock();
            state.used.remove(&key);
            state.instances.remove(&key).is_some()
        };
        if removed {
            self.announce(Change::Instance(service.to_string()));
        }
        Ok(())
    }

    async fn instances(&self, service: Option<&str>) -> Result<Vec<Instance>, Error> {
        let state = self.lock();
        let wanted = |instance: &Instance| match service {
            Some(name) => instance.service == name,
            None => state.services.contains_key(&instance.service),
        };
        Ok(state
            .instances
            .values()
            .map(|i| &i.value)
            .filter(|i| wanted(i))
            .cloned()
            .collect())
    }

    async fn request_allocation(
        &self,
        agent: &str,
        request: &AllocationRequest,
    ) -> Result<(), Error> {
        let wake = {
            let mut state = self.lock();
            let queue = state.queues.entry(agent.to_string()).or_default();
            queue.waiting.push_back(request.clone());
            queue.wake.clone()
        };
        wake.notify_one();
        Ok(())
    }

    async fn next_allocation(
        &self,
        agent: &str,
        wait: Duration,
    ) -> Result<Option<AllocationRequest>, Error> {
        let deadline = Instant::now() + wait;
        let wake = self.queue_wake(agent);
        loop {
            if let Some(request) = self.take_request(agent) {
                return Ok(Some(request));
            }
            // A request queued after the check above leaves a permit: no wake-up is lost.
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                return Ok(self.take_request(agent));
            }
        }
    }

    async fn finish_allocation(
        &self,
        _agent: &str,
        request: &AllocationRequest,
        outcome: &AllocationOutcome,
    ) -> Result<(), Error> {
        let entry = (Instant::now(), outcome.clone());
        self.lock().outcomes.insert(request.id.clone(), entry);
        self.announce(Change::Allocation(request.id.clone()));
        Ok(())
    }

    async fn wait_allocation(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Option<AllocationOutcome>, Error> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.subscribe();
        let outcome = |registry: &Self| {
            registry
                .lock()
                .outcomes
                .get(request_id)
                .map(|(_, outcome)| outcome.clone())
        };
        loop {
            if let Some(found) = outcome(self) {
                return Ok(Some(found));
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => return Ok(outcome(self)),
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(outcome(self)),
                // Lagged, or any notice: look again.
                Ok(_) => {}
            }
        }
    }

    async fn mark_used(&self, service: &str, instance: &str, at: SystemTime) -> Result<(), Error> {
        let key = (service.to_string(), instance.to_string());
        let mut state = self.lock();
        let last = state.used.entry(key).or_insert(at);
        *last = (*last).max(at);
        Ok(())
    }

    async fn last_used(
        &self,
        service: &str,
        instances: &[String],
    ) -> Result<Vec<Option<SystemTime>>, Error> {
        let state = self.lock();
        Ok(instances
            .iter()
            .map(|id| state.used.get(&(service.to_string(), id.clone())).copied())
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }
}
