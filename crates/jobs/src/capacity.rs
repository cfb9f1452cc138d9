//! Capacity (spec section 4): what each service needs, from what its queue sees.
//!
//! Per service the `Meter` records arrivals (per-second counts over the last five
//! minutes), wait times (ready to started) and run times (started to finished) of the last
//! [`SAMPLES`] jobs. `estimate` turns that, the queue depth and the workers' counts into a
//! [`ServiceCapacity`]:
//!
//! - **workers needed**: the smallest `c` for which an M/M/c queue (Poisson arrivals at the
//!   1-minute rate `λ`, exponential service with the measured mean run time `1/μ`) has a
//!   mean wait `Wq = C(c, a) / (cμ − λ)` under `target_wait` (Erlang C, `a = λ/μ`), and at
//!   least enough to drain the current backlog within `target_wait`
//!   (`depth × mean run / target_wait`). M/M/c is optimistic for heavy-tailed jobs; the p95
//!   run time is reported beside it so an operator can see when the mean misleads.
//! - **drain time**: backlog × mean run time / active workers.
//!
//! [`Scaler`] moves a `"MIN-MAX"` pool toward the estimate: up at once, down only after
//! fewer workers sufficed for `scale_down_delay` (hysteresis), never outside MIN..=MAX. All
//! pure over the instants passed in, so tests run on paused time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Wait and run times kept per service.
pub const SAMPLES: usize = 512;
/// Arrival counts are kept per second for this many seconds.
const WINDOW_SECONDS: usize = 300;
/// Most workers the estimate ever asks for.
const MAX_NEEDED: usize = 100_000;

/// One service's capacity picture (`GET /jobs/capacity`, `/metrics`). Times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceCapacity {
    pub service: String,
    /// Jobs waiting for a worker.
    pub queue_depth: usize,
    /// Jobs submitted per second over the last minute, and over the last five.
    pub arrival_rate_1m: f64,
    pub arrival_rate_5m: f64,
    pub run_seconds_mean: Option<f64>,
    pub run_seconds_p95: Option<f64>,
    pub wait_seconds_mean: Option<f64>,
    pub wait_seconds_p95: Option<f64>,
    /// Workers (local slots and remote workers) running a job now, and waiting for one.
    pub workers_busy: usize,
    pub workers_idle: usize,
    /// Workers that keep the mean wait under `target_wait` (M/M/c) and drain the backlog
    /// within it.
    pub workers_needed: usize,
    pub target_wait_seconds: f64,
    /// Time to run the backlog with the active workers; `None` with no workers or no run
    /// time measured yet.
    pub drain_seconds: Option<f64>,
    /// Local slots now, and their bounds.
    pub slots: usize,
    pub slots_min: usize,
    pub slots_max: usize,
}

/// What the meter saw of one service.
#[derive(Debug)]
struct ServiceMeter {
    started: Instant,
    /// Arrivals per second; `buckets[i]` counts second `first_second + i`.
    buckets: VecDeque<u32>,
    first_second: u64,
    waits: Samples,
    runs: Samples,
    /// Jobs submitted and runs finished since the meter started (the dashboard's rates).
    arrived_total: u64,
    finished_total: u64,
}

#[derive(Debug, Default)]
struct Samples(VecDeque<Duration>);

impl Samples {
    fn push(&mut self, sample: Duration) {
        if self.0.len() == SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(sample);
    }

    fn mean(&self) -> Option<f64> {
        let n = self.0.len();
        (n > 0).then(|| self.0.iter().map(Duration::as_secs_f64).sum::<f64>() / n as f64)
    }

    fn p95(&self) -> Option<f64> {
        let mut sorted: Vec<f64> = self.0.iter().map(Duration::as_secs_f64).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let rank = ((sorted.len() as f64) * 0.95).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }
}

