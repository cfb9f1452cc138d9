//! Histories of fixed size, fed once a second by the live loop (`live.rs`):
//!
//! - [`RequestSampler`]: the gateway's request counters (a [`RequestSource`]: the binary hands
//!   over `gateway::request_metrics::totals`, the dashboard does not depend on the gateway)
//!   turned into per-second buckets (the last [`SECONDS`]) and ten-second buckets (the last
//!   hour) per series (a service, or a managed service through the proxy); requests/s, error
//!   rate and p50/p99 come from the buckets' histograms.
//! - [`CapacityHistory`]: each job service's depth, arrival and completion rates, wait and
//!   workers needed versus present, one point per ten seconds over the last hour.
//!
//! Nothing here grows with time: rings are capped, series are capped at [`MAX_SERIES`] (the
//! gateway caps its labels too).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

pub use crate::sources::{RequestSource, RequestTotals};

/// Per-second buckets kept (the overview's window).
pub const SECONDS: usize = 60;
/// Ten-second buckets kept: one hour.
pub const TENS: usize = 360;
/// Series followed at most.
pub const MAX_SERIES: usize = 256;

/// A ring that keeps the newest `cap` values.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    cap: usize,
    items: VecDeque<T>,
}

impl<T> Ring<T> {
    pub fn new(cap: usize) -> Ring<T> {
        Ring {
            cap,
            items: VecDeque::with_capacity(cap),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter()
    }

    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
}

/// Requests in one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub requests: u64,
    pub errors: u64,
    /// Per duration bucket of the source's bounds (not cumulative; the last is over them).
    pub durations: Vec<u64>,
}

impl Bucket {
    fn add(&mut self, other: &Bucket) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.durations.len() < other.durations.len() {
            self.durations.resize(other.durations.len(), 0);
        }
        for (total, n) in self.durations.iter_mut().zip(&other.durations) {
            *total += n;
        }
    }

    /// `now - before`, per field (counters restarted: `now` alone).
    fn between(now: &RequestTotals, before: Option<&RequestTotals>) -> Bucket {
        let Some(before) = before.filter(|b| b.requests <= now.requests) else {
            return Bucket {
                requests: now.requests,
                errors: now.errors,
                durations: now.buckets.clone(),
            };
        };
        let durations = now
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(before.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        Bucket {
            requests: now.requests - before.requests,
            errors: now.errors.saturating_sub(before.errors),
            durations,
        }
    }

    /// The `q` quantile in milliseconds, linear within the bucket it falls in (`bounds`:
    /// the upper bounds in microseconds; the last bucket has none: its lower bound is
    /// answered).
    pub fn quantile_ms(&self, q: f64, bounds: &[u64]) -> Option<f64> {
        let total: u64 = self.durations.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0.0;
        for (i, n) in self.durations.iter().enumerate() {
            let n = *n as f64;
            if n > 0.0 && seen + n >= rank {
                let low = match i {
                    0 => 0.0,
                    i => bounds.get(i - 1).copied().unwrap_or(0) as f64,
                };
                let Some(high) = bounds.get(i) else {
                    return Some(low / 1000.0);
                };
                let within = ((rank - seen) / n).clamp(0.0, 1.0);
                return Some((low + (*high as f64 - low) * within) / 1000.0);
            }
            seen += n;
        }
        None
    }
}

/// Key of a series: the service and the route label.
type Key = (Arc<str>, Option<Arc<str>>);

#[derive(Debug)]
struct Series {
    last: RequestTotals,
    seconds: Ring<Bucket>,
    tens: Ring<Bucket>,
    /// The ten-second bucket being filled, and how many seconds it holds.
    filling: Bucket,
    filled: u32,
}

/// One series over the overview's window.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesSummary {
    pub service: String,
    /// The managed service, for requests the proxy labelled.
    pub route: Option<String>,
    pub requests_per_second: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Over the last five minutes (the ten-second buckets; the filling one left out).
    pub requests_per_second_5m: f64,
    pub p99_ms_5m: Option<f64>,
    /// Requests per second, each of the last seconds, oldest first.
    pub per_second: Vec<u64>,
    /// Requests since the process started.
    pub total: u64,
}

