//! The gateway's own metrics of every request, rendered into `/metrics` next to what the
//! `metrics` recorder holds:
//!
//! - `portico_http_requests_total{service,status}`, a counter;
//! - `portico_http_request_duration_seconds{service}`, a histogram (time to the response
//!   head) with fixed buckets from 0.5 ms to 10 s.
//!
//! A service may add a `route` label to a request (`service::RouteLabel` in the response's
//! extensions, e.g. the managed service a proxied request went to); its values are interned
//! and capped (`service::Label`), so series cannot grow without bound.
//!
//! Each worker thread records into series of its own and a scrape sums all workers' series.
//! Through the `metrics` crate a request cost a shared atomic counter plus a push onto a
//! shared sample queue, both contended between workers, and the queue then had to be folded
//! by an upkeep thread: about 3% of the CPU time of a `/healthz` request (bench/gateway).
//! Here a request does three stores to memory only its own thread writes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use service::Label;

use crate::middleware::ServiceTag;

/// Upper bounds of the histogram buckets, in microseconds (`+Inf` follows).
pub const BOUNDS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A value written by one thread and read by any: the writer adds with a plain load and
/// store (no locked instruction), readers see a recent value.
#[derive(Default)]
struct SingleWriterCounter(AtomicU64);

impl SingleWriterCounter {
    fn add(&self, n: u64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_add(n), Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's durations for one service.
#[derive(Default)]
struct Durations {
    /// Per bucket (not cumulative); the last is over the largest bound.
    buckets: [SingleWriterCounter; BOUNDS_MICROS.len() + 1],
    sum_micros: SingleWriterCounter,
}

impl Durations {
    fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS.partition_point(|bound| *bound < micros);
        self.buckets[bucket].add(1);
        self.sum_micros.add(micros);
    }
}

/// Every worker's series, for rendering.
/// A series' labels: the service, and the route label a service set (if any).
type Names = (Arc<str>, Option<Arc<str>>);

#[derive(Default)]
struct Registry {
    counts: Vec<(Names, u16, Arc<SingleWriterCounter>)>,
    durations: Vec<(Names, Arc<Durations>)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    counts: Vec::new(),
    durations: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // Only pushes and reads happen under the lock: a panic cannot leave it half-written.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This thread's series, found by the addresses of the service's name (tags live as long as
/// their router) and of the route label (interned for the life of the process). A short list
/// searched in order: a listener mounts a handful of services.
#[derive(Default)]
struct ThreadSeries {
    counts: Vec<(Key, u16, Arc<SingleWriterCounter>)>,
    durations: Vec<(Key, Arc<Durations>)>,
}

/// Addresses of the service name and the route label (0: none).
type Key = (usize, usize);

thread_local! {
    static SERIES: std::cell::RefCell<ThreadSeries> = std::cell::RefCell::default();
}

const UNTAGGED: &str = "none";

/// Counts a request of `service` (none: answered by the gateway before any service), labelled
/// `route` by it, with `status`, which took `elapsed` to its response head.
pub(crate) fn record(
    service: Option<&ServiceTag>,
    route: Option<&Label>,
    status: u16,
    elapsed: Duration,
) {
    let key = (
        service.map_or(0, |tag| Arc::as_ptr(&tag.0) as *const u8 as usize),
        route.map_or(0, Label::key),
    );
    let names = || {
        let service = service.map_or_else(|| Arc::from(UNTAGGED), |tag| tag.0.clone());
        (service, route.map(|label| label.text().clone()))
    };
    SERIES.with_borrow_mut(|series| {
        series.count(key, status, names).add(1);
        series.durations(key, names).record(elapsed);
    });
}

impl ThreadSeries {
    fn count(
        &mut self,
        key: Key,
        status: u16,
        names: impl FnOnce() -> Names,
    ) -> &SingleWriterCounter {
        let found = self
            .counts
            .iter()
            .position(|(k, s, _)| *k == key && *s == status);
        let index = found.unwrap_or_else(|| {
            let counter = Arc::new(SingleWriterCounter::default());
            registry().counts.push((names(), status, counter.clone()));
            self.counts.push((key, status, counter));
            self.counts.len() - 1
        });
        &self.counts[index].2
    }

