//! The agent's supervisor: one task that owns every decision, fed by events (allocation
//! requests, reports of instance tasks) and a reconcile tick. No locks: instance tasks report
//! back through the same bounded channel.
//!
//! It keeps **slots**: instances this agent wants running. A slot holds one instance at a
//! time; when that instance crashes the slot restarts it after a backoff (1 s doubling to
//! 1 min) for as long as the service wants it: below `min`, or used within `idle_timeout`.
//! Each reconcile:
//!
//! - restarts slots whose backoff has passed;
//! - stops the instances of services removed from the catalog (confirmed by a direct read,
//!   since the view may lag behind a service just added);
//! - starts instances for services below `min`: the registry-wide count (every agent's
//!   instances, any state) is compared with `min`, and only one agent acts, the least loaded
//!   one with room (ties by id), so agents do not all start the missing ones;
//! - stops instances above `min` that served nothing for `idle_timeout` (the last use the
//!   proxies recorded, or the moment it became ready), least recently used first, never
//!   taking the service's ready instances below `min`.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use registry::{
    AllocReason, AllocationOutcome, AllocationRequest, Instance, Registry, ServiceSpec, View,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::instance::{self, Context, Handle, Report};
use crate::metrics::{self, InstanceGauges};

/// Reconcile at least this often (and whenever the view changes).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// Look for idle instances this often (one registry read per service).
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A request older than this (it waited for an agent that was down) is answered as expired:
/// whoever asked has given up long ago.
const STALE_REQUEST: Duration = Duration::from_secs(60);

pub type SlotId = u64;

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// What the supervisor is told.
#[derive(Debug)]
pub enum Event {
    Allocate(AllocationRequest, Instant),
    Report(Report),
    /// Stop every instance, then answer.
    Stop(oneshot::Sender<()>),
}

pub struct Supervisor {
    context: Arc<Context>,
    view: View,
    max_instances: u32,
    slots: BTreeMap<SlotId, Slot>,
    next_slot: SlotId,
    tasks: JoinSet<()>,
    events: mpsc::Sender<Event>,
    /// Instances with a process (not waiting to restart), for the heartbeat.
    running: Arc<AtomicU32>,
    idle_checked: Option<Instant>,
    gauges: InstanceGauges,
}

struct Slot {
    service: String,
    backoff: Backoff,
    phase: Phase,
    waiters: Vec<(AllocationRequest, Instant)>,
    ever_ready: bool,
    /// Became ready or last used (as far as this agent knows).
    last_active: Instant,
}

enum Phase {
    Starting(Handle),
    Ready {
        handle: Handle,
        instance: Instance,
    },
    /// Asked to stop; the task reports `Stopped`.
    Stopping(Handle),
    /// Crashed; restarts at `until`.
    Waiting {
        until: Instant,
    },
}

impl Phase {
    fn state(&self) -> &'static str {
        match self {
            Phase::Starting(_) => "starting",
            Phase::Ready { .. } => "ready",
            Phase::Stopping(_) => "draining",
            Phase::Waiting { .. } => "waiting",
        }
    }

    fn handle(&self) -> Option<&Handle> {
        match self {
            Phase::Starting(handle) | Phase::Stopping(handle) => Some(handle),
            Phase::Ready { handle, .. } => Some(handle),
            Phase::Waiting { .. } => None,
        }
    }
}

