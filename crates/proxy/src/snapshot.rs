//! What the proxy knows now, for the dashboard: each service's instances as this proxy
//! measures them (latency estimate, requests in flight, ejected or not, ejections so far)
//! and the recent allocations with how long they took and why they were asked for. Read on
//! demand (a lock per instance, held for a copy); allocations are kept in a ring of
//! [`RECENT_ALLOCATIONS`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use registry::AllocReason;

use crate::Shared;

/// Allocations remembered.
pub const RECENT_ALLOCATIONS: usize = 50;

/// One instance as this proxy measures it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStats {
    pub id: String,
    /// Peak-EWMA latency estimate (as measured, not faded); `None` before any answer.
    pub latency: Option<Duration>,
    pub in_flight: u32,
    pub ejected: bool,
    /// Times it was taken out of rotation since this proxy first saw it.
    pub ejections: u64,
}

/// One service's instances, as this proxy sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStats {
    pub name: String,
    pub instances: Vec<InstanceStats>,
    /// An allocation for it is under way.
    pub allocating: bool,
}

/// One allocation this proxy asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationRecord {
    pub service: String,
    pub reason: AllocReason,
    /// The error, when it failed.
    pub failure: Option<String>,
    pub took: Duration,
    /// When it ended.
    pub at: SystemTime,
}

/// The recent allocations (a ring).
#[derive(Debug, Default)]
pub(crate) struct Allocations(Mutex<VecDeque<AllocationRecord>>);

impl Allocations {
    pub(crate) fn push(&self, record: AllocationRecord) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == RECENT_ALLOCATIONS {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    fn newest_first(&self) -> Vec<AllocationRecord> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

/// Every service that had a request, and the recent allocations (newest first).
pub(crate) fn take(shared: &Shared) -> (Vec<ServiceStats>, Vec<AllocationRecord>) {
    let services = shared
        .states()
        .iter()
        .map(|state| {
            let members = state.current();
            let instances = members
                .list
                .iter()
                .map(|upstream| {
                    let endpoint = upstream.endpoint();
                    let measured = endpoint.in_flight() > 0 || upstream.answered();
                    InstanceStats {
                        id: upstream.instance.id.clone(),
                        latency: measured.then(|| endpoint.measured_estimate()),
                        in_flight: endpoint.in_flight(),
                        ejected: endpoint.health().is_ejected(),
                        ejections: upstream.ejections.load(Ordering::Relaxed),
                    }
                })
                .collect();
            ServiceStats {
                name: state.name.to_string(),
                instances,
                allocating: state.scale.is_allocating(),
            }
        })
        .collect();
    (services, shared.allocations.newest_first())
}
