//! What the registry holds besides the catalog: agents, instances, allocation requests and
//! their outcomes, and the change notices views follow. All of them are JSON in Redis (the
//! field names are part of the documented key layout).

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// One host's agent, as it last announced itself (renewed every third of its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Unique among agents; the host name by default.
    pub id: String,
    /// The address proxies reach this host's instances on.
    pub advertise: IpAddr,
    /// Instances this agent runs at most.
    pub max_instances: u32,
    /// Instances it runs now (every state).
    pub running: u32,
    /// When this run of the agent started.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
}

impl AgentInfo {
    /// Whether it can start another instance.
    pub fn has_room(&self) -> bool {
        self.running < self.max_instances
    }
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Started, health check not passed yet: not given traffic.
    Starting,
    /// Answering its health check: proxies may choose it.
    Ready,
    /// Being stopped: proxies stop choosing it, requests in flight finish.
    Draining,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
        }
    }
}

/// One running instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique (random); a restarted process is a new instance with a new id.
    pub id: String,
    pub service: String,
    /// The agent that runs it.
    pub agent: String,
    /// Where proxies send its requests.
    pub addr: SocketAddr,
    pub state: InstanceState,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
}

/// Why an instance is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocReason {
    /// A request came for a service with no ready instance.
    Cold,
    /// The best instance is slower than the service's `soft_latency`.
    SoftLimit,
    /// The service runs fewer than `min` instances.
    Min,
}

/// A request to one agent to start an instance of a service; consumed once, answered once
/// (`finish_allocation`), awaited by whoever asked (`wait_allocation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRequest {
    /// Unique (random); names the outcome.
    pub id: String,
    pub service: String,
    pub reason: AllocReason,
    /// Who asked (a proxy's agent id or host, `portico services`, ...), for logs.
    pub requested_by: String,
    #[serde(with = "humantime_serde")]
    pub requested_at: SystemTime,
    /// The backend's own handle on the delivery (a Redis stream entry id), set when an agent
    /// takes the request; used to acknowledge it.
    #[serde(skip)]
    pub(crate) receipt: Option<String>,
}

impl AllocationRequest {
    /// A new request with a fresh id, made now.
    pub fn new(service: &str, reason: AllocReason, requested_by: &str) -> AllocationRequest {
        AllocationRequest {
            id: new_id(),
            service: service.to_string(),
            reason,
            requested_by: requested_by.to_string(),
            requested_at: SystemTime::now(),
            receipt: None,
        }
    }
}

/// How an allocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationOutcome {
    /// An instance is ready (a new one, or one that was already running on that agent).
    Ready(Instance),
    /// No instance: why (exit status and the last lines of its log, no room, unknown
    /// service, ...).
    Failed { reason: String },
}

/// What changed in the registry; views re-read that part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A catalog entry was put or removed.
    Service(String),
    /// An instance of this service was put, changed state or removed.
    Instance(String),
    /// An agent appeared, changed or left.
    Agent(String),
    /// The allocation with this request id has an outcome.
    Allocation(String),
    /// Anything may have changed (reconnected after an outage, or notices were missed).
    Resync,
}

/// A random id: 16 hex digits (64 bits), unique enough for instances and requests.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_and_outcomes_have_a_readable_json_form() {
        let instance = Instance {
            id: "abc".into(),
            service: "hello".into(),
            agent: "host1".into(),
            addr: "10.0.0.2:4100".parse().unwrap(),
            state: InstanceState::Ready,
            started_at: SystemTime::UNIX_EPOCH,
        };
        let json = serde_json::to_string(&instance).unwrap();
        assert_eq!(
            json,
            r#"{"id":"abc","service":"hello","agent":"host1","addr":"10.0.0.2:4100","state":"ready","started_at":"1970-01-01T00:00:00Z"}"#
        );
        let failed = AllocationOutcome::Failed {
            reason: "exit status 1".into(),
        };
        let json = serde_json::to_string(&failed).unwrap();
        assert_eq!(json, r#"{"failed":{"reason":"exit status 1"}}"#);
        let ready = AllocationOutcome::Ready(instance);
        let back: AllocationOutcome =
            serde_json::from_str(&serde_json::to_string(&ready).unwrap()).unwrap();
        assert_eq!(back, ready);
    }

    #[test]
    fn requests_get_distinct_ids_and_their_receipt_stays_local() {
        let a = AllocationRequest::new("hello", AllocReason::Cold, "proxy");
        let mut b = AllocationRequest::new("hello", AllocReason::Cold, "proxy");
        assert_ne!(a.id, b.id);
        b.receipt = Some("1-0".into());
        let json = serde_json::to_string(&b).unwrap();
        assert!(!json.contains("1-0"), "{json}");
        assert!(json.contains("\"reason\":\"cold\""), "{json}");
    }
}
