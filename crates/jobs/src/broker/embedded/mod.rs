//! `EmbeddedBroker`: durable per-service queues in the data directory, leases, redelivery.
//!
//! - **Submit**: one durable write. With embedded records the job's record and its queue
//!   entry go into `jobs.redb` in one op of the group commit; with Redis records the queue
//!   entry is stored here first, then the record there. Only then is the job pushed to its
//!   in-memory `ServiceQueue` (straight to a waiting slot or long-poller, if any) and the
//!   submission answered.
//! - **Take**: from memory; the run gets a lease (an id, a stop token, and for remote
//!   workers an expiry) in the in-flight table. The start is stored through the state
//!   writer (`writer.rs`) without waiting: a job can start before its start is durable,
//!   which only means a crash right then does not count that attempt.
//! - **Finish**: the result goes through the state writer; the job leaves the durable queue
//!   in the transaction that makes its record final, and leaves the in-flight table after.
//!   A final record never changes (the state machine), so late or duplicate reports change
//!   nothing: exactly one result.
//! - **Leases**: remote workers renew; a lease that runs out (worker killed or cut off) is
//!   lost: RETRY and back to the front of the queue, or FAILURE past `max_attempts`.
//! - **Restart** (`recovery.rs`): every job still in the durable queue is run again; one that
//!   was running counts as a lost run.
//! - **Cancel**: REVOKED is stored first; then the job leaves the ready queue, or its run's
//!   stop token fires (the runner kills the process group; a remote worker learns it at its
//!   next renewal).

mod leases;
mod queue;
mod recovery;
mod source;
mod workers;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::capacity::Meter;
use crate::config::ServiceConfig;
use crate::hub::Hub;
use crate::records::{Applied, LocalDb, Op, Records};
use crate::runner::Task;
use crate::{Change, Error, Job, JobId, Lease, LeaseId, LeaseStatus, Outcome};

pub(crate) use queue::{Queued, ServiceQueue};
pub use source::LocalSource;
pub use workers::WorkerInfo;
use workers::WorkerTable;
use writer::{Then, Write};

/// A remote worker counts as active this long after it last asked for work or renewed.
const WORKER_SEEN: Duration = Duration::from_secs(60);

/// The embedded broker. Clones share it.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    db: LocalDb,
    pub(crate) records: Records,
    /// The records are in `db` too: one op stores a record and its queue entry.
    records_local: bool,
    services: HashMap<String, Service>,
    flights: Mutex<Flights>,
    writes: mpsc::Sender<Write>,
    hub: Hub,
    lease: Duration,
    meter: Meter,
    /// Remote workers by service: name -> last seen.
    remote_workers: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Local slots taking from each service now (set by the runner).
    local_slots: Mutex<HashMap<String, usize>>,
    /// Every worker seen, for the dashboard.
    workers: WorkerTable,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("records", &self.records)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct Service {
    queue: ServiceQueue,
    max_attempts: u32,
}

/// Runs under way, by job and by lease.
#[derive(Default)]
struct Flights {
    by_job: HashMap<JobId, Flight>,
    by_lease: HashMap<LeaseId, JobId>,
}

struct Flight {
    lease: LeaseId,
    service: String,
    stop: CancellationToken,
    /// Remote leases run out; local runs end with the process.
    expires: Option<Instant>,
    /// A remote run: counts as a remote worker busy.
    remote: bool,
    /// The lease ran out; the job is being requeued.
    lost: bool,
    taken: Instant,
    /// The worker running it.
    worker: String,
}

/// A job taken from the queue whose taker has not got it yet: if the taker goes away
/// (its future dropped) before [`Claim::disarm`], the run is forgotten and the job goes back
/// to the front of its queue.
struct Claim<'a> {
    inner: &'a Inner,
    lease: LeaseId,
    job: Option<Job>,
}

impl Claim<'_> {
    fn disarm(mut self) {
        self.job = None;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let Some(job) = self.job.take() else { return };
        {
            let mut flights = self.inner.flights();
            if let Some(id) = flights.by_lease.remove(&self.lease) {
                flights.by_job.remove(&id);
            }
        }
        if let Some(service) = self.inner.services.get(&job.service) {
            let since = Instant::now();
            service.queue.push_front(Queued { job, since });
        }
    }
}

