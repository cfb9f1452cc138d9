//! Health of one endpoint: failures in a row eject it for a backoff that doubles up to a
//! ceiling while it keeps failing; once the backoff has passed, a probe decides (success puts
//! it back, failure ejects it again for twice as long).
//!
//! The probe is whatever the caller trusts: the fib client sends the next real call (see
//! [`crate::Endpoint::claim_probe`]); the service manager runs its health check. Failures of
//! calls that were already in flight when the endpoint was ejected are the same incident and
//! do not lengthen the backoff; only a failure after the backoff (the probe's) doubles it.

use std::time::{Duration, Instant};

/// The manager's rule: three failures in a row (connect error, reset, timeout) eject an
/// instance. One is noise (a single reset during a deploy); three in a row is a pattern.
pub const FAILURES_TO_EJECT: u32 = 3;
/// The manager's first ejection: 10 s, long enough for a struggling instance to drain its queue.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// The manager's longest ejection: 5 min, so a broken instance costs one probe per 5 min, and
/// a repaired one is back within 5 min even if nobody restarts anything.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// When an endpoint is ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Failures in a row that eject an endpoint in rotation (0 counts as 1).
    pub failures_to_eject: u32,
    /// Length of the first ejection.
    pub first_backoff: Duration,
    /// Ceiling of the doubling (wins over `first_backoff` if lower).
    pub max_backoff: Duration,
}

impl Default for HealthPolicy {
    /// The service manager's numbers (`shared/specs/manager.md`, "Hard limit").
    fn default() -> Self {
        HealthPolicy {
            failures_to_eject: FAILURES_TO_EJECT,
            first_backoff: FIRST_BACKOFF,
            max_backoff: MAX_BACKOFF,
        }
    }
}

impl HealthPolicy {
    /// Length of the `ejections`-th ejection in a row (1 for the first): `first_backoff`
    /// doubled `ejections - 1` times, at most `max_backoff`.
    pub fn backoff(&self, ejections: u32) -> Duration {
        let doublings = ejections.saturating_sub(1).min(31);
        self.first_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// What a report did to the endpoint's place in rotation (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    Unchanged,
    /// Taken out of rotation for `backoff`.
    Ejected { backoff: Duration },
    /// Back in rotation.
    Restored,
}

/// The health state of one endpoint.
#[derive(Debug, Clone)]
pub struct Health {
    policy: HealthPolicy,
    failures_in_row: u32,
    /// Ejections with no healthy answer in between: the next backoff is doubled this often.
    ejections_in_row: u32,
    ejected: Option<Ejection>,
}

#[derive(Debug, Clone, Copy)]
struct Ejection {
    at: Instant,
    backoff: Duration,
}

impl Ejection {
    /// Backoff still to run at `now` (zero once it has passed).
    fn left(&self, now: Instant) -> Duration {
        self.backoff
            .saturating_sub(now.saturating_duration_since(self.at))
    }
}

impl Health {
    /// A healthy endpoint under `policy`.
    pub fn new(policy: HealthPolicy) -> Self {
        Health {
            policy,
            failures_in_row: 0,
            ejections_in_row: 0,
            ejected: None,
        }
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// Changes the policy from the next report on (a running backoff keeps its length).
    pub fn set_policy(&mut self, policy: HealthPolicy) {
        self.policy = policy;
    }

    /// Whether the endpoint is out of rotation (in its backoff, or past it awaiting a probe).
    pub fn is_ejected(&self) -> bool {
        self.ejected.is_some()
    }

    /// `None` in rotation; else the backoff still to run at `now` (zero: a probe is due).
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        self.ejected.map(|ejection| ejection.left(now))
    }

    /// Whether the endpoint is ejected and its backoff has passed at `now`.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.ejected_for(now).is_some_and(|left| left.is_zero())
    }

    pub fn failures_in_row(&self) -> u32 {
        self.failures_in_row
    }

    pub fn ejections_in_row(&self) -> u32 {
        self.ejections_in_row
    }

    /// A request was answered in good time: the endpoint is healthy, every count starts over.
    pub fn succeeded(&mut self) -> Transition {
        self.failures_in_row = 0;
        self.ejections_in_row = 0;
        self.restore()
    }

    /// A request failed at `now`. In rotation, the `failures_to_eject`-th failure in a row
    /// ejects; ejected and past the backoff (the probe failed), it ejects again for twice as
    /// long; ejected and still in the backoff (a call from before the ejection), nothing more.
    pub fn failed(&mut self, now: Instant) -> Transition {
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        let too_many = self.failures_in_row >= self.policy.failures_to_eject.max(1);
        if self.is_ejected() || too_many {
            self.eject(now) // no change while the backoff runs
        } else {
            Transition::Unchanged
        }
    }

    /// Ejects the endpoint at `now` for the next backoff, whatever its failure count (the
    /// caller found it too slow, or its probe failed). No change while a backoff is running.
    pub fn eject(&mut self, now: Instant) -> Transition {
        if self
            .ejected
            .is_some_and(|ejection| !ejection.left(now).is_zero())
        {
            return Transition::Unchanged;
        }
        self.ejections_in_row = self.ejections_in_row.saturating_add(1);
        let backoff = self.policy.backoff(self.ejections_in_row);
        self.ejected = Some(Ejection { at: now, backoff });
        Transition::Ejected { backoff }
    }

    /// An out-of-band probe (a health check) succeeded: back in rotation with a clean failure
    /// count, but the ejection streak is kept until a real request goes well, so an endpoint
    /// that passes its health check yet still fails its traffic is ejected for longer each time.
    pub fn probe_succeeded(&mut self) -> Transition {
        self.failures_in_row = 0;
        self.restore()
    }

