//! Helpers shared by the job core's integration tests: configs with `sh -c` commands, a
//! `Jobs` opened on a temporary data directory, waiting for final states.

#![allow(dead_code)]

use std::time::Duration;

use jobs::config::{RawJobsConfig, RawService, RawWorkers};
use jobs::{Job, JobId, Jobs, OpenOptions, State};

/// A service named `name` running `sh -c script`.
pub fn sh_service(name: &str, script: &str, mode: &str, workers: i64) -> RawService {
    RawService {
        name: name.into(),
        celery_task_name: None,
        celery_queue_name: None,
        version: "1.2.3".into(),
        noparams: false,
        command: vec!["sh".into(), "-c".into(), script.into()],
        mode: mode.into(),
        workers: Some(RawWorkers::Count(workers)),
        timeout: None,
        max_attempts: 3,
        canarie: Default::default(),
    }
}

/// Defaults with short grace periods and the given services.
pub fn config(services: Vec<RawService>) -> RawJobsConfig {
    RawJobsConfig {
        kill_grace: Duration::from_millis(300),
        lease: Duration::from_secs(1),
        services,
        ..RawJobsConfig::default()
    }
}

pub struct Running {
    pub jobs: Jobs,
    pub background: service::Background,
    pub readiness: service::Readiness,
    pub data_dir: service::DataDir,
}

pub async fn open_in(dir: &std::path::Path, raw: &RawJobsConfig, options: OpenOptions) -> Running {
    let config = raw.validate().expect("valid test config");
    let (data_dir, _) = service::DataDir::open_or_create(dir).expect("data dir");
    let background = service::Background::new("jobs");
    let readiness = service::Readiness::new();
    let jobs = Jobs::open_with(&config, &data_dir, &background, &readiness, options)
        .await
        .expect("jobs open");
    Running {
        jobs,
        background,
        readiness,
        data_dir,
    }
}

impl Running {
    /// Stops every task and closes the database without any orderly shutdown (no drain,
    /// no release of running jobs: what a SIGKILL leaves), so the directory can be opened
    /// again as after a crash.
    pub async fn crash(self) {
        let db = self.jobs.local_db().cloned().expect("embedded");
        drop(self.jobs);
        self.background.stop(Duration::from_secs(5)).await;
        tokio::task::spawn_blocking(move || db.close())
            .await
            .unwrap()
            .expect("every other handle of jobs.redb is gone");
    }
}

/// Waits (real time, at most `limit`) until job `id` is final.
pub async fn wait_final(jobs: &Jobs, id: JobId, limit: Duration) -> Job {
    wait_for(jobs, id, limit, |job| job.state.is_final()).await
}

/// Waits until job `id` satisfies `done`.
pub async fn wait_for(jobs: &Jobs, id: JobId, limit: Duration, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let job = jobs.job(&id).await.expect("read").expect("the job exists");
        if done(&job) {
            return job;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("job {id} did not get there in {limit:?}: {job:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn state(job: &Job) -> &State {
    &job.state
}