    fn durations(&mut self, key: Key, names: impl FnOnce() -> Names) -> &Durations {
        let found = self.durations.iter().position(|(k, _)| *k == key);
        let index = found.unwrap_or_else(|| {
            let durations = Arc::new(Durations::default());
            registry().durations.push((names(), durations.clone()));
            self.durations.push((key, durations));
            self.durations.len() - 1
        });
        &self.durations[index].1
    }
}

/// One series' counts since the process started, workers summed (the dashboard's sampler
/// takes differences between two readings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTotals {
    pub service: Arc<str>,
    /// The route label a service set (the managed service of a proxied request).
    pub route: Option<Arc<str>>,
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Durations per bucket of [`BOUNDS_MICROS`] (not cumulative); the last is over them.
    pub buckets: [u64; BOUNDS_MICROS.len() + 1],
}

/// Every series' totals, sorted by service then route.
pub fn totals() -> Vec<RequestTotals> {
    let registry = registry();
    let mut by_names: std::collections::BTreeMap<Names, RequestTotals> = Default::default();
    fn entry<'a>(
        by_names: &'a mut std::collections::BTreeMap<Names, RequestTotals>,
        names: &Names,
    ) -> &'a mut RequestTotals {
        by_names
            .entry(names.clone())
            .or_insert_with(|| RequestTotals {
                service: names.0.clone(),
                route: names.1.clone(),
                requests: 0,
                errors: 0,
                buckets: [0; BOUNDS_MICROS.len() + 1],
            })
    }
    for (names, status, counter) in &registry.counts {
        let totals = entry(&mut by_names, names);
        let count = counter.get();
        totals.requests += count;
        if *status >= 500 {
            totals.errors += count;
        }
    }
    for (names, durations) in &registry.durations {
        let totals = entry(&mut by_names, names);
        for (total, bucket) in totals.buckets.iter_mut().zip(&durations.buckets) {
            *total += bucket.get();
        }
    }
    by_names.into_values().collect()
}

/// Both metric families in the Prometheus text format, workers summed.
pub(crate) fn render() -> String {
    let registry = registry();
    let mut out = String::new();
    render_counts(&registry, &mut out);
    render_durations(&registry, &mut out);
    out
}

fn render_counts(registry: &Registry, out: &mut String) {
    let mut totals: std::collections::BTreeMap<(String, u16), u64> = Default::default();
    for (names, status, counter) in &registry.counts {
        *totals.entry((labels(names), *status)).or_default() += counter.get();
    }
    out.push_str("# HELP portico_http_requests_total Requests answered, by service and status.\n");
    out.push_str("# TYPE portico_http_requests_total counter\n");
    for ((labels, status), total) in totals {
        let _ = writeln!(
            out,
            "portico_http_requests_total{{{labels},status=\"{status}\"}} {total}"
        );
    }
}

/// `service="NAME"` and, when set, `,route="ROUTE"`, escaped.
fn labels((service, route): &Names) -> String {
    match route {
        Some(route) => format!(
            "service=\"{}\",route=\"{}\"",
            label_value(service),
            label_value(route)
        ),
        None => format!("service=\"{}\"", label_value(service)),
    }
}

