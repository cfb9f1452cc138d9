//! Peak-EWMA latency of one endpoint (Linkerd's `linkerd/ewma`, tower's `PeakEwma`): an
//! average that believes bad news at once and good news slowly.
//!
//! - A sample above the estimate replaces it: one slow answer is enough to steer traffic away,
//!   because a queue building up at an endpoint shows first as a few slow answers.
//! - A sample below it pulls the estimate down with weight `1 - e^(-elapsed / decay)`, where
//!   `elapsed` is the time since the previous sample. The weight depends on time, not on the
//!   number of samples, so an endpoint answering 10,000 requests a second does not forget a
//!   spike faster than one answering ten.
//! - Until its first sample an endpoint has a neutral estimate chosen by the caller (the
//!   manager: the service's `soft_latency`), so a new endpoint is neither shunned nor flooded;
//!   the first sample replaces it whatever its value.
//!
//! The estimate therefore always lies between the smallest and the largest sample seen since
//! the last [`PeakEwma::reset`] (property-tested below). [`fade`] is the separate rule for an
//! endpoint nothing has been heard from for a while (see `endpoint.rs`).

use std::time::{Duration, Instant};

/// Default time constant: a sample pulls a higher estimate 63% of the way down after 10 s.
/// Linkerd's and Finagle's default: long enough that per-request jitter does not swing the
/// choice, short enough that a recovered endpoint wins its traffic back within tens of seconds.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// A peak-sensitive, time-weighted moving average of latency samples.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    decay: Duration,
    neutral: Duration,
    last: Option<Measured>,
}

#[derive(Debug, Clone, Copy)]
struct Measured {
    estimate: Duration,
    at: Instant,
}

impl PeakEwma {
    /// An average with time constant `decay` that reads `neutral` until its first sample.
    pub fn new(decay: Duration, neutral: Duration) -> Self {
        PeakEwma {
            decay,
            neutral,
            last: None,
        }
    }

    /// Takes in one latency sample measured at `now`.
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let estimate = match self.last {
            None => sample,
            Some(last) if sample >= last.estimate => sample,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                let keep = retained(elapsed, self.decay);
                let blended = secs(last.estimate) * keep + secs(sample) * (1.0 - keep);
                // Mathematically between the two already; the clamp absorbs float rounding.
                from_secs(blended).clamp(sample, last.estimate)
            }
        };
        self.last = Some(Measured { estimate, at: now });
    }

    /// The current estimate: the neutral one until the first sample.
    pub fn estimate(&self) -> Duration {
        self.last.map_or(self.neutral, |last| last.estimate)
    }

    /// Whether any sample has been taken since creation or the last reset.
    pub fn is_measured(&self) -> bool {
        self.last.is_some()
    }

    /// When the last sample was taken.
    pub fn last_sample_at(&self) -> Option<Instant> {
        self.last.map(|last| last.at)
    }

    /// Forgets every sample: the estimate is the neutral one again. For an endpoint coming
    /// back from ejection, whose old estimate describes the trouble it had, not what it is now.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// The time constant.
    pub fn decay(&self) -> Duration {
        self.decay
    }

    /// Changes the time constant and the neutral estimate, keeping what was measured.
    pub fn set_params(&mut self, decay: Duration, neutral: Duration) {
        self.decay = decay;
        self.neutral = neutral;
    }
}

/// `value` after `idle` with no news, fading towards zero with time constant `decay`
/// (`value · e^(-idle / decay)`).
pub fn fade(value: Duration, idle: Duration, decay: Duration) -> Duration {
    from_secs(secs(value) * retained(idle, decay)).min(value)
}