/// What [`EmbeddedBroker::open`] needs.
pub struct Setup {
    pub db: LocalDb,
    pub records: Records,
    pub services: Vec<ServiceConfig>,
    pub lease: Duration,
    pub(crate) hub: Hub,
    pub(crate) meter: Meter,
}

impl Setup {
    /// For tests and tools: a broker over `db` and `records` with its own hub and meter.
    pub fn new(
        db: LocalDb,
        records: Records,
        services: Vec<ServiceConfig>,
        lease: Duration,
    ) -> Setup {
        Setup {
            db,
            records,
            services,
            lease,
            hub: Hub::new(),
            meter: Meter::default(),
        }
    }
}

impl EmbeddedBroker {
    /// Loads the durable queue (jobs that were running count as lost runs) and starts the
    /// state writer and the lease reaper on `background`.
    pub async fn open(
        setup: Setup,
        background: &service::Background,
    ) -> Result<EmbeddedBroker, Error> {
        let (writes, receiver) = mpsc::channel(writer::CHANNEL);
        let records_local = matches!(setup.records, Records::Embedded(_));
        let services = setup
            .services
            .iter()
            .map(|s| {
                let service = Service {
                    queue: ServiceQueue::default(),
                    max_attempts: s.max_attempts,
                };
                (s.name.clone(), service)
            })
            .collect();
        let inner = Arc::new(Inner {
            db: setup.db,
            records: setup.records,
            records_local,
            services,
            flights: Mutex::default(),
            writes,
            hub: setup.hub,
            lease: setup.lease,
            meter: setup.meter,
            remote_workers: Mutex::default(),
            local_slots: Mutex::default(),
            workers: WorkerTable::default(),
        });
        recovery::recover(&inner).await?;
        background.spawn("jobs-state-writer", writer::run(inner.clone(), receiver));
        background.spawn("jobs-lease-reaper", leases::reap(Arc::downgrade(&inner)));
        Ok(EmbeddedBroker { inner })
    }

    fn service(&self, name: &str) -> Result<&Service, Error> {
        self.inner
            .services
            .get(name)
            .ok_or_else(|| Error::UnknownService(name.to_string()))
    }

    /// The job records this broker keeps up to date.
    pub fn records(&self) -> &Records {
        &self.inner.records
    }

    pub(crate) fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// The local source of `service`'s jobs, for the runner's slots.
    pub fn source(&self, service: &str) -> Result<LocalSource, Error> {
        self.service(service)?;
        Ok(LocalSource {
            broker: self.clone(),
            service: service.to_string(),
        })
    }

    pub async fn submit(&self, job: Job) -> Result<Job, Error> {
        let service = self.service(&job.service)?;
        if self.inner.records_local {
            let op = Op::Insert {
                job: Box::new(job.clone()),
                enqueue: true,
            };
            self.inner.db.write(op).await?;
        } else {
            // Queue entry first: a crash before the record is stored leaves an entry
            // without a record, which the restart drops; the other order would leave a
            // shared record PENDING forever.
            let op = Op::Enqueue {
                service: job.service.clone(),
                id: job.id,
            };
            self.inner.db.write(op).await?;
            if let Err(error) = self.inner.records.insert(&job).await {
                let entries = vec![(job.service.clone(), job.id)];
                let _ = self.inner.db.write(Op::Dequeue { entries }).await;
                return Err(error);
            }
        }
        let now = Instant::now();
        self.inner.hub.publish(&job);
        self.inner.meter.arrived(&job.service, now);
        service.queue.push_back(Queued {
            job: job.clone(),
            since: now,
        });
        Ok(job)
    }

