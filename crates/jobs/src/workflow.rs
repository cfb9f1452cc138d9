//! Simple workflows (`POST /simple_workflow/process`): one job that runs an ordered list of
//! configured services, each step submitted when the previous one succeeded, with the
//! previous step's result given to the next as `misc.previous_result`.
//!
//! A workflow is a job record of the service [`WORKFLOW_SERVICE`] (no queue, no worker: a
//! driver task in Portico moves it). Everything the driver needs is in the record, so a
//! restart loses nothing ([`Jobs::resume_workflows`], run at open and retried in the background
//! while the records do not answer, restarts the driver of every workflow not final):
//!
//! - `message`: `{"steps": [{"service": S, "message": <task message>}, ...], "request": ...}`,
//!   each step's task message built and checked by the API at submission;
//! - `meta` (while PROGRESS): `{"current": 0..100, "total": 100, "step": i (from 0), "steps":
//!   n, "service": S, "job": "<step job id>", "previous_job": "<id>"|null, "step_meta": ...}`.
//!
//! Before a step's job is submitted, its id (generated) is stored in the workflow's meta: a
//! crash between the two leaves an id with no record, which the resumed driver submits; a
//! crash after it finds the step's record and follows it. So a step is submitted once.
//! Overall progress is `(i * 100 + step progress) / n`. The last step's SUCCESS is the
//! workflow's (its result); a failed step fails the workflow naming the step; a revoked step
//! revokes it; cancelling the workflow cancels its running step.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::{Change, Error, Job, JobId, ListFilter, Outcome, State};

use crate::Jobs;

/// The service name of workflow records (a reserved route keyword, never a configured one).
pub const WORKFLOW_SERVICE: &str = "simple_workflow";
/// How long the driver waits before trying again after a store error.
const RETRY: Duration = Duration::from_secs(1);

/// One step as submitted: the service and its task message.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub service: String,
    pub message: Value,
}

/// Where a running workflow is, read from its meta.
#[derive(Debug, Clone, PartialEq)]
struct Position {
    step: usize,
    job: JobId,
    previous_job: Option<JobId>,
}

fn position(workflow: &Job) -> Option<Position> {
    let meta = &workflow.meta;
    Some(Position {
        step: usize::try_from(meta.get("step")?.as_u64()?).ok()?,
        job: meta.get("job")?.as_str()?.parse().ok()?,
        previous_job: meta
            .get("previous_job")
            .and_then(Value::as_str)
            .and_then(|id| id.parse().ok()),
    })
}

