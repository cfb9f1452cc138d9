//! `state = "redis://..."`: several gateways share the job records. Each gateway's embedded
//! broker keeps its own queue; status, list and cancel work from any gateway. Needs the
//! test Redis (`PORTICO_TEST_REDIS`); with `CI` set a missing Redis fails.

mod common;

use std::time::Duration;

use common::{config, open_in, sh_service, wait_final};
use jobs::config::RawJobsConfig;
use jobs::{OpenOptions, State};
use serde_json::json;

async fn redis_config(prefix: &str, script: &str) -> Option<RawJobsConfig> {
    let url = testkit::test_redis_url();
    let probe = jobs::records::RedisRecords::new(&url, prefix, Duration::from_secs(2)).unwrap();
    if let Err(error) = probe.ping().await {
        testkit::server_missing("redis", error);
        return None;
    }
    let mut raw = config(vec![sh_service("svc", script, "per_job", 1)]);
    raw.state = url;
    raw.state_prefix = prefix.to_string();
    Some(raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_records_and_either_can_cancel() {
    let prefix = testkit::unique_key_prefix("shared-records");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pid_file = dir_a.path().join("slow.pid");
    let script = format!(
        "msg=$(cat); case \"$msg\" in *slow*) echo $$ > {}; sleep 1000 ;; *) echo \"$msg\" ;; esac",
        pid_file.display()
    );
    let Some(raw) = redis_config(&prefix, &script).await else {
        return;
    };
    let a = open_in(dir_a.path(), &raw, OpenOptions::default()).await;
    let b = open_in(dir_b.path(), &raw, OpenOptions::default()).await;
    let quick = a.jobs.submit("svc", json!({"quick": 1})).await.unwrap();
    let done = wait_final(&b.jobs, quick.id, Duration::from_secs(20)).await;
    assert_eq!(
        (done.state, done.result),
        (State::Success, json!({"quick": 1}))
    );
    let slow = a.jobs.submit("svc", json!({"slow": 1})).await.unwrap();
    common::wait_for(&b.jobs, slow.id, Duration::from_secs(20), |j| {
        j.state == State::Started
    })
    .await;
    while !pid_file.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoked = b.jobs.cancel(&slow.id).await.unwrap().unwrap();
    assert_eq!(revoked.state, State::Revoked);
    // Gateway A runs it: it reads the shared records of its runs and kills this one.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway A's run was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = b.jobs.list(&jobs::ListFilter::default()).await.unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![slow.id, quick.id]
    );
    let after = a.jobs.job(&slow.id).await.unwrap().unwrap();
    assert_eq!(after.state, State::Revoked);
    a.crash().await;
    b.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_the_records_refuse_is_not_queued() {
    let temp = tempfile::tempdir().unwrap();
    let mut raw = config(vec![sh_service("svc", "cat", "per_job", 1)]);
    raw.state = "redis://127.0.0.1:1".into();
    raw.state_timeout = Duration::from_millis(300);
    let no_slots = OpenOptions {
        faults: None,
        no_slots: true,
    };
    let running = open_in(temp.path(), &raw, no_slots.clone()).await;
    let error = running.jobs.submit("svc", json!({})).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let leased = running
        .jobs
        .lease("svc", "w", Duration::from_millis(100))
        .await
        .unwrap();
    assert!(leased.is_none(), "nothing was queued");
    running.crash().await;
    // Nor is anything left in the durable queue for the next start.
    let mut embedded = raw.clone();
    embedded.state = "embedded".into();
    let running = open_in(temp.path(), &embedded, no_slots).await;
    assert!(running
        .jobs
        .lease("svc", "w", Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    running.crash().await;
}
