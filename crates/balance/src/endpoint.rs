//! One endpoint as the balancer sees it: its peak-EWMA latency, its requests in flight and its
//! health, updated by the caller's reports and read as a [`Candidate`] for the pick.
//!
//! Rules joined here (each part alone is in `ewma.rs` and `health.rs`):
//! - **Too slow is unhealthy**: with a `hard_latency`, an answer that leaves the estimate above
//!   it ejects the endpoint like a failure would (the manager's hard limit); an answer that
//!   leaves it within the limit is a success and restores it.
//! - **A probe starts from a clean slate**: the first answer once the backoff has passed (or a
//!   passed out-of-band probe) forgets the old estimate, which describes the trouble, not the
//!   endpoint now. An out-of-band probe's answer time is the first sample: with the neutral
//!   estimate instead, a restored endpoint next to a faster one would never be picked while
//!   traffic is light (an unmeasured estimate does not fade), and so never measured again.
//! - **A quiet endpoint fades**: with nothing in flight, the estimate read for the pick decays
//!   towards zero with the same time constant, counted from the last answer. Without this, one
//!   slow answer could exile an endpoint for good: the pick never chooses it again, so no sample
//!   ever lowers its estimate. Fading makes it look cheap again after a while, the next pick
//!   measures it, and a real sample corrects the estimate at once (Linkerd decays on read for
//!   the same reason). While requests are in flight nothing fades: silence from an endpoint
//!   that owes answers is no evidence that it is fast.
//! - **In flight** counts from the pick to the end of the request as the caller defines it (the
//!   fib client: the reply read whole, or its head for a streamed one; tower and Linkerd end
//!   it at the response head too).

use std::time::{Duration, Instant};

use crate::ewma::{fade, PeakEwma, DEFAULT_DECAY};
use crate::health::{Health, HealthPolicy, Transition};
use crate::p2c::Candidate;

/// How one endpoint's latency is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Time constant of the latency average (and of fading when quiet).
    pub decay: Duration,
    /// Estimate of an endpoint with no sample yet (the manager: the service's `soft_latency`).
    pub neutral_latency: Duration,
    /// An estimate above this ejects the endpoint (the manager: `hard_latency`); `None`: never.
    pub hard_latency: Option<Duration>,
    /// When failures eject and for how long.
    pub health: HealthPolicy,
}

impl EndpointPolicy {
    /// The manager's rules for a service with these limits: neutral estimate `soft_latency`,
    /// ejection over `hard_latency` or after 3 failures in a row, 10 s doubling to 5 min.
    pub fn with_limits(soft_latency: Duration, hard_latency: Duration) -> Self {
        EndpointPolicy {
            decay: DEFAULT_DECAY,
            neutral_latency: soft_latency,
            hard_latency: Some(hard_latency),
            health: HealthPolicy::default(),
        }
    }
}

/// The balancer's state of one endpoint. Pure: every method that depends on time takes `now`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    latency: PeakEwma,
    hard_latency: Option<Duration>,
    health: Health,
    in_flight: u32,
    /// The last answer or the last request ending, whichever is later: quiet since then.
    last_heard: Option<Instant>,
}

impl Endpoint {
    pub fn new(policy: EndpointPolicy) -> Self {
        Endpoint {
            latency: PeakEwma::new(policy.decay, policy.neutral_latency),
            hard_latency: policy.hard_latency,
            health: Health::new(policy.health),
            in_flight: 0,
            last_heard: None,
        }
    }

    /// Changes the policy (the service's limits were edited), keeping the measurements, the
    /// requests in flight and the health counts.
    pub fn set_policy(&mut self, policy: EndpointPolicy) {
        self.latency
            .set_params(policy.decay, policy.neutral_latency);
        self.hard_latency = policy.hard_latency;
        self.health.set_policy(policy.health);
    }

