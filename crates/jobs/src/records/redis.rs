//! `RedisRecords`: job records in Redis, so several gateways share them.
//!
//! Keys (all after the configured prefix, `portico:jobs:` by default):
//! - `job:<id>`: a hash, `v` = the record's version, `j` = the job as JSON.
//! - `index`: a sorted set of every id, all with score 0, so members sort by their text;
//!   ids are UUIDv7, so that is submission order (`ZREVRANGEBYLEX` pages newest first).
//! - `invocations`: a hash service -> count; `invocations_reset`: unix seconds.
//!
//! A change reads the record, applies the state machine in Rust and writes it back with a
//! compare-and-set on `v` (a small Lua script); on a conflict (another gateway wrote in
//! between) it reads again, so the state machine's rules hold across gateways. Every call,
//! connecting included, is bounded by `state_timeout`; a connection that failed is dropped
//! and the next call connects afresh.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;
use time::OffsetDateTime;

use crate::records::Applied;
use crate::{Change, Error, Job, JobId, ListFilter};

const CAS: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if v == ARGV[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'j', ARGV[3])
  return 1
end
return 0
";
/// Compare-and-set attempts before a change gives up (only under heavy contention on one
/// job, which one job's few writers never cause).
const CAS_ATTEMPTS: usize = 32;
const LIST_BATCH: usize = 200;
const LIST_SCAN_LIMIT: usize = 100_000;

/// Job records in Redis. Clones share the connection.
#[derive(Clone)]
pub struct RedisRecords {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    live: Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    cas: redis::Script,
}

impl std::fmt::Debug for RedisRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRecords")
            .field("server", &self.inner.client.get_connection_info().addr)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