impl ServiceMeter {
    fn new(now: Instant) -> ServiceMeter {
        ServiceMeter {
            started: now,
            buckets: VecDeque::with_capacity(WINDOW_SECONDS),
            first_second: 0,
            waits: Samples::default(),
            runs: Samples::default(),
            arrived_total: 0,
            finished_total: 0,
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    /// Drops buckets older than the window as of `second`.
    fn advance(&mut self, second: u64) {
        let window = WINDOW_SECONDS as u64;
        while !self.buckets.is_empty() && self.first_second + window <= second {
            self.buckets.pop_front();
            self.first_second += 1;
        }
        if self.buckets.is_empty() {
            self.first_second = second;
        }
    }

    fn arrived(&mut self, now: Instant) {
        let second = self.second(now);
        self.advance(second);
        let index = (second - self.first_second) as usize;
        while self.buckets.len() <= index {
            self.buckets.push_back(0);
        }
        self.buckets[index] += 1;
        self.arrived_total += 1;
    }

    /// Arrivals per second over the last `seconds` (or since the meter started, if later).
    fn rate(&mut self, now: Instant, seconds: u64) -> f64 {
        let second = self.second(now);
        self.advance(second);
        let from = second.saturating_sub(seconds - 1);
        let count: u64 = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(i, _)| self.first_second + *i as u64 >= from)
            .map(|(_, n)| u64::from(*n))
            .sum();
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        let span = elapsed.clamp(1.0, seconds as f64);
        count as f64 / span
    }
}

/// Every service's meter. Clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter {
    services: Arc<Mutex<HashMap<String, ServiceMeter>>>,
}

/// What the meter reports of one service at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Reading {
    pub(crate) rate_1m: f64,
    pub(crate) rate_5m: f64,
    pub(crate) run_mean: Option<f64>,
    pub(crate) run_p95: Option<f64>,
    pub(crate) wait_mean: Option<f64>,
    pub(crate) wait_p95: Option<f64>,
}

impl Meter {
    fn with<T>(&self, service: &str, now: Instant, f: impl FnOnce(&mut ServiceMeter) -> T) -> T {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        if !services.contains_key(service) {
            services.insert(service.to_string(), ServiceMeter::new(now));
        }
        f(services.get_mut(service).expect("inserted above"))
    }

    pub(crate) fn arrived(&self, service: &str, now: Instant) {
        self.with(service, now, |m| m.arrived(now));
    }

    pub(crate) fn started(&self, service: &str, waited: Duration, now: Instant) {
        self.with(service, now, |m| m.waits.push(waited));
    }

    pub(crate) fn finished(&self, service: &str, ran: Duration, now: Instant) {
        self.with(service, now, |m| {
            m.runs.push(ran);
            m.finished_total += 1;
        });
    }

    /// Jobs of `service` submitted and runs finished since the meter started.
    pub(crate) fn totals(&self, service: &str) -> (u64, u64) {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services
            .get(service)
            .map_or((0, 0), |m| (m.arrived_total, m.finished_total))
    }

    pub(crate) fn read(&self, service: &str, now: Instant) -> Reading {
        self.with(service, now, |m| Reading {
            rate_1m: m.rate(now, 60),
            rate_5m: m.rate(now, 300),
            run_mean: m.runs.mean(),
            run_p95: m.runs.p95(),
            wait_mean: m.waits.mean(),
            wait_p95: m.waits.p95(),
        })
    }
}

/// The workers an M/M/c queue needs so the mean wait stays under `target` seconds, given
/// `rate` arrivals per second and a mean run time of `run` seconds.
pub fn erlang_c_workers(rate: f64, run: f64, target: f64) -> usize {
    if rate <= 0.0 || run <= 0.0 {
        return 0;
    }
    let mu = 1.0 / run;
    let load = rate * run;
    // Erlang B by recursion (stable for large c), then C from B.
    let mut erlang_b = 1.0;
    for c in 1..=MAX_NEEDED {
        erlang_b = load * erlang_b / (c as f64 + load * erlang_b);
        let c_f = c as f64;
        if c_f <= load {
            continue;
        }
        let erlang_c = c_f * erlang_b / (c_f - load * (1.0 - erlang_b));
        let wait = erlang_c / (c_f * mu - rate);
        if wait <= target {
            return c;
        }
    }
    MAX_NEEDED
}

