//! `LocalDb`: the job core's redb file (`jobs.redb` in the data directory) through the
//! `durable` crate: the embedded job records, the embedded broker's durable queue and the
//! invocation counters, in one database so that one group-committed write can carry a
//! submission's record and its queue entry together.
//!
//! Tables:
//! - `jobs`: id (u128; ids are UUIDv7, so the key order is submission order) -> the job as
//!   JSON.
//! - `queue`: (service, id) -> (): the jobs the embedded broker still owes a run, whatever
//!   their state; a job leaves it in the transaction that makes it final.
//! - `invocations`: service -> count; `meta`: `invocations_reset` -> unix seconds.
//!
//! State changes are applied by [`Job::apply`] inside the write transaction (read, apply,
//! write back), so concurrent reports about one job are serialised by the writer thread and
//! a final record can never be overwritten.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use cap_std::fs::Dir;
use durable::{Db, Health, Options, RedbError, Schema};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::records::Applied;
use crate::{Change, Error, Job, JobId, ListFilter};

const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
const QUEUE: TableDefinition<(&str, u128), ()> = TableDefinition::new("queue");
const INVOCATIONS: TableDefinition<&str, u64> = TableDefinition::new("invocations");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const RESET_KEY: &str = "invocations_reset";

/// The database's file name in the data directory.
pub const FILE: &str = "jobs.redb";
const WRITER_THREAD: &str = "jobs-writer";
const BATCH_METRIC: &str = "portico_jobs_commit_batch_size";
/// Records a list page may examine (filters that match little cannot scan forever).
const LIST_SCAN_LIMIT: usize = 100_000;

/// One write.
pub(crate) enum Op {
    /// A new job's record, and its queue entry when `enqueue`.
    Insert {
        job: Box<Job>,
        enqueue: bool,
    },
    /// Changes in order, each applied to its job's record; a job made final leaves the queue.
    Apply {
        changes: Vec<(JobId, Change)>,
    },
    /// Queue entries only (the records live elsewhere).
    Enqueue {
        service: String,
        id: JobId,
    },
    Dequeue {
        entries: Vec<(String, JobId)>,
    },
    /// Adds to the invocation counters.
    Count {
        counts: Vec<(String, u64)>,
    },
}

pub(crate) enum Output {
    Done,
    Applied(Vec<Option<Applied>>),
}

struct JobsSchema;

impl Schema for JobsSchema {
    type Op = Op;
    type Output = Output;

    fn create_tables(&self, txn: &WriteTransaction) -> Result<(), RedbError> {
        txn.open_table(JOBS)?;
        txn.open_table(QUEUE)?;
        txn.open_table(INVOCATIONS)?;
        let mut meta = txn.open_table(META)?;
        if meta.get(RESET_KEY)?.is_none() {
            meta.insert(RESET_KEY, OffsetDateTime::now_utc().unix_timestamp())?;
        }
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ops: &[Op],
        outputs: &mut Vec<Output>,
    ) -> Result<(), RedbError> {
        let mut jobs = txn.open_table(JOBS)?;
        let mut queue = txn.open_table(QUEUE)?;
        let now = OffsetDateTime::now_utc();
        for op in ops {
            let output = match op {
                Op::Insert { job, enqueue } => {
                    jobs.insert(job.id.as_u128(), encode(job).as_slice())?;
                    if *enqueue {
                        queue.insert((job.service.as_str(), job.id.as_u128()), ())?;
                    }
                    Output::Done
                }
                Op::Apply { changes } => {
                    Output::Applied(apply_changes(&mut jobs, &mut queue, changes, now)?)
                }
                Op::Enqueue { service, id } => {
                    queue.insert((service.as_str(), id.as_u128()), ())?;
                    Output::Done
                }
                Op::Dequeue { entries } => {
                    for (service, id) in entries {
                        queue.remove((service.as_str(), id.as_u128()))?;
                    }
                    Output::Done
                }
                Op::Count { counts } => {
                    let mut table = txn.open_table(INVOCATIONS)?;
                    for (service, n) in counts {
                        let old = table.get(service.as_str())?.map_or(0, |v| v.value());
                        table.insert(service.as_str(), old.saturating_add(*n))?;
                    }
                    Output::Done
                }
            };
            outputs.push(output);
        }
        Ok(())
    }
}

type JobsTable<'t> = redb::Table<'t, u128, &'static [u8]>;
type QueueTable<'t> = redb::Table<'t, (&'static str, u128), ()>;

/// Applies `changes` in order. A job changed several times in one op (a short job's start
/// and result often arrive together) is read and decoded once and written back once.
fn apply_changes(
    jobs: &mut JobsTable<'_>,
    queue: &mut QueueTable<'_>,
    changes: &[(JobId, Change)],
    now: OffsetDateTime,
) -> Result<Vec<Option<Applied>>, RedbError> {
    let mut touched: HashMap<JobId, (Job, bool)> = HashMap::new();
    let mut applied = Vec::with_capacity(changes.len());
    for (id, change) in changes {
        let entry = match touched.entry(*id) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(slot) => {
                let stored = jobs.get(id.as_u128())?.and_then(|v| decode(v.value()));
                match stored {
                    Some(job) => slot.insert((job, false)),
                    // No record (or one this version cannot read, left as it is).
                    None => {
                        applied.push(None);
                        continue;
                    }
                }
            }
        };
        let (job, dirty) = entry;
        let changed = job.apply(change, now);
        *dirty |= changed;
        applied.push(Some(Applied {
            job: job.clone(),
            changed,
        }));
    }
    for (id, (job, dirty)) in touched {
        if dirty {
            jobs.insert(id.as_u128(), encode(&job).as_slice())?;
            if job.state.is_final() {
                queue.remove((job.service.as_str(), id.as_u128()))?;
            }
        }
    }
    Ok(applied)
}

