//! The loop behind the live page: once per `interval` it samples the gateway's request
//! counters; every `capacity_interval` (10 s) it adds a point to the capacity history; and, only while at
//! least one page is open, it builds one `tick` event (overview, job services, the recent
//! and running jobs, workers, the manager) and publishes it to every page. With no page open
//! it costs one read of the request counters per second.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use jobs::{ListFilter, ServiceTotals};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::sampler::CapacityPoint;
use crate::Dashboard;

/// Running jobs added to the live list at most.
const MAX_RUNNING: usize = 100;

/// Runs until `token` is cancelled.
pub(crate) async fn run(dashboard: Dashboard, token: CancellationToken) {
    let interval = dashboard.inner.config.interval;
    let capacity_every = dashboard.inner.config.capacity_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_point: Option<(Instant, Vec<ServiceTotals>)> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        sample_requests(&dashboard);
        let due = last_point
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= capacity_every);
        if due {
            last_point = Some(add_capacity_point(&dashboard, last_point.take()));
        }
        if dashboard.inner.hub.pages() > 0 {
            let tick = tick_json(&dashboard).await;
            dashboard.inner.hub.publish("tick", &tick.to_string());
        }
    }
}

fn sample_requests(dashboard: &Dashboard) {
    let Some(source) = &dashboard.inner.sources.requests else {
        return;
    };
    let totals = source.totals();
    dashboard
        .inner
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sample(totals);
}

/// Adds each job service's point; the totals now, for the next point's completion rate.
fn add_capacity_point(
    dashboard: &Dashboard,
    last: Option<(Instant, Vec<ServiceTotals>)>,
) -> (Instant, Vec<ServiceTotals>) {
    let now = Instant::now();
    let Some(jobs) = &dashboard.inner.sources.jobs else {
        return (now, Vec::new());
    };
    let totals = jobs.totals();
    let before: HashMap<&str, u64> = last
        .as_ref()
        .map(|(_, t)| t.iter().map(|t| (t.service.as_str(), t.finished)).collect())
        .unwrap_or_default();
    let elapsed = last.as_ref().map(|(at, _)| now.duration_since(*at));
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut history = dashboard
        .inner
        .capacity
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for capacity in jobs.capacity() {
        let finished = totals
            .iter()
            .find(|t| t.service == capacity.service)
            .map_or(0, |t| t.finished);
        let completion_rate = match (elapsed, before.get(capacity.service.as_str())) {
            (Some(elapsed), Some(before)) if !elapsed.is_zero() => {
                finished.saturating_sub(*before) as f64 / elapsed.as_secs_f64()
            }
            _ => 0.0,
        };
        let point = CapacityPoint {
            at,
            queue_depth: capacity.queue_depth,
            arrival_rate: capacity.arrival_rate_1m,
            completion_rate,
            wait_seconds_mean: capacity.wait_seconds_mean,
            workers_needed: capacity.workers_needed,
            workers_present: capacity.workers_busy + capacity.workers_idle,
        };
        history.push(&capacity.service, point);
    }
    (now, totals)
}

/// Everything a page shows but the capacity history (fetched on demand) and a job's detail.
async fn tick_json(dashboard: &Dashboard) -> Value {
    let workers = api::all_workers(dashboard).await;
    let jobs = recent_jobs(dashboard, &workers).await;
    json!({
        "overview": api::overview_json(dashboard),
        "jobs": api::jobs_summary_json(dashboard, &workers),
        "recent": jobs,
        "workers": workers,
        "manager": api::manager_json(dashboard),
    })
}

/// The newest jobs, then running jobs older than those, as task rows.
async fn recent_jobs(dashboard: &Dashboard, workers: &[crate::WorkerRow]) -> Value {
    let Some(jobs) = &dashboard.inner.sources.jobs else {
        return json!([]);
    };
    let filter = ListFilter {
        limit: dashboard.inner.config.recent_jobs,
        ..ListFilter::default()
    };
    let mut rows = Vec::new();
    let mut shown = std::collections::HashSet::new();
    match jobs.list(filter).await {
        Ok(page) => {
            for job in &page {
                shown.insert(job.id.to_string());
                rows.push(api::task_row(job));
            }
        }
        Err(error) => tracing::debug!(%error, "dashboard: listing recent jobs"),
    }
    let running: Vec<&String> = workers
        .iter()
        .flat_map(|w| &w.active)
        .filter(|id| !shown.contains(*id))
        .take(MAX_RUNNING)
        .collect();
    for id in running {
        let Ok(id) = id.parse() else { continue };
        if let Ok(Some(job)) = jobs.job(id).await {
            rows.push(api::task_row(&job));
        }
    }
    Value::Array(rows)
}
