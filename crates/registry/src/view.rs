//! `View`: what a proxy or an agent reads on every request: a local snapshot of the registry
//! (catalog, instances by service, agents), read without a lock or a network call.
//!
//! A background task keeps it current: each change notice makes it re-read the part that
//! changed (a burst of notices is one re-read), and everything is re-read every
//! [`REREAD_INTERVAL`], so a lost notice or an expired lease heals within that time. When the
//! registry cannot be reached the snapshot is kept as it was (proxies keep serving the
//! instances they knew, which keep running) and [`View::reachable`] says so; the next
//! successful read replaces it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
// Read on every proxied request: foldhash, not SipHash (keys are the catalog's names).
use foldhash::HashMap;
use service::Background;
use tokio::sync::{broadcast, watch};

use crate::{
    AgentInfo, AnyRegistry, Change, Error, Instance, InstanceState, Registry, ServiceSpec,
};

/// Everything is re-read this often, whatever the notices said.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(2);

/// How long [`View::start`] waits for the first read before serving an empty view.
const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// See the module doc. Clones share the same snapshot.
#[derive(Clone)]
pub struct View {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.shared.snapshot.load();
        f.debug_struct("View")
            .field("registry", &self.shared.registry.kind())
            .field("services", &snapshot.services.len())
            .field("agents", &snapshot.agents.len())
            .field("reachable", &self.reachable())
            .finish()
    }
}

struct Shared {
    registry: AnyRegistry,
    snapshot: ArcSwap<Snapshot>,
    changed: watch::Sender<u64>,
    reachable: AtomicBool,
    empty: Arc<[Instance]>,
}

#[derive(Default, Clone, PartialEq)]
struct Snapshot {
    services: HashMap<String, Arc<ServiceSpec>>,
    /// Every instance with a valid lease, by service, sorted by id.
    all: HashMap<String, Arc<[Instance]>>,
    /// The ready ones among them.
    ready: HashMap<String, Arc<[Instance]>>,
    agents: Arc<[AgentInfo]>,
}

impl View {
    /// Reads the registry once (waiting at most 3 s; an unreachable registry gives an empty
    /// view that fills when it answers), then keeps the view current in a task of
    /// `background`.
    pub async fn start(registry: AnyRegistry, background: &Background) -> View {
        let changes = registry.subscribe();
        let view = View {
            shared: Arc::new(Shared {
                registry,
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                changed: watch::Sender::new(0),
                reachable: AtomicBool::new(false),
                empty: Arc::from(Vec::new()),
            }),
        };
        let first = tokio::time::timeout(FIRST_READ_TIMEOUT, view.refresh_now()).await;
        if !matches!(first, Ok(Ok(()))) {
            tracing::warn!(
                registry = view.shared.registry.kind(),
                "registry not readable at start; the view fills when it answers"
            );
        }
        let follower = view.clone();
        background.spawn("registry view", follower.follow(changes));
        view
    }

    /// The registry this view reads.
    pub fn registry(&self) -> &AnyRegistry {
        &self.shared.registry
    }