/// Share of the old value kept after `elapsed`: `e^(-elapsed / decay)`, in [0, 1]. A zero
/// `decay` keeps nothing of the past once any time has passed.
fn retained(elapsed: Duration, decay: Duration) -> f64 {
    if elapsed.is_zero() {
        return 1.0;
    }
    if decay.is_zero() {
        return 0.0;
    }
    (-(secs(elapsed) / secs(decay))).exp()
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Non-negative, finite seconds to a `Duration` (saturating for the absurd).
fn from_secs(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ewma() -> PeakEwma {
        PeakEwma::new(DEFAULT_DECAY, 100 * MS)
    }

    #[test]
    fn an_unmeasured_endpoint_reads_the_neutral_estimate_and_the_first_sample_replaces_it() {
        let start = Instant::now();
        let mut average = ewma();
        assert_eq!(average.estimate(), 100 * MS);
        assert!(!average.is_measured());
        average.observe(5 * MS, start);
        assert_eq!(
            average.estimate(),
            5 * MS,
            "below the neutral one, still replaced"
        );
        assert_eq!(average.last_sample_at(), Some(start));
    }

    #[test]
    fn a_sample_above_the_estimate_replaces_it() {
        let start = Instant::now();
        let mut average = ewma();
        average.observe(10 * MS, start);
        average.observe(400 * MS, start + MS);
        assert_eq!(average.estimate(), 400 * MS);
    }

    #[test]
    fn a_lower_sample_pulls_the_estimate_down_with_the_ten_second_time_constant() {
        let start = Instant::now();
        let mut average = ewma();
        average.observe(1000 * MS, start);
        // After one time constant the old value keeps e^-1 of its weight.
        average.observe(Duration::ZERO, start + DEFAULT_DECAY);
        let expected = 1000.0 * (-1.0f64).exp();
        let got = average.estimate().as_secs_f64() * 1000.0;
        assert!((got - expected).abs() < 0.001, "{got} ms, want {expected}");
        // Another 10 s: e^-1 of that again, towards a sample of 0.
        average.observe(Duration::ZERO, start + 2 * DEFAULT_DECAY);
        let got = average.estimate().as_secs_f64() * 1000.0;
        assert!((got - expected * (-1.0f64).exp()).abs() < 0.001, "{got} ms");
    }

    #[test]
    fn samples_at_the_same_instant_do_not_pull_the_estimate_down() {
        // Weight by time, not by count: a burst of fast answers right after a slow one does
        // not erase it.
        let start = Instant::now();
        let mut average = ewma();
        average.observe(500 * MS, start);
        for _ in 0..1000 {
            average.observe(MS, start);
        }
        assert_eq!(average.estimate(), 500 * MS);
    }

    #[test]
    fn reset_goes_back_to_the_neutral_estimate() {
        let mut average = ewma();
        average.observe(3 * MS, Instant::now());
        average.reset();
        assert_eq!(average.estimate(), 100 * MS);
        assert!(!average.is_measured());
    }

    #[test]
    fn fading_follows_the_time_constant_and_a_zero_decay_forgets_at_once() {
        let faded = fade(1000 * MS, DEFAULT_DECAY, DEFAULT_DECAY);
        let expected = 1000.0 * (-1.0f64).exp();
        assert!((faded.as_secs_f64() * 1000.0 - expected).abs() < 0.001);
        assert_eq!(fade(1000 * MS, Duration::ZERO, DEFAULT_DECAY), 1000 * MS);
        assert_eq!(fade(1000 * MS, MS, Duration::ZERO), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn the_estimate_stays_between_the_smallest_and_largest_sample(
            samples in prop::collection::vec((0u64..5_000_000, 0u64..60_000), 1..64),
            neutral in 0u64..5_000_000,
        ) {
            let start = Instant::now();
            let mut average = PeakEwma::new(DEFAULT_DECAY, Duration::from_micros(neutral));
            let mut now = start;
            let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
            for (micros, gap_ms) in samples {
                let sample = Duration::from_micros(micros);
                now += Duration::from_millis(gap_ms);
                average.observe(sample, now);
                low = low.min(sample);
                high = high.max(sample);
                let estimate = average.estimate();
                prop_assert!(low <= estimate && estimate <= high, "{estimate:?} outside {low:?}..={high:?}");
            }
        }

        #[test]
        fn a_lower_sample_never_raises_the_estimate_and_a_higher_one_never_lowers_it(
            first in 0u64..5_000_000,
            second in 0u64..5_000_000,
            gap_ms in 0u64..100_000,
        ) {
            let start = Instant::now();
            let mut average = ewma();
            average.observe(Duration::from_micros(first), start);
            let before = average.estimate();
            let sample = Duration::from_micros(second);
            average.observe(sample, start + Duration::from_millis(gap_ms));
            let after = average.estimate();
            if sample >= before {
                prop_assert_eq!(after, sample);
            } else {
                prop_assert!(sample <= after && after <= before);
            }
        }

        #[test]
        fn fading_never_raises_and_fades_more_the_longer_the_silence(
            value in 0u64..10_000_000,
            shorter in 0u64..100_000,
            extra in 0u64..100_000,
        ) {
            let value = Duration::from_micros(value);
            let a = fade(value, Duration::from_millis(shorter), DEFAULT_DECAY);
            let b = fade(value, Duration::from_millis(shorter + extra), DEFAULT_DECAY);
            prop_assert!(a <= value);
            prop_assert!(b <= a);
        }
    }
}
