//! In-process measurement of the job core (no HTTP): durable submissions per second, and
//! no-op jobs per second end to end through `persistent` command slots. The HTTP-level
//! benchmark against Celery + RabbitMQ is `bench/jobs/`; this one says what the core itself
//! can do, so a regression shows up without the gateway in the way.
//!
//! `cargo run --release -p jobs --example core_bench -- [SUBMISSIONS] [CONCURRENCY] [JOBS] [SLOTS] [MODE]`
//! (defaults 200000 256 100000 2 persistent; MODE `per_job` runs `true` per job). The data directory is a temporary directory under
//! `$TMPDIR`, on a real disk (every acknowledged submission is fsync'd, group-committed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs::config::{RawJobsConfig, RawService, RawWorkers};
use jobs::{JobId, Jobs, OpenOptions};
use serde_json::json;

/// A persistent no-op worker: answers each job line with a null result.
const NOOP_WORKER: &str = r#"{ i = index($0, "\"id\":\""); id = substr($0, i + 6, 36); printf "{\"id\":\"%s\",\"result\":null}\n", id; fflush() }"#;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn config(slots: i64) -> jobs::JobsConfig {
    let per_job = std::env::args().nth(5).as_deref() == Some("per_job");
    let (command, mode) = if per_job {
        (vec!["true".to_string()], "per_job")
    } else {
        (
            vec!["awk".to_string(), NOOP_WORKER.to_string()],
            "persistent",
        )
    };
    RawJobsConfig {
        services: vec![RawService {
            name: "noop".into(),
            celery_task_name: None,
            celery_queue_name: None,
            version: String::new(),
            noparams: false,
            command,
            mode: mode.into(),
            workers: Some(RawWorkers::Count(slots)),
            timeout: None,
            max_attempts: 3,
            canarie: Default::default(),
        }],
        ..RawJobsConfig::default()
    }
    .validate()
    .expect("valid")
}

async fn open(dir: &std::path::Path, slots: i64, no_slots: bool) -> (Jobs, service::Background) {
    let (data_dir, _) = service::DataDir::open_or_create(dir).expect("data dir");
    let background = service::Background::new("bench");
    let options = OpenOptions {
        faults: None,
        no_slots,
    };
    let jobs = Jobs::open_with(
        &config(slots),
        &data_dir,
        &background,
        &service::Readiness::new(),
        options,
    )
    .await
    .expect("open");
    (jobs, background)
}

/// Submits `count` jobs from `concurrency` tasks; returns their ids and the elapsed time.
async fn submit_all(jobs: &Jobs, count: usize, concurrency: usize) -> (Vec<JobId>, Duration) {
    let message = json!({"request_time": "2019-03-20T09:37:37", "service": {"type": "noop", "document": {"url": "http://x/doc", "credentials": null}, "misc": {}}, "annotation_service": {"url": null, "uuid": null, "credentials": null}});
    let per_task = count / concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let jobs = jobs.clone();
            let message = message.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    ids.push(
                        jobs.submit("noop", message.clone())
                            .await
                            .expect("submit")
                            .id,
                    );
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await.expect("task"));
    }
    (ids, started.elapsed())
}

async fn all_final(jobs: &Jobs, ids: &[JobId]) -> bool {
    let records = jobs.records();
    let found = records.get_many(ids.to_vec()).await.expect("read");
    found
        .iter()
        .all(|j| j.as_ref().is_some_and(|j| j.state.is_final()))
}

fn main() {
    let submissions = arg(1, 200_000);
    let concurrency = arg(2, 256);
    let job_count = arg(3, 100_000);
    let slots = arg(4, 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let temp = tempfile::tempdir().expect("temp dir");
        let (jobs, background) = open(&temp.path().join("submit"), slots as i64, true).await;
        let (ids, elapsed) = submit_all(&jobs, submissions, concurrency).await;
        println!(
            "durable submissions: {} in {:.2}s = {:.0}/s (concurrency {concurrency})",
            ids.len(),
            elapsed.as_secs_f64(),
            ids.len() as f64 / elapsed.as_secs_f64()
        );
        drop(jobs);
        background.stop(Duration::from_secs(5)).await;

        let (jobs, background) = open(&temp.path().join("run"), slots as i64, false).await;
        let warm = submit_all(&jobs, 256, 16).await.0;
        while !all_final(&jobs, &warm).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let (ids, _) = submit_all(&jobs, job_count, concurrency.min(job_count)).await;
        let ids = Arc::new(ids);
        loop {
            let capacity = jobs.capacity().remove(0);
            if capacity.queue_depth == 0
                && capacity.workers_busy == 0
                && all_final(&jobs, &ids).await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        println!(
            "no-op jobs end to end ({}, {slots} slots): {} in {:.2}s = {:.0}/s",
            std::env::args()
                .nth(5)
                .unwrap_or_else(|| "persistent".into()),
            ids.len(),
            elapsed.as_secs_f64(),
            ids.len() as f64 / elapsed.as_secs_f64()
        );
        jobs.stop().await;
        background.stop(Duration::from_secs(5)).await;
    });
}
