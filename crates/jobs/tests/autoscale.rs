//! `workers = "MIN-MAX"`: local slots follow the capacity estimate, up at once when a
//! backlog builds, down after `scale_down_delay` of less need, never outside the bounds.
//! (Down to MIN itself takes a minute without arrivals: the estimate uses the 1-minute
//! arrival rate; the scaler's unit tests cover MIN.)

mod common;

use std::time::Duration;

use common::{config, open_in, sh_service, wait_final};
use jobs::config::RawWorkers;
use jobs::{OpenOptions, State};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_grow_with_a_backlog_and_shrink_after_it() {
    let temp = tempfile::tempdir().unwrap();
    let mut service = sh_service("svc", "sleep 0.4; cat", "per_job", 1);
    service.workers = Some(RawWorkers::Text("0-3".into()));
    let mut raw = config(vec![service]);
    raw.scale_down_delay = Duration::from_secs(1);
    raw.target_wait = Duration::from_millis(500);
    let running = open_in(temp.path(), &raw, OpenOptions::default()).await;
    let jobs = &running.jobs;
    assert_eq!(jobs.capacity()[0].slots, 0, "MIN is 0: no slot while idle");
    let mut submitted = Vec::new();
    for n in 0..15 {
        submitted.push(jobs.submit("svc", json!({"n": n})).await.unwrap());
    }
    let mut most_slots = 0;
    let mut most_busy = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let capacity = jobs.capacity().remove(0);
        most_slots = most_slots.max(capacity.slots);
        most_busy = most_busy.max(capacity.workers_busy);
        assert!(
            capacity.slots <= 3 && capacity.workers_busy <= 3,
            "{capacity:#?}"
        );
        let done = futures::future::join_all(submitted.iter().map(|j| jobs.job(&j.id))).await;
        if done
            .iter()
            .all(|j| j.as_ref().unwrap().as_ref().unwrap().state.is_final())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog did not drain: {capacity:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most_slots, 3, "the backlog asked for MAX slots");
    assert!(most_busy >= 2, "{most_busy}");
    for job in &submitted {
        let job = wait_final(jobs, job.id, Duration::from_secs(1)).await;
        assert_eq!(job.state, State::Success);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jobs.capacity()[0].slots >= 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:#?}",
            jobs.capacity()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let capacity = jobs.capacity().remove(0);
    assert!(
        capacity.run_seconds_mean.is_some_and(|m| m >= 0.4),
        "{capacity:#?}"
    );
    assert!(capacity.arrival_rate_1m > 0.0);
    assert_eq!(capacity.queue_depth, 0);
}
