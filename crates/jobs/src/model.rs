//! The job model: ids, states (Celery's names), the job record, and the one state machine
//! every record store applies ([`Job::apply`]).
//!
//! The state machine lives here, as a pure function of a record and a [`Change`], so that the
//! embedded records (which apply it inside the write transaction) and the Redis records (which
//! apply it between a read and a compare-and-set) cannot disagree on which report counts. Its
//! one rule that everything else leans on: **a final record never changes**. Late, duplicate
//! or out-of-order reports (a worker whose lease expired, a second run after a crash) are
//! therefore harmless: the first final state wins and its result is never overwritten.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Error;

/// A job's id: a UUID (version 7, so ids sort by submission time; clients only see an
/// opaque uuid, as Celery's). Display: lowercase hyphenated; `FromStr` accepts only the
/// hyphenated 36-character form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    /// A new id, later than every id made before it in this process.
    pub fn new() -> JobId {
        JobId(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> JobId {
        JobId(uuid)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The id as a number (the embedded records' key: orders like the id's text).
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    pub fn from_u128(value: u128) -> JobId {
        JobId(Uuid::from_u128(value))
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for JobId {
    type Err = Error;

    /// Strict: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits (either case), nothing
    /// else (no braces, no `urn:uuid:`, no simple form, no surrounding space).
    fn from_str(text: &str) -> Result<JobId, Error> {
        let bytes = text.as_bytes();
        let shaped = bytes.len() == 36
            && bytes.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !shaped {
            return Err(Error::Invalid(format!("{text:?} is not a job id (a uuid)")));
        }
        Uuid::parse_str(text)
            .map(JobId)
            .map_err(|e| Error::Invalid(format!("{text:?} is not a job id: {e}")))
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A job's state, with Celery's names (`Display`/`FromStr` use them; anything else is a
/// custom state, kept verbatim).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    Pending,
    Started,
    Progress,
    Storing,
    Success,
    Failure,
    Revoked,
    Retry,
    /// Portico's: PENDING again after the job was seen running (its result expired).
    Expired,
    Custom(String),
}

impl State {
    /// SUCCESS, FAILURE and REVOKED (Celery's `READY_STATES`): the record never changes again.
    pub fn is_final(&self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// Whether a worker holds the job now (STARTED, PROGRESS, STORING, or a custom state a
    /// worker reported).
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            State::Started | State::Progress | State::Storing | State::Custom(_)
        )
    }

    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "PENDING",
            State::Started => "STARTED",
            State::Progress => "PROGRESS",
            State::Storing => "STORING",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
            State::Retry => "RETRY",
            State::Expired => "EXPIRED",
            State::Custom(name) => name,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = Error;

    /// Celery's names are matched exactly (upper case); any other non-blank text without
    /// control characters is a custom state.
    fn from_str(text: &str) -> Result<State, Error> {
        Ok(match text {
            "PENDING" => State::Pending,
            "STARTED" => State::Started,
            "PROGRESS" => State::Progress,
            "STORING" => State::Storing,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "REVOKED" => State::Revoked,
            "RETRY" => State::Retry,
            "EXPIRED" => State::Expired,
            _ if text.trim().is_empty() || text.chars().any(char::is_control) => {
                return Err(Error::Invalid(format!("{text:?} is not a job state")))
            }
            _ => State::Custom(text.to_string()),
        })
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What went wrong, on FAILURE, REVOKED and RETRY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    /// The exception's type as Celery reports it (`exc_type`); `None` for Portico's own.
    #[serde(default)]
    pub exc_type: Option<String>,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exc_type: None,
        }
    }
}

/// One job's record: what status answers are made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub service: String,
    pub state: State,
    /// 0..=100 while running (once reported), 100 on success.
    pub progress: Option<u8>,
    /// The worker's PROGRESS meta (VestaService's shape), null if none.
    pub meta: Value,
    /// The return value on SUCCESS, null otherwise.
    pub result: Value,
    /// On FAILURE, REVOKED and RETRY: what happened.
    pub error: Option<Failure>,
    #[serde(with = "time::serde::rfc3339")]
    pub submitted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Runs started so far (a run that was lost counts; one given back on drain does not).
    pub attempts: u32,
    /// Who runs (or ran) it: a local slot (`<host>/<service>/<n>`) or a remote worker's name.
    pub worker: Option<String>,
    /// The task message (spec 1 "Submission"); opaque to the core.
    pub message: Value,
    /// The last 64 KiB of the command's stderr that were not progress lines (empty if none).
    #[serde(default)]
    pub log: String,
    /// +1 on every change (SSE event ids, `Last-Event-ID`).
    pub version: u64,
}

/// How a run ended, as a worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit 0 / `{"result": ...}`: the return value.
    Success(Value),
    /// The job failed: the message says why.
    Failure(String),
    /// The worker could not run it through no fault of the job (its process died): run it
    /// again, unless `max_attempts` runs were made already (then FAILURE with this reason).
    Retry(String),
}

/// A change to a job's record. Applied by [`Job::apply`]; a final record refuses them all.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A worker started a run: STARTED, `attempts` + 1.
    Start { worker: String },
    /// A progress report: PROGRESS with `percent` (at most 100) and `meta`.
    Progress { percent: u8, meta: Value },
    /// The run ended. `Outcome::Retry` is the broker's business (it turns it into
    /// [`Change::Requeue`]); here it counts as a failure.
    Finish { outcome: Outcome, log: String },
    /// Cancelled: REVOKED.
    Revoke { reason: String },
    /// The run was lost (worker died, lease expired, Portico killed): RETRY, or FAILURE once
    /// `attempts` reached `max_attempts`.
    Requeue {
        reason: String,
        max_attempts: u32,
        log: String,
    },
    /// Given back unfinished on shutdown: PENDING again, and the run is not counted.
    Release,
    /// A state read from a result backend (AMQP brokers): taken as the backend says.
    External {
        state: State,
        progress: Option<u8>,
        meta: Value,
        result: Value,
        error: Option<Failure>,
    },
}

impl Job {
    /// A new PENDING job (version 1).
    pub fn new(service: &str, message: Value, now: OffsetDateTime) -> Job {
        Job {
            id: JobId::new(),
            service: service.to_string(),
            state: State::Pending,
            progress: None,
            meta: Value::Null,
            result: Value::Null,
            error: None,
            submitted_at: now,
            started_at: None,
            finished_at: None,
            attempts: 0,
            worker: None,
            message,
            log: String::new(),
            version: 1,
        }
    }

    /// Applies `change` at `now`; says whether the record changed (then `version` grew by
    /// one). A final record never changes.
    pub fn apply(&mut self, change: &Change, now: OffsetDateTime) -> bool {
        if self.state.is_final() {
            return false;
        }
        let changed = match change {
            Change::Start { worker } => self.start(worker, now),
            Change::Progress { percent, meta } => self.report_progress(*percent, meta),
            Change::Finish { outcome, log } => self.finish(outcome, log, now),
            Change::Revoke { reason } => self.revoke(reason, now),
            Change::Requeue {
                reason,
                max_attempts,
                log,
            } => self.requeue(reason, *max_attempts, log, now),
            Change::Release => self.release(),
            Change::External {
                state,
                progress,
                meta,
                result,
                error,
            } => self.external(state, *progress, meta, result, error, now),
        };
        if changed {
            self.version += 1;
        }
        changed
    }

    fn start(&mut self, worker: &str, now: OffsetDateTime) -> bool {
        self.state = State::Started;
        self.attempts = self.attempts.saturating_add(1);
        self.started_at = Some(now);
        self.worker = Some(worker.to_string());
        self.progress = None;
        self.meta = Value::Null;
        self.error = None;
        true
    }

    fn report_progress(&mut self, percent: u8, meta: &Value) -> bool {
        let percent = percent.min(100);
        if self.state == State::Progress && self.progress == Some(percent) && self.meta == *meta {
            return false;
        }
        self.state = State::Progress;
        self.progress = Some(percent);
        self.meta = meta.clone();
        true
    }

    fn finish(&mut self, outcome: &Outcome, log: &str, now: OffsetDateTime) -> bool {
        if !self.state.is_running() {
            // The run's start was never stored (the disk refused it): it still was a run.
            self.attempts = self.attempts.saturating_add(1);
            self.started_at.get_or_insert(now);
        }
        match outcome {
            Outcome::Success(value) => {
                self.state = State::Success;
                self.result = value.clone();
                self.progress = Some(100);
                self.error = None;
            }
            Outcome::Failure(message) | Outcome::Retry(message) => {
                self.state = State::Failure;
                self.result = Value::Null;
                self.error = Some(Failure::new(message.clone()));
            }
        }
        self.finished_at = Some(now);
        self.log = log.to_string();
        true
    }

    fn revoke(&mut self, reason: &str, now: OffsetDateTime) -> bool {
        self.state = State::Revoked;
        self.error = Some(Failure {
            message: reason.to_string(),
            exc_type: Some("TaskRevokedError".into()),
        });
        self.finished_at = Some(now);
        true
    }

    fn requeue(&mut self, reason: &str, max_attempts: u32, log: &str, now: OffsetDateTime) -> bool {
        if !self.state.is_running() {
            // Not running (never started, or requeued already): nothing was lost.
            return false;
        }
        if !log.is_empty() {
            self.log = log.to_string();
        }
        if self.attempts >= max_attempts {
            self.state = State::Failure;
            self.result = Value::Null;
            let runs = self.attempts;
            self.error = Some(Failure::new(format!(
                "worker lost: {reason} (after {runs} attempt{})",
                if runs == 1 { "" } else { "s" }
            )));
            self.finished_at = Some(now);
            return true;
        }
        self.state = State::Retry;
        self.error = Some(Failure::new(format!(
            "worker lost: {reason}; running it again (attempt {} of {max_attempts})",
            self.attempts + 1
        )));
        self.progress = None;
        self.meta = Value::Null;
        self.worker = None;
        true
    }

    fn release(&mut self) -> bool {
        if !self.state.is_running() {
            return false;
        }
        self.state = State::Pending;
        self.attempts = self.attempts.saturating_sub(1);
        self.started_at = None;
        self.progress = None;
        self.meta = Value::Null;
        self.worker = None;
        true
    }

    fn external(
        &mut self,
        state: &State,
        progress: Option<u8>,
        meta: &Value,
        result: &Value,
        error: &Option<Failure>,
        now: OffsetDateTime,
    ) -> bool {
        let progress = progress.map(|p| p.min(100));
        let same = self.state == *state
            && self.progress == progress
            && self.meta == *meta
            && self.result == *result
            && self.error == *error;
        if same {
            return false;
        }
        // A backend that says the job runs (STARTED, or PROGRESS from a Celery worker that
        // does not track starts) when the record did not know it: a run started.
        if state.is_running() && !self.state.is_running() {
            self.attempts = self.attempts.saturating_add(1);
            self.started_at = Some(now);
        }
        self.state = state.clone();
        self.progress = progress;
        self.meta = meta.clone();
        self.result = result.clone();
        self.error = error.clone();
        if state.is_final() {
            self.finished_at = Some(now);
        }
        true
    }
}

/// Which jobs [`crate::Jobs::list`] returns: newest first, at most `limit`, only those
/// submitted before `after` when it is set (the last id of the previous page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub service: Option<String>,
    pub state: Option<State>,
    /// 0 means [`ListFilter::DEFAULT_LIMIT`]; more than [`ListFilter::MAX_LIMIT`] is cut.
    pub limit: usize,
    pub after: Option<JobId>,
}

