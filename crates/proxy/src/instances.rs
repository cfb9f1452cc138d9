//! The instances of one service as this proxy sees them, and the choice of one per request
//! (`shared/specs/manager.md`, "Choosing an instance"; the rules are the `balance` crate's).
//!
//! - **Members** follow the registry's view: the ready instances of the service, each with
//!   its balancer state ([`Upstream`]: peak-EWMA latency, requests in flight, health), kept
//!   across view changes by instance id. A request compares the view's list with the one the
//!   members were built from (a pointer comparison) and rebuilds only when it changed; the
//!   service's limits (`soft_latency`, `hard_latency`, or the proxy's overrides) are applied
//!   at the same time.
//! - **Pick**: power of two choices among the members not yet tried by this request, cost =
//!   latency estimate × (in flight + 1), instances on this proxy's host (`local_agent`) win
//!   ties, an instance not measured yet costs `soft_latency`, ejected ones only when every one
//!   is ejected (the least bad).
//! - **Latency** is the time from the request sent to the response head, reported by the
//!   caller through [`Picked`], which also ends the request's in-flight count however the
//!   request ends (its drop), as `balance` requires.
//! - **Usage**: an instance that served a request is reported to the registry for the agents'
//!   idle stop, at most once a second per instance ([`Upstream::usage_due`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use balance::{Candidate, Endpoint, EndpointPolicy, Transition};
use registry::{Instance, ServiceSpec};
use service::Label;

use crate::metrics;
use crate::scale::Scale;

/// One instance and its balancer state, shared by every worker of this proxy.
pub(crate) struct Upstream {
    pub instance: Instance,
    /// On this proxy's host: wins ties.
    pub local: bool,
    endpoint: Mutex<Endpoint>,
    /// A health probe of this (ejected) instance is running.
    pub probing: AtomicBool,
    /// Milliseconds after the proxy's epoch of the last usage report (0: never).
    used_ms: AtomicU64,
    /// Times it was ejected (the dashboard).
    pub ejections: AtomicU64,
}