/// The counts [`estimate`] needs besides the meter's reading.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) depth: usize,
    pub(crate) busy: usize,
    pub(crate) idle: usize,
    pub(crate) slots: usize,
    pub(crate) slots_min: usize,
    pub(crate) slots_max: usize,
}

pub(crate) fn estimate(
    service: &str,
    reading: Reading,
    counts: Counts,
    target_wait: Duration,
) -> ServiceCapacity {
    let target = target_wait.as_secs_f64().max(0.001);
    let needed = match reading.run_mean {
        Some(run) if run > 0.0 => {
            let steady = erlang_c_workers(reading.rate_1m, run, target);
            let backlog = ((counts.depth as f64) * run / target).ceil() as usize;
            steady
                .max(backlog)
                .max(usize::from(counts.busy + counts.depth > 0))
        }
        // Nothing ran yet: every job waiting or running wants a worker.
        _ => counts.busy + counts.depth,
    }
    .min(MAX_NEEDED);
    let active = counts.busy + counts.idle;
    let drain = match (reading.run_mean, active) {
        (Some(run), n) if n > 0 => Some(counts.depth as f64 * run / n as f64),
        _ => None,
    };
    ServiceCapacity {
        service: service.to_string(),
        queue_depth: counts.depth,
        arrival_rate_1m: reading.rate_1m,
        arrival_rate_5m: reading.rate_5m,
        run_seconds_mean: reading.run_mean,
        run_seconds_p95: reading.run_p95,
        wait_seconds_mean: reading.wait_mean,
        wait_seconds_p95: reading.wait_p95,
        workers_busy: counts.busy,
        workers_idle: counts.idle,
        workers_needed: needed,
        target_wait_seconds: target_wait.as_secs_f64(),
        drain_seconds: drain,
        slots: counts.slots,
        slots_min: counts.slots_min,
        slots_max: counts.slots_max,
    }
}

/// Sets the `/metrics` gauges of one service.
pub(crate) fn publish_gauges(capacity: &ServiceCapacity) {
    let service = capacity.service.clone();
    let gauge = |name: &'static str, value: f64| {
        metrics::gauge!(name, "service" => service.clone()).set(value);
    };
    gauge("portico_jobs_queue_depth", capacity.queue_depth as f64);
    gauge("portico_jobs_arrival_rate_1m", capacity.arrival_rate_1m);
    gauge("portico_jobs_arrival_rate_5m", capacity.arrival_rate_5m);
    gauge(
        "portico_jobs_run_seconds_mean",
        capacity.run_seconds_mean.unwrap_or(0.0),
    );
    gauge(
        "portico_jobs_run_seconds_p95",
        capacity.run_seconds_p95.unwrap_or(0.0),
    );
    gauge(
        "portico_jobs_wait_seconds_mean",
        capacity.wait_seconds_mean.unwrap_or(0.0),
    );
    gauge(
        "portico_jobs_wait_seconds_p95",
        capacity.wait_seconds_p95.unwrap_or(0.0),
    );
    gauge("portico_jobs_workers_busy", capacity.workers_busy as f64);
    gauge("portico_jobs_workers_idle", capacity.workers_idle as f64);
    gauge(
        "portico_jobs_workers_needed",
        capacity.workers_needed as f64,
    );
    gauge(
        "portico_jobs_drain_seconds",
        capacity.drain_seconds.unwrap_or(0.0),
    );
    gauge("portico_jobs_slots", capacity.slots as f64);
}

/// Moves a `"MIN-MAX"` pool toward the estimate with hysteresis.
#[derive(Debug, Clone)]
pub struct Scaler {
    min: usize,
    max: usize,
    delay: Duration,
    /// Since when fewer slots than the current number would have sufficed.
    below_since: Option<Instant>,
}

impl Scaler {
    pub fn new(min: usize, max: usize, delay: Duration) -> Scaler {
        Scaler {
            min,
            max: max.max(min),
            delay,
            below_since: None,
        }
    }

