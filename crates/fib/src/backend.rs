//! One remote back end as the client keeps it (its pooled connections and its balancer state:
//! peak-EWMA latency, calls in flight, health), and the order in which one call tries them.
//!
//! The rules are the `balance` crate's; the numbers are the fib client's own:
//! - one failure ejects a back end (back ends are few and a retry elsewhere is cheap), for
//!   250 ms doubling to 4 s, so a back end restarted on the same address is used again within
//!   seconds;
//! - the probe is the next real call once the backoff has passed, one at a time;
//! - a back end not yet measured is assumed to answer in 1 ms, about what a LAN back end takes
//!   for a small N: it gets traffic as soon as a measured one is loaded, not before;
//! - latency is from the request written to the reply's length prefix read (the back end's
//!   time to first byte); a call is in flight from its choice until its reply is read whole
//!   (small replies) or its head is read (streamed ones, as tower and Linkerd count it).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use balance::{Candidate, Endpoint, EndpointPolicy, HealthPolicy, Transition};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::metrics;

/// Ejection after the first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest ejection: a restarted back end is used again within this long.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Latency assumed of a back end until its first answer.
pub const NEUTRAL_LATENCY: Duration = Duration::from_millis(1);

fn policy() -> EndpointPolicy {
    EndpointPolicy {
        decay: balance::DEFAULT_DECAY,
        neutral_latency: NEUTRAL_LATENCY,
        hard_latency: None,
        health: HealthPolicy {
            failures_to_eject: 1,
            first_backoff: FIRST_BACKOFF,
            max_backoff: MAX_BACKOFF,
        },
    }
}

/// One remote back end: its address, connections and balancer state.
pub(crate) struct Backend {
    pub(crate) address: String,
    /// One permit per connection allowed (`pool_size`): calls past it wait for a free one
    /// instead of opening and closing connections at a rate the back end cannot accept.
    pub(crate) slots: Arc<Semaphore>,
    idle: Mutex<Vec<TcpStream>>,
    pub(crate) state: Mutex<Endpoint>,
}

impl Backend {
    pub(crate) fn new(address: &str, pool_size: usize) -> Self {
        Backend {
            address: address.to_string(),
            slots: Arc::new(Semaphore::new(pool_size)),
            idle: Mutex::new(Vec::new()),
            state: Mutex::new(Endpoint::new(policy())),
        }
    }

    pub(crate) fn checkout(&self) -> Option<TcpStream> {
        lock(&self.idle).pop()
    }

    pub(crate) fn checkin(&self, conn: TcpStream, pool_size: usize) {
        let mut idle = lock(&self.idle);
        if idle.len() < pool_size {
            idle.push(conn);
        }
    }

    /// Drops the pooled connections (they are likely broken too, or stale).
    pub(crate) fn clear_idle(&self) {
        lock(&self.idle).clear();
    }

    /// The back end answered, its first bytes `latency` after the request was sent.
    pub(crate) fn succeeded(&self, latency: Duration) {
        let transition = lock(&self.state).succeeded(latency, Instant::now());
        if transition == Transition::Restored {
            tracing::info!(backend = %self.address, "fib back end answers again; back in rotation");
        }
        ::metrics::counter!(metrics::BACKEND_CALLS, "backend" => self.address.clone()).increment(1);
    }

    /// A call to the back end failed (not merely busy).
    pub(crate) fn failed(&self, kind: &'static str, detail: &str) {
        let transition = lock(&self.state).failed(Instant::now());
        self.clear_idle();
        ::metrics::counter!(metrics::BACKEND_ERRORS, "backend" => self.address.clone(), "kind" => kind)
            .increment(1);
        match transition {
            Transition::Ejected { backoff } => {
                tracing::warn!(backend = %self.address, kind, error = %detail, ?backoff, "fib back end failed; out of rotation, retrying elsewhere");
            }
            _ => {
                tracing::warn!(backend = %self.address, kind, error = %detail, "fib back end failed; retrying elsewhere");
            }
        }
    }
}