impl RedisRecords {
    /// Checks the URL; connects on first use.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisRecords, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Failed(format!("invalid Redis URL {url:?}: {e}")))?;
        Ok(RedisRecords {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.to_string(),
                timeout,
                live: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                cas: redis::Script::new(CAS),
            }),
        })
    }

    /// Succeeds when Redis answers `PING` in time.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut connection = self.connection().await?;
        self.bounded(redis::cmd("PING").query_async::<()>(&mut connection))
            .await
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.inner.prefix)
    }

    fn job_key(&self, id: JobId) -> String {
        format!("{}job:{id}", self.inner.prefix)
    }

    pub(crate) async fn insert(&self, job: &Job) -> Result<(), Error> {
        let json = encode(job);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                self.job_key(job.id),
                &[("v", job.version.to_string()), ("j", json)],
            )
            .ignore()
            .zadd(self.key("index"), job.id.to_string(), 0)
            .ignore();
        self.run_pipe(pipe).await
    }

    pub(crate) async fn get(&self, id: JobId) -> Result<Option<Job>, Error> {
        let mut connection = self.connection().await?;
        let json: Option<Vec<u8>> = self
            .bounded(
                redis::cmd("HGET")
                    .arg(self.job_key(id))
                    .arg("j")
                    .query_async(&mut connection),
            )
            .await?;
        json.map(|bytes| decode(&bytes, id)).transpose()
    }

    pub(crate) async fn apply(
        &self,
        changes: Vec<(JobId, Change)>,
    ) -> Result<Vec<Option<Applied>>, Error> {
        let mut applied = Vec::with_capacity(changes.len());
        for (id, change) in changes {
            applied.push(self.apply_one(id, &change).await?);
        }
        Ok(applied)
    }

    async fn apply_one(&self, id: JobId, change: &Change) -> Result<Option<Applied>, Error> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut job) = self.get(id).await? else {
                return Ok(None);
            };
            let old_version = job.version;
            if !job.apply(change, OffsetDateTime::now_utc()) {
                return Ok(Some(Applied {
                    job,
                    changed: false,
                }));
            }
            let mut connection = self.connection().await?;
            let mut invocation = self.inner.cas.key(self.job_key(id));
            invocation
                .arg(old_version.to_string())
                .arg(job.version.to_string())
                .arg(encode(&job));
            let written: i64 = self
                .bounded(invocation.invoke_async(&mut connection))
                .await?;
            if written == 1 {
                return Ok(Some(Applied { job, changed: true }));
            }
        }
        Err(Error::unavailable(format!(
            "redis: the record of {id} kept changing under {CAS_ATTEMPTS} attempts to update it"
        )))
    }

    pub(crate) async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, Error> {
        let mut page = Vec::new();
        let mut max = filter.after.map_or("+".to_string(), |id| format!("({id}"));
        let mut scanned = 0;
        while page.len() < filter.page_size() && scanned < LIST_SCAN_LIMIT {
            let mut connection = self.connection().await?;
            let ids: Vec<String> = self
                .bounded(
                    redis::cmd("ZREVRANGEBYLEX")
                        .arg(self.key("index"))
                        .arg(&max)
                        .arg("-")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LIST_BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            let Some(last) = ids.last() else { break };
            max = format!("({last}");
            scanned += ids.len();
            for job in self.get_many(&ids).await? {
                if filter.matches(&job) && page.len() < filter.page_size() {
                    page.push(job);
                }
            }
        }
        Ok(page)
    }

    /// The records of `ids`, in order, in one round trip per [`LIST_BATCH`].
    pub(crate) async fn get_ids(&self, ids: &[JobId]) -> Result<Vec<Option<Job>>, Error> {
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hget(self.job_key(*id), "j");
            }
            let mut connection = self.connection().await?;
            let found: Vec<Option<Vec<u8>>> =
                self.bounded(pipe.query_async(&mut connection)).await?;
            for (id, bytes) in chunk.iter().zip(found) {
                jobs.push(bytes.map(|b| decode(&b, *id)).transpose()?);
            }
        }
        Ok(jobs)
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Job>, Error> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(format!("{}job:{id}", self.inner.prefix), "j");
        }
        let mut connection = self.connection().await?;
        let found: Vec<Option<Vec<u8>>> = self.bounded(pipe.query_async(&mut connection)).await?;
        Ok(found
            .into_iter()
            .flatten()
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect())
    }

    pub(crate) async fn add_invocations(&self, counts: Vec<(String, u64)>) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (service, n) in &counts {
            pipe.hincr(self.key("invocations"), service, *n).ignore();
        }
        pipe.cmd("SET")
            .arg(self.key("invocations_reset"))
            .arg(OffsetDateTime::now_utc().unix_timestamp())
            .arg("NX")
            .ignore();
        self.run_pipe(pipe).await
    }

    pub(crate) async fn invocations(
        &self,
        service: Option<&str>,
    ) -> Result<(u64, OffsetDateTime), Error> {
        let mut connection = self.connection().await?;
        let counts: Vec<(String, u64)> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(self.key("invocations"))
                    .query_async(&mut connection),
            )
            .await?;
        let count = counts
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == name))
            .map(|(_, n)| *n)
            .fold(0u64, u64::saturating_add);
        let mut set_reset = redis::cmd("SET");
        set_reset
            .arg(self.key("invocations_reset"))
            .arg(OffsetDateTime::now_utc().unix_timestamp())
            .arg("NX")
            .arg("GET");
        let previous: Option<i64> = self.bounded(set_reset.query_async(&mut connection)).await?;
        let reset = previous.unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp());
        let reset =
            OffsetDateTime::from_unix_timestamp(reset).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok((count, reset))
    }

    async fn run_pipe(&self, pipe: redis::Pipeline) -> Result<(), Error> {
        let mut connection = self.connection().await?;
        self.bounded(pipe.query_async::<()>(&mut connection)).await
    }

    /// The live connection, connecting first when there is none.
    async fn connection(&self) -> Result<ConnectionManager, Error> {
        if let Some(live) = self.live().clone() {
            return Ok(live);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(live) = self.live().clone() {
            return Ok(live);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.inner.timeout)
            .set_response_timeout(self.inner.timeout)
            .set_number_of_retries(0);
        let connect = ConnectionManager::new_with_config(self.inner.client.clone(), config);
        let fresh = match tokio::time::timeout(self.inner.timeout, connect).await {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(error)) => return Err(classify(error)),
            Err(_) => return Err(self.timed_out()),
        };
        *self.live() = Some(fresh.clone());
        Ok(fresh)
    }

    /// `call` within the timeout; a failure that may be the connection's drops it.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Error> {
        let outcome = match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(classify(error)),
            Err(_) => Err(self.timed_out()),
        };
        if matches!(&outcome, Err(e) if e.is_retryable()) {
            self.live().take();
        }
        outcome
    }

    fn timed_out(&self) -> Error {
        Error::unavailable(format!("redis: no answer within {:?}", self.inner.timeout))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
        // The critical sections clone or replace a handle; a poisoned lock holds a valid one.
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn encode(job: &Job) -> String {
    serde_json::to_string(job).expect("a job serialises (string keys, finite numbers)")
}

fn decode(bytes: &[u8], id: JobId) -> Result<Job, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Failed(format!("redis: the record of {id} is damaged: {e}")))
}

/// Connection trouble is retryable; anything else (a script error, wrong types) is not.
fn classify(error: RedisError) -> Error {
    let transient = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            redis::ErrorKind::BusyLoadingError
                | redis::ErrorKind::TryAgain
                | redis::ErrorKind::ClusterDown
                | redis::ErrorKind::MasterDown
                | redis::ErrorKind::ReadOnly
        );
    if transient {
        Error::unavailable(format!("redis: {error}"))
    } else {
        Error::Failed(format!("redis: {error}"))
    }
}