    /// The catalog entry `name`.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceSpec>> {
        self.shared.snapshot.load().services.get(name).cloned()
    }

    /// Every catalog entry, sorted by name.
    pub fn services(&self) -> Vec<Arc<ServiceSpec>> {
        let snapshot = self.shared.snapshot.load();
        let mut all: Vec<_> = snapshot.services.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The ready instances of `service` (leases valid as of the last read), sorted by id.
    pub fn instances(&self, service: &str) -> Arc<[Instance]> {
        let snapshot = self.shared.snapshot.load();
        snapshot
            .ready
            .get(service)
            .cloned()
            .unwrap_or_else(|| self.shared.empty.clone())
    }

    /// Every instance of `service`, starting and draining ones too (for `max`).
    pub fn all_instances(&self, service: &str) -> Arc<[Instance]> {
        let snapshot = self.shared.snapshot.load();
        snapshot
            .all
            .get(service)
            .cloned()
            .unwrap_or_else(|| self.shared.empty.clone())
    }

    /// Agents with a valid lease, sorted by id.
    pub fn agents(&self) -> Arc<[AgentInfo]> {
        self.shared.snapshot.load().agents.clone()
    }

    /// A receiver whose value increases on every change of the snapshot.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Whether the last read of the registry succeeded.
    pub fn reachable(&self) -> bool {
        self.shared.reachable.load(Ordering::Relaxed)
    }

    /// Re-reads everything now (after a change this process made, to see it at once).
    pub async fn refresh_now(&self) -> Result<(), Error> {
        self.refresh(&HashSet::from([Change::Resync])).await
    }

    async fn follow(self, mut changes: broadcast::Receiver<Change>) {
        let mut tick = tokio::time::interval(REREAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let mut pending = HashSet::new();
            tokio::select! {
                _ = tick.tick() => { pending.insert(Change::Resync); }
                received = changes.recv() => { pending.insert(notice(received)); }
            }
            loop {
                match changes.try_recv() {
                    Ok(change) => pending.insert(change),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        pending.insert(Change::Resync)
                    }
                    Err(_) => break,
                };
            }
            pending.retain(|c| !matches!(c, Change::Allocation(_)));
            if !pending.is_empty() {
                // Failures are logged in `refresh`; the view keeps what it had.
                let _ = self.refresh(&pending).await;
            }
        }
    }

    /// Re-reads what `pending` names and publishes the new snapshot if it differs.
    async fn refresh(&self, pending: &HashSet<Change>) -> Result<(), Error> {
        let current = self.shared.snapshot.load_full();
        let outcome = self.read(&current, pending).await;
        let was_reachable = self
            .shared
            .reachable
            .swap(outcome.is_ok(), Ordering::Relaxed);
        let next = match outcome {
            Ok(next) => next,
            Err(error) => {
                if was_reachable {
                    tracing::warn!(%error, "registry unreachable; serving from the last view");
                }
                return Err(error);
            }
        };
        if !was_reachable {
            tracing::info!(registry = self.shared.registry.kind(), "registry read");
        }
        if next != *current {
            self.shared.snapshot.store(Arc::new(next));
            self.shared.changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn read(&self, current: &Snapshot, pending: &HashSet<Change>) -> Result<Snapshot, Error> {
        let registry = &self.shared.registry;
        if pending.contains(&Change::Resync) {
            let mut next = Snapshot::default();
            next.set_services(registry.services().await?);
            next.set_instances(None, registry.instances(None).await?);
            next.agents = sorted_agents(registry.agents().await?);
            return Ok(next);
        }
        let mut next = current.clone();
        for change in pending {
            match change {
                Change::Service(name) => {
                    next.set_services(registry.services().await?);
                    next.set_instances(Some(name), registry.instances(Some(name)).await?);
                }
                Change::Instance(service) => {
                    next.set_instances(Some(service), registry.instances(Some(service)).await?);
                }
                Change::Agent(_) => next.agents = sorted_agents(registry.agents().await?),
                Change::Allocation(_) | Change::Resync => {}
            }
        }
        Ok(next)
    }
}

/// A received notice; a lagging or closed channel means "re-read everything".
fn notice(received: Result<Change, broadcast::error::RecvError>) -> Change {
    received.unwrap_or(Change::Resync)
}

fn sorted_agents(mut agents: Vec<AgentInfo>) -> Arc<[AgentInfo]> {
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    Arc::from(agents)
}

impl Snapshot {
    fn set_services(&mut self, specs: Vec<ServiceSpec>) {
        self.services = specs
            .into_iter()
            .map(|spec| (spec.name.clone(), Arc::new(spec)))
            .collect();
        let known = |name: &String| self.services.contains_key(name);
        self.all.retain(|name, _| known(name));
        self.ready.retain(|name, _| known(name));
    }

    /// Replaces the instances of `service` (or of every service) with `instances`.
    fn set_instances(&mut self, service: Option<&str>, mut instances: Vec<Instance>) {
        match service {
            Some(name) => {
                self.all.remove(name);
                self.ready.remove(name);
            }
            None => {
                self.all.clear();
                self.ready.clear();
            }
        }
        instances.retain(|i| self.services.contains_key(&i.service));
        instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        let mut by_service: HashMap<String, Vec<Instance>> = HashMap::default();
        for instance in instances {
            by_service
                .entry(instance.service.clone())
                .or_default()
                .push(instance);
        }
        for (name, list) in by_service {
            let ready: Vec<Instance> = list
                .iter()
                .filter(|i| i.state == InstanceState::Ready)
                .cloned()
                .collect();
            if !ready.is_empty() {
                self.ready.insert(name.clone(), Arc::from(ready));
            }
            self.all.insert(name, Arc::from(list));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedRegistry;
    use std::time::SystemTime;

    fn instance(service: &str, id: &str, state: InstanceState) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            agent: "a1".into(),
            addr: "127.0.0.1:4000".parse().unwrap(),
            state,
            started_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_view_follows_changes_and_leases_expire_within_the_reread_interval() {
        let embedded = EmbeddedRegistry::in_memory();
        let registry = AnyRegistry::Embedded(embedded.clone());
        let background = Background::new("test");
        let view = View::start(registry.clone(), &background).await;
        assert!(view.service("hello").is_none());
        let mut changed = view.changed();

        registry
            .put_service(&ServiceSpec::new("hello", &["x"]))
            .await
            .unwrap();
        changed.changed().await.unwrap();
        assert_eq!(view.service("hello").unwrap().command, ["x"]);

        let lease = Duration::from_secs(10);
        let starting = instance("hello", "i1", InstanceState::Starting);
        registry.put_instance(&starting, lease).await.unwrap();
        registry
            .put_instance(&instance("hello", "i2", InstanceState::Ready), lease)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(view.instances("hello").len(), 1);
        assert_eq!(view.all_instances("hello").len(), 2);

        // Only i1 is renewed; i2's lease runs out and the periodic re-read drops it.
        tokio::time::sleep(Duration::from_secs(6)).await;
        registry.put_instance(&starting, lease).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4) + REREAD_INTERVAL).await;
        assert!(view.instances("hello").is_empty());
        assert_eq!(view.all_instances("hello").len(), 1);
        background.stop(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn instances_of_services_outside_the_catalog_are_not_shown() {
        let registry = AnyRegistry::Embedded(EmbeddedRegistry::in_memory());
        registry
            .put_instance(
                &instance("ghost", "i1", InstanceState::Ready),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let background = Background::new("test");
        let view = View::start(registry.clone(), &background).await;
        assert!(view.instances("ghost").is_empty());
        registry
            .put_service(&ServiceSpec::new("ghost", &["x"]))
            .await
            .unwrap();
        view.changed().changed().await.unwrap();
        assert_eq!(view.instances("ghost").len(), 1);
        registry.remove_service("ghost").await.unwrap();
        view.changed().changed().await.unwrap();
        assert!(view.instances("ghost").is_empty());
        background.stop(Duration::from_secs(1)).await;
    }
}