fn render_durations(registry: &Registry, out: &mut String) {
    let mut totals: std::collections::BTreeMap<String, ([u64; BOUNDS_MICROS.len() + 1], u64)> =
        Default::default();
    for (names, durations) in &registry.durations {
        let (buckets, sum) = totals.entry(labels(names)).or_default();
        for (total, bucket) in buckets.iter_mut().zip(&durations.buckets) {
            *total += bucket.get();
        }
        *sum += durations.sum_micros.get();
    }
    const NAME: &str = "portico_http_request_duration_seconds";
    let _ = writeln!(out, "# HELP {NAME} Time to the response head, by service.");
    let _ = writeln!(out, "# TYPE {NAME} histogram");
    for (labels, (buckets, sum_micros)) in totals {
        let mut cumulative = 0;
        for (index, count) in buckets.iter().enumerate() {
            cumulative += count;
            let le = match BOUNDS_MICROS.get(index) {
                Some(bound) => format!("{}", *bound as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = sum_micros as f64 / 1e6;
        let _ = writeln!(out, "{NAME}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{NAME}_count{{{labels}}} {cumulative}");
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format wants.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|value| value.trim().parse().ok())
    }

    #[test]
    fn requests_from_several_workers_are_summed_per_service_and_status() {
        let tag = ServiceTag::new("metrics-test-sum");
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        record(Some(&tag), None, 200, Duration::from_micros(700));
                    }
                    record(Some(&tag), None, 404, Duration::from_secs(20));
                });
            }
        });
        let text = render();
        let counts = "portico_http_requests_total{service=\"metrics-test-sum\",status=";
        assert_eq!(line_value(&text, &format!("{counts}\"200\"}}")), Some(300));
        assert_eq!(line_value(&text, &format!("{counts}\"404\"}}")), Some(3));
        let buckets =
            "portico_http_request_duration_seconds_bucket{service=\"metrics-test-sum\",le=";
        assert_eq!(
            line_value(&text, &format!("{buckets}\"0.0005\"}}")),
            Some(0)
        );
        assert_eq!(
            line_value(&text, &format!("{buckets}\"0.001\"}}")),
            Some(300)
        );
        assert_eq!(line_value(&text, &format!("{buckets}\"10\"}}")), Some(300));
        assert_eq!(
            line_value(&text, &format!("{buckets}\"+Inf\"}}")),
            Some(303)
        );
        let count = "portico_http_request_duration_seconds_count{service=\"metrics-test-sum\"}";
        assert_eq!(line_value(&text, count), Some(303));
        assert!(
            text.contains(
                "portico_http_request_duration_seconds_sum{service=\"metrics-test-sum\"} 60.21"
            ),
            "{text}"
        );
    }

    #[test]
    fn totals_sum_workers_and_count_5xx_as_errors() {
        let tag = ServiceTag::new("metrics-test-totals");
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    record(Some(&tag), None, 200, Duration::from_micros(700));
                    record(Some(&tag), None, 503, Duration::from_micros(300));
                });
            }
        });
        let all = totals();
        let mine = all
            .iter()
            .find(|t| &*t.service == "metrics-test-totals")
            .expect("the series is there");
        assert_eq!((mine.requests, mine.errors), (4, 2));
        assert_eq!(mine.buckets[0], 2);
        assert_eq!(mine.buckets[1], 2);
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bucket() {
        let durations = Durations::default();
        durations.record(Duration::from_micros(1_000));
        assert_eq!(durations.buckets[1].get(), 1);
        durations.record(Duration::from_micros(1_001));
        assert_eq!(durations.buckets[2].get(), 1);
    }

    #[test]
    fn untagged_requests_count_as_none() {
        std::thread::spawn(|| record(None, None, 503, Duration::from_millis(1)))
            .join()
            .unwrap();
        assert!(render().contains("portico_http_requests_total{service=\"none\",status=\"503\"}"));
    }

    #[test]
    fn a_route_label_set_by_a_service_is_a_series_of_its_own() {
        let tag = ServiceTag::new("metrics-test-route");
        let hello = Label::intern("hello");
        std::thread::spawn(move || {
            record(Some(&tag), Some(&hello), 200, Duration::from_micros(700));
            record(
                Some(&tag),
                Some(&Label::intern("hello")),
                200,
                Duration::from_micros(700),
            );
            record(Some(&tag), None, 200, Duration::from_micros(700));
        })
        .join()
        .unwrap();
        let text = render();
        let labelled = "portico_http_requests_total{service=\"metrics-test-route\",route=\"hello\",status=\"200\"}";
        assert_eq!(line_value(&text, labelled), Some(2), "{text}");
        let plain = "portico_http_requests_total{service=\"metrics-test-route\",status=\"200\"}";
        assert_eq!(line_value(&text, plain), Some(1), "{text}");
        let count = "portico_http_request_duration_seconds_count{service=\"metrics-test-route\",route=\"hello\"}";
        assert_eq!(line_value(&text, count), Some(2), "{text}");
    }
}
