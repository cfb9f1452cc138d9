//! The shared cache of the first K Fibonacci numbers, kept as their decimal text so that an
//! answer within the cache is a few slices of shared buffers (no copy, no formatting).
//!
//! The text lives in immutable segments of about 1 MiB, each holding whole numbers, each
//! number followed by one space. Readers take an `Arc` of the published [`Snapshot`] and slice
//! it; growth happens under one async mutex on a blocking thread (so two requests for a larger
//! N never compute the same numbers twice: the second waits, then finds them published) and
//! publishes a new snapshot. The cache stops growing at `budget` bytes of text; past that,
//! numbers are computed while they are streamed, starting from the last two cached ones.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::decimal::Decimal;
use crate::length;
use crate::metrics;
use crate::text::{self, Text};

/// Size at which a segment of cached text is closed and a new one started.
const SEGMENT_BYTES: usize = 1024 * 1024;

/// Numbers added at least per growth step, so small requests do not grow one by one.
const MIN_GROWTH: u64 = 1024;

/// Answers computed past the cache at once (each is a busy thread and ~1.1 MiB of buffers);
/// more wait for a turn, within the gateway's request timeout.
pub const MAX_PRODUCERS: usize = 32;

/// What readers see: the first `k()` numbers' text and where each one ends.
#[derive(Clone)]
struct Snapshot {
    segments: Vec<Bytes>,
    /// Offset of each segment's first byte within the whole text.
    segment_starts: Vec<u64>,
    /// For each cached n: (segment, end of F(n) within the segment, before its space).
    ends: Vec<(u32, u32)>,
    /// Bytes of all segments.
    total: u64,
    /// The budget stopped growth: no number past `k()` will be cached.
    full: bool,
    /// F(k) and F(k+1): where a computation past the cache starts.
    next: Arc<(Decimal, Decimal)>,
}

impl Snapshot {
    fn k(&self) -> u64 {
        self.ends.len() as u64
    }
}

/// The cache and the lock that serialises its growth.
pub struct FibCache {
    published: RwLock<Arc<Snapshot>>,
    grower: Arc<Mutex<()>>,
    budget: u64,
    /// Numbers ever added to the cache: equals `k()` exactly when nothing was computed twice.
    computed: AtomicU64,
    producers: Arc<Semaphore>,
}

/// Internal failure while growing (a panicked blocking task).
#[derive(Debug, thiserror::Error)]
#[error("growing the fib cache failed: {0}")]
pub struct GrowError(String);

impl FibCache {
    /// An empty cache that may hold up to `budget` bytes of text.
    pub fn new(budget: u64) -> Self {
        let empty = Snapshot {
            segments: Vec::new(),
            segment_starts: Vec::new(),
            ends: Vec::new(),
            total: 0,
            full: budget == 0,
            next: Arc::new((Decimal::small(0), Decimal::small(1))),
        };
        FibCache {
            published: RwLock::new(Arc::new(empty)),
            grower: Arc::new(Mutex::new(())),
            budget,
            computed: AtomicU64::new(0),
            producers: Arc::new(Semaphore::new(MAX_PRODUCERS)),
        }
    }

    /// Numbers cached now and bytes of their text.
    pub fn size(&self) -> (u64, u64) {
        let snapshot = self.snapshot();
        (snapshot.k(), snapshot.total)
    }

    /// The text of F(0) .. F(n-1): cache slices, plus a producer for whatever lies past the
    /// cache's budget. Grows the cache first when `n` is past it and the budget allows.
    pub async fn text(self: &Arc<Self>, n: u64) -> Result<Text, GrowError> {
        let mut snapshot = self.snapshot();
        if snapshot.k() < n && !snapshot.full {
            self.grow_to(n).await?;
            snapshot = self.snapshot();
        }
        if n <= snapshot.k() {
            ::metrics::counter!(metrics::CACHE_HITS).increment(1);
            return Ok(cached_prefix(&snapshot, n));
        }
        ::metrics::counter!(metrics::CACHE_MISSES).increment(1);
        let slot = Arc::clone(&self.producers)
            .acquire_owned()
            .await
            .map_err(|e| GrowError(e.to_string()))?;
        Ok(past_the_cache(&snapshot, n, slot))
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked between whole-Arc swaps: the value is
        // still a complete snapshot.
        match self.published.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        ::metrics::gauge!(metrics::CACHE_NUMBERS).set(snapshot.k() as f64);
        ::metrics::gauge!(metrics::CACHE_BYTES).set(snapshot.total as f64);
        let mut guard = match self.published.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(snapshot);
    }

    /// Grows the cache to at least `n` numbers (or to the budget), one grower at a time.
    async fn grow_to(self: &Arc<Self>, n: u64) -> Result<(), GrowError> {
        let guard = Arc::clone(&self.grower).lock_owned().await;
        let current = self.snapshot();
        if current.k() >= n || current.full {
            return Ok(()); // another request grew it while this one waited
        }
        let target = n.max(current.k() * 2).max(MIN_GROWTH);
        let cache = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let before = current.k();
            let grown = grow((*current).clone(), target, cache.budget);
            cache
                .computed
                .fetch_add(grown.k() - before, Ordering::Relaxed);
            cache.publish(grown);
            drop(guard);
        })
        .await
        .map_err(|e| GrowError(e.to_string()))
    }
}

