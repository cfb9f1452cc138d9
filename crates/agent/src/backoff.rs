//! Restart backoff of a crashing instance: 1 s, doubling to 1 min while it keeps crashing;
//! an instance that stayed up for a minute starts again from 1 s. Pure: the caller passes
//! the durations it observed.

use std::time::Duration;

/// First pause before a restart.
pub const FIRST: Duration = Duration::from_secs(1);
/// Longest pause.
pub const MAX: Duration = Duration::from_secs(60);
/// An instance up at least this long before it crashed is not "crashing repeatedly".
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Consecutive crashes of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    crashes: u32,
}

impl Backoff {
    /// Records a crash after the instance ran for `uptime`; returns the pause before the
    /// restart.
    pub fn crashed(&mut self, uptime: Duration) -> Duration {
        if uptime >= STABLE_AFTER {
            self.crashes = 0;
        }
        self.crashes = self.crashes.saturating_add(1);
        let doublings = (self.crashes - 1).min(16);
        FIRST.saturating_mul(1 << doublings).min(MAX)
    }

    /// Crashes in a row so far.
    pub fn crashes(&self) -> u32 {
        self.crashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_one_minute() {
        let mut backoff = Backoff::default();
        let pauses: Vec<u64> = (0..9)
            .map(|_| backoff.crashed(Duration::from_millis(100)).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff.crashes(), 9);
    }

    #[test]
    fn a_minute_of_uptime_starts_again_from_one_second() {
        let mut backoff = Backoff::default();
        backoff.crashed(Duration::ZERO);
        backoff.crashed(Duration::ZERO);
        assert_eq!(
            backoff.crashed(Duration::from_secs(59)),
            Duration::from_secs(4)
        );
        assert_eq!(backoff.crashed(Duration::from_secs(60)), FIRST);
    }
}
