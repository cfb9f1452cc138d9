//! What every job-record store does (see [`crate::records`]).

use futures::future::BoxFuture;
use serde_json::json;
use time::OffsetDateTime;

use crate::records::Records;
use crate::{Change, Job, JobId, ListFilter, Outcome, State};

/// A check, run on a fresh (empty) store.
pub type Check = fn(Records) -> BoxFuture<'static, ()>;

/// Every check, by name.
pub const SUITE: &[(&str, Check)] = &[
    ("records_round_trip", |r| Box::pin(records_round_trip(r))),
    ("changes_follow_the_state_machine", |r| {
        Box::pin(changes_follow_the_state_machine(r))
    }),
    ("a_final_record_is_never_overwritten", |r| {
        Box::pin(a_final_record_is_never_overwritten(r))
    }),
    ("concurrent_reports_keep_exactly_one_result", |r| {
        Box::pin(concurrent_reports_keep_exactly_one_result(r))
    }),
    ("lists_page_newest_first_with_filters", |r| {
        Box::pin(lists_page_newest_first_with_filters(r))
    }),
    ("invocations_add_up_per_service", |r| {
        Box::pin(invocations_add_up_per_service(r))
    }),
];

fn job(service: &str, n: u64) -> Job {
    Job::new(service, json!({"n": n}), OffsetDateTime::now_utc())
}

fn finish(value: serde_json::Value) -> Change {
    Change::Finish {
        outcome: Outcome::Success(value),
        log: String::new(),
    }
}

pub async fn records_round_trip(records: Records) {
    let job = job("svc", 1);
    records.insert(&job).await.expect("insert");
    let stored = records.get(job.id).await.expect("get").expect("present");
    assert_eq!(stored, job);
    assert_eq!(records.get(JobId::new()).await.expect("get"), None);
    let applied = records
        .apply_one(JobId::new(), Change::Release)
        .await
        .expect("apply");
    assert_eq!(applied, None, "a change to an unknown job");
}

pub async fn changes_follow_the_state_machine(records: Records) {
    let job = job("svc", 1);
    records.insert(&job).await.expect("insert");
    let start = Change::Start {
        worker: "w1".into(),
    };
    let progress = Change::Progress {
        percent: 30,
        meta: json!({"current": 30}),
    };
    let applied = records
        .apply(vec![(job.id, start), (job.id, progress)])
        .await
        .expect("apply");
    let after = applied[1].as_ref().expect("applied").job.clone();
    assert_eq!(after.state, State::Progress);
    assert_eq!(after.attempts, 1);
    assert_eq!(after.version, 3);
    assert_eq!(after.worker.as_deref(), Some("w1"));
    let stored = records.get(job.id).await.expect("get").expect("present");
    assert_eq!(stored, after, "what apply answers is what is stored");
    let same = records
        .apply_one(
            job.id,
            Change::Progress {
                percent: 30,
                meta: json!({"current": 30}),
            },
        )
        .await
        .expect("apply")
        .expect("known");
    assert!(
        !same.changed,
        "a report that says nothing new changes nothing"
    );
    assert_eq!(same.job.version, 3);
}

pub async fn a_final_record_is_never_overwritten(records: Records) {
    let job = job("svc", 1);
    records.insert(&job).await.expect("insert");
    records
        .apply_one(job.id, Change::Start { worker: "w".into() })
        .await
        .expect("start");
    let done = records
        .apply_one(job.id, finish(json!("first")))
        .await
        .expect("finish")
        .expect("known");
    assert!(done.changed);
    for late in [
        finish(json!("second")),
        Change::Revoke {
            reason: "late".into(),
        },
        Change::Start { worker: "x".into() },
        Change::Requeue {
            reason: "x".into(),
            max_attempts: 5,
            log: String::new(),
        },
    ] {
        let applied = records
            .apply_one(job.id, late)
            .await
            .expect("apply")
            .expect("known");
        assert!(!applied.changed);
        assert_eq!(applied.job, done.job);
    }
    let stored = records.get(job.id).await.expect("get").expect("present");
    assert_eq!(stored.result, json!("first"));
    assert_eq!(stored.version, done.job.version);
}

pub async fn concurrent_reports_keep_exactly_one_result(records: Records) {
    let job = job("svc", 1);
    records.insert(&job).await.expect("insert");
    records
        .apply_one(job.id, Change::Start { worker: "w".into() })
        .await
        .expect("start");
    let mut tasks = Vec::new();
    for n in 0..16u64 {
        let records = records.clone();
        let id = job.id;
        tasks.push(tokio::spawn(async move {
            let change = if n % 2 == 0 {
                finish(json!(n))
            } else {
                Change::Progress {
                    percent: n as u8,
                    meta: json!({}),
                }
            };
            records
                .apply_one(id, change)
                .await
                .expect("apply")
                .expect("known")
        }));
    }
    let mut finishes_that_changed = 0;
    for task in tasks {
        let applied = task.await.expect("task");
        if applied.changed && applied.job.state == State::Success {
            finishes_that_changed += 1;
        }
    }
    assert_eq!(finishes_that_changed, 1, "exactly one result was stored");
    let stored = records.get(job.id).await.expect("get").expect("present");
    assert_eq!(stored.state, State::Success);
}

pub async fn lists_page_newest_first_with_filters(records: Records) {
    let mut ids = Vec::new();
    for n in 0..25 {
        let service = if n % 2 == 0 { "even" } else { "odd" };
        let job = job(service, n);
        records.insert(&job).await.expect("insert");
        ids.push(job.id);
    }
    records
        .apply_one(ids[24], finish(json!(1)))
        .await
        .expect("finish");
    let newest_first: Vec<JobId> = ids.iter().rev().copied().collect();
    let page = |limit, after| ListFilter {
        limit,
        after,
        ..ListFilter::default()
    };
    let first = records.list(&page(10, None)).await.expect("list");
    let first_ids: Vec<JobId> = first.iter().map(|j| j.id).collect();
    assert_eq!(first_ids, newest_first[..10]);
    let second = records
        .list(&page(10, Some(first_ids[9])))
        .await
        .expect("list");
    let second_ids: Vec<JobId> = second.iter().map(|j| j.id).collect();
    assert_eq!(second_ids, newest_first[10..20]);
    let rest = records
        .list(&page(100, Some(second_ids[9])))
        .await
        .expect("list");
    assert_eq!(rest.len(), 5);
    let even = ListFilter {
        service: Some("even".into()),
        ..ListFilter::default()
    };
    let evens = records.list(&even).await.expect("list");
    assert_eq!(evens.len(), 13);
    assert!(evens.iter().all(|j| j.service == "even"));
    let done = ListFilter {
        state: Some(State::Success),
        ..ListFilter::default()
    };
    let finished = records.list(&done).await.expect("list");
    assert_eq!(
        finished.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[24]]
    );
}

pub async fn invocations_add_up_per_service(records: Records) {
    let before = records.invocations(None).await.expect("invocations");
    assert_eq!(before.invocations, 0);
    records
        .add_invocations(vec![("a".into(), 3), ("b".into(), 2)])
        .await
        .expect("add");
    records
        .add_invocations(vec![("a".into(), 1)])
        .await
        .expect("add");
    let a = records.invocations(Some("a")).await.expect("a");
    let b = records.invocations(Some("b")).await.expect("b");
    let all = records.invocations(None).await.expect("all");
    assert_eq!((a.invocations, b.invocations, all.invocations), (4, 2, 6));
    assert_eq!(a.last_reset, all.last_reset);
    assert!(a.last_reset <= OffsetDateTime::now_utc());
}
