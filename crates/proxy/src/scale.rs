//! When a service gets one more instance, per proxy: `balance::ScaleUp` (soft limit, single
//! flight, cooldown, `max`) behind a lock, the last failure, and a channel on which the
//! requests waiting for an instance hear that an allocation completed.
//!
//! A cold request (no ready instance) asks with no estimate; every request whose pick found
//! the best estimate over `soft_latency` (or every instance ejected) asks with it. The first
//! to ask when the gate allows starts the one allocation (`crate::allocate`); the rest wait
//! for it (cold) or carry on with the instances there are (soft). A failed start is
//! remembered for the cooldown, so cold requests in that time are answered 503 with its
//! reason at once instead of waiting for an instance nobody is starting.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use balance::{Decision, Hold, ScalePolicy, ScaleUp};
use tokio::sync::watch;

/// What the gate said to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ask {
    /// This request starts the allocation: it must be handed to the allocator, which reports
    /// [`Scale::finished`].
    Start,
    /// No more is wanted (the best estimate is within `soft_latency`).
    Enough,
    /// One is already being started: its outcome is shared.
    InFlight,
    /// The service has `max` instances (some not ready yet).
    AtMax,
    /// The last allocation completed `cooldown - left` ago; `failure` is why, if it failed.
    CoolingDown {
        left: Duration,
        failure: Option<Arc<str>>,
    },
}

/// The last allocation's outcome, as waiting requests see it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Why it failed; `None`: an instance is ready.
    pub failure: Option<Arc<str>>,
}

/// See the module doc.
pub(crate) struct Scale {
    gate: Mutex<Gate>,
    outcomes: watch::Sender<Outcome>,
}

struct Gate {
    scale: ScaleUp,
    last_failure: Option<Arc<str>>,
}

impl Scale {
    pub fn new() -> Scale {
        Scale {
            gate: Mutex::new(Gate {
                scale: ScaleUp::new(ScalePolicy {
                    soft_latency: Duration::ZERO,
                    max_instances: 0,
                    cooldown: Duration::ZERO,
                }),
                last_failure: None,
            }),
            outcomes: watch::Sender::new(Outcome::default()),
        }
    }

    /// Asks for one more instance given the best estimate in rotation (`None`: no instance
    /// in rotation) and the instances the service has in any state.
    pub fn ask(
        &self,
        policy: ScalePolicy,
        best: Option<Duration>,
        instances: usize,
        now: Instant,
    ) -> Ask {
        let mut gate = self.gate();
        if *gate.scale.policy() != policy {
            gate.scale.set_policy(policy);
        }
        match gate.scale.consider(best, instances, now) {
            Decision::Allocate => Ask::Start,
            Decision::Enough => Ask::Enough,
            Decision::Held(Hold::InFlight) => Ask::InFlight,
            Decision::Held(Hold::AtMax) => Ask::AtMax,
            Decision::Held(Hold::CoolingDown { left }) => Ask::CoolingDown {
                left,
                failure: gate.last_failure.clone(),
            },
        }
    }

    /// Tells the requests waiting from now on what the next allocation's outcome is.
    pub fn subscribe(&self) -> watch::Receiver<Outcome> {
        self.outcomes.subscribe()
    }

    /// The allocation started by [`Ask::Start`] completed at `now` (`failure`: why not).
    pub fn finished(&self, now: Instant, failure: Option<Arc<str>>) {
        {
            let mut gate = self.gate();
            gate.scale.finished(now);
            gate.last_failure = failure.clone();
        }
        self.outcomes.send_replace(Outcome { failure });
    }

    /// Whether an allocation is in flight (metrics).
    pub fn is_allocating(&self) -> bool {
        self.gate().scale.is_allocating()
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        // Each change is one call into `ScaleUp` and one assignment: never half-done.
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize) -> ScalePolicy {
        ScalePolicy {
            soft_latency: Duration::from_millis(100),
            max_instances: max,
            cooldown: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_cold_start_is_one_allocation_and_its_failure_is_told_to_everyone_waiting() {
        let scale = Scale::new();
        let start = Instant::now();
        let mut waiting = scale.subscribe();
        assert_eq!(scale.ask(policy(4), None, 0, start), Ask::Start);
        for _ in 0..100 {
            assert_eq!(scale.ask(policy(4), None, 0, start), Ask::InFlight);
        }
        scale.finished(start, Some(Arc::from("exit status 1")));
        waiting.changed().await.unwrap();
        assert_eq!(waiting.borrow().failure.as_deref(), Some("exit status 1"));
        // Within the cooldown a cold request learns the reason at once.
        match scale.ask(policy(4), None, 0, start + Duration::from_secs(1)) {
            Ask::CoolingDown { left, failure } => {
                assert_eq!(left, Duration::from_secs(4));
                assert_eq!(failure.as_deref(), Some("exit status 1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            scale.ask(policy(4), None, 0, start + Duration::from_secs(5)),
            Ask::Start
        );
    }

    #[test]
    fn fast_enough_or_at_max_starts_nothing() {
        let scale = Scale::new();
        let now = Instant::now();
        let fast = Some(Duration::from_millis(20));
        assert_eq!(scale.ask(policy(4), fast, 1, now), Ask::Enough);
        let slow = Some(Duration::from_millis(200));
        assert_eq!(scale.ask(policy(2), slow, 2, now), Ask::AtMax);
        assert!(!scale.is_allocating());
        assert_eq!(scale.ask(policy(2), slow, 1, now), Ask::Start);
        assert!(scale.is_allocating());
    }
}