    pub async fn cancel(&self, id: JobId) -> Result<Option<Job>, Error> {
        let revoke = Change::Revoke {
            reason: "cancelled".into(),
        };
        let Some(applied) = self.inner.write_and_wait(id, revoke, Then::Nothing).await? else {
            return Ok(None);
        };
        let job = applied.job;
        if applied.changed {
            if let Some(service) = self.inner.services.get(&job.service) {
                service.queue.remove(id);
            }
            if let Some(flight) = self.inner.flights().by_job.get(&id) {
                flight.stop.cancel();
            }
        }
        Ok(Some(job))
    }

    /// Takes the next job of `service` for `worker`, waiting up to `wait` (forever: `None`).
    async fn take(
        &self,
        service_name: &str,
        worker: &str,
        remote: bool,
        wait: Option<Duration>,
    ) -> Result<Option<Task>, Error> {
        let service = self.service(service_name)?;
        loop {
            let Some(queued) = service.queue.pop(wait).await else {
                return Ok(None);
            };
            if let Some(task) = self.start(queued, worker, remote).await {
                return Ok(Some(task));
            }
        }
    }

    /// Starts the run of a queued job; `None` if it is running already (a duplicate).
    async fn start(&self, queued: Queued, worker: &str, remote: bool) -> Option<Task> {
        let now = Instant::now();
        let lease = LeaseId::new();
        let stop = CancellationToken::new();
        let mut job = queued.job;
        {
            let mut flights = self.inner.flights();
            if flights.by_job.contains_key(&job.id) {
                return None;
            }
            let flight = Flight {
                lease,
                service: job.service.clone(),
                stop: stop.clone(),
                expires: remote.then(|| now + self.inner.lease),
                remote,
                lost: false,
                taken: now,
                worker: worker.to_string(),
            };
            flights.by_job.insert(job.id, flight);
            flights.by_lease.insert(lease, job.id);
        }
        self.inner.workers.saw(&job.service, worker, remote, true);
        self.inner.meter.started(
            &job.service,
            now.saturating_duration_since(queued.since),
            now,
        );
        let change = Change::Start {
            worker: worker.to_string(),
        };
        let write = Write {
            id: job.id,
            change: change.clone(),
            then: Then::Nothing,
            done: None,
        };
        // Not awaiting (the usual case) leaves no point where a dropped taker (a long poll
        // whose client left, a slot being resized) could lose the job it claimed.
        if let Err(TrySendError::Full(write)) = self.inner.writes.try_send(write) {
            let claim = Claim {
                inner: &self.inner,
                lease,
                job: Some(job.clone()),
            };
            let _ = self.inner.writes.send(write).await;
            claim.disarm();
        }
        job.apply(&change, OffsetDateTime::now_utc());
        Some(Task { job, lease, stop })
    }

    /// Remote workers: the next job of `service`, waiting up to `wait` (long poll);
    /// `Err(Draining)` once Portico is shutting down.
    pub async fn lease(
        &self,
        service: &str,
        worker: &str,
        wait: Duration,
    ) -> Result<Option<Lease>, Error> {
        let queue = &self.service(service)?.queue;
        if queue.is_closed() {
            // Shutting down: a retryable error, so the worker backs off instead of polling.
            return Err(Error::Draining);
        }
        self.inner.saw_worker(service, worker);
        let task = self.take(service, worker, true, Some(wait)).await?;
        self.inner.saw_worker(service, worker);
        if task.is_none() && queue.is_closed() {
            return Err(Error::Draining);
        }
        Ok(task.map(|task| Lease {
            id: task.lease,
            job: task.job,
            expires_in: self.inner.lease,
        }))
    }

    pub async fn renew(&self, lease: &LeaseId) -> Result<LeaseStatus, Error> {
        let mut flights = self.inner.flights();
        let Some(id) = flights.by_lease.get(lease).copied() else {
            return Ok(LeaseStatus::Lost);
        };
        let Some(flight) = flights.by_job.get_mut(&id) else {
            return Ok(LeaseStatus::Lost);
        };
        if flight.lost {
            return Ok(LeaseStatus::Lost);
        }
        if flight.stop.is_cancelled() {
            return Ok(LeaseStatus::Cancelled);
        }
        if flight.expires.is_some() {
            flight.expires = Some(Instant::now() + self.inner.lease);
        }
        self.inner
            .workers
            .saw(&flight.service, &flight.worker, true, false);
        Ok(LeaseStatus::Held)
    }