/// The gateway's requests, sampled.
#[derive(Debug, Default)]
pub struct RequestSampler {
    series: BTreeMap<Key, Series>,
    /// Upper bounds of the duration buckets, in microseconds.
    bounds: Vec<u64>,
}

impl RequestSampler {
    /// A sampler of counters whose durations are bucketed by `bounds` (microseconds).
    pub fn new(bounds: &[u64]) -> RequestSampler {
        RequestSampler {
            series: BTreeMap::new(),
            bounds: bounds.to_vec(),
        }
    }

    /// One second passed: `totals` is the gateway's counters now.
    pub fn sample(&mut self, totals: Vec<RequestTotals>) {
        for now in totals {
            let key = (now.service.clone(), now.route.clone());
            if !self.series.contains_key(&key) && self.series.len() >= MAX_SERIES {
                continue;
            }
            let series = self.series.entry(key).or_insert_with(|| Series {
                last: RequestTotals {
                    requests: 0,
                    errors: 0,
                    buckets: Vec::new(),
                    ..now.clone()
                },
                seconds: Ring::new(SECONDS),
                tens: Ring::new(TENS),
                filling: Bucket::default(),
                filled: 0,
            });
            let bucket = Bucket::between(&now, Some(&series.last));
            series.last = now;
            series.filling.add(&bucket);
            series.seconds.push(bucket);
            series.filled += 1;
            if series.filled == 10 {
                series.tens.push(std::mem::take(&mut series.filling));
                series.filled = 0;
            }
        }
    }

    /// Every series with requests over the window, busiest first... then by name.
    pub fn summaries(&self) -> Vec<SeriesSummary> {
        self.series
            .iter()
            .filter(|(_, s)| s.last.requests > 0)
            .map(|((service, route), series)| {
                summary(service, route.as_deref(), series, &self.bounds)
            })
            .collect()
    }

    /// Buckets held in all rings (tests: it stays at the caps).
    pub fn held(&self) -> usize {
        self.series
            .values()
            .map(|s| s.seconds.len() + s.tens.len())
            .sum()
    }
}

fn summary(service: &str, route: Option<&str>, series: &Series, bounds: &[u64]) -> SeriesSummary {
    let mut window = Bucket::default();
    for bucket in series.seconds.iter() {
        window.add(bucket);
    }
    let seconds = series.seconds.len().max(1) as f64;
    let mut five = Bucket::default();
    let tens: Vec<&Bucket> = series.tens.iter().rev().take(30).collect();
    for bucket in &tens {
        five.add(bucket);
    }
    let five_seconds = (tens.len() * 10).max(1) as f64;
    SeriesSummary {
        requests_per_second_5m: five.requests as f64 / five_seconds,
        p99_ms_5m: five.quantile_ms(0.99, bounds),
        service: service.to_string(),
        route: route.map(str::to_string),
        requests_per_second: window.requests as f64 / seconds,
        error_rate: match window.requests {
            0 => 0.0,
            n => window.errors as f64 / n as f64,
        },
        p50_ms: window.quantile_ms(0.5, bounds),
        p99_ms: window.quantile_ms(0.99, bounds),
        per_second: series.seconds.iter().map(|b| b.requests).collect(),
        total: series.last.requests,
    }
}

/// One job service at one instant of the capacity history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityPoint {
    /// Seconds since the UNIX epoch.
    pub at: u64,
    pub queue_depth: usize,
    /// Jobs submitted per second over the last minute.
    pub arrival_rate: f64,
    /// Runs finished per second over the last ten seconds.
    pub completion_rate: f64,
    pub wait_seconds_mean: Option<f64>,
    pub workers_needed: usize,
    pub workers_present: usize,
}

/// Each job service's capacity over the last hour.
#[derive(Debug, Default)]
pub struct CapacityHistory {
    services: BTreeMap<String, Ring<CapacityPoint>>,
}

