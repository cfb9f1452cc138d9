//! Remote workers' side of the embedded broker (what `portico worker --gateway` uses through
//! the HTTP pull API): long polls answered by a submission without polling, renewals,
//! leases that run out, cancel seen at renewal, activeWorkers and capacity.

mod common;

use std::time::Duration;

use common::{config, open_in, sh_service};
use jobs::{Error, LeaseStatus, OpenOptions, Outcome, State};
use serde_json::json;

const NO_SLOTS: OpenOptions = OpenOptions {
    faults: None,
    no_slots: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_answered_by_the_next_submission() {
    let temp = tempfile::tempdir().unwrap();
    let running = open_in(
        temp.path(),
        &config(vec![sh_service("svc", "cat", "per_job", 1)]),
        NO_SLOTS,
    )
    .await;
    let jobs = running.jobs.clone();
    let started = std::time::Instant::now();
    assert!(jobs
        .lease("svc", "w", Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    assert!(started.elapsed() >= Duration::from_millis(200));
    let poller = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.lease("svc", "w", Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let submitted_at = std::time::Instant::now();
    let job = jobs.submit("svc", json!({"x": 1})).await.unwrap();
    let lease = poller.await.unwrap().unwrap().unwrap();
    assert!(submitted_at.elapsed() < Duration::from_secs(1));
    assert_eq!(lease.job.id, job.id);
    assert_eq!(lease.job.message, json!({"x": 1}));
    assert_eq!(
        jobs.active_workers("svc").await.unwrap(),
        1,
        "the remote worker counts"
    );
    let capacity = jobs.capacity();
    assert_eq!(capacity[0].workers_busy, 1);
    jobs.finish(&lease.id, Outcome::Success(json!(2)), "log".into())
        .await
        .unwrap();
    let done = jobs.job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.result, done.log),
        (State::Success, json!(2), "log".to_string())
    );
    assert!(matches!(
        jobs.finish(&lease.id, Outcome::Success(json!(3)), String::new())
            .await,
        Err(Error::UnknownLease(_))
    ));
    assert_eq!(jobs.renew(&lease.id).await.unwrap(), LeaseStatus::Lost);
    // Shutting down: long polls end at once with a retryable error (workers back off).
    let waiting = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.lease("svc", "w", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    jobs.drain().await;
    let ended = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended, Err(Error::Draining)), "{ended:?}");
    let error = jobs
        .lease("svc", "w", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_leases_hold_and_abandoned_ones_run_again() {
    let temp = tempfile::tempdir().unwrap();
    let running = open_in(
        temp.path(),
        &config(vec![sh_service("svc", "cat", "per_job", 1)]),
        NO_SLOTS,
    )
    .await;
    let jobs = &running.jobs;
    let kept = jobs.submit("svc", json!({"kept": 1})).await.unwrap();
    let abandoned = jobs.submit("svc", json!({"abandoned": 1})).await.unwrap();
    let held = jobs
        .lease("svc", "w1", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let lost = jobs
        .lease("svc", "w2", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((held.job.id, lost.job.id), (kept.id, abandoned.id));
    // The lease is 1 s: renew one for 2.5 s, abandon the other.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(jobs.renew(&held.id).await.unwrap(), LeaseStatus::Held);
    }
    let again = jobs
        .lease("svc", "w3", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.job.id, abandoned.id,
        "the abandoned job is handed out again"
    );
    assert_eq!(again.job.attempts, 2);
    assert_eq!(jobs.renew(&lost.id).await.unwrap(), LeaseStatus::Lost);
    assert!(matches!(
        jobs.finish(&lost.id, Outcome::Success(json!("late")), String::new())
            .await,
        Err(Error::UnknownLease(_))
    ));
    jobs.finish(&held.id, Outcome::Success(json!("kept")), String::new())
        .await
        .unwrap();
    jobs.finish(
        &again.id,
        Outcome::Success(json!("second run")),
        String::new(),
    )
    .await
    .unwrap();
    let second = jobs.job(&abandoned.id).await.unwrap().unwrap();
    assert_eq!(
        (second.state, second.result),
        (State::Success, json!("second run"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_is_seen_at_the_next_renewal() {
    let temp = tempfile::tempdir().unwrap();
    let running = open_in(
        temp.path(),
        &config(vec![sh_service("svc", "cat", "per_job", 1)]),
        NO_SLOTS,
    )
    .await;
    let jobs = &running.jobs;
    let job = jobs.submit("svc", json!({})).await.unwrap();
    let lease = jobs
        .lease("svc", "w", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    jobs.progress(&lease.id, 10, json!({"current": 10}))
        .await
        .unwrap();
    let revoked = jobs.cancel(&job.id).await.unwrap().unwrap();
    assert_eq!(revoked.state, State::Revoked);
    assert_eq!(jobs.renew(&lease.id).await.unwrap(), LeaseStatus::Cancelled);
    jobs.finish(&lease.id, Outcome::Failure("killed".into()), String::new())
        .await
        .unwrap();
    assert_eq!(
        jobs.job(&job.id).await.unwrap().unwrap().state,
        State::Revoked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_ids_get_their_errors() {
    let temp = tempfile::tempdir().unwrap();
    let running = open_in(
        temp.path(),
        &config(vec![sh_service("svc", "cat", "per_job", 1)]),
        NO_SLOTS,
    )
    .await;
    let jobs = &running.jobs;
    assert!(matches!(
        jobs.submit("nope", json!({})).await,
        Err(Error::UnknownService(_))
    ));
    assert!(matches!(
        jobs.lease("nope", "w", Duration::ZERO).await,
        Err(Error::UnknownService(_))
    ));
    assert!(matches!(
        jobs.count_invocation("nope").await,
        Err(Error::UnknownService(_))
    ));
    assert!(jobs.job(&jobs::JobId::new()).await.unwrap().is_none());
    jobs.count_invocation("svc").await.unwrap();
    jobs.count_invocation("svc").await.unwrap();
    assert_eq!(jobs.invocations(Some("svc")).await.unwrap().invocations, 2);
    assert_eq!(jobs.invocations(None).await.unwrap().invocations, 2);
    assert!(
        jobs.config().security.jwt_key.is_some(),
        "a key was generated"
    );
}