impl ListFilter {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;

    /// The number of jobs a page may hold.
    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => ListFilter::DEFAULT_LIMIT,
            n => n.min(ListFilter::MAX_LIMIT),
        }
    }

    /// Whether `job` passes the service and state filters.
    pub fn matches(&self, job: &Job) -> bool {
        self.service.as_ref().is_none_or(|s| *s == job.service)
            && self.state.as_ref().is_none_or(|s| *s == job.state)
    }
}

/// `/stats`: invocations (submissions, status and cancel calls) since the last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invocations {
    pub invocations: u64,
    pub last_reset: OffsetDateTime,
}

/// A lease on a job: who holds it may run it until the lease expires (renewals extend it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(Uuid);

impl LeaseId {
    pub fn new() -> LeaseId {
        LeaseId(Uuid::new_v4())
    }
}

impl Default for LeaseId {
    fn default() -> Self {
        LeaseId::new()
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for LeaseId {
    type Err = Error;

    fn from_str(text: &str) -> Result<LeaseId, Error> {
        let id: JobId = text
            .parse()
            .map_err(|_| Error::Invalid(format!("{text:?} is not a lease id")))?;
        Ok(LeaseId(id.0))
    }
}

/// A job handed to a remote worker.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: LeaseId,
    /// The job as it was when the run started (STARTED, `attempts` counted).
    pub job: Job,
    /// Renew before this runs out, or the job is given to another worker.
    pub expires_in: Duration,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Still yours, for another lease period.
    Held,
    /// The job was cancelled: stop it (its state is REVOKED already).
    Cancelled,
    /// The lease is gone (it expired, or Portico restarted): stop; the job runs elsewhere.
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn job() -> Job {
        Job::new("echo", json!({"x": 1}), now())
    }

    #[test]
    fn ids_print_lowercase_and_parse_only_the_hyphenated_form() {
        let id = JobId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<JobId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<JobId>().unwrap(), id);
        for bad in [
            "",
            "not-a-uuid",
            &text.replace('-', ""),
            &format!("{{{text}}}"),
            &format!("urn:uuid:{text}"),
            &format!(" {text}"),
            "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let ids: Vec<JobId> = (0..1000).map(|_| JobId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.windows(2).all(|w| w[0].to_string() < w[1].to_string()));
        assert!(ids.windows(2).all(|w| w[0].as_u128() < w[1].as_u128()));
    }

    #[test]
    fn states_use_celery_names_and_keep_custom_ones() {
        for name in [
            "PENDING", "STARTED", "PROGRESS", "STORING", "SUCCESS", "FAILURE", "REVOKED", "RETRY",
            "EXPIRED",
        ] {
            let state: State = name.parse().unwrap();
            assert!(!matches!(state, State::Custom(_)), "{name}");
            assert_eq!(state.to_string(), name);
        }
        assert_eq!(
            "ANALYSING".parse::<State>().unwrap(),
            State::Custom("ANALYSING".into())
        );
        assert!("".parse::<State>().is_err());
        assert!("A\nB".parse::<State>().is_err());
        let finals: Vec<_> = ["SUCCESS", "FAILURE", "REVOKED"]
            .iter()
            .map(|n| n.parse::<State>().unwrap())
            .collect();
        assert!(finals.iter().all(State::is_final));
        assert!(!State::Expired.is_final() && !State::Retry.is_final());
    }

    #[test]
    fn a_run_goes_pending_started_progress_success_with_versions() {
        let mut job = job();
        assert!(job.apply(&Change::Start { worker: "w".into() }, now()));
        assert_eq!(
            (job.state.clone(), job.attempts, job.version),
            (State::Started, 1, 2)
        );
        let meta = json!({"current": 40});
        assert!(job.apply(
            &Change::Progress {
                percent: 40,
                meta: meta.clone()
            },
            now()
        ));
        assert!(
            !job.apply(&Change::Progress { percent: 40, meta }, now()),
            "no change"
        );
        let done = Change::Finish {
            outcome: Outcome::Success(json!("done")),
            log: "hello".into(),
        };
        assert!(job.apply(&done, now()));
        assert_eq!(job.state, State::Success);
        assert_eq!(job.progress, Some(100));
        assert_eq!(job.result, json!("done"));
        assert_eq!(job.log, "hello");
        assert_eq!(job.version, 4);
    }

    #[test]
    fn a_final_record_never_changes() {
        let mut job = job();
        job.apply(&Change::Start { worker: "w".into() }, now());
        job.apply(
            &Change::Finish {
                outcome: Outcome::Success(json!(1)),
                log: String::new(),
            },
            now(),
        );
        let before = job.clone();
        let late = [
            Change::Finish {
                outcome: Outcome::Success(json!(2)),
                log: String::new(),
            },
            Change::Finish {
                outcome: Outcome::Failure("late".into()),
                log: String::new(),
            },
            Change::Start { worker: "x".into() },
            Change::Progress {
                percent: 1,
                meta: Value::Null,
            },
            Change::Revoke { reason: "x".into() },
            Change::Requeue {
                reason: "x".into(),
                max_attempts: 9,
                log: String::new(),
            },
            Change::Release,
        ];
        for change in &late {
            assert!(!job.apply(change, now()), "{change:?}");
        }
        assert_eq!(job, before);
    }

    #[test]
    fn lost_runs_retry_until_max_attempts_then_fail_with_the_reason() {
        let mut job = job();
        let lost = Change::Requeue {
            reason: "Portico restarted".into(),
            max_attempts: 2,
            log: String::new(),
        };
        job.apply(&Change::Start { worker: "w".into() }, now());
        job.apply(&lost, now());
        assert_eq!(job.state, State::Retry);
        job.apply(&Change::Start { worker: "w".into() }, now());
        assert_eq!(job.attempts, 2);
        job.apply(&lost, now());
        assert_eq!(job.state, State::Failure);
        let message = &job.error.as_ref().unwrap().message;
        assert!(message.contains("worker lost") && message.contains("Portico restarted"));
        assert!(message.contains("2 attempts"), "{message}");
    }

    #[test]
    fn release_gives_the_run_back_uncounted() {
        let mut job = job();
        job.apply(&Change::Start { worker: "w".into() }, now());
        assert!(job.apply(&Change::Release, now()));
        assert_eq!((job.state.clone(), job.attempts), (State::Pending, 0));
        assert!(!job.apply(&Change::Release, now()), "nothing to release");
    }

    fn any_change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Change::Start { worker: "w".into() }),
            (0u8..=255).prop_map(|percent| Change::Progress {
                percent,
                meta: json!({"p": percent})
            }),
            (0u8..3).prop_map(|n| Change::Finish {
                outcome: match n {
                    0 => Outcome::Success(json!(n)),
                    1 => Outcome::Failure("f".into()),
                    _ => Outcome::Retry("r".into()),
                },
                log: String::new(),
            }),
            Just(Change::Revoke { reason: "c".into() }),
            (1u32..4).prop_map(|max_attempts| Change::Requeue {
                reason: "lost".into(),
                max_attempts,
                log: String::new(),
            }),
            Just(Change::Release),
        ]
    }

    proptest::proptest! {
        /// Whatever reports arrive in whatever order: versions count the changes, progress
        /// stays within 0..=100, and once final nothing changes any more.
        #[test]
        fn the_state_machine_keeps_its_invariants(changes in proptest::collection::vec(any_change(), 0..40)) {
            let mut job = job();
            let mut final_seen: Option<Job> = None;
            for change in &changes {
                let before = job.version;
                let changed = job.apply(change, now());
                proptest::prop_assert_eq!(job.version, before + u64::from(changed));
                proptest::prop_assert!(job.progress.is_none_or(|p| p <= 100));
                if let Some(frozen) = &final_seen {
                    proptest::prop_assert_eq!(&job, frozen);
                } else if job.state.is_final() {
                    proptest::prop_assert!(job.finished_at.is_some());
                    final_seen = Some(job.clone());
                }
                proptest::prop_assert!(job.state != State::Success || job.error.is_none());
            }
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut job = job();
        job.apply(
            &Change::Revoke {
                reason: "cancelled".into(),
            },
            now(),
        );
        let text = serde_json::to_string(&job).unwrap();
        let back: Job = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
    }
}
