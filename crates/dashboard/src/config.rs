//! `[dashboard]`: every key has a default; [`DashboardConfig::validate`] names each problem.

use std::time::Duration;

use serde::Deserialize;

/// `[dashboard]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Serve `/dashboard` wherever `admin` is mounted.
    pub enabled: bool,
    /// Live events kept for reconnecting pages (`Last-Event-ID`).
    pub replay_events: usize,
    /// Events one page may fall behind before its stream is dropped (it reconnects).
    pub client_buffer: usize,
    /// Jobs in the live list (the newest; running jobs are added).
    pub recent_jobs: usize,
    /// How often pages get a fresh picture.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Between two points of the capacity history (it keeps 360: an hour at 10 s).
    #[serde(with = "humantime_serde")]
    pub capacity_interval: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            replay_events: 64,
            client_buffer: 8,
            recent_jobs: 50,
            interval: Duration::from_secs(1),
            capacity_interval: Duration::from_secs(10),
        }
    }
}

impl DashboardConfig {
    /// Every problem, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=10_000).contains(&self.replay_events) {
            problems.push("dashboard.replay_events must be 1 to 10000".to_string());
        }
        if !(1..=1_000).contains(&self.client_buffer) {
            problems.push("dashboard.client_buffer must be 1 to 1000".to_string());
        }
        if !(1..=1_000).contains(&self.recent_jobs) {
            problems.push("dashboard.recent_jobs must be 1 to 1000".to_string());
        }
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(60) {
            problems.push("dashboard.interval must be 100ms to 60s".to_string());
        }
        if self.capacity_interval < Duration::from_secs(1)
            || self.capacity_interval > Duration::from_secs(3600)
        {
            problems.push("dashboard.capacity_interval must be 1s to 1h".to_string());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert!(DashboardConfig::default().validate().is_empty());
        let bad = DashboardConfig {
            client_buffer: 0,
            interval: Duration::ZERO,
            ..DashboardConfig::default()
        };
        let problems = bad.validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("client_buffer"));
        assert!(problems[1].contains("interval"));
    }
}