    /// The slots to run now, given `current` and the workers `needed`: up at once, down to
    /// the estimate only after it stayed below `current` for the delay; within MIN..=MAX.
    pub fn decide(&mut self, current: usize, needed: usize, now: Instant) -> usize {
        let want = needed.clamp(self.min, self.max);
        let current = current.clamp(self.min, self.max);
        if want >= current {
            self.below_since = None;
            return want;
        }
        let since = *self.below_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.delay {
            self.below_since = None;
            return want;
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_known_values() {
        // λ = 1/s, 1 s jobs: one worker would never keep up (a = 1), two give
        // Wq = C(2,1)/(2-1) = 1/3 s.
        assert_eq!(erlang_c_workers(1.0, 1.0, 0.34), 2);
        assert_eq!(erlang_c_workers(1.0, 1.0, 0.3), 3);
        // a = 10 erlangs: c = 11 waits long, c = 15 waits ~0.04 s.
        let c = erlang_c_workers(10.0, 1.0, 0.05);
        assert!((13..=16).contains(&c), "{c}");
        assert_eq!(erlang_c_workers(0.0, 1.0, 1.0), 0);
        // More load, or a tighter target, never needs fewer workers.
        let mut last = 0;
        for rate in 1..50 {
            let c = erlang_c_workers(f64::from(rate), 0.5, 0.1);
            assert!(c >= last);
            assert!(c as f64 > f64::from(rate) * 0.5);
            last = c;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rates_cover_the_last_minute_and_five() {
        let meter = Meter::default();
        let start = Instant::now();
        for second in 0..120 {
            let now = start + Duration::from_secs(second);
            for _ in 0..2 {
                meter.arrived("s", now);
            }
        }
        let now = start + Duration::from_secs(120);
        let reading = meter.read("s", now);
        assert!((reading.rate_1m - 2.0).abs() < 0.1, "{reading:?}");
        assert!((reading.rate_5m - 2.0).abs() < 0.1, "{reading:?}");
        let later = start + Duration::from_secs(200);
        let reading = meter.read("s", later);
        assert_eq!(reading.rate_1m, 0.0);
        assert!(
            reading.rate_5m > 1.0 && reading.rate_5m < 2.0,
            "{reading:?}"
        );
    }

    #[test]
    fn p95_and_mean_of_samples() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.push(Duration::from_millis(ms));
        }
        assert!((samples.mean().unwrap() - 0.0505).abs() < 1e-9);
        assert!((samples.p95().unwrap() - 0.095).abs() < 1e-9);
        for _ in 0..SAMPLES {
            samples.push(Duration::from_secs(1));
        }
        assert_eq!(samples.0.len(), SAMPLES);
        assert_eq!(samples.mean(), Some(1.0));
    }

    #[test]
    fn a_backlog_asks_for_workers_to_drain_it_within_the_target() {
        let reading = Reading {
            run_mean: Some(2.0),
            ..Reading::default()
        };
        let counts = Counts {
            depth: 100,
            busy: 4,
            idle: 0,
            ..Counts::default()
        };
        let capacity = estimate("s", reading, counts, Duration::from_secs(10));
        assert_eq!(capacity.workers_needed, 20);
        assert_eq!(capacity.drain_seconds, Some(50.0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_scaler_goes_up_at_once_and_down_only_after_the_delay_within_bounds() {
        let mut scaler = Scaler::new(1, 8, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(scaler.decide(1, 5, t0), 5);
        assert_eq!(scaler.decide(5, 50, t0), 8, "never above MAX");
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(scaler.decide(8, 2, later(1)), 8);
        assert_eq!(scaler.decide(8, 2, later(30)), 8);
        assert_eq!(
            scaler.decide(8, 9, later(40)),
            8,
            "a burst resets the timer"
        );
        assert_eq!(scaler.decide(8, 2, later(41)), 8);
        assert_eq!(scaler.decide(8, 2, later(100)), 8);
        assert_eq!(scaler.decide(8, 0, later(101)), 1, "never below MIN");
    }
}