    /// A request to this endpoint begins (it was picked).
    pub fn start(&mut self) {
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// A request to this endpoint is over at `now`, however it ended (after its success or
    /// failure was reported, or abandoned with no report).
    pub fn end(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.heard(now);
    }

    /// Claims the probe of an ejected endpoint whose backoff has passed, for a caller that
    /// probes with a real request: true (and the request counted in flight) only when nothing
    /// else is in flight to it, so one probe runs at a time, and an abandoned probe frees the
    /// claim when its request [`ends`](Self::end).
    pub fn claim_probe(&mut self, now: Instant) -> bool {
        let claimed = self.in_flight == 0 && self.health.probe_due(now);
        if claimed {
            self.start();
        }
        claimed
    }

    /// A request was answered at `now`, `latency` after it was sent (to the response head).
    pub fn succeeded(&mut self, latency: Duration, now: Instant) -> Transition {
        if self.health.probe_due(now) {
            self.latency.reset();
        }
        self.latency.observe(latency, now);
        self.heard(now);
        if self.over_hard_limit() {
            self.health.eject(now)
        } else {
            self.health.succeeded()
        }
    }

    /// A request failed at `now` (connect error, reset, timeout, unusable reply).
    pub fn failed(&mut self, now: Instant) -> Transition {
        self.health.failed(now)
    }

    /// An out-of-band probe (health check) passed at `now`, answered in `latency`: back in
    /// rotation with a fresh estimate that starts from that answer (see the module doc).
    pub fn probe_succeeded(&mut self, latency: Duration, now: Instant) -> Transition {
        self.latency.reset();
        self.latency.observe(latency, now);
        self.heard(now);
        self.health.probe_succeeded()
    }

    /// An out-of-band probe failed at `now`: ejected again for twice as long.
    pub fn probe_failed(&mut self, now: Instant) -> Transition {
        self.health.probe_failed(now)
    }

    /// The latency estimate as the pick reads it at `now` (faded if quiet; see the module doc).
    pub fn estimate(&self, now: Instant) -> Duration {
        let estimate = self.latency.estimate();
        match self.last_heard {
            Some(heard) if self.in_flight == 0 && self.latency.is_measured() => fade(
                estimate,
                now.saturating_duration_since(heard),
                self.latency.decay(),
            ),
            _ => estimate,
        }
    }

    /// The latency estimate as last measured, without fading (for metrics and the hard limit).
    pub fn measured_estimate(&self) -> Duration {
        self.latency.estimate()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// This endpoint as a candidate of a pick at `now`; `preferred` wins ties (the manager:
    /// an instance on the proxy's own host).
    pub fn candidate(&self, id: usize, preferred: bool, now: Instant) -> Candidate {
        Candidate {
            id,
            estimate: self.estimate(now),
            in_flight: self.in_flight,
            ejected_for: self.health.ejected_for(now),
            preferred,
        }
    }

    fn over_hard_limit(&self) -> bool {
        self.hard_latency
            .is_some_and(|hard| self.latency.estimate() > hard)
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = Some(self.last_heard.map_or(now, |heard| heard.max(now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn manager() -> EndpointPolicy {
        EndpointPolicy::with_limits(100 * MS, 1000 * MS)
    }

    /// One request through `endpoint`: picked, answered after `latency`, ended.
    fn answer(endpoint: &mut Endpoint, latency: Duration, now: Instant) -> Transition {
        endpoint.start();
        let transition = endpoint.succeeded(latency, now);
        endpoint.end(now);
        transition
    }

    fn fail(endpoint: &mut Endpoint, now: Instant) -> Transition {
        endpoint.start();
        let transition = endpoint.failed(now);
        endpoint.end(now);
        transition
    }

    #[test]
    fn a_new_endpoint_costs_its_neutral_estimate() {
        let now = Instant::now();
        let endpoint = Endpoint::new(manager());
        let candidate = endpoint.candidate(7, true, now + Duration::from_secs(60));
        assert_eq!(candidate.estimate, 100 * MS, "no fading before any sample");
        assert_eq!(candidate.in_flight, 0);
        assert_eq!(candidate.ejected_for, None);
        assert_eq!((candidate.id, candidate.preferred), (7, true));
    }

    #[test]
    fn an_estimate_over_the_hard_limit_ejects_and_a_probe_starts_from_a_clean_slate() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(manager());
        assert_eq!(answer(&mut endpoint, 20 * MS, start), Transition::Unchanged);
        assert_eq!(
            answer(&mut endpoint, 1500 * MS, start + MS),
            Transition::Ejected {
                backoff: Duration::from_secs(10)
            }
        );
        // A fast answer from a request already in flight does not bring the estimate under
        // the limit at once: still ejected.
        let soon = start + 2 * MS;
        assert_eq!(answer(&mut endpoint, 5 * MS, soon), Transition::Unchanged);
        assert!(endpoint.health().is_ejected());
        // The backoff passes; the probe is a real request and its answer alone counts.
        let later = start + MS + Duration::from_secs(10);
        assert!(endpoint.claim_probe(later));
        assert!(!endpoint.claim_probe(later), "one probe at a time");
        assert_eq!(endpoint.succeeded(30 * MS, later), Transition::Restored);
        endpoint.end(later);
        assert_eq!(endpoint.measured_estimate(), 30 * MS);
    }

    #[test]
    fn a_slow_probe_ejects_again_for_twice_as_long() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(manager());
        answer(&mut endpoint, 2000 * MS, start);
        let later = start + Duration::from_secs(10);
        assert!(endpoint.claim_probe(later));
        assert_eq!(
            endpoint.succeeded(1200 * MS, later),
            Transition::Ejected {
                backoff: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn three_failures_in_a_row_eject_and_an_abandoned_probe_frees_its_claim() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(manager());
        fail(&mut endpoint, start);
        fail(&mut endpoint, start);
        assert!(!endpoint.health().is_ejected());
        assert!(matches!(
            fail(&mut endpoint, start),
            Transition::Ejected { .. }
        ));
        let later = start + Duration::from_secs(10);
        assert!(endpoint.claim_probe(later));
        endpoint.end(later); // the caller gave up on it without an answer
        assert!(endpoint.claim_probe(later), "claimable again");
        assert_eq!(
            endpoint.failed(later),
            Transition::Ejected {
                backoff: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn an_out_of_band_probe_restores_with_its_answer_as_the_first_sample() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(manager());
        answer(&mut endpoint, 5000 * MS, start);
        let probed = start + Duration::from_secs(10);
        assert!(endpoint.health().probe_due(probed));
        assert_eq!(
            endpoint.probe_succeeded(3 * MS, probed),
            Transition::Restored
        );
        assert_eq!(endpoint.measured_estimate(), 3 * MS);
        // Still slow on real traffic: out again, for twice as long.
        assert_eq!(
            answer(&mut endpoint, 5000 * MS, start + Duration::from_secs(11)),
            Transition::Ejected {
                backoff: Duration::from_secs(20)
            }
        );
        let back = start + Duration::from_secs(31);
        assert_eq!(
            endpoint.probe_failed(back),
            Transition::Ejected {
                backoff: Duration::from_secs(40)
            }
        );
    }

    #[test]
    fn a_restored_endpoint_beside_a_busy_faster_one_is_picked_again_once_it_fades() {
        // Light traffic, one request at a time: only the cheaper of the two is ever picked.
        let start = Instant::now();
        let mut busy = Endpoint::new(manager());
        let mut restored = Endpoint::new(manager());
        answer(&mut restored, 5000 * MS, start); // ejected
        let probed = start + Duration::from_secs(10);
        restored.probe_succeeded(4 * MS, probed);
        let mut now = probed;
        let mut picked_restored = false;
        for _ in 0..600 {
            now += 50 * MS;
            let candidates = [
                busy.candidate(0, false, now),
                restored.candidate(1, false, now),
            ];
            let cheaper = crate::pick(&candidates, &mut |_: usize| 0).unwrap();
            if cheaper == 1 {
                picked_restored = true;
                break;
            }
            answer(&mut busy, 2 * MS, now);
        }
        assert!(
            picked_restored,
            "the restored endpoint was never picked again"
        );
    }

    #[test]
    fn a_quiet_endpoint_fades_but_not_while_it_owes_answers() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(manager());
        answer(&mut endpoint, 800 * MS, start);
        let later = start + Duration::from_secs(10);
        let faded = endpoint.estimate(later);
        let expected = 800.0 * (-1.0f64).exp();
        assert!(
            (faded.as_secs_f64() * 1000.0 - expected).abs() < 0.01,
            "{faded:?}"
        );
        assert_eq!(endpoint.measured_estimate(), 800 * MS, "fading is a read");
        endpoint.start();
        assert_eq!(endpoint.estimate(later), 800 * MS);
        endpoint.end(later);
        assert_eq!(endpoint.estimate(later), 800 * MS, "quiet again from now");
    }

    #[test]
    fn the_cost_is_the_estimate_times_requests_in_flight_plus_one() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(manager());
        answer(&mut endpoint, 10 * MS, start);
        endpoint.start();
        endpoint.start();
        let candidate = endpoint.candidate(0, false, start + Duration::from_secs(5));
        assert_eq!(candidate.in_flight, 2);
        assert_eq!(candidate.cost(), (10 * MS).as_secs_f64() * 3.0);
    }

    #[test]
    fn a_new_policy_applies_to_the_next_answer_and_keeps_the_measurements() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(manager());
        answer(&mut endpoint, 600 * MS, start);
        endpoint.set_policy(EndpointPolicy::with_limits(100 * MS, 500 * MS));
        assert_eq!(endpoint.measured_estimate(), 600 * MS);
        assert!(matches!(
            answer(&mut endpoint, 550 * MS, start + MS),
            Transition::Ejected { .. }
        ));
    }

    #[test]
    fn without_a_hard_limit_slowness_never_ejects() {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(EndpointPolicy {
            hard_latency: None,
            ..manager()
        });
        answer(&mut endpoint, Duration::from_secs(3600), start);
        assert!(!endpoint.health().is_ejected());
    }
}