    /// A progress report of the run holding `lease` (stored lazily).
    pub async fn progress(&self, lease: &LeaseId, percent: u8, meta: Value) -> Result<(), Error> {
        let id = self.inner.leased_job(lease)?;
        let change = Change::Progress {
            percent: percent.min(100),
            meta,
        };
        self.inner.write(id, change, Then::Nothing).await;
        Ok(())
    }

    /// The end of the run holding `lease`; answers once the outcome is durable.
    pub async fn finish(
        &self,
        lease: &LeaseId,
        outcome: Outcome,
        log: String,
    ) -> Result<(), Error> {
        let (id, change, then) = self.inner.ending(lease, outcome, log)?;
        self.inner.write_and_wait(id, change, then).await.map(drop)
    }

    /// Jobs of `service` ready and not taken.
    pub fn depth(&self, service: &str) -> usize {
        self.inner
            .services
            .get(service)
            .map_or(0, |s| s.queue.depth())
    }

    /// Runs under way for `service`: (local, remote).
    pub(crate) fn busy(&self, service: &str) -> (usize, usize) {
        let flights = self.inner.flights();
        let mut counts = (0, 0);
        for flight in flights.by_job.values().filter(|f| f.service == service) {
            if flight.remote {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
        }
        counts
    }

    /// Remote workers of `service` seen recently.
    pub(crate) fn remote_workers(&self, service: &str) -> usize {
        let now = Instant::now();
        let workers = self
            .inner
            .remote_workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        workers.get(service).map_or(0, |seen| {
            seen.values()
                .filter(|at| now.saturating_duration_since(**at) < WORKER_SEEN)
                .count()
        })
    }

    /// Every worker seen (local slots once they took a job), with the jobs each runs now.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let mut active: HashMap<(String, String), Vec<JobId>> = HashMap::new();
        let mut lost = Vec::new();
        for (id, flight) in &self.inner.flights().by_job {
            let key = (flight.service.clone(), flight.worker.clone());
            if flight.lost {
                lost.push(key);
            } else {
                active.entry(key).or_default().push(*id);
            }
        }
        self.inner.workers.list(&active, &lost, WORKER_SEEN)
    }

    /// The runner says how many local slots take from `service`.
    pub(crate) fn set_local_slots(&self, service: &str, slots: usize) {
        let mut local = self
            .inner
            .local_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        local.insert(service.to_string(), slots);
    }

    pub async fn active_workers(&self, service: &str) -> Result<usize, Error> {
        self.service(service)?;
        let local = {
            let local = self
                .inner
                .local_slots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            local.get(service).copied().unwrap_or(0)
        };
        Ok(local + self.remote_workers(service))
    }

    /// Stops handing out jobs: waiting takers get "closed" at once.
    pub fn drain(&self) {
        for service in self.inner.services.values() {
            service.queue.close();
        }
    }
}

impl Broker for EmbeddedBroker {
    async fn submit(&self, job: Job) -> Result<Job, Error> {
        EmbeddedBroker::submit(self, job).await
    }

    async fn cancel(&self, id: JobId) -> Result<Option<Job>, Error> {
        EmbeddedBroker::cancel(self, id).await
    }

    async fn active_workers(&self, service: &str) -> Result<usize, Error> {
        EmbeddedBroker::active_workers(self, service).await
    }

    fn depth(&self, service: &str) -> usize {
        EmbeddedBroker::depth(self, service)
    }

    fn drain(&self) {
        EmbeddedBroker::drain(self)
    }
}