impl Upstream {
    fn new(instance: Instance, local: bool, policy: EndpointPolicy) -> Upstream {
        Upstream {
            instance,
            local,
            endpoint: Mutex::new(Endpoint::new(policy)),
            probing: AtomicBool::new(false),
            used_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.instance.addr
    }

    /// A ready instance at `addr` with default limits, for tests of what uses one.
    #[cfg(test)]
    pub fn for_tests(addr: SocketAddr) -> Upstream {
        let instance = Instance {
            id: "test".into(),
            service: "test".into(),
            agent: "test".into(),
            addr,
            state: registry::InstanceState::Ready,
            started_at: std::time::SystemTime::now(),
        };
        let limits = Limits {
            soft: Duration::from_millis(100),
            hard: Duration::from_secs(1),
        };
        Upstream::new(instance, true, limits.policy())
    }

    /// The balancer state (held briefly, never across an await).
    pub fn endpoint(&self) -> MutexGuard<'_, Endpoint> {
        // Every update is a few assignments: a panic cannot leave it half-written.
        self.endpoint
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request was answered (head received) `latency` after it was sent; with `end`, it
    /// is no longer in flight either (one lock for both).
    pub fn succeeded(&self, latency: Duration, now: Instant, end: bool) {
        let transition = {
            let mut endpoint = self.endpoint();
            let transition = endpoint.succeeded(latency, now);
            if end {
                endpoint.end(now);
            }
            transition
        };
        self.transition(transition, "over hard_latency");
    }

    /// A request failed (connect error, reset, timeout, broken answer).
    pub fn failed(&self, now: Instant) {
        let transition = self.endpoint().failed(now);
        self.transition(transition, "failed 3 times in a row");
    }

    /// Logs and counts what a report did to the instance's place in rotation.
    pub fn transition(&self, transition: Transition, why: &str) {
        let service = &self.instance.service;
        let instance = &self.instance.id;
        let addr = self.addr();
        match transition {
            Transition::Unchanged => {}
            Transition::Ejected { backoff } => {
                crate::pool::forget(addr);
                self.ejections.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!(metrics::EJECTIONS, "service" => service.clone()).increment(1);
                tracing::warn!(service, instance, %addr, ?backoff, why, "instance ejected");
            }
            Transition::Restored => {
                tracing::info!(service, instance, %addr, "instance back in rotation");
            }
        }
    }

    /// Whether it answered at least one request through this proxy (its estimate is a
    /// measurement, not the neutral start).
    pub fn answered(&self) -> bool {
        self.used_ms.load(Ordering::Relaxed) != 0
    }

    /// Whether this instance's use should be reported now (at most once a second); `now_ms`
    /// counts from the proxy's epoch.
    pub fn usage_due(&self, now_ms: u64) -> bool {
        let last = self.used_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < 1000 {
            return false;
        }
        self.used_ms
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// The latency limits a service's instances are judged by in this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub soft: Duration,
    pub hard: Duration,
}

impl Limits {
    /// The service's limits, or the proxy's overrides of them.
    pub fn of(spec: &ServiceSpec, soft: Option<Duration>, hard: Option<Duration>) -> Limits {
        Limits {
            soft: soft.unwrap_or(spec.soft_latency),
            hard: hard.unwrap_or(spec.hard_latency),
        }
    }

    fn policy(&self) -> EndpointPolicy {
        EndpointPolicy::with_limits(self.soft, self.hard)
    }
}

/// The members of a service at one moment (see the module doc).
pub(crate) struct Members {
    pub spec: Arc<ServiceSpec>,
    /// The view's list they were built from.
    source: Arc<[Instance]>,
    pub limits: Limits,
    pub list: Vec<Arc<Upstream>>,
}

/// One managed service in this proxy.
pub(crate) struct ServiceState {
    pub name: Arc<str>,
    /// The `route` label of its requests in the gateway's metrics.
    pub label: Label,
    members: ArcSwap<Members>,
    rebuilding: Mutex<()>,
    pub scale: Scale,
}

impl ServiceState {
    pub fn new(spec: Arc<ServiceSpec>, limits: Limits) -> ServiceState {
        ServiceState {
            name: Arc::from(spec.name.as_str()),
            label: Label::intern(&spec.name),
            members: ArcSwap::from_pointee(Members {
                spec,
                source: Arc::from(Vec::new()),
                limits,
                list: Vec::new(),
            }),
            rebuilding: Mutex::new(()),
            scale: Scale::new(),
        }
    }

    /// The members as of `spec` and the view's `ready` instances, rebuilt if either changed.
    pub fn sync(
        &self,
        spec: &Arc<ServiceSpec>,
        ready: &Arc<[Instance]>,
        limits: Limits,
        local_agent: &str,
    ) -> arc_swap::Guard<Arc<Members>> {
        let current = self.members.load();
        if Arc::ptr_eq(&current.spec, spec) && Arc::ptr_eq(&current.source, ready) {
            return current;
        }
        drop(current);
        let _one_at_a_time = self
            .rebuilding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.members.load();
        if Arc::ptr_eq(&current.spec, spec) && Arc::ptr_eq(&current.source, ready) {
            return current;
        }
        let rebuilt = rebuild(&current, spec, ready, limits, local_agent);
        self.members.store(Arc::new(rebuilt));
        self.members.load()
    }

    /// The members as last built (for metrics and probes).
    pub fn current(&self) -> Arc<Members> {
        self.members.load_full()
    }
}

/// New members from `ready`, keeping the state of instances already known.
fn rebuild(
    current: &Members,
    spec: &Arc<ServiceSpec>,
    ready: &Arc<[Instance]>,
    limits: Limits,
    local_agent: &str,
) -> Members {
    let list = ready
        .iter()
        .map(|instance| {
            let known = current
                .list
                .iter()
                .find(|u| u.instance.id == instance.id && u.instance.addr == instance.addr);
            match known {
                Some(upstream) => {
                    if current.limits != limits {
                        upstream.endpoint().set_policy(limits.policy());
                    }
                    upstream.clone()
                }
                None => Arc::new(Upstream::new(
                    instance.clone(),
                    instance.agent == local_agent,
                    limits.policy(),
                )),
            }
        })
        .collect();
    Members {
        spec: spec.clone(),
        source: ready.clone(),
        limits,
        list,
    }
}

/// What one pick found.
pub(crate) struct Pick {
    pub picked: Picked,
    /// The best estimate among the members in rotation (`None`: all ejected), for the soft
    /// limit.
    pub best: Option<Duration>,
    /// Members not tried yet besides the one picked (a retry has somewhere to go).
    pub alternatives: usize,
}

thread_local! {
    /// The candidates of this worker's current pick (reused: no allocation per request).
    static CANDIDATES: std::cell::RefCell<Vec<Candidate>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Members {
    /// Picks one member not in `tried` at `now` and counts the request in flight to it;
    /// `None` when every member was tried (or there is none).
    pub fn pick(&self, tried: &[Arc<Upstream>], now: Instant) -> Option<Pick> {
        let untried = |u: &&Arc<Upstream>| !tried.iter().any(|t| Arc::ptr_eq(t, u));
        let (chosen, best, alternatives) = CANDIDATES.with_borrow_mut(|candidates| {
            candidates.clear();
            for (index, upstream) in self.list.iter().enumerate().filter(|(_, u)| untried(u)) {
                candidates.push(upstream.endpoint().candidate(index, upstream.local, now));
            }
            let best = balance::best_estimate(candidates);
            let mut random = |bound: usize| rand::random::<u32>() as usize % bound.max(1);
            let chosen = balance::pick(candidates, &mut random).map(|i| candidates[i].id);
            (chosen, best, candidates.len().saturating_sub(1))
        });
        let upstream = self.list[chosen?].clone();
        upstream.endpoint().start();
        Some(Pick {
            picked: Picked {
                upstream,
                ended: false,
            },
            best,
            alternatives,
        })
    }
}

/// A request in flight to one instance: reports go through it, and its drop ends the
/// request's in-flight count if nothing else did (a cancelled request, a failure).
pub(crate) struct Picked {
    pub upstream: Arc<Upstream>,
    ended: bool,
}

impl Picked {
    /// The response head arrived at `now`, `latency` after the request was sent; the request
    /// is no longer in flight (streamed bodies count to their head, as in tower and Linkerd).
    pub fn succeeded(&mut self, latency: Duration, now: Instant) {
        let end = !std::mem::replace(&mut self.ended, true);
        self.upstream.succeeded(latency, now, end);
    }

    /// The request failed at the instance.
    pub fn failed(&mut self) {
        let now = now();
        self.upstream.failed(now);
        self.end(now);
    }

    /// The request is over with nothing to report (it never reached the instance, or the
    /// client's side failed).
    pub fn abandon(&mut self) {
        self.end(now());
    }

    fn end(&mut self, now: Instant) {
        if !std::mem::replace(&mut self.ended, true) {
            self.upstream.endpoint().end(now);
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if !self.ended {
            self.end(now());
        }
    }
}

/// The balancer's clock: tokio's (paused in tests), as a std `Instant`.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn instance(id: &str, agent: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            service: "hello".into(),
            agent: agent.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            state: registry::InstanceState::Ready,
            started_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn limits() -> Limits {
        Limits {
            soft: Duration::from_millis(100),
            hard: Duration::from_secs(1),
        }
    }

    fn state_with(ready: &[Instance]) -> (ServiceState, Arc<ServiceSpec>, Arc<[Instance]>) {
        let spec = Arc::new(ServiceSpec::new("hello", &["x"]));
        let state = ServiceState::new(spec.clone(), limits());
        let ready: Arc<[Instance]> = Arc::from(ready.to_vec());
        (state, spec, ready)
    }

    #[test]
    fn members_follow_the_view_and_keep_what_they_measured() {
        let (state, spec, ready) = state_with(&[instance("a", "host1", 1), instance("b", "h2", 2)]);
        let members = state.sync(&spec, &ready, limits(), "host1");
        assert_eq!(members.list.len(), 2);
        assert!(members.list[0].local && !members.list[1].local);
        members.list[0].succeeded(Duration::from_millis(7), now(), false);
        let a = members.list[0].clone();
        drop(members);
        // The same list again: nothing rebuilt.
        let same = state.sync(&spec, &ready, limits(), "host1");
        assert!(Arc::ptr_eq(&same.list[0], &a));
        drop(same);
        // b left, c came: a keeps its estimate.
        let next: Arc<[Instance]> =
            Arc::from(vec![instance("a", "host1", 1), instance("c", "h2", 3)]);
        let members = state.sync(&spec, &next, limits(), "host1");
        assert!(Arc::ptr_eq(&members.list[0], &a));
        assert_eq!(a.endpoint().measured_estimate(), Duration::from_millis(7));
        assert_eq!(members.list[1].instance.id, "c");
    }

    #[test]
    fn a_pick_skips_tried_instances_and_its_drop_ends_the_request() {
        let (state, spec, ready) = state_with(&[instance("a", "h", 1), instance("b", "h", 2)]);
        let members = state.sync(&spec, &ready, limits(), "h");
        let first = members.pick(&[], now()).unwrap();
        assert_eq!(first.picked.upstream.endpoint().in_flight(), 1);
        let tried = vec![first.picked.upstream.clone()];
        let second = members.pick(&tried, now()).unwrap();
        assert!(!Arc::ptr_eq(&second.picked.upstream, &tried[0]));
        let both = vec![tried[0].clone(), second.picked.upstream.clone()];
        assert!(members.pick(&both, now()).is_none());
        drop(first);
        assert_eq!(tried[0].endpoint().in_flight(), 0);
    }

    #[test]
    fn the_local_instance_wins_a_tie_between_unmeasured_ones() {
        let (state, spec, ready) = state_with(&[instance("a", "far", 1), instance("b", "me", 2)]);
        let members = state.sync(&spec, &ready, limits(), "me");
        for _ in 0..20 {
            let pick = members.pick(&[], now()).unwrap();
            assert_eq!(pick.picked.upstream.instance.id, "b");
            assert_eq!(pick.best, Some(Duration::from_millis(100)));
        }
    }

    #[test]
    fn usage_is_due_once_a_second() {
        let upstream = Upstream::new(instance("a", "h", 1), true, limits().policy());
        assert!(upstream.usage_due(5));
        assert!(!upstream.usage_due(900));
        assert!(upstream.usage_due(1005));
    }
}
