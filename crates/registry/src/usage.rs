//! `UsageMarks`: the proxy's side of idle tracking. An agent stops an instance above `min`
//! that served nothing for the service's `idle_timeout`, but it cannot see requests: the proxy
//! tells it through [`crate::Registry::mark_used`]. Idle timeouts are minutes, so one mark per
//! second per instance is plenty; this decides when one is due, with no clock of its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one mark per instance per this interval.
pub const MARK_INTERVAL: Duration = Duration::from_secs(1);

/// Entries older than this are forgotten when the table is swept (instances come and go).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// When each instance was last marked used.
#[derive(Debug, Default)]
pub struct UsageMarks {
    last: HashMap<String, Instant>,
    swept: Option<Instant>,
}

impl UsageMarks {
    pub fn new() -> UsageMarks {
        UsageMarks::default()
    }

    /// Whether the instance `id`, which just served a request, should be marked used now
    /// (true at most once per [`MARK_INTERVAL`]); records the mark when it is.
    pub fn due(&mut self, id: &str, now: Instant) -> bool {
        self.sweep(now);
        match self.last.get_mut(id) {
            Some(last) if now.duration_since(*last) < MARK_INTERVAL => false,
            Some(last) => {
                *last = now;
                true
            }
            None => {
                self.last.insert(id.to_string(), now);
                true
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let due = self
            .swept
            .is_none_or(|at| now.duration_since(at) >= FORGET_AFTER);
        if due {
            self.last
                .retain(|_, last| now.duration_since(*last) < FORGET_AFTER);
            self.swept = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mark_per_second_per_instance() {
        let mut marks = UsageMarks::new();
        let start = Instant::now();
        assert!(marks.due("a", start));
        assert!(!marks.due("a", start + Duration::from_millis(999)));
        assert!(marks.due("b", start + Duration::from_millis(10)));
        assert!(marks.due("a", start + Duration::from_secs(1)));
        assert!(!marks.due("a", start + Duration::from_millis(1500)));
    }

    #[test]
    fn old_entries_are_forgotten() {
        let mut marks = UsageMarks::new();
        let start = Instant::now();
        marks.due("a", start);
        marks.due("b", start + Duration::from_secs(120));
        assert_eq!(marks.last.len(), 1);
    }
}