/// A call counted in flight at its back end until dropped, however the call ends (a caller
/// that goes away included).
pub(crate) struct InFlight<'a> {
    backend: &'a Backend,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.backend.state).end(Instant::now());
    }
}

/// The back ends one call tries, in order: a back end due for its probe first; then each
/// next one by power of two choices among those not tried yet (costs as they were when the
/// call began), those in rotation before the ejected ones, which are a last resort rather
/// than failing without trying.
pub(crate) struct Choices<'a> {
    backends: &'a [Arc<Backend>],
    probe: Option<(&'a Arc<Backend>, InFlight<'a>)>,
    rest: Vec<Candidate>,
}

impl<'a> Choices<'a> {
    pub(crate) fn new(backends: &'a [Arc<Backend>], now: Instant) -> Self {
        let mut probe = None;
        let mut rest = Vec::with_capacity(backends.len());
        for (id, backend) in backends.iter().enumerate() {
            let mut state = lock(&backend.state);
            if probe.is_none() && state.claim_probe(now) {
                probe = Some((backend, InFlight { backend }));
            } else {
                rest.push(state.candidate(id, false, now));
            }
        }
        Choices {
            backends,
            probe,
            rest,
        }
    }

    /// The next back end to try, counted in flight there until the guard drops.
    pub(crate) fn next(&mut self) -> Option<(&'a Arc<Backend>, InFlight<'a>)> {
        if let Some(probe) = self.probe.take() {
            return Some(probe);
        }
        let mut rng = rand::thread_rng();
        let chosen = balance::pick(&self.rest, &mut |bound| rng.gen_range(0..bound))?;
        let backend = &self.backends[self.rest.swap_remove(chosen).id];
        lock(&backend.state).start();
        Some((backend, InFlight { backend }))
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each guarded value is consistent after every statement.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(count: usize) -> Vec<Arc<Backend>> {
        (0..count)
            .map(|i| Arc::new(Backend::new(&format!("127.0.0.1:{}", 1000 + i), 4)))
            .collect()
    }

    fn answer(backend: &Backend, latency: Duration, now: Instant) {
        let mut state = lock(&backend.state);
        state.start();
        state.succeeded(latency, now);
        state.end(now);
    }

    #[test]
    fn every_back_end_is_tried_once_and_the_faster_first() {
        let backends = backends(2);
        let now = Instant::now();
        answer(&backends[0], Duration::from_millis(30), now);
        answer(&backends[1], Duration::from_millis(2), now);
        let mut choices = Choices::new(&backends, now);
        let (first, _guard) = choices.next().expect("first");
        assert_eq!(first.address, backends[1].address);
        assert_eq!(lock(&backends[1].state).in_flight(), 1);
        let (second, _guard) = choices.next().expect("second");
        assert_eq!(second.address, backends[0].address);
        assert!(choices.next().is_none());
    }

    #[test]
    fn a_back_end_due_for_its_probe_is_tried_first_by_one_call_only() {
        let backends = backends(3);
        let now = Instant::now();
        for backend in &backends[1..] {
            answer(backend, Duration::from_millis(1), now);
        }
        lock(&backends[0].state).failed(now);
        let due = now + FIRST_BACKOFF;
        let mut probing = Choices::new(&backends, due);
        let (first, guard) = probing.next().expect("probe");
        assert_eq!(first.address, backends[0].address);
        let mut other = Choices::new(&backends, due);
        let (next, _guard) = other.next().expect("another");
        assert_ne!(next.address, backends[0].address, "one probe at a time");
        // The probing call went away without an answer: the next call probes instead.
        drop(guard);
        drop(probing);
        let mut again = Choices::new(&backends, due);
        assert_eq!(again.next().expect("probe").0.address, backends[0].address);
    }

    #[test]
    fn ejected_back_ends_are_a_last_resort() {
        let backends = backends(2);
        let now = Instant::now();
        lock(&backends[0].state).failed(now);
        let mut choices = Choices::new(&backends, now);
        assert_eq!(choices.next().expect("up").0.address, backends[1].address);
        assert_eq!(choices.next().expect("down").0.address, backends[0].address);
    }
}