impl Supervisor {
    pub fn new(
        context: Arc<Context>,
        view: View,
        max_instances: u32,
        events: mpsc::Sender<Event>,
        running: Arc<AtomicU32>,
    ) -> Supervisor {
        Supervisor {
            context,
            view,
            max_instances,
            slots: BTreeMap::new(),
            next_slot: 0,
            tasks: JoinSet::new(),
            events,
            running,
            idle_checked: None,
            gauges: InstanceGauges::default(),
        }
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changed = self.view.changed();
        loop {
            let restart = self.next_restart();
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Stop(done)) => {
                        self.stop_all(&mut events).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(event) => self.handle(event).await,
                    None => return,
                },
                _ = tick.tick() => self.reconcile().await,
                Ok(()) = changed.changed() => self.reconcile().await,
                _ = tokio::time::sleep_until(restart.unwrap_or_else(far_future)), if restart.is_some() => {
                    self.restart_due();
                }
                Some(_) = self.tasks.join_next() => {}
            }
            self.publish();
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Allocate(request, taken) => self.allocate(request, taken).await,
            Event::Report(report) => self.on_report(report).await,
            Event::Stop(done) => {
                let _ = done.send(());
            }
        }
    }

    // ---- allocation requests ----

    async fn allocate(&mut self, request: AllocationRequest, taken: Instant) {
        let age = SystemTime::now()
            .duration_since(request.requested_at)
            .unwrap_or_default();
        if age > STALE_REQUEST {
            let reason = format!(
                "request expired: made {} ago",
                humantime::format_duration(age)
            );
            return self
                .answer(&request, taken, AllocationOutcome::Failed { reason })
                .await;
        }
        let Some(spec) = self.spec(&request.service).await else {
            let reason = format!("unknown service {:?}", request.service);
            return self
                .answer(&request, taken, AllocationOutcome::Failed { reason })
                .await;
        };
        if request.reason == AllocReason::Cold {
            if let Some(instance) = self.ready_instance(&spec.name) {
                return self
                    .answer(&request, taken, AllocationOutcome::Ready(instance))
                    .await;
            }
        }
        if let Some(slot) = self.starting_slot(&spec.name) {
            slot.waiters.push((request, taken));
            return;
        }
        if let Err(reason) = self.room_for(&spec) {
            return self
                .answer(&request, taken, AllocationOutcome::Failed { reason })
                .await;
        }
        self.start_slot(spec, vec![(request, taken)]);
    }

    /// The catalog entry: from the view, else read (the view may not have a new one yet).
    async fn spec(&self, name: &str) -> Option<Arc<ServiceSpec>> {
        if let Some(spec) = self.view.service(name) {
            return Some(spec);
        }
        match self.context.registry.service(name).await {
            Ok(found) => found.map(Arc::new),
            Err(error) => {
                tracing::warn!(service = name, %error, "reading the catalog");
                None
            }
        }
    }

    fn ready_instance(&self, service: &str) -> Option<Instance> {
        self.slots.values().find_map(|slot| match &slot.phase {
            Phase::Ready { instance, .. } if slot.service == service => Some(instance.clone()),
            _ => None,
        })
    }

    fn starting_slot(&mut self, service: &str) -> Option<&mut Slot> {
        self.slots
            .values_mut()
            .find(|slot| slot.service == service && matches!(slot.phase, Phase::Starting(_)))
    }

    /// Why another instance of `spec` cannot start here, if it cannot.
    fn room_for(&self, spec: &ServiceSpec) -> Result<(), String> {
        let live = self.live_count();
        if live >= self.max_instances as usize {
            return Err(format!(
                "agent {} is full ({live} of {} instances)",
                self.context.agent_id, self.max_instances
            ));
        }
        let total = self.total_instances(&spec.name);
        if total >= spec.max as usize {
            return Err(format!(
                "{} already has {total} instances (max {})",
                spec.name, spec.max
            ));
        }
        Ok(())
    }

    async fn answer(
        &self,
        request: &AllocationRequest,
        taken: Instant,
        outcome: AllocationOutcome,
    ) {
        let ok = matches!(outcome, AllocationOutcome::Ready(_));
        metrics::allocation(&request.service, ok, taken.elapsed());
        if let AllocationOutcome::Failed { reason } = &outcome {
            tracing::warn!(service = %request.service, request = %request.id, %reason, "allocation failed");
        }
        let registry = &self.context.registry;
        let agent = &self.context.agent_id;
        if let Err(error) = registry.finish_allocation(agent, request, &outcome).await {
            tracing::warn!(request = %request.id, %error, "answering an allocation request");
        }
    }

    // ---- instance reports ----

    async fn on_report(&mut self, report: Report) {
        match report {
            Report::Ready { slot, instance } => self.on_ready(slot, instance).await,
            Report::FailedToStart { slot, reason } => self.on_failed(slot, reason).await,
            Report::Crashed {
                slot,
                reason,
                uptime,
            } => self.on_crashed(slot, &reason, uptime),
            Report::Stopped { slot } => {
                if let Some(slot) = self.slots.remove(&slot) {
                    self.fail_waiters(slot.waiters, "the instance was stopped")
                        .await;
                }
            }
        }
    }

    async fn on_ready(&mut self, id: SlotId, instance: Instance) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let placeholder = Phase::Waiting {
            until: Instant::now(),
        };
        slot.phase = match std::mem::replace(&mut slot.phase, placeholder) {
            Phase::Starting(handle) => Phase::Ready {
                handle,
                instance: instance.clone(),
            },
            // Asked to stop meanwhile: it stops, whatever it reported.
            other => {
                slot.phase = other;
                return;
            }
        };
        slot.ever_ready = true;
        slot.last_active = Instant::now();
        let waiters = std::mem::take(&mut slot.waiters);
        for (request, taken) in waiters {
            self.answer(&request, taken, AllocationOutcome::Ready(instance.clone()))
                .await;
        }
    }

    async fn on_failed(&mut self, id: SlotId, reason: String) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let waiters = std::mem::take(&mut slot.waiters);
        let asked = !waiters.is_empty();
        let stopping = matches!(slot.phase, Phase::Stopping(_));
        if stopping || (asked && !slot.ever_ready) {
            // Asked for and never ready: the asker gets the reason; nobody else wants it.
            self.slots.remove(&id);
        } else {
            self.schedule_restart(id, &reason, Duration::ZERO);
        }
        for (request, taken) in waiters {
            let outcome = AllocationOutcome::Failed {
                reason: reason.clone(),
            };
            self.answer(&request, taken, outcome).await;
        }
    }

    fn on_crashed(&mut self, id: SlotId, reason: &str, uptime: Duration) {
        match self.slots.get(&id).map(|slot| &slot.phase) {
            Some(Phase::Stopping(_)) => {
                self.slots.remove(&id);
            }
            Some(_) => self.schedule_restart(id, reason, uptime),
            None => {}
        }
    }

    fn schedule_restart(&mut self, id: SlotId, reason: &str, uptime: Duration) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let pause = slot.backoff.crashed(uptime);
        tracing::warn!(service = %slot.service, %reason, ?pause, crashes = slot.backoff.crashes(), "restarting after a pause");
        slot.phase = Phase::Waiting {
            until: Instant::now() + pause,
        };
    }

    async fn fail_waiters(&self, waiters: Vec<(AllocationRequest, Instant)>, reason: &str) {
        for (request, taken) in waiters {
            let outcome = AllocationOutcome::Failed {
                reason: reason.to_string(),
            };
            self.answer(&request, taken, outcome).await;
        }
    }

    // ---- reconcile ----

    async fn reconcile(&mut self) {
        self.restart_due();
        self.stop_removed().await;
        self.keep_min();
        let idle_due = self
            .idle_checked
            .is_none_or(|at| at.elapsed() >= IDLE_CHECK_INTERVAL);
        if idle_due {
            self.idle_checked = Some(Instant::now());
            self.stop_idle().await;
        }
    }

    /// When the next crashed slot is due to restart.
    fn next_restart(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|slot| match slot.phase {
                Phase::Waiting { until } => Some(until),
                _ => None,
            })
            .min()
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<SlotId> = self
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot.phase, Phase::Waiting { until } if until <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let service = self.slots[&id].service.clone();
            match self.view.service(&service) {
                Some(spec) => {
                    metrics::restarted(&service);
                    self.launch(id, spec);
                }
                None => {
                    self.slots.remove(&id);
                }
            }
        }
    }

    async fn stop_removed(&mut self) {
        if !self.view.reachable() {
            return;
        }
        let services: HashSet<String> = self.slots.values().map(|s| s.service.clone()).collect();
        for service in services {
            if self.view.service(&service).is_some() {
                continue;
            }
            // The view may not know a service added a moment ago: ask the registry.
            if let Ok(None) = self.context.registry.service(&service).await {
                tracing::info!(%service, "service removed from the catalog; stopping its instances");
                let ids: Vec<SlotId> = self.slot_ids(&service);
                for id in ids {
                    self.stop_slot(id);
                }
            }
        }
    }

    fn keep_min(&mut self) {
        for spec in self.view.services() {
            let missing = (spec.min as usize).saturating_sub(self.total_instances(&spec.name));
            if missing == 0 || !self.starts_min_instances() {
                continue;
            }
            for _ in 0..missing {
                if self.room_for(&spec).is_err() {
                    break;
                }
                tracing::info!(service = %spec.name, min = spec.min, "starting an instance to keep min");
                self.start_slot(spec.clone(), Vec::new());
            }
        }
    }

    /// Whether this agent is the one that starts missing `min` instances: the least loaded
    /// agent with room (ties by id).
    fn starts_min_instances(&self) -> bool {
        let me = self.context.agent_id.as_str();
        let mine = (self.live_count() as u32, me);
        let has_room = mine.0 < self.max_instances;
        let agents = self.view.agents();
        let best_other = agents
            .iter()
            .filter(|agent| agent.id != me && agent.has_room())
            .map(|agent| (agent.running, agent.id.as_str()))
            .min();
        has_room && best_other.is_none_or(|other| mine <= other)
    }

    async fn stop_idle(&mut self) {
        let services: HashSet<String> = self.slots.values().map(|s| s.service.clone()).collect();
        for service in services {
            let Some(spec) = self.view.service(&service) else {
                continue;
            };
            self.refresh_last_use(&service).await;
            self.stop_idle_of(&spec);
        }
    }

    /// Takes the proxies' last-use marks of this service's ready instances into account.
    async fn refresh_last_use(&mut self, service: &str) {
        let ready: Vec<(SlotId, String)> = self
            .slots
            .iter()
            .filter_map(|(id, slot)| match &slot.phase {
                Phase::Ready { instance, .. } if slot.service == service => {
                    Some((*id, instance.id.clone()))
                }
                _ => None,
            })
            .collect();
        if ready.is_empty() {
            return;
        }
        let ids: Vec<String> = ready.iter().map(|(_, id)| id.clone()).collect();
        let used = match self.context.registry.last_used(service, &ids).await {
            Ok(used) => used,
            Err(error) => {
                tracing::debug!(service, %error, "reading last uses; idle check skipped");
                return;
            }
        };
        for ((slot_id, _), used) in ready.iter().zip(used) {
            let Some(at) = used else { continue };
            let ago = SystemTime::now().duration_since(at).unwrap_or_default();
            let used_at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            if let Some(slot) = self.slots.get_mut(slot_id) {
                slot.last_active = slot.last_active.max(used_at);
            }
        }
    }

    fn stop_idle_of(&mut self, spec: &ServiceSpec) {
        let now = Instant::now();
        let mine_ready = self.count(&spec.name, |p| matches!(p, Phase::Ready { .. }));
        let ready_total = self.view.instances(&spec.name).len().max(mine_ready);
        let mut surplus = ready_total.saturating_sub(spec.min as usize);
        let total = self.total_instances(&spec.name);
        let mut idle: Vec<(Instant, SlotId, bool)> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.service == spec.name)
            .filter(|(_, slot)| now.duration_since(slot.last_active) >= spec.idle_timeout)
            .filter_map(|(id, slot)| match slot.phase {
                Phase::Ready { .. } => Some((slot.last_active, *id, true)),
                Phase::Waiting { .. } => Some((slot.last_active, *id, false)),
                _ => None,
            })
            .collect();
        idle.sort();
        for (_, id, ready) in idle {
            if ready && surplus > 0 {
                tracing::info!(service = %spec.name, idle_timeout = ?spec.idle_timeout, "stopping an idle instance");
                self.stop_slot(id);
                surplus -= 1;
            } else if !ready && total > spec.min as usize {
                // Crashed, unused for the idle timeout, not needed for min: no restart.
                self.slots.remove(&id);
            }
        }
    }

    // ---- slots ----

    fn start_slot(&mut self, spec: Arc<ServiceSpec>, waiters: Vec<(AllocationRequest, Instant)>) {
        let id = self.next_slot;
        self.next_slot += 1;
        let slot = Slot {
            service: spec.name.clone(),
            backoff: Backoff::default(),
            phase: Phase::Waiting {
                until: Instant::now(),
            },
            waiters,
            ever_ready: false,
            last_active: Instant::now(),
        };
        self.slots.insert(id, slot);
        self.launch(id, spec);
    }

    /// Starts a new instance in slot `id`.
    fn launch(&mut self, id: SlotId, spec: Arc<ServiceSpec>) {
        let port = match self.free_port() {
            Ok(port) => port,
            Err(error) => {
                tracing::error!(%error, "no free port for an instance; retrying later");
                self.schedule_restart(id, "no free port", Duration::ZERO);
                return;
            }
        };
        let (handle, task) =
            instance::launch(self.context.clone(), id, spec, port, self.events.clone());
        self.tasks.spawn(task);
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.phase = Phase::Starting(handle);
        }
    }

    fn stop_slot(&mut self, id: SlotId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let phase = std::mem::replace(
            &mut slot.phase,
            Phase::Waiting {
                until: Instant::now(),
            },
        );
        slot.phase = match phase {
            Phase::Starting(mut handle) | Phase::Ready { mut handle, .. } => {
                handle.stop();
                Phase::Stopping(handle)
            }
            stopping @ Phase::Stopping(_) => stopping,
            Phase::Waiting { .. } => {
                self.slots.remove(&id);
                return;
            }
        };
    }

    /// A port the kernel would give out now and no instance of this agent holds.
    fn free_port(&self) -> std::io::Result<u16> {
        let taken: HashSet<u16> = self
            .slots
            .values()
            .filter_map(|s| s.phase.handle().map(|h| h.port))
            .collect();
        for _ in 0..20 {
            let port = TcpListener::bind(("0.0.0.0", 0))?.local_addr()?.port();
            if !taken.contains(&port) {
                return Ok(port);
            }
        }
        Err(std::io::Error::other(
            "every port offered is in use by an instance",
        ))
    }

    fn slot_ids(&self, service: &str) -> Vec<SlotId> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.service == service)
            .map(|(id, _)| *id)
            .collect()
    }

    fn count(&self, service: &str, phase: impl Fn(&Phase) -> bool) -> usize {
        self.slots
            .values()
            .filter(|slot| slot.service == service && phase(&slot.phase))
            .count()
    }

    /// Instances with a process here.
    fn live_count(&self) -> usize {
        self.slots
            .values()
            .filter(|slot| !matches!(slot.phase, Phase::Waiting { .. }))
            .count()
    }

    /// The service's instances on every agent: others' as registered, ours as we know them
    /// (crashed ones waiting to restart included, stopping ones not).
    fn total_instances(&self, service: &str) -> usize {
        let me = &self.context.agent_id;
        let others = self
            .view
            .all_instances(service)
            .iter()
            .filter(|instance| &instance.agent != me)
            .count();
        others + self.count(service, |p| !matches!(p, Phase::Stopping(_)))
    }

    fn publish(&mut self) {
        self.running
            .store(self.live_count() as u32, Ordering::Relaxed);
        let mut counts = BTreeMap::new();
        for slot in self.slots.values() {
            *counts
                .entry((slot.service.clone(), slot.phase.state()))
                .or_insert(0) += 1;
        }
        self.gauges.set(&counts);
    }

    // ---- shutdown ----

    /// Stops every instance (each drains, then is terminated) and waits for them, at most
    /// `drain + stop_timeout` and a little more; what is left then is killed when the
    /// tasks are dropped.
    async fn stop_all(&mut self, events: &mut mpsc::Receiver<Event>) {
        let ids: Vec<SlotId> = self.slots.keys().copied().collect();
        for id in ids {
            self.stop_slot(id);
        }
        let mut waiters = Vec::new();
        for slot in self.slots.values_mut() {
            waiters.append(&mut slot.waiters);
        }
        self.fail_waiters(waiters, "the agent is stopping").await;
        let limit = self.context.drain + self.context.stop_timeout + Duration::from_secs(5);
        let deadline = Instant::now() + limit;
        while !self.slots.is_empty() {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(left = self.slots.len(), "instances did not stop in time; killing them");
                    break;
                }
            };
            match event {
                Some(Event::Report(Report::Stopped { slot }))
                | Some(Event::Report(Report::FailedToStart { slot, .. }))
                | Some(Event::Report(Report::Crashed { slot, .. })) => {
                    self.slots.remove(&slot);
                }
                Some(Event::Report(Report::Ready { .. })) => {}
                Some(Event::Allocate(request, taken)) => {
                    let outcome = AllocationOutcome::Failed {
                        reason: "the agent is stopping".into(),
                    };
                    self.answer(&request, taken, outcome).await;
                }
                Some(Event::Stop(done)) => {
                    let _ = done.send(());
                }
                None => break,
            }
        }
        self.publish();
        self.tasks.shutdown().await;
    }
}