fn steps_of(workflow: &Job) -> Vec<Step> {
    workflow.message["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|step| Step {
                    service: step["service"].as_str().unwrap_or_default().to_string(),
                    message: step["message"].clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Overall progress when step `step` of `steps` is at `percent`.
pub fn overall(step: usize, steps: usize, percent: u8) -> u8 {
    let steps = steps.max(1);
    let done = step.min(steps) * 100 + usize::from(percent.min(100));
    u8::try_from(done / steps).unwrap_or(100)
}

fn progress_meta(position: &Position, steps: &[Step], percent: u8, step_meta: &Value) -> Value {
    json!({
        "current": overall(position.step, steps.len(), percent),
        "total": 100,
        "step": position.step,
        "steps": steps.len(),
        "service": steps.get(position.step).map(|s| s.service.as_str()),
        "job": position.job.to_string(),
        "previous_job": position.previous_job.map(|id| id.to_string()),
        "step_meta": step_meta,
    })
}

/// How one step's job ended, for the driver.
enum StepEnd {
    Next,
    Done(Value),
    Failed(String),
    Revoked(String),
}

impl Jobs {
    /// Stores a workflow of `steps` (each a configured service with its task message) and
    /// starts its driver; `request` is kept in the record as the client sent it.
    pub async fn submit_workflow(&self, steps: Vec<Step>, request: Value) -> Result<Job, Error> {
        if steps.is_empty() {
            return Err(Error::Invalid("a workflow needs at least one step".into()));
        }
        for step in &steps {
            if self.config().service(&step.service).is_none() {
                return Err(Error::UnknownService(step.service.clone()));
            }
        }
        let steps: Vec<Value> = steps
            .into_iter()
            .map(|s| json!({"service": s.service, "message": s.message}))
            .collect();
        let message = json!({"steps": steps, "request": request});
        let job = Job::new(WORKFLOW_SERVICE, message, OffsetDateTime::now_utc());
        self.records().insert(&job).await?;
        self.spawn_driver(job.id);
        Ok(job)
    }

    /// Cancels the workflow `id` and its running step; the record after it (`None`: no
    /// such workflow).
    pub async fn cancel_workflow(&self, id: &JobId) -> Result<Option<Job>, Error> {
        let Some(workflow) = self.workflow(id).await? else {
            return Ok(None);
        };
        if workflow.state.is_final() {
            return Ok(Some(workflow));
        }
        let revoke = Change::Revoke {
            reason: "the workflow was cancelled".into(),
        };
        let applied = self.apply_to_workflow(*id, revoke).await?;
        if let Some(position) = position(&workflow) {
            self.cancel_job(&position.job).await?;
        }
        Ok(applied.map(|a| a.job))
    }

    /// Applies `change` to the workflow's record and tells its followers.
    async fn apply_to_workflow(
        &self,
        id: JobId,
        change: Change,
    ) -> Result<Option<crate::records::Applied>, Error> {
        let applied = self.records().apply_one(id, change).await?;
        if let Some(applied) = applied.as_ref().filter(|a| a.changed) {
            self.publish(&applied.job);
        }
        Ok(applied)
    }

    /// The workflow record `id` (`None`: unknown, or another service's job).
    pub async fn workflow(&self, id: &JobId) -> Result<Option<Job>, Error> {
        Ok(self
            .job(id)
            .await?
            .filter(|job| job.service == WORKFLOW_SERVICE))
    }

    /// Restarts the driver of every workflow that is not final (at open).
    pub async fn resume_workflows(&self) -> Result<usize, Error> {
        let mut resumed = 0;
        for state in [State::Pending, State::Started, State::Progress] {
            let mut filter = ListFilter {
                service: Some(WORKFLOW_SERVICE.into()),
                state: Some(state),
                limit: ListFilter::MAX_LIMIT,
                after: None,
            };
            loop {
                let page = self.list(&filter).await?;
                for job in &page {
                    self.spawn_driver(job.id);
                    resumed += 1;
                }
                if page.len() < filter.page_size() {
                    break;
                }
                filter.after = page.last().map(|job| job.id);
            }
        }
        Ok(resumed)
    }

    /// [`Jobs::resume_workflows`], tried again every second until the records answer.
    pub(crate) async fn resume_workflows_until_done(&self) {
        loop {
            match self.resume_workflows().await {
                Ok(0) => return,
                Ok(resumed) => {
                    tracing::info!(
                        resumed,
                        "resumed the workflows a previous run left unfinished"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "resuming workflows: retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Starts the workflow's driver unless it runs already (a workflow submitted while the
    /// resume at open lists the records would otherwise get two).
    fn spawn_driver(&self, id: JobId) {
        if !self.claim_driver(id) {
            return;
        }
        let jobs = self.clone();
        self.background()
            .spawn(&format!("workflow-{id}"), async move {
                loop {
                    match jobs.drive(id).await {
                        Ok(()) => break,
                        Err(error) => {
                            tracing::warn!(workflow = %id, %error, "workflow driver: retrying");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
                jobs.release_driver(id);
            });
    }

    /// Moves the workflow to its end; an `Err` is a store error (the caller tries again,
    /// from the record).
    async fn drive(&self, id: JobId) -> Result<(), Error> {
        loop {
            let Some(workflow) = self.workflow(&id).await? else {
                return Ok(());
            };
            if workflow.state.is_final() {
                return Ok(());
            }
            let steps = steps_of(&workflow);
            let Some(position) = position(&workflow) else {
                self.start_step(&workflow, &steps, 0, None).await?;
                continue;
            };
            if self.job(&position.job).await?.is_none() {
                let previous = self.previous_result(position.previous_job).await?;
                self.submit_step(&workflow, &steps, &position, previous)
                    .await?;
            }
            match self.follow_step(&id, &position, &steps).await? {
                StepEnd::Next => {
                    let next = position.step + 1;
                    self.start_step(&workflow, &steps, next, Some(position.job))
                        .await?;
                }
                StepEnd::Done(result) => {
                    let finish = Change::Finish {
                        outcome: Outcome::Success(result),
                        log: String::new(),
                    };
                    self.apply_to_workflow(id, finish).await?;
                    return Ok(());
                }
                StepEnd::Failed(reason) => {
                    let finish = Change::Finish {
                        outcome: Outcome::Failure(reason),
                        log: String::new(),
                    };
                    self.apply_to_workflow(id, finish).await?;
                    return Ok(());
                }
                StepEnd::Revoked(reason) => {
                    self.apply_to_workflow(id, Change::Revoke { reason })
                        .await?;
                    return Ok(());
                }
            }
        }
    }

    async fn previous_result(&self, previous: Option<JobId>) -> Result<Option<Value>, Error> {
        let Some(previous) = previous else {
            return Ok(None);
        };
        Ok(self.job(&previous).await?.map(|job| job.result))
    }

    /// Stores step `step`'s new job id in the workflow's meta, then submits the job.
    async fn start_step(
        &self,
        workflow: &Job,
        steps: &[Step],
        step: usize,
        previous_job: Option<JobId>,
    ) -> Result<(), Error> {
        if workflow.state == State::Pending {
            let start = Change::Start {
                worker: WORKFLOW_SERVICE.into(),
            };
            self.apply_to_workflow(workflow.id, start).await?;
        }
        let position = Position {
            step,
            job: JobId::new(),
            previous_job,
        };
        let meta = progress_meta(&position, steps, 0, &Value::Null);
        let percent = overall(step, steps.len(), 0);
        let change = Change::Progress { percent, meta };
        let applied = self.apply_to_workflow(workflow.id, change).await?;
        if !applied.is_some_and(|a| a.changed) {
            return Ok(()); // cancelled meanwhile
        }
        let previous = self.previous_result(previous_job).await?;
        self.submit_step(workflow, steps, &position, previous).await
    }

    async fn submit_step(
        &self,
        workflow: &Job,
        steps: &[Step],
        position: &Position,
        previous: Option<Value>,
    ) -> Result<(), Error> {
        let Some(step) = steps.get(position.step) else {
            return Err(Error::Invalid(format!(
                "workflow {}: no step {}",
                workflow.id, position.step
            )));
        };
        let mut message = step.message.clone();
        if let (Some(previous), Some(misc)) = (
            previous,
            message
                .pointer_mut("/service/misc")
                .and_then(Value::as_object_mut),
        ) {
            misc.insert("previous_result".into(), previous);
        }
        match self
            .submit_with_id(&step.service, position.job, message)
            .await
        {
            Ok(_) => {}
            // The service left the config since: the workflow fails, naming it.
            Err(Error::UnknownService(service)) => {
                let finish = Change::Finish {
                    outcome: Outcome::Failure(format!(
                        "step {} of {} ({service}): the service is no longer configured",
                        position.step + 1,
                        steps.len()
                    )),
                    log: String::new(),
                };
                self.apply_to_workflow(workflow.id, finish).await?;
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        // Cancelled while the step was being submitted: cancel the step too.
        if self
            .workflow(&workflow.id)
            .await?
            .is_some_and(|w| w.state.is_final())
        {
            self.cancel_job(&position.job).await?;
        }
        Ok(())
    }

    /// Follows the step's job to its end, reporting its progress as the workflow's.
    async fn follow_step(
        &self,
        id: &JobId,
        position: &Position,
        steps: &[Step],
    ) -> Result<StepEnd, Error> {
        let mut changes = Box::pin(self.changes(&position.job, 0));
        let mut last_percent = None;
        while let Some(change) = changes.next().await {
            let job = change?;
            match &job.state {
                State::Success => return Ok(self.step_succeeded(position, steps, job)),
                State::Failure => return Ok(StepEnd::Failed(step_failure(position, steps, &job))),
                State::Revoked => {
                    return Ok(StepEnd::Revoked(format!(
                        "step {} of {} ({}) was cancelled",
                        position.step + 1,
                        steps.len(),
                        job.service
                    )))
                }
                _ => {}
            }
            let percent = job.progress.unwrap_or(0);
            if last_percent == Some(percent) {
                continue;
            }
            last_percent = Some(percent);
            let meta = progress_meta(position, steps, percent, &job.meta);
            let change = Change::Progress {
                percent: overall(position.step, steps.len(), percent),
                meta,
            };
            let applied = self.apply_to_workflow(*id, change).await?;
            if applied.is_some_and(|a| a.job.state.is_final()) {
                return Ok(StepEnd::Revoked("the workflow was cancelled".into()));
            }
        }
        Err(Error::Failed(format!(
            "the changes of step job {} ended before a final state",
            position.job
        )))
    }

    fn step_succeeded(&self, position: &Position, steps: &[Step], job: Job) -> StepEnd {
        if position.step + 1 >= steps.len() {
            StepEnd::Done(job.result)
        } else {
            StepEnd::Next
        }
    }
}

fn step_failure(position: &Position, steps: &[Step], job: &Job) -> String {
    let reason = job
        .error
        .as_ref()
        .map_or("no reason given", |e| e.message.as_str());
    format!(
        "step {} of {} ({}, job {}) failed: {reason}",
        position.step + 1,
        steps.len(),
        job.service,
        job.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_progress_spreads_the_steps_evenly() {
        assert_eq!(overall(0, 2, 0), 0);
        assert_eq!(overall(0, 2, 50), 25);
        assert_eq!(overall(1, 2, 0), 50);
        assert_eq!(overall(1, 2, 100), 100);
        assert_eq!(overall(2, 3, 50), 83);
        assert_eq!(overall(0, 0, 200), 100);
    }

    #[test]
    fn the_position_is_read_back_from_the_meta() {
        let position = Position {
            step: 1,
            job: JobId::new(),
            previous_job: Some(JobId::new()),
        };
        let steps = vec![
            Step {
                service: "a".into(),
                message: Value::Null,
            },
            Step {
                service: "b".into(),
                message: Value::Null,
            },
        ];
        let mut job = Job::new(WORKFLOW_SERVICE, Value::Null, OffsetDateTime::now_utc());
        job.meta = progress_meta(&position, &steps, 40, &json!({"x": 1}));
        assert_eq!(position_of(&job), Some(position));
        assert_eq!(job.meta["current"], 70);
        assert_eq!(job.meta["service"], "b");
    }

    fn position_of(job: &Job) -> Option<Position> {
        position(job)
    }
}
