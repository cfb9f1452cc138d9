//! Asking an agent for one more instance: the allocator task of the proxy (on the main
//! runtime, in the proxy's `Background`), which runs the allocations the scale gates started
//! (`crate::scale`), at most one per service.
//!
//! The agent is this proxy's own host's (`local_agent`) when it has room, else the least
//! loaded agent with room (fewest instances for its size); the request goes through the
//! registry (`request_allocation`, then `wait_allocation` for up to the service's
//! `start_timeout` and a margin), so it works the same with the embedded registry and an
//! agent inside `portico serve`, and with Redis and agents on other hosts. When an instance
//! is ready the view is re-read at once, so waiting requests see it without waiting for the
//! next notice or re-read; then everyone waiting is told (`Scale::finished`).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use registry::{
    AgentInfo, AllocReason, AllocationOutcome, AllocationRequest, Instance, Registry, ServiceSpec,
};
use tokio::sync::mpsc;

use crate::instances::{now, ServiceState};
use crate::metrics;
use crate::snapshot::AllocationRecord;
use crate::Shared;

/// Allocations waiting for the allocator task; one per service at most is ever in flight, so
/// this is only reached with thousands of services.
pub(crate) const QUEUE: usize = 1024;

/// Beyond the service's `start_timeout`, how long the proxy waits for an agent's answer (the
/// agent's own checks and the registry's round trips).
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// An allocation a scale gate started.
pub(crate) struct AllocJob {
    pub service: Arc<ServiceState>,
    pub spec: Arc<ServiceSpec>,
    pub reason: AllocReason,
}

/// Hands an allocation the gate started to the allocator; if it cannot take it, the gate is
/// told at once that it failed (so it does not stay "in flight" for ever).
pub(crate) fn start(shared: &Shared, job: AllocJob) {
    if let Err(error) = shared.jobs.try_send(job) {
        let job = match error {
            mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
        };
        let reason: Arc<str> = Arc::from("the proxy's allocator is not taking requests");
        job.service.scale.finished(now(), Some(reason));
    }
}

/// The allocator task: runs each job as it comes, concurrently.
pub(crate) async fn run(shared: Arc<Shared>, mut jobs: mpsc::Receiver<AllocJob>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => running.push(allocate(&shared, job)),
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

/// One allocation, from the request to the gate's `finished`.
async fn allocate(shared: &Shared, job: AllocJob) {
    let service = &job.spec.name;
    let started = tokio::time::Instant::now();
    let outcome = request_instance(shared, &job).await;
    let took = started.elapsed();
    let label = if outcome.is_ok() { "ok" } else { "failed" };
    ::metrics::counter!(metrics::ALLOCATIONS, "service" => service.clone(), "outcome" => label)
        .increment(1);
    ::metrics::histogram!(metrics::ALLOCATION_SECONDS, "service" => service.clone())
        .record(took.as_secs_f64());
    let failure: Option<Arc<str>> = match outcome {
        Ok(instance) => {
            tracing::info!(service, instance = %instance.id, agent = %instance.agent, addr = %instance.addr, ?took, reason = ?job.reason, "instance allocated");
            // Waiting requests look in the view: make it show the instance now.
            let refresh = shared.view.refresh_now();
            if tokio::time::timeout(Duration::from_secs(2), refresh)
                .await
                .is_err()
            {
                tracing::debug!(
                    service,
                    "re-reading the registry after an allocation timed out"
                );
            }
            None
        }
        Err(reason) => {
            tracing::warn!(service, %reason, ?took, "allocation failed");
            Some(Arc::from(reason.as_str()))
        }
    };
    shared.allocations.push(AllocationRecord {
        service: service.clone(),
        reason: job.reason,
        failure: failure.as_deref().map(str::to_string),
        took,
        at: std::time::SystemTime::now(),
    });
    job.service.scale.finished(now(), failure);
}

/// Asks the chosen agent and waits for its answer; the error says why in a sentence.
async fn request_instance(shared: &Shared, job: &AllocJob) -> Result<Instance, String> {
    let registry = shared.view.registry();
    let agents = shared.view.agents();
    let agent = choose_agent(&agents, &shared.settings.local_agent)
        .ok_or_else(|| no_agent(&agents))?
        .id
        .clone();
    let requested_by = format!("proxy@{}", shared.settings.local_agent);
    let request = AllocationRequest::new(&job.spec.name, job.reason, &requested_by);
    registry
        .request_allocation(&agent, &request)
        .await
        .map_err(|error| format!("asking agent {agent}: {error}"))?;
    let wait = job.spec.start_timeout + ANSWER_MARGIN;
    match registry.wait_allocation(&request.id, wait).await {
        Ok(Some(AllocationOutcome::Ready(instance))) => Ok(instance),
        Ok(Some(AllocationOutcome::Failed { reason })) => {
            Err(format!("agent {agent} could not start one: {reason}"))
        }
        Ok(None) => Err(format!(
            "agent {agent} gave no answer within {}",
            humantime::format_duration(wait)
        )),
        Err(error) => Err(format!("waiting for agent {agent}: {error}")),
    }
}

/// Why no agent could be asked.
fn no_agent(agents: &[AgentInfo]) -> String {
    if agents.is_empty() {
        "no agent is registered to start one".to_string()
    } else {
        format!(
            "every agent is full ({} agents, each at its max_instances)",
            agents.len()
        )
    }
}

/// The agent to ask: `local` if it has room, else the one with room that is least loaded
/// (lowest share of its `max_instances` in use, then fewest instances, then by id).
pub(crate) fn choose_agent<'a>(agents: &'a [AgentInfo], local: &str) -> Option<&'a AgentInfo> {
    let with_room = agents.iter().filter(|agent| agent.has_room());
    if let Some(own) = with_room.clone().find(|agent| agent.id == local) {
        return Some(own);
    }
    with_room.min_by(|a, b| {
        let load = |agent: &AgentInfo| f64::from(agent.running) / f64::from(agent.max_instances);
        load(a)
            .total_cmp(&load(b))
            .then(a.running.cmp(&b.running))
            .then(a.id.cmp(&b.id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn agent(id: &str, running: u32, max: u32) -> AgentInfo {
        AgentInfo {
            id: id.into(),
            advertise: "10.0.0.1".parse().unwrap(),
            max_instances: max,
            running,
            started_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_own_host_is_asked_while_it_has_room() {
        let agents = [agent("a", 0, 8), agent("me", 7, 8)];
        assert_eq!(choose_agent(&agents, "me").unwrap().id, "me");
    }

    #[test]
    fn else_the_least_loaded_agent_with_room() {
        let agents = [
            agent("a", 3, 4),
            agent("b", 1, 8),
            agent("c", 1, 4),
            agent("me", 4, 4),
        ];
        assert_eq!(choose_agent(&agents, "me").unwrap().id, "b");
        assert_eq!(choose_agent(&agents, "elsewhere").unwrap().id, "b");
        // Equal shares: fewer instances, then the id.
        let ties = [agent("x", 2, 8), agent("z", 1, 4), agent("y", 1, 4)];
        assert_eq!(choose_agent(&ties, "me").unwrap().id, "y");
    }

    #[test]
    fn no_agent_with_room_is_none_and_says_why() {
        assert!(choose_agent(&[], "me").is_none());
        assert_eq!(no_agent(&[]), "no agent is registered to start one");
        let full = [agent("a", 4, 4)];
        assert!(choose_agent(&full, "a").is_none());
        assert!(no_agent(&full).starts_with("every agent is full (1 agents"));
    }
}
