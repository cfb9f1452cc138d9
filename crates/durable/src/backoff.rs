//! `Backoff`: how long the writer waits before each attempt to reopen a broken database.
//!
//! The first attempt waits `min`, each failed one doubles the wait up to `max`. A database
//! that breaks again soon after healing (within `max`) does not start over at `min`: on a disk
//! that is still nearly full a reopen can succeed (it reuses free pages inside the file) and
//! the next growing write fail again, and such flapping must slow down, not spin at `min`.
//! Pure: the caller passes the time, so the tests use made-up instants.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    healed_at: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
            healed_at: None,
        }
    }

    /// The database broke at `now`: start over at `min` unless it healed only recently.
    pub(crate) fn broke(&mut self, now: Instant) {
        let stable = self
            .healed_at
            .is_none_or(|healed| now.saturating_duration_since(healed) >= self.max);
        if stable {
            self.next = self.min;
        }
    }

    /// The wait before the next attempt (and doubles the one after it).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The database was reopened at `now`.
    pub(crate) fn healed(&mut self, now: Instant) {
        self.healed_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn backoff() -> Backoff {
        Backoff::new(100 * MS, 5000 * MS)
    }

    #[test]
    fn doubles_from_min_up_to_max() {
        let mut backoff = backoff();
        backoff.broke(Instant::now());
        let delays: Vec<_> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn starts_over_after_staying_healthy_for_max() {
        let start = Instant::now();
        let mut backoff = backoff();
        backoff.broke(start);
        for _ in 0..4 {
            backoff.next_delay();
        }
        backoff.healed(start);
        backoff.broke(start + 5000 * MS);
        assert_eq!(backoff.next_delay(), 100 * MS);
    }

    #[test]
    fn flapping_keeps_growing_the_delay() {
        let start = Instant::now();
        let mut backoff = backoff();
        backoff.broke(start);
        assert_eq!(backoff.next_delay(), 100 * MS);
        backoff.healed(start + 100 * MS);
        backoff.broke(start + 150 * MS);
        assert_eq!(backoff.next_delay(), 200 * MS);
        backoff.healed(start + 400 * MS);
        backoff.broke(start + 401 * MS);
        assert_eq!(backoff.next_delay(), 400 * MS);
    }

    #[test]
    fn max_below_min_is_min() {
        let mut backoff = Backoff::new(100 * MS, MS);
        backoff.broke(Instant::now());
        assert_eq!(backoff.next_delay(), 100 * MS);
        assert_eq!(backoff.next_delay(), 100 * MS);
    }
}
