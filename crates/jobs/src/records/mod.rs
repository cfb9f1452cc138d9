//! The job records seam: where Portico keeps every job's record (state, progress, result,
//! invocations), and so what status answers come from.
//!
//! Two implementations behind the closed enum [`Records`]:
//! - [`Records::Embedded`]: `jobs.redb` in the data directory ([`LocalDb`]), group-committed;
//!   the embedded broker's queue lives in the same file, so a submission is one write.
//! - [`Records::Redis`]: Redis, so several gateways share the records ([`RedisRecords`]).
//!
//! Both apply changes with the one state machine ([`crate::Job::apply`]): embedded inside
//! the write transaction, Redis between a read and a compare-and-set on the record's
//! version. The conformance suite (`crate::conformance::records`) runs against both.

mod local;
mod redis;

use time::OffsetDateTime;

pub use self::redis::RedisRecords;
pub use local::LocalDb;
pub(crate) use local::Op;

use crate::{Change, Error, Invocations, Job, JobId, ListFilter};

/// The outcome of one change: the record after it, and whether it changed (a final record
/// refuses every change; a change that says nothing new changes nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub job: Job,
    pub changed: bool,
}

/// The job records. Clones share the connection or database.
#[derive(Debug, Clone)]
pub enum Records {
    Embedded(LocalDb),
    Redis(RedisRecords),
}

impl Records {
    /// Stores a new job's record.
    pub async fn insert(&self, job: &Job) -> Result<(), Error> {
        match self {
            Records::Embedded(db) => db
                .write(Op::Insert {
                    job: Box::new(job.clone()),
                    enqueue: false,
                })
                .await
                .map(drop),
            Records::Redis(redis) => redis.insert(job).await,
        }
    }

    pub async fn get(&self, id: JobId) -> Result<Option<Job>, Error> {
        match self {
            Records::Embedded(db) => db.get(id).await,
            Records::Redis(redis) => redis.get(id).await,
        }
    }

    /// The records of `ids`, in order (`None` where there is none).
    pub async fn get_many(&self, ids: Vec<JobId>) -> Result<Vec<Option<Job>>, Error> {
        match self {
            Records::Embedded(db) => db.get_many(ids).await,
            Records::Redis(redis) => redis.get_ids(&ids).await,
        }
    }

    /// Applies `changes` in order; `None` for a job that has no record.
    pub async fn apply(
        &self,
        changes: Vec<(JobId, Change)>,
    ) -> Result<Vec<Option<Applied>>, Error> {
        match self {
            Records::Embedded(db) => db.apply(changes).await,
            Records::Redis(redis) => redis.apply(changes).await,
        }
    }

    /// Applies one change.
    pub async fn apply_one(&self, id: JobId, change: Change) -> Result<Option<Applied>, Error> {
        let mut applied = self.apply(vec![(id, change)]).await?;
        Ok(applied.pop().flatten())
    }

    /// Newest first, as [`ListFilter`] says.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, Error> {
        match self {
            Records::Embedded(db) => db.list(filter).await,
            Records::Redis(redis) => redis.list(filter).await,
        }
    }

    /// Adds to the per-service invocation counters.
    pub async fn add_invocations(&self, counts: Vec<(String, u64)>) -> Result<(), Error> {
        if counts.is_empty() {
            return Ok(());
        }
        match self {
            Records::Embedded(db) => db.write(Op::Count { counts }).await.map(drop),
            Records::Redis(redis) => redis.add_invocations(counts).await,
        }
    }

    /// The service's invocations (all services' when `None`) since the last reset.
    pub async fn invocations(&self, service: Option<&str>) -> Result<Invocations, Error> {
        let (invocations, last_reset): (u64, OffsetDateTime) = match self {
            Records::Embedded(db) => db.invocations(service.map(str::to_string)).await?,
            Records::Redis(redis) => redis.invocations(service).await?,
        };
        Ok(Invocations {
            invocations,
            last_reset,
        })
    }

    /// The embedded database, when the records live in it.
    pub fn local(&self) -> Option<&LocalDb> {
        match self {
            Records::Embedded(db) => Some(db),
            Records::Redis(_) => None,
        }
    }
}
