//! What every broker does, seen from both ends: the API side ([`Broker`]: submit, cancel)
//! and the worker side (a [`JobSource`] that takes jobs and reports on them). The AMQP
//! broker of issue 11 runs this suite with its Celery consumer as the source.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use time::OffsetDateTime;

use super::eventually;
use crate::broker::Broker;
use crate::records::Records;
use crate::runner::{JobSource, Task};
use crate::{Job, Outcome, State};

/// How long a check waits for something to happen.
const LIMIT: Duration = Duration::from_secs(10);

/// A broker under test, with the records it keeps and a consumer of its jobs.
pub trait Fixture: Send + Sync + 'static {
    type Broker: Broker;
    type Source: JobSource;
    fn broker(&self) -> &Self::Broker;
    fn records(&self) -> &Records;
    /// A consumer of [`Fixture::service`]'s queue.
    fn source(&self) -> Self::Source;
    /// A service whose `max_attempts` is 2 and whose queue is empty.
    fn service(&self) -> &str;
}

/// A check, run on a fresh fixture.
pub type Check<F> = fn(F) -> BoxFuture<'static, ()>;

/// Every check, by name.
pub fn suite<F: Fixture>() -> Vec<(&'static str, Check<F>)> {
    vec![
        ("a_submitted_job_reaches_a_worker_once", |f| {
            Box::pin(a_submitted_job_reaches_a_worker_once(f))
        }),
        ("jobs_are_taken_in_submission_order", |f| {
            Box::pin(jobs_are_taken_in_submission_order(f))
        }),
        ("progress_reaches_the_record", |f| {
            Box::pin(progress_reaches_the_record(f))
        }),
        ("a_result_is_never_overwritten", |f| {
            Box::pin(a_result_is_never_overwritten(f))
        }),
        ("a_cancelled_queued_job_never_starts", |f| {
            Box::pin(a_cancelled_queued_job_never_starts(f))
        }),
        ("cancelling_a_running_job_stops_it", |f| {
            Box::pin(cancelling_a_running_job_stops_it(f))
        }),
        ("lost_runs_are_retried_up_to_max_attempts", |f| {
            Box::pin(lost_runs_are_retried_up_to_max_attempts(f))
        }),
    ]
}

async fn submit<F: Fixture>(fixture: &F, n: u64) -> Job {
    let job = Job::new(
        fixture.service(),
        json!({"n": n}),
        OffsetDateTime::now_utc(),
    );
    let stored = fixture.broker().submit(job.clone()).await.expect("submit");
    assert_eq!(stored.id, job.id);
    stored
}

async fn take<S: JobSource>(source: &S) -> Task {
    tokio::time::timeout(LIMIT, source.next("conformance"))
        .await
        .expect("a job within the limit")
        .expect("next")
        .expect("the source is open")
}

async fn wait_state<F: Fixture>(fixture: &F, job: &Job, state: State) -> Job {
    let records = fixture.records().clone();
    let id = job.id;
    eventually(&format!("job {id} reaches {state}"), LIMIT, || {
        let records = records.clone();
        let state = state.clone();
        async move {
            let job = records.get(id).await.ok()??;
            (job.state == state).then_some(job)
        }
    })
    .await
}

pub async fn a_submitted_job_reaches_a_worker_once<F: Fixture>(fixture: F) {
    let job = submit(&fixture, 1).await;
    let stored = fixture
        .records()
        .get(job.id)
        .await
        .expect("get")
        .expect("stored at once");
    assert_eq!(stored.state, State::Pending);
    let source = fixture.source();
    let task = take(&source).await;
    assert_eq!(task.job.id, job.id);
    assert_eq!(task.job.message, json!({"n": 1}));
    assert_eq!(
        (task.job.state.clone(), task.job.attempts),
        (State::Started, 1)
    );
    source
        .finish(&task, Outcome::Success(json!({"ok": true})), "log".into())
        .await
        .expect("finish");
    let done = wait_state(&fixture, &job, State::Success).await;
    assert_eq!(done.result, json!({"ok": true}));
    assert_eq!(done.attempts, 1);
    let again = tokio::time::timeout(Duration::from_millis(300), source.next("conformance")).await;
    assert!(
        again.is_err(),
        "a finished job is never handed out again: {again:?}"
    );
}

