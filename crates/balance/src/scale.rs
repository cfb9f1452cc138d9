//! The soft limit and the scale-up gate of a service (the manager's "Soft limit" and "Cold
//! start"), as pure state: when to ask for one more instance, and when asking is not allowed.
//!
//! - **Wanted**: the service has no instance in rotation (a cold start), or the best estimate
//!   among those in rotation is over `soft_latency`. The best, not the average: if one instance
//!   is fast enough, the pick already sends traffic there, and another instance would not help.
//! - **Single flight**: at most one allocation in flight per service, so 100 cold requests
//!   start one instance, not 100 (the original's stampede).
//! - **Never past `max`**: counting every instance the service has, starting ones included.
//! - **Cooldown**: not again for `cooldown` (5 s) after one completes, succeeded or failed. A
//!   new instance needs a few requests before its estimate means anything, and a start that
//!   failed would otherwise be retried in a tight loop by every request.

use std::time::{Duration, Instant};

use crate::p2c::Candidate;

/// The manager's `alloc_cooldown`.
pub const ALLOC_COOLDOWN: Duration = Duration::from_secs(5);

/// When a service may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePolicy {
    /// A best estimate over this asks for one more instance.
    pub soft_latency: Duration,
    /// Never more instances than this.
    pub max_instances: usize,
    /// Quiet time after an allocation completes.
    pub cooldown: Duration,
}

/// The answer to "should this request start an allocation?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start one now, and report [`ScaleUp::finished`] when it succeeds or fails.
    Allocate,
    /// The instances there are fast enough.
    Enough,
    /// One more is wanted but may not be started now.
    Held(Hold),
}

/// Why a wanted allocation is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// One is already in flight (wait for it: it is shared).
    InFlight,
    /// The service has `max_instances` already.
    AtMax,
    /// The last one completed less than `cooldown` ago; `left` to go.
    CoolingDown { left: Duration },
}

/// The scale-up state of one service (per proxy).
#[derive(Debug, Clone)]
pub struct ScaleUp {
    policy: ScalePolicy,
    allocating: bool,
    last_finished: Option<Instant>,
}

impl ScaleUp {
    pub fn new(policy: ScalePolicy) -> Self {
        ScaleUp {
            policy,
            allocating: false,
            last_finished: None,
        }
    }

    pub fn policy(&self) -> &ScalePolicy {
        &self.policy
    }

    /// Replaces the policy (the service's spec changed); an allocation in flight stays so.
    pub fn set_policy(&mut self, policy: ScalePolicy) {
        self.policy = policy;
    }

    /// Whether one more instance is wanted, given the best estimate among the instances in
    /// rotation (`None`: there is none).
    pub fn wants_more(&self, best_estimate: Option<Duration>) -> bool {
        best_estimate.is_none_or(|best| best > self.policy.soft_latency)
    }

    /// The soft decision and the gate together: `Allocate` means the caller now owns the one
    /// allocation in flight. `instances` counts every instance of the service, in any state.
    pub fn consider(
        &mut self,
        best_estimate: Option<Duration>,
        instances: usize,
        now: Instant,
    ) -> Decision {
        if !self.wants_more(best_estimate) {
            return Decision::Enough;
        }
        match self.try_start(instances, now) {
            Ok(()) => Decision::Allocate,
            Err(hold) => Decision::Held(hold),
        }
    }

    /// The gate alone: claims the allocation in flight if nothing holds it back.
    pub fn try_start(&mut self, instances: usize, now: Instant) -> Result<(), Hold> {
        if self.allocating {
            return Err(Hold::InFlight);
        }
        if instances >= self.policy.max_instances {
            return Err(Hold::AtMax);
        }
        if let Some(finished) = self.last_finished {
            let since = now.saturating_duration_since(finished);
            if since < self.policy.cooldown {
                return Err(Hold::CoolingDown {
                    left: self.policy.cooldown - since,
                });
            }
        }
        self.allocating = true;
        Ok(())
    }

    /// The allocation in flight completed at `now` (succeeded or failed): the cooldown starts.
    pub fn finished(&mut self, now: Instant) {
        self.allocating = false;
        self.last_finished = Some(now);
    }

