//! Crash recovery: the database is dropped and reopened mid-run (what SIGKILL leaves). Jobs
//! that were running run again with `attempts` counting them; finished ones never run
//! again and keep their result; past `max_attempts` a job fails with the reason.

mod common;

use std::time::Duration;

use common::{config, open_in, sh_service, wait_final};
use jobs::{OpenOptions, Outcome, State};
use serde_json::json;

const NO_SLOTS: OpenOptions = OpenOptions {
    faults: None,
    no_slots: true,
};
const POLL: Duration = Duration::from_millis(200);

fn raw() -> jobs::config::RawJobsConfig {
    let mut service = sh_service("svc", "cat", "per_job", 1);
    service.max_attempts = 2;
    config(vec![service])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_run_again_finished_ones_never_and_max_attempts_ends_it() {
    let temp = tempfile::tempdir().unwrap();
    let running = open_in(temp.path(), &raw(), NO_SLOTS.clone()).await;
    let jobs = &running.jobs;
    let a = jobs.submit("svc", json!({"a": 1})).await.unwrap();
    let b = jobs.submit("svc", json!({"b": 1})).await.unwrap();
    let c = jobs.submit("svc", json!({"c": 1})).await.unwrap();
    let lease_a = jobs.lease("svc", "w1", POLL).await.unwrap().unwrap();
    let lease_b = jobs.lease("svc", "w1", POLL).await.unwrap().unwrap();
    assert_eq!((lease_a.job.id, lease_b.job.id), (a.id, b.id));
    jobs.progress(&lease_a.id, 30, json!({})).await.unwrap();
    jobs.finish(
        &lease_b.id,
        Outcome::Success(json!("b done")),
        String::new(),
    )
    .await
    .unwrap();
    let b_done = jobs.job(&b.id).await.unwrap().unwrap();
    // Let the lazily stored start and progress of A reach the disk.
    common::wait_for(jobs, a.id, Duration::from_secs(5), |j| {
        j.state == State::Progress
    })
    .await;
    running.crash().await;

    let running = open_in(temp.path(), &raw(), NO_SLOTS.clone()).await;
    let jobs = &running.jobs;
    let a_now = jobs.job(&a.id).await.unwrap().unwrap();
    assert_eq!(a_now.state, State::Retry, "{a_now:#?}");
    assert_eq!(a_now.attempts, 1);
    assert!(a_now
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("Portico stopped"));
    assert_eq!(
        jobs.job(&b.id).await.unwrap().unwrap(),
        b_done,
        "a finished job is untouched"
    );
    assert_eq!(
        jobs.job(&c.id).await.unwrap().unwrap().state,
        State::Pending
    );
    let again = jobs.lease("svc", "w2", POLL).await.unwrap().unwrap();
    assert_eq!(
        (again.job.id, again.job.attempts),
        (a.id, 2),
        "A runs again first"
    );
    common::wait_for(jobs, a.id, Duration::from_secs(5), |j| j.attempts == 2).await;
    running.crash().await;

    let running = open_in(temp.path(), &raw(), NO_SLOTS.clone()).await;
    let jobs = &running.jobs;
    let a_now = jobs.job(&a.id).await.unwrap().unwrap();
    assert_eq!(a_now.state, State::Failure, "{a_now:#?}");
    assert_eq!(a_now.attempts, 2);
    let message = &a_now.error.as_ref().unwrap().message;
    assert_eq!(
        message,
        "worker lost: Portico stopped while the job ran (after 2 attempts)"
    );
    let next = jobs.lease("svc", "w3", POLL).await.unwrap().unwrap();
    assert_eq!(next.job.id, c.id, "only C is left to run");
    assert!(
        jobs.lease("svc", "w3", POLL).await.unwrap().is_none(),
        "B never runs again"
    );
    running.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_portico_runs_again_and_completes() {
    let temp = tempfile::tempdir().unwrap();
    let marker = temp.path().join("ran-once");
    // The first run hangs (Portico "dies" under it); the second completes.
    let script = format!(
        "if [ -e {m} ]; then cat; else touch {m}; sleep 1000; fi",
        m = marker.display()
    );
    let raw = config(vec![sh_service("svc", &script, "per_job", 1)]);
    let running = open_in(temp.path(), &raw, OpenOptions::default()).await;
    let job = running.jobs.submit("svc", json!({"x": 1})).await.unwrap();
    common::wait_for(&running.jobs, job.id, Duration::from_secs(10), |j| {
        j.state == State::Started
    })
    .await;
    while !marker.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.crash().await;

    let running = open_in(temp.path(), &raw, OpenOptions::default()).await;
    let done = wait_final(&running.jobs, job.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, State::Success, "{done:#?}");
    assert_eq!(done.result, json!({"x": 1}));
    assert_eq!(done.attempts, 2);
    running.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orderly_stop_gives_running_jobs_back_without_counting_the_attempt() {
    let temp = tempfile::tempdir().unwrap();
    let raw = config(vec![sh_service("svc", "sleep 1000", "per_job", 1)]);
    let running = open_in(temp.path(), &raw, OpenOptions::default()).await;
    let job = running.jobs.submit("svc", json!({})).await.unwrap();
    common::wait_for(&running.jobs, job.id, Duration::from_secs(10), |j| {
        j.state == State::Started
    })
    .await;
    running.jobs.drain().await;
    running.jobs.stop().await;
    let given_back = running.jobs.job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (given_back.state.clone(), given_back.attempts),
        (State::Pending, 0),
        "{given_back:#?}"
    );
    running.crash().await;
    let running = open_in(temp.path(), &raw, NO_SLOTS.clone()).await;
    let lease = running.jobs.lease("svc", "w", POLL).await.unwrap().unwrap();
    assert_eq!((lease.job.id, lease.job.attempts), (job.id, 1));
    running.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_a_killed_portico_left_running_are_killed_at_the_next_start() {
    use std::os::unix::process::CommandExt;
    let temp = tempfile::tempdir().unwrap();
    // What a SIGKILLed Portico leaves: a command in its own group, still registered.
    let mut left = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = left.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start_time = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let children = temp.path().join("children");
    std::fs::create_dir_all(&children).unwrap();
    std::fs::write(children.join(pid.to_string()), start_time).unwrap();
    let running = open_in(temp.path(), &raw(), NO_SLOTS.clone()).await;
    let status = tokio::task::spawn_blocking(move || left.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !status.success(),
        "the left-over command was killed: {status:?}"
    );
    assert_eq!(std::fs::read_dir(&children).unwrap().count(), 0);
    running.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_commands_are_registered_and_unregistered_when_they_end() {
    let temp = tempfile::tempdir().unwrap();
    let raw = config(vec![sh_service("svc", "sleep 0.5; cat", "per_job", 1)]);
    let running = open_in(temp.path(), &raw, OpenOptions::default()).await;
    let job = running.jobs.submit("svc", json!({})).await.unwrap();
    common::wait_for(&running.jobs, job.id, Duration::from_secs(10), |j| {
        j.state == State::Started
    })
    .await;
    let children = temp.path().join("children");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&children).unwrap().count() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running command is registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_final(&running.jobs, job.id, Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&children).unwrap().count() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unregistered after it ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.crash().await;
}
