//! Health of one back end, as small pure code: consecutive failures put it out of rotation for
//! a backoff that doubles up to a ceiling; once the backoff has passed, the next call to it is
//! the probe (success puts it back, failure doubles the backoff). No I/O, no clock of its own.

use std::time::{Duration, Instant};

/// Backoff after the first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest backoff: a restarted back end is used again within this long.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Default)]
pub struct Health {
    failures: u32,
    down_until: Option<Instant>,
}

impl Health {
    /// Whether calls should go to this back end at `now` (healthy, or due for a probe).
    pub fn available(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|until| now >= until)
    }

    /// A call succeeded.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.down_until = None;
    }

    /// A call failed at `now`: out of rotation for the current backoff.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.down_until = Some(now + backoff(self.failures));
    }

    /// Whether the last call failed.
    pub fn is_down(&self) -> bool {
        self.down_until.is_some()
    }
}

/// Backoff after `failures` consecutive failures (`failures >= 1`).
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_back_end_is_skipped_then_probed_after_its_backoff() {
        let start = Instant::now();
        let mut health = Health::default();
        assert!(health.available(start));
        health.failed(start);
        assert!(!health.available(start + Duration::from_millis(100)));
        assert!(health.available(start + FIRST_BACKOFF));
        health.succeeded();
        assert!(health.available(start));
        assert!(!health.is_down());
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(3), FIRST_BACKOFF * 4);
        assert_eq!(backoff(50), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
