//! A full disk under the job store (durable's fault injection on the real `jobs.redb`):
//! submissions are refused with a typed, retryable error saying so; `/readyz` follows;
//! nothing acknowledged is lost; the store heals by itself once space returns.

mod common;

use std::time::Duration;

use common::{config, open_in, sh_service, wait_final};
use durable::{Fault, Faults};
use jobs::{OpenOptions, State};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submissions_retryably_loses_nothing_and_heals() {
    let temp = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let options = OpenOptions {
        faults: Some(faults.clone()),
        no_slots: false,
    };
    // Jobs take a while, so some finish while the disk is full: their results are kept
    // and stored once it heals.
    let raw = config(vec![sh_service("svc", "sleep 0.1; cat", "per_job", 2)]);
    let running = open_in(temp.path(), &raw, options).await;
    let jobs = &running.jobs;
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        acknowledged.push(jobs.submit("svc", json!({"n": n})).await.unwrap());
    }

    faults.fail_all_writes(Fault::NoSpace);
    let error = loop {
        // The first refused write breaks the database; every later one fails at once.
        match jobs.submit("svc", json!({"late": true})).await {
            Ok(job) => acknowledged.push(job),
            Err(error) => break error,
        }
    };
    assert!(error.is_retryable(), "{error}");
    assert!(error.is_disk_full(), "{error}");
    assert!(error.to_string().contains("disk full"), "{error}");
    let again = jobs.submit("svc", json!({"late": true})).await.unwrap_err();
    assert!(again.is_disk_full(), "{again}");
    let problems = running.readiness.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.service == "jobs" && p.reason.contains("disk full")),
        "{problems:?}"
    );
    assert!(faults.injected() > 0);

    // Runs go on while the disk is full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    faults.heal();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let healed = loop {
        match jobs.submit("svc", json!({"after": true})).await {
            Ok(job) => break job,
            Err(error) => {
                assert!(error.is_retryable(), "{error}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not healed: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    acknowledged.push(healed);
    assert!(running.readiness.problems().is_empty());
    for job in &acknowledged {
        let done = wait_final(jobs, job.id, Duration::from_secs(30)).await;
        assert_eq!(done.state, State::Success, "{done:#?}");
        assert_eq!(
            done.result, job.message,
            "every acknowledged job ran with its message"
        );
    }
}