    /// Whether an allocation is in flight.
    pub fn is_allocating(&self) -> bool {
        self.allocating
    }
}

/// The lowest latency estimate among the candidates in rotation (`None` if none is).
pub fn best_estimate(candidates: &[Candidate]) -> Option<Duration> {
    candidates
        .iter()
        .filter(|c| !c.is_ejected())
        .map(|c| c.estimate)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn manager(max_instances: usize) -> ScaleUp {
        ScaleUp::new(ScalePolicy {
            soft_latency: 100 * MS,
            max_instances,
            cooldown: ALLOC_COOLDOWN,
        })
    }

    fn candidate(estimate_ms: u64, ejected: bool) -> Candidate {
        Candidate {
            id: 0,
            estimate: Duration::from_millis(estimate_ms),
            in_flight: 0,
            ejected_for: ejected.then_some(Duration::from_secs(1)),
            preferred: false,
        }
    }

    #[test]
    fn the_best_estimate_over_the_soft_limit_asks_for_one_more() {
        let now = Instant::now();
        let mut scale = manager(4);
        assert_eq!(scale.consider(Some(100 * MS), 1, now), Decision::Enough);
        assert_eq!(scale.consider(Some(101 * MS), 1, now), Decision::Allocate);
        assert!(scale.is_allocating());
    }

    #[test]
    fn the_best_counts_only_instances_in_rotation() {
        let candidates = [
            candidate(5, true),
            candidate(150, false),
            candidate(120, false),
        ];
        assert_eq!(best_estimate(&candidates), Some(120 * MS));
        assert_eq!(best_estimate(&[candidate(5, true)]), None);
        assert!(manager(4).wants_more(best_estimate(&candidates)));
    }

    #[test]
    fn a_cold_service_wants_one_and_concurrent_requests_share_a_single_flight() {
        let now = Instant::now();
        let mut scale = manager(4);
        assert_eq!(scale.consider(None, 0, now), Decision::Allocate);
        for _ in 0..100 {
            assert_eq!(scale.consider(None, 0, now), Decision::Held(Hold::InFlight));
        }
    }

    #[test]
    fn never_past_max() {
        let now = Instant::now();
        let mut scale = manager(2);
        assert_eq!(
            scale.consider(Some(900 * MS), 2, now),
            Decision::Held(Hold::AtMax)
        );
        assert_eq!(scale.consider(Some(900 * MS), 1, now), Decision::Allocate);
    }

    #[test]
    fn not_again_within_the_cooldown_after_one_completes() {
        let start = Instant::now();
        let mut scale = manager(4);
        assert_eq!(scale.try_start(1, start), Ok(()));
        let done = start + Duration::from_secs(2);
        scale.finished(done);
        assert!(!scale.is_allocating());
        assert_eq!(
            scale.consider(Some(900 * MS), 2, done + Duration::from_secs(1)),
            Decision::Held(Hold::CoolingDown {
                left: Duration::from_secs(4)
            })
        );
        assert_eq!(
            scale.consider(Some(900 * MS), 2, done + ALLOC_COOLDOWN),
            Decision::Allocate
        );
    }

    proptest! {
        #[test]
        fn the_gate_never_has_two_in_flight_nor_starts_within_the_cooldown(
            steps in prop::collection::vec((0u64..3000, 0usize..6, any::<bool>()), 1..80),
        ) {
            let start = Instant::now();
            let mut scale = manager(4);
            let mut now = start;
            let mut in_flight = false;
            let mut last_finished: Option<Instant> = None;
            for (gap_ms, instances, finish) in steps {
                now += Duration::from_millis(gap_ms);
                if finish && in_flight {
                    scale.finished(now);
                    in_flight = false;
                    last_finished = Some(now);
                }
                if scale.consider(Some(500 * MS), instances, now) == Decision::Allocate {
                    prop_assert!(!in_flight, "two allocations in flight");
                    prop_assert!(instances < 4, "past max");
                    prop_assert!(last_finished.is_none_or(|at| now >= at + ALLOC_COOLDOWN));
                    in_flight = true;
                }
            }
        }
    }
}