pub async fn jobs_are_taken_in_submission_order<F: Fixture>(fixture: F) {
    let mut submitted = Vec::new();
    for n in 0..5 {
        submitted.push(submit(&fixture, n).await.id);
    }
    let source = fixture.source();
    let mut taken = Vec::new();
    for _ in 0..5 {
        let task = take(&source).await;
        taken.push(task.job.id);
        source
            .finish(&task, Outcome::Success(json!(null)), String::new())
            .await
            .expect("finish");
    }
    assert_eq!(taken, submitted);
}

pub async fn progress_reaches_the_record<F: Fixture>(fixture: F) {
    let job = submit(&fixture, 1).await;
    let source = fixture.source();
    let task = take(&source).await;
    source
        .progress(&task, 42, json!({"current": 42, "total": 100}))
        .await
        .expect("progress");
    let running = wait_state(&fixture, &job, State::Progress).await;
    assert_eq!(running.progress, Some(42));
    assert_eq!(running.meta["current"], 42);
    source
        .finish(&task, Outcome::Success(json!(1)), String::new())
        .await
        .expect("finish");
    let done = wait_state(&fixture, &job, State::Success).await;
    assert_eq!(done.progress, Some(100));
}

pub async fn a_result_is_never_overwritten<F: Fixture>(fixture: F) {
    let job = submit(&fixture, 1).await;
    let source = fixture.source();
    let task = take(&source).await;
    source
        .finish(&task, Outcome::Success(json!("first")), String::new())
        .await
        .expect("finish");
    let done = wait_state(&fixture, &job, State::Success).await;
    // Late and duplicate reports: refused or ignored, never stored.
    let _ = source
        .finish(&task, Outcome::Failure("late".into()), String::new())
        .await;
    let _ = source.progress(&task, 5, json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = fixture
        .records()
        .get(job.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(after, done);
}

pub async fn a_cancelled_queued_job_never_starts<F: Fixture>(fixture: F) {
    let cancelled = submit(&fixture, 1).await;
    let next = submit(&fixture, 2).await;
    let revoked = fixture
        .broker()
        .cancel(cancelled.id)
        .await
        .expect("cancel")
        .expect("known");
    assert_eq!(revoked.state, State::Revoked);
    let source = fixture.source();
    let task = take(&source).await;
    assert_eq!(task.job.id, next.id, "the cancelled job was skipped");
    source
        .finish(&task, Outcome::Success(json!(null)), String::new())
        .await
        .expect("finish");
    let stored = fixture
        .records()
        .get(cancelled.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (stored.state, stored.attempts, stored.started_at),
        (State::Revoked, 0, None)
    );
    let again = fixture
        .broker()
        .cancel(cancelled.id)
        .await
        .expect("cancel")
        .expect("known");
    assert_eq!(
        again.version, stored.version,
        "cancelling twice changes nothing"
    );
}

pub async fn cancelling_a_running_job_stops_it<F: Fixture>(fixture: F) {
    let job = submit(&fixture, 1).await;
    let source = fixture.source();
    let task = take(&source).await;
    let revoked = fixture
        .broker()
        .cancel(job.id)
        .await
        .expect("cancel")
        .expect("known");
    assert_eq!(revoked.state, State::Revoked);
    tokio::time::timeout(LIMIT, task.stop.cancelled())
        .await
        .expect("the run's stop token fires");
    let _ = source
        .finish(&task, Outcome::Failure("killed".into()), String::new())
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored = fixture
        .records()
        .get(job.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        stored.state,
        State::Revoked,
        "the killed run's report did not overwrite it"
    );
}

pub async fn lost_runs_are_retried_up_to_max_attempts<F: Fixture>(fixture: F) {
    let job = submit(&fixture, 1).await;
    let source = fixture.source();
    let first = take(&source).await;
    source
        .finish(
            &first,
            Outcome::Retry("the worker died".into()),
            String::new(),
        )
        .await
        .expect("finish");
    let second = take(&source).await;
    assert_eq!(second.job.id, job.id, "the lost run's job runs again");
    assert_eq!(second.job.attempts, 2);
    source
        .finish(
            &second,
            Outcome::Retry("the worker died again".into()),
            String::new(),
        )
        .await
        .expect("finish");
    let failed = wait_state(&fixture, &job, State::Failure).await;
    assert_eq!(failed.attempts, 2);
    let message = failed.error.expect("an error").message;
    assert!(
        message.contains("worker lost") && message.contains("died again"),
        "{message}"
    );
}