impl CapacityHistory {
    /// Adds a point (every ten seconds); services are those of the job config (a fixed set).
    pub fn push(&mut self, service: &str, point: CapacityPoint) {
        if !self.services.contains_key(service) && self.services.len() >= MAX_SERIES {
            return;
        }
        self.services
            .entry(service.to_string())
            .or_insert_with(|| Ring::new(TENS))
            .push(point);
    }

    /// Every service's points, oldest first.
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .services
            .iter()
            .map(|(name, ring)| {
                let points: Vec<&CapacityPoint> = ring.iter().collect();
                (name.clone(), serde_json::json!(points))
            })
            .collect();
        serde_json::Value::Object(map)
    }

    /// Points held (tests: it stays at the cap).
    pub fn held(&self) -> usize {
        self.services.values().map(Ring::len).sum()
    }

    /// Each service's completion rate at its newest point.
    pub fn latest_completion_rates(&self) -> BTreeMap<String, f64> {
        self.services
            .iter()
            .filter_map(|(name, ring)| {
                let last = ring.iter().next_back()?;
                Some((name.clone(), last.completion_rate))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's bounds (0.5 ms to 10 s).
    const BOUNDS: [u64; 14] = [
        500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
        2_500_000, 5_000_000, 10_000_000,
    ];

    fn totals(service: &str, requests: u64, errors: u64, fast: u64) -> RequestTotals {
        let mut buckets = vec![0; BOUNDS.len() + 1];
        buckets[0] = fast;
        buckets[5] = requests - fast;
        RequestTotals {
            service: Arc::from(service),
            route: None,
            requests,
            errors,
            buckets,
        }
    }

    #[test]
    fn rates_come_from_differences_between_seconds() {
        let mut sampler = RequestSampler::new(&BOUNDS);
        sampler.sample(vec![totals("s", 100, 0, 100)]);
        sampler.sample(vec![totals("s", 110, 5, 100)]);
        let summary = &sampler.summaries()[0];
        assert_eq!(summary.per_second, vec![100, 10]);
        assert_eq!(summary.requests_per_second, 55.0);
        assert!((summary.error_rate - 5.0 / 110.0).abs() < 1e-9);
        // 100 under 0.5 ms, 10 in (10, 25] ms: p50 in the first bucket, p99 in the sixth.
        assert!(summary.p50_ms.is_some_and(|p| p <= 0.5));
        assert!(summary.p99_ms.is_some_and(|p| p > 10.0 && p <= 25.0));
    }

    #[test]
    fn rings_stay_at_their_caps_however_long_the_page_is_open() {
        let mut sampler = RequestSampler::new(&BOUNDS);
        for second in 0..(TENS as u64 * 10 + 500) {
            sampler.sample(vec![totals("s", second * 3, 0, second * 3)]);
        }
        assert_eq!(sampler.held(), SECONDS + TENS);
        let summary = &sampler.summaries()[0];
        assert_eq!(summary.requests_per_second, 3.0);
        assert_eq!(summary.requests_per_second_5m, 3.0);
        let mut history = CapacityHistory::default();
        for at in 0..1000 {
            let point = CapacityPoint {
                at,
                queue_depth: 1,
                arrival_rate: 0.0,
                completion_rate: 0.0,
                wait_seconds_mean: None,
                workers_needed: 0,
                workers_present: 0,
            };
            history.push("echo", point);
        }
        assert_eq!(history.held(), TENS);
    }

    #[test]
    fn series_are_capped() {
        let mut sampler = RequestSampler::new(&BOUNDS);
        let many: Vec<RequestTotals> = (0..MAX_SERIES + 20)
            .map(|n| totals(&format!("s{n}"), 1, 0, 1))
            .collect();
        sampler.sample(many);
        assert_eq!(sampler.summaries().len(), MAX_SERIES);
    }

    #[test]
    fn a_quantile_in_the_open_last_bucket_is_its_lower_bound() {
        let mut bucket = Bucket {
            durations: vec![0; BOUNDS.len() + 1],
            ..Bucket::default()
        };
        bucket.durations[BOUNDS.len()] = 4;
        assert_eq!(bucket.quantile_ms(0.99, &BOUNDS), Some(10_000.0));
        assert_eq!(Bucket::default().quantile_ms(0.5, &BOUNDS), None);
    }
}
