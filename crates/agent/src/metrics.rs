//! The agent's metrics (Prometheus names on `/metrics`). Label values are catalog service
//! names and fixed words, so the series are bounded by the catalog.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Restarts of crashed instances, by service.
pub const RESTARTS: &str = "portico_agent_restarts_total";
/// Instances this agent runs, by service and state (`starting`, `ready`, `draining`,
/// `waiting`: crashed, restart pending).
pub const INSTANCES: &str = "portico_agent_instances";
/// Allocation requests answered, by service and outcome (`ok`, `failed`).
pub const ALLOCATIONS: &str = "portico_agent_allocations_total";
/// Time from taking an allocation request to answering it, by service and outcome.
pub const ALLOCATION_SECONDS: &str = "portico_agent_allocation_seconds";

pub fn restarted(service: &str) {
    metrics::counter!(RESTARTS, "service" => service.to_string()).increment(1);
}

pub fn allocation(service: &str, ok: bool, took: Duration) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::counter!(ALLOCATIONS, "service" => service.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(ALLOCATION_SECONDS, "service" => service.to_string(), "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// The instance gauges, set from counts by (service, state); series that dropped to nothing
/// are set to zero rather than left at their last value.
#[derive(Default)]
pub struct InstanceGauges {
    reported: HashSet<(String, &'static str)>,
}

impl InstanceGauges {
    pub fn set(&mut self, counts: &BTreeMap<(String, &'static str), usize>) {
        for key in self.reported.iter() {
            if !counts.contains_key(key) {
                gauge(key, 0);
            }
        }
        for (key, count) in counts {
            gauge(key, *count);
        }
        self.reported = counts.keys().cloned().collect();
    }
}

fn gauge((service, state): &(String, &'static str), count: usize) {
    metrics::gauge!(INSTANCES, "service" => service.clone(), "state" => *state).set(count as f64);
}