impl Inner {
    fn flights(&self) -> MutexGuard<'_, Flights> {
        // Critical sections only insert, remove and flip tokens.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn saw_worker(&self, service: &str, worker: &str) {
        let mut workers = self
            .remote_workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let seen = workers.entry(service.to_string()).or_default();
        seen.insert(worker.to_string(), Instant::now());
        drop(workers);
        self.workers.saw(service, worker, true, false);
    }

    fn leased_job(&self, lease: &LeaseId) -> Result<JobId, Error> {
        self.flights()
            .by_lease
            .get(lease)
            .copied()
            .ok_or(Error::UnknownLease(*lease))
    }

    /// The change that ends the run of `lease` with `outcome`.
    fn ending(
        &self,
        lease: &LeaseId,
        outcome: Outcome,
        log: String,
    ) -> Result<(JobId, Change, Then), Error> {
        let id = self.leased_job(lease)?;
        Ok(match outcome {
            Outcome::Retry(reason) => {
                let max_attempts = self.max_attempts_of(id);
                let change = Change::Requeue {
                    reason,
                    max_attempts,
                    log,
                };
                (id, change, Then::Requeue(Some(*lease)))
            }
            outcome => (id, Change::Finish { outcome, log }, Then::Ended(*lease)),
        })
    }

    fn max_attempts_of(&self, id: JobId) -> u32 {
        let flights = self.flights();
        flights
            .by_job
            .get(&id)
            .and_then(|f| self.services.get(&f.service))
            .map_or(crate::config::DEFAULT_MAX_ATTEMPTS, |s| s.max_attempts)
    }

    /// Queues a change for the state writer (waits only for room in the channel).
    async fn write(&self, id: JobId, change: Change, then: Then) {
        let write = Write {
            id,
            change,
            then,
            done: None,
        };
        // The writer ends only when the broker stops; a change sent then is not needed.
        let _ = self.writes.send(write).await;
    }

    /// Queues a change and waits until it is stored.
    async fn write_and_wait(
        &self,
        id: JobId,
        change: Change,
        then: Then,
    ) -> Result<Option<Applied>, Error> {
        let (done, stored) = oneshot::channel();
        let write = Write {
            id,
            change,
            then,
            done: Some(done),
        };
        self.writes.send(write).await.map_err(|_| Error::Draining)?;
        stored.await.map_err(|_| Error::Draining)?
    }

    /// After the state writer stored a batch: publish, then what follows each change.
    async fn stored(&self, writes: impl Iterator<Item = Write>, applied: Vec<Option<Applied>>) {
        let mut dequeue = Vec::new();
        for (write, applied) in writes.zip(applied) {
            if let Some(applied) = &applied {
                if applied.changed {
                    self.hub.publish(&applied.job);
                }
                self.follow_up(write.then, applied, &mut dequeue);
            }
            if let Some(done) = write.done {
                let _ = done.send(Ok(applied));
            }
        }
        if !dequeue.is_empty() && !self.records_local {
            if let Err(error) = self.db.write(Op::Dequeue { entries: dequeue }).await {
                // The next start finds these final in the records and drops them then.
                tracing::warn!(%error, "removing finished jobs from the queue failed");
            }
        }
    }

    fn follow_up(&self, then: Then, applied: &Applied, dequeue: &mut Vec<(String, JobId)>) {
        let job = &applied.job;
        let now = Instant::now();
        let ended = match then {
            Then::Nothing => None,
            Then::Ended(lease) | Then::Requeue(Some(lease)) => self.land(lease, now),
            Then::Requeue(None) => None,
        };
        if let Some((service, ran)) = ended {
            self.meter.finished(&service, ran, now);
        }
        if job.state.is_final() {
            if applied.changed {
                dequeue.push((job.service.clone(), job.id));
            }
            // Ended elsewhere (revoked by another gateway, say): stop our run, if any.
            if let Some(flight) = self.flights().by_job.get(&job.id) {
                flight.stop.cancel();
            }
        } else if matches!(then, Then::Requeue(_)) && applied.changed {
            if let Some(service) = self.services.get(&job.service) {
                service.queue.push_front(Queued {
                    job: job.clone(),
                    since: now,
                });
            }
        }
    }

    /// The run of `lease` left the in-flight table: its service and how long it ran.
    fn land(&self, lease: LeaseId, now: Instant) -> Option<(String, Duration)> {
        let mut flights = self.flights();
        let id = flights.by_lease.remove(&lease)?;
        let flight = flights.by_job.remove(&id)?;
        Some((flight.service, now.saturating_duration_since(flight.taken)))
    }
}