fn encode(job: &Job) -> Vec<u8> {
    serde_json::to_vec(job).expect("a job serialises (string keys, finite numbers)")
}

fn decode(bytes: &[u8]) -> Option<Job> {
    serde_json::from_slice(bytes).ok()
}

/// The job core's database. Clones share it.
#[derive(Debug, Clone)]
pub struct LocalDb {
    db: Db<JobsSchema>,
}

impl std::fmt::Debug for JobsSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobsSchema")
    }
}

impl LocalDb {
    /// Opens (creating) `jobs.redb` in `dir`. Blocks on file I/O: call from a blocking
    /// thread. `faults` (tests) makes the file fail on command.
    pub fn open(dir: Dir, faults: Option<durable::Faults>) -> Result<LocalDb, Error> {
        let mut options = Options::new(WRITER_THREAD, BATCH_METRIC);
        options.faults = faults;
        let db = Db::open(dir, FILE, JobsSchema, options)?;
        Ok(LocalDb { db })
    }

    /// Opens (creating) `jobs.redb` in the directory at `path`, on a blocking thread (tools
    /// and tests; the service opens its data directory's handle with [`LocalDb::open`]).
    pub async fn open_at(path: &std::path::Path) -> Result<LocalDb, Error> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())
            .map_err(|e| Error::Failed(format!("opening {}: {e}", path.display())))?;
        tokio::task::spawn_blocking(move || LocalDb::open(dir, None))
            .await
            .map_err(|e| Error::Failed(format!("opening jobs.redb: {e}")))?
    }

    pub fn health(&self) -> Health {
        self.db.health()
    }

    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.db.watch_health()
    }

    pub(crate) async fn write(&self, op: Op) -> Result<Output, Error> {
        Ok(self.db.write(op).await?)
    }

    pub(crate) async fn apply(
        &self,
        changes: Vec<(JobId, Change)>,
    ) -> Result<Vec<Option<Applied>>, Error> {
        match self.write(Op::Apply { changes }).await? {
            Output::Applied(applied) => Ok(applied),
            Output::Done => unreachable!("Apply answers with Applied"),
        }
    }

    /// Runs `read` on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, RedbError> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.read(read))
            .await
            .map_err(|e| Error::Failed(format!("reading jobs.redb: {e}")))?
            .map_err(Error::from)
    }

    pub(crate) async fn get(&self, id: JobId) -> Result<Option<Job>, Error> {
        self.read(move |txn| {
            let table = txn.open_table(JOBS)?;
            Ok(table.get(id.as_u128())?.map(|v| decode(v.value())))
        })
        .await?
        .map(|decoded| {
            decoded.ok_or_else(|| Error::Failed(format!("the record of {id} is damaged")))
        })
        .transpose()
    }

    pub(crate) async fn get_many(&self, ids: Vec<JobId>) -> Result<Vec<Option<Job>>, Error> {
        self.read(move |txn| {
            let table = txn.open_table(JOBS)?;
            let mut jobs = Vec::with_capacity(ids.len());
            for id in ids {
                jobs.push(table.get(id.as_u128())?.and_then(|v| decode(v.value())));
            }
            Ok(jobs)
        })
        .await
    }

    pub(crate) async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, Error> {
        let filter = filter.clone();
        self.read(move |txn| {
            let table = txn.open_table(JOBS)?;
            let end = filter.after.map_or(u128::MAX, |id| id.as_u128());
            let range = if filter.after.is_some() {
                table.range(..end)?
            } else {
                table.range(..=end)?
            };
            let mut page = Vec::new();
            for entry in range.rev().take(LIST_SCAN_LIMIT) {
                let (_, value) = entry?;
                if let Some(job) = decode(value.value()).filter(|j| filter.matches(j)) {
                    page.push(job);
                    if page.len() == filter.page_size() {
                        break;
                    }
                }
            }
            Ok(page)
        })
        .await
    }

    /// Every queue entry, by service then submission order.
    pub(crate) async fn queued(&self) -> Result<Vec<(String, JobId)>, Error> {
        self.read(|txn| {
            let table = txn.open_table(QUEUE)?;
            let mut entries = Vec::new();
            for entry in table.iter()? {
                let (key, _) = entry?;
                let (service, id) = key.value();
                entries.push((service.to_string(), JobId::from_u128(id)));
            }
            Ok(entries)
        })
        .await
    }

    pub(crate) async fn invocations(
        &self,
        service: Option<String>,
    ) -> Result<(u64, OffsetDateTime), Error> {
        let (count, reset) = self
            .read(move |txn| {
                let table = txn.open_table(INVOCATIONS)?;
                let count = match &service {
                    Some(name) => table.get(name.as_str())?.map_or(0, |v| v.value()),
                    None => {
                        let mut sum = 0u64;
                        for entry in table.iter()? {
                            sum = sum.saturating_add(entry?.1.value());
                        }
                        sum
                    }
                };
                let meta = txn.open_table(META)?;
                let reset = meta.get(RESET_KEY)?.map_or(0, |v| v.value());
                Ok((count, reset))
            })
            .await?;
        let reset =
            OffsetDateTime::from_unix_timestamp(reset).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok((count, reset))
    }

    /// Closes the file so it can be opened again (tests of crash recovery). Fails while
    /// other handles are alive.
    pub fn close(self) -> Result<(), Error> {
        Ok(self.db.close()?)
    }
}