/// Appends numbers to `snapshot` until it holds `target` of them or the next one would pass
/// `budget` bytes.
fn grow(mut snapshot: Snapshot, target: u64, budget: u64) -> Snapshot {
    let (mut a, mut b) = (*snapshot.next).clone();
    let mut buf: Vec<u8> = Vec::with_capacity(SEGMENT_BYTES + SEGMENT_BYTES / 4);
    let mut buf_start = snapshot.total;
    while snapshot.k() < target {
        let needed = a.digit_count() as u64 + 1;
        if buf_start + buf.len() as u64 + needed > budget {
            snapshot.full = true;
            break;
        }
        if !buf.is_empty() && buf.len() as u64 + needed > SEGMENT_BYTES as u64 {
            buf_start = close_segment(&mut snapshot, &mut buf, buf_start);
        }
        a.write_to(&mut buf);
        let segment = u32::try_from(snapshot.segments.len()).expect("segments fit u32");
        let end = u32::try_from(buf.len()).expect("a segment is far below 4 GiB");
        snapshot.ends.push((segment, end));
        buf.push(b' ');
        a.add_assign(&b);
        std::mem::swap(&mut a, &mut b);
    }
    close_segment(&mut snapshot, &mut buf, buf_start);
    snapshot.next = Arc::new((a, b));
    snapshot
}

/// Copies `buf` into a new segment and empties it; returns the offset where the next segment
/// starts. A copy, not `Bytes::from(buf)`: that would keep the buffer's spare capacity (a
/// quarter more than the text) for as long as the cache lives.
fn close_segment(snapshot: &mut Snapshot, buf: &mut Vec<u8>, start: u64) -> u64 {
    if buf.is_empty() {
        return start;
    }
    let segment = Bytes::copy_from_slice(buf);
    buf.clear();
    let next_start = start + segment.len() as u64;
    snapshot.segment_starts.push(start);
    snapshot.segments.push(segment);
    snapshot.total = next_start;
    next_start
}

/// Text of F(0) .. F(n-1) with `n <= k`: whole segments then a slice of the last one.
fn cached_prefix(snapshot: &Snapshot, n: u64) -> Text {
    debug_assert!(n >= 1 && n <= snapshot.k());
    let (segment, end) = snapshot.ends[(n - 1) as usize];
    let segment = segment as usize;
    let mut ready: VecDeque<Bytes> = snapshot.segments[..segment].iter().cloned().collect();
    ready.push_back(snapshot.segments[segment].slice(..end as usize));
    Text {
        len: snapshot.segment_starts[segment] + u64::from(end),
        ready,
        rest: None,
    }
}

/// Text of F(0) .. F(n-1) with `n > k`: every cached segment, then a producer for the rest.
fn past_the_cache(snapshot: &Snapshot, n: u64, slot: OwnedSemaphorePermit) -> Text {
    let k = snapshot.k();
    let ready: VecDeque<Bytes> = snapshot.segments.iter().cloned().collect();
    let rest = text::produce((*snapshot.next).clone(), k, n, slot);
    Text {
        len: snapshot.total + length::text_len(k, n),
        ready,
        rest: Some(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut text: Text) -> String {
        let expected = text.len;
        let mut out = Vec::new();
        while let Some(chunk) = text.next_chunk().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(out.len() as u64, expected, "announced length");
        String::from_utf8(out).expect("ascii")
    }

    fn reference(n: usize) -> String {
        let (mut a, mut b) = (0u128, 1u128);
        let mut parts = Vec::new();
        for _ in 0..n {
            parts.push(a.to_string());
            (a, b) = (b, a + b);
        }
        parts.join(" ")
    }

    #[tokio::test]
    async fn small_answers_come_from_the_cache() {
        let cache = Arc::new(FibCache::new(1 << 20));
        assert_eq!(
            collect(cache.text(10).await.expect("text")).await,
            reference(10)
        );
        assert_eq!(collect(cache.text(1).await.expect("text")).await, "0");
        assert_eq!(cache.size().0, MIN_GROWTH);
    }

    #[tokio::test]
    async fn answers_past_a_tiny_budget_are_computed_while_streamed() {
        // 100 bytes hold F(0) .. F(28) or so; the rest must be produced.
        let cache = Arc::new(FibCache::new(100));
        for n in [1u64, 5, 29, 30, 150, 180] {
            let got = collect(cache.text(n).await.expect("text")).await;
            assert_eq!(got, reference(n as usize), "n = {n}");
        }
        assert!(cache.size().1 <= 100);
    }

    #[tokio::test]
    async fn a_zero_budget_caches_nothing() {
        let cache = Arc::new(FibCache::new(0));
        assert_eq!(
            collect(cache.text(12).await.expect("text")).await,
            reference(12)
        );
        assert_eq!(cache.size(), (0, 0));
    }

    #[tokio::test]
    async fn concurrent_growth_is_done_once_and_agrees() {
        let cache = Arc::new(FibCache::new(64 << 20));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { collect(cache.text(1500 + i).await.expect("t")).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let text = task.await.expect("task");
            assert_eq!(text.split(' ').count(), 1500 + i);
        }
        // Each number was computed once, however the requests interleaved.
        let (k, _) = cache.size();
        assert_eq!(cache.computed.load(Ordering::Relaxed), k);
        assert!((1507..=2 * 1507).contains(&k));
    }

    #[test]
    fn segments_close_at_the_segment_size() {
        let empty = FibCache::new(u64::MAX).snapshot();
        let grown = grow((*empty).clone(), 20_000, u64::MAX);
        assert!(grown.segments.len() > 1);
        assert!(grown.segments.iter().all(|s| s.len() <= SEGMENT_BYTES));
        assert!(grown.segments.iter().all(|s| s.ends_with(b" ")));
        assert_eq!(grown.k(), 20_000);
    }
}
