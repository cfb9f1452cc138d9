//! `Jobs::changes`: what SSE streams are made of. Every stored change after a version, the
//! current record first, ending after a final state; resuming from a `Last-Event-ID`
//! misses nothing and repeats nothing.

mod common;

use std::time::Duration;

use common::{config, open_in, sh_service};
use futures::StreamExt;
use jobs::{Error, Job, OpenOptions, Outcome, State};
use serde_json::json;

const NO_SLOTS: OpenOptions = OpenOptions {
    faults: None,
    no_slots: true,
};

async fn collect(stream: impl futures::Stream<Item = Result<Job, Error>>) -> Vec<Job> {
    let stream = std::pin::pin!(stream);
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.map(|j| j.unwrap()).collect(),
    )
    .await
    .expect("the stream ends after the final state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_resume_after_a_version_and_end_at_a_final_state() {
    let temp = tempfile::tempdir().unwrap();
    let running = open_in(
        temp.path(),
        &config(vec![sh_service("svc", "cat", "per_job", 1)]),
        NO_SLOTS,
    )
    .await;
    let jobs = running.jobs.clone();
    let job = jobs.submit("svc", json!({})).await.unwrap();
    let follower = tokio::spawn(collect(jobs.changes(&job.id, 0)));
    let lease = jobs
        .lease("svc", "w", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    for percent in [10, 50, 90] {
        jobs.progress(&lease.id, percent, json!({"current": percent}))
            .await
            .unwrap();
        common::wait_for(&jobs, job.id, Duration::from_secs(5), |j| {
            j.progress == Some(percent)
        })
        .await;
    }
    jobs.finish(&lease.id, Outcome::Success(json!("done")), String::new())
        .await
        .unwrap();
    let seen = follower.await.unwrap();
    let states: Vec<String> = seen.iter().map(|j| j.state.to_string()).collect();
    assert_eq!(
        states.first().map(String::as_str),
        Some("PENDING"),
        "{states:?}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("SUCCESS"),
        "{states:?}"
    );
    let progress: Vec<Option<u8>> = seen
        .iter()
        .filter(|j| j.state == State::Progress)
        .map(|j| j.progress)
        .collect();
    assert_eq!(progress, vec![Some(10), Some(50), Some(90)]);
    let versions: Vec<u64> = seen.iter().map(|j| j.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // A client that reconnects with the version it saw last gets the rest only.
    let middle = seen[2].version;
    let resumed = collect(jobs.changes(&job.id, middle)).await;
    assert!(resumed.iter().all(|j| j.version > middle));
    assert_eq!(resumed.last().unwrap().state, State::Success);
    let final_version = seen.last().unwrap().version;
    assert!(collect(jobs.changes(&job.id, final_version))
        .await
        .is_empty());

    let unknown: Vec<_> = jobs.changes(&jobs::JobId::new(), 0).collect().await;
    assert!(
        matches!(unknown.as_slice(), [Err(Error::UnknownJob(_))]),
        "{unknown:?}"
    );
}
