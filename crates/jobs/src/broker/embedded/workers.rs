//! What the embedded broker saw of each worker, for the dashboard's worker table (Flower's):
//! when it was last seen, how many runs it took, which jobs it runs now. Kept in memory,
//! bounded: past [`MAX_WORKERS`] entries the one seen longest ago is forgotten.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::time::Instant;

use crate::JobId;

/// Workers remembered at most (remote workers may come and go under fresh names).
pub(crate) const MAX_WORKERS: usize = 1024;

/// One worker of one service, as the broker saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// The name it took jobs under (`host/service/slot` for local slots).
    pub name: String,
    pub service: String,
    /// A remote worker (`portico worker`), not a local slot.
    pub remote: bool,
    /// Seconds since it last took a job, asked for one or renewed a lease.
    pub last_seen_seconds: f64,
    /// Jobs it runs now.
    pub active: Vec<JobId>,
    /// Runs it started since this process started.
    pub processed: u64,
    /// A remote worker not seen for longer than a worker counts as active, or one whose
    /// lease ran out.
    pub lost: bool,
}

#[derive(Debug)]
struct Seen {
    remote: bool,
    last_seen: Instant,
    processed: u64,
}

/// Workers by (service, name).
#[derive(Debug, Default)]
pub(crate) struct WorkerTable {
    seen: Mutex<HashMap<(String, String), Seen>>,
}

impl WorkerTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `worker` asked for work of `service` or renewed (`started`: it took a run).
    pub(crate) fn saw(&self, service: &str, worker: &str, remote: bool, started: bool) {
        let now = Instant::now();
        let mut seen = self.lock();
        let key = (service.to_string(), worker.to_string());
        if !seen.contains_key(&key) && seen.len() >= MAX_WORKERS {
            forget_oldest(&mut seen);
        }
        let entry = seen.entry(key).or_insert(Seen {
            remote,
            last_seen: now,
            processed: 0,
        });
        entry.last_seen = now;
        entry.processed += u64::from(started);
    }

    /// Every worker, with `active` runs by (service, worker) and `lost` ones, sorted by
    /// service then name.
    pub(crate) fn list(
        &self,
        active: &HashMap<(String, String), Vec<JobId>>,
        lost: &[(String, String)],
        seen_window: std::time::Duration,
    ) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let seen = self.lock();
        let mut list: Vec<WorkerInfo> = seen
            .iter()
            .map(|((service, name), seen)| {
                let key = (service.clone(), name.clone());
                let since = now.saturating_duration_since(seen.last_seen);
                WorkerInfo {
                    name: name.clone(),
                    service: service.clone(),
                    remote: seen.remote,
                    last_seen_seconds: since.as_secs_f64(),
                    active: active.get(&key).cloned().unwrap_or_default(),
                    processed: seen.processed,
                    lost: seen.remote && (since >= seen_window || lost.contains(&key)),
                }
            })
            .collect();
        list.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        list
    }
}

fn forget_oldest(seen: &mut HashMap<(String, String), Seen>) {
    let oldest = seen
        .iter()
        .min_by_key(|(_, s)| s.last_seen)
        .map(|(key, _)| key.clone());
    if let Some(key) = oldest {
        seen.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_stays_at_its_cap_forgetting_the_oldest() {
        let table = WorkerTable::default();
        for n in 0..MAX_WORKERS + 10 {
            table.saw("s", &format!("w{n}"), true, true);
        }
        let list = table.list(&HashMap::new(), &[], std::time::Duration::from_secs(60));
        assert_eq!(list.len(), MAX_WORKERS);
        assert!(list
            .iter()
            .any(|w| w.name == format!("w{}", MAX_WORKERS + 9)));
    }

    #[test]
    fn runs_are_counted_and_active_jobs_shown() {
        let table = WorkerTable::default();
        table.saw("s", "a", false, true);
        table.saw("s", "a", false, true);
        table.saw("s", "b", true, false);
        let id = JobId::new();
        let active = HashMap::from([(("s".to_string(), "a".to_string()), vec![id])]);
        let lost = vec![("s".to_string(), "b".to_string())];
        let list = table.list(&active, &lost, std::time::Duration::from_secs(60));
        assert_eq!(list[0].processed, 2);
        assert_eq!(list[0].active, vec![id]);
        assert!(!list[0].lost);
        assert!(list[1].lost && list[1].remote);
    }
}