    /// An out-of-band probe failed at `now`: ejected again, for twice as long.
    pub fn probe_failed(&mut self, now: Instant) -> Transition {
        self.eject(now)
    }

    fn restore(&mut self) -> Transition {
        match self.ejected.take() {
            Some(_) => Transition::Restored,
            None => Transition::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    /// The fib client's numbers: one failure, 250 ms doubling to 4 s.
    fn fib_policy() -> HealthPolicy {
        HealthPolicy {
            failures_to_eject: 1,
            first_backoff: 250 * MS,
            max_backoff: Duration::from_secs(4),
        }
    }

    #[test]
    fn one_failure_ejects_under_the_fib_policy_then_a_probe_is_due_after_the_backoff() {
        let start = Instant::now();
        let mut health = Health::new(fib_policy());
        assert_eq!(health.ejected_for(start), None);
        assert_eq!(
            health.failed(start),
            Transition::Ejected { backoff: 250 * MS }
        );
        assert_eq!(health.ejected_for(start + 100 * MS), Some(150 * MS));
        assert!(!health.probe_due(start + 249 * MS));
        assert!(health.probe_due(start + 250 * MS));
        assert_eq!(health.succeeded(), Transition::Restored);
        assert!(!health.is_ejected());
    }

    #[test]
    fn the_manager_policy_ejects_on_the_third_failure_in_a_row_only() {
        let start = Instant::now();
        let mut health = Health::new(HealthPolicy::default());
        assert_eq!(health.failed(start), Transition::Unchanged);
        assert_eq!(health.failed(start), Transition::Unchanged);
        health.succeeded();
        assert_eq!(health.failed(start), Transition::Unchanged);
        assert_eq!(health.failed(start), Transition::Unchanged);
        assert_eq!(
            health.failed(start),
            Transition::Ejected {
                backoff: FIRST_BACKOFF
            }
        );
    }

    #[test]
    fn failures_of_calls_already_in_flight_do_not_lengthen_the_backoff() {
        let start = Instant::now();
        let mut health = Health::new(fib_policy());
        health.failed(start);
        for i in 1..10 {
            assert_eq!(health.failed(start + i * MS), Transition::Unchanged);
        }
        assert_eq!(health.ejected_for(start + 10 * MS), Some(240 * MS));
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_ceiling_and_success_starts_over() {
        let start = Instant::now();
        let mut health = Health::new(HealthPolicy::default());
        let mut now = start;
        for _ in 0..3 {
            health.failed(now);
        }
        let mut expected = FIRST_BACKOFF;
        for _ in 0..8 {
            assert_eq!(health.ejected_for(now), Some(expected));
            now += expected;
            assert!(health.probe_due(now));
            expected = (expected * 2).min(MAX_BACKOFF);
            assert_eq!(
                health.failed(now),
                Transition::Ejected { backoff: expected }
            );
        }
        assert_eq!(expected, MAX_BACKOFF, "10 s doubled past 5 min is capped");
        now += MAX_BACKOFF;
        assert_eq!(health.succeeded(), Transition::Restored);
        for _ in 0..3 {
            health.failed(now);
        }
        assert_eq!(health.ejected_for(now), Some(FIRST_BACKOFF));
    }

    #[test]
    fn an_out_of_band_probe_restores_but_keeps_the_ejection_streak() {
        let start = Instant::now();
        let mut health = Health::new(HealthPolicy::default());
        health.eject(start);
        assert_eq!(
            health.probe_failed(start + FIRST_BACKOFF),
            Transition::Ejected {
                backoff: 2 * FIRST_BACKOFF
            }
        );
        let back = start + 3 * FIRST_BACKOFF;
        assert_eq!(health.probe_succeeded(), Transition::Restored);
        assert_eq!(health.ejected_for(back), None);
        // Still slow or failing on real traffic: the next ejection continues the doubling.
        assert_eq!(
            health.eject(back),
            Transition::Ejected {
                backoff: 4 * FIRST_BACKOFF
            }
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped_even_for_huge_counts() {
        let policy = fib_policy();
        assert_eq!(policy.backoff(1), 250 * MS);
        assert_eq!(policy.backoff(2), 500 * MS);
        assert_eq!(policy.backoff(3), 1000 * MS);
        assert_eq!(policy.backoff(5), Duration::from_secs(4));
        assert_eq!(policy.backoff(50), Duration::from_secs(4));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(4));
    }

    proptest! {
        #[test]
        fn backoff_is_monotonic_and_capped(
            first_ms in 0u64..1_000_000,
            max_ms in 0u64..10_000_000,
            ejections in 0u32..200,
        ) {
            let policy = HealthPolicy {
                failures_to_eject: 1,
                first_backoff: Duration::from_millis(first_ms),
                max_backoff: Duration::from_millis(max_ms),
            };
            let this = policy.backoff(ejections);
            let next = policy.backoff(ejections + 1);
            prop_assert!(this <= next);
            prop_assert!(next <= policy.max_backoff);
            prop_assert!(next <= this.saturating_mul(2).max(policy.first_backoff.min(policy.max_backoff)));
        }

        #[test]
        fn an_ejected_endpoint_is_never_back_before_its_backoff_without_a_success(
            failures in prop::collection::vec(0u64..30_000, 1..40),
        ) {
            let start = Instant::now();
            let mut health = Health::new(HealthPolicy::default());
            let mut now = start;
            let mut out_until: Option<Instant> = None;
            for gap in failures {
                now += Duration::from_millis(gap);
                if let Transition::Ejected { backoff } = health.failed(now) {
                    prop_assert!(out_until.is_none_or(|until| now >= until));
                    out_until = Some(now + backoff);
                }
                if let Some(until) = out_until {
                    prop_assert_eq!(health.probe_due(now), now >= until);
                }
            }
        }
    }
}
