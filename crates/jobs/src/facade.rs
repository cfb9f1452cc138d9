//! `Jobs`: the one value the HTTP layer holds. It opens the records, the broker and the
//! local worker slots, and answers everything the ServiceGateway and modern APIs need.
//!
//! Background work (the state writer, the lease reaper, slots, the capacity loop, the
//! invocation flusher) runs on the [`service::Background`] it is given; the job database's
//! health is registered with [`service::Readiness`], so `/readyz` says 503 while the disk is
//! full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use serde_json::Value;
use time::OffsetDateTime;

use crate::broker::amqp::{AmqpBroker, AmqpSetup};
use crate::broker::embedded::Setup;
use crate::broker::embedded::WorkerInfo;
use crate::broker::{AnyBroker, Broker, EmbeddedBroker};
use crate::capacity::{self, Counts, Scaler, ServiceCapacity};
use crate::config::{load_or_create_jwt_key, BrokerConfig, JobsConfig, StateConfig, Workers};
use crate::hub::Hub;
use crate::records::{LocalDb, Records, RedisRecords};
use crate::runner::orphans::ChildRegistry;
use crate::runner::{Runner, RunnerSettings};
use crate::{
    CeleryWorker, Error, Invocations, Job, JobId, Lease, LeaseId, LeaseStatus, ListFilter, Outcome,
};

/// How often invocation counts are stored (at most this much counting is lost in a crash).
const INVOCATION_FLUSH: Duration = Duration::from_secs(1);
/// How often capacity is estimated, gauges set and `"MIN-MAX"` pools resized.
const CAPACITY_PERIOD: Duration = Duration::from_secs(1);

/// The job core. Clones share it.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("services", &self.inner.config.services.len())
            .field("records", &self.inner.records)
            .finish()
    }
}

struct Inner {
    config: JobsConfig,
    records: Records,
    broker: AnyBroker,
    embedded: Option<EmbeddedBroker>,
    /// Stored changes, for `changes()` followers.
    hub: Hub,
    runners: HashMap<String, Runner>,
    /// Invocations counted since the last flush, by service.
    unflushed: Mutex<HashMap<String, u64>>,
    db: Option<LocalDb>,
    /// Where workflow drivers run.
    background: service::Background,
    /// Workflows whose driver runs in this process (never two for one workflow).
    drivers: Mutex<std::collections::HashSet<JobId>>,
}

/// Counts of one service since this process started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceTotals {
    pub service: String,
    /// Jobs submitted here.
    pub submitted: u64,
    /// Runs that ended (a result, a failure, or given back for a retry).
    pub finished: u64,
}

/// What tests and tools may change in how [`Jobs`] opens.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Make `jobs.redb` fail on command (tests of disk-full behaviour).
    pub faults: Option<durable::Faults>,
    /// Do not start local slots (a gateway whose jobs only remote workers run; tests).
    pub no_slots: bool,
}

impl Jobs {
    /// Opens records, broker and local worker slots; background work goes through
    /// `background`, store health into `readiness`.
    pub async fn open(
        config: &JobsConfig,
        data_dir: &service::DataDir,
        background: &service::Background,
        readiness: &service::Readiness,
    ) -> Result<Jobs, Error> {
        Jobs::open_with(
            config,
            data_dir,
            background,
            readiness,
            OpenOptions::default(),
        )
        .await
    }

    /// [`Jobs::open`] with [`OpenOptions`].
    pub async fn open_with(
        config: &JobsConfig,
        data_dir: &service::DataDir,
        background: &service::Background,
        readiness: &service::Readiness,
        options: OpenOptions,
    ) -> Result<Jobs, Error> {
        let mut config = config.clone();
        if config.security.jwt_key.is_none() {
            let data_dir = data_dir.clone();
            let key = tokio::task::spawn_blocking(move || load_or_create_jwt_key(&data_dir))
                .await
                .map_err(|e| Error::Failed(format!("reading the JWT key: {e}")))??;
            config.security.jwt_key = Some(key);
        }
        let children = ChildRegistry::open(data_dir)?;
        let killed = children.kill_orphans();
        if killed > 0 {
            tracing::warn!(killed, "killed commands the previous Portico left running");
        }
        let db = open_db(data_dir, options.faults.clone()).await?;
        register_health(readiness, &db);
        let records = match &config.state {
            StateConfig::Embedded => Records::Embedded(db.clone()),
            StateConfig::Redis { url, prefix } => {
                Records::Redis(RedisRecords::new(url, prefix, config.state_timeout)?)
            }
        };
        // The hub is the facade's: whichever broker stores changes publishes them there.
        let hub = Hub::new();
        if let BrokerConfig::Amqp { url } = &config.broker {
            let reply_queue = reply_queue_name(data_dir).await?;
            let mut setup = AmqpSetup::new(
                url,
                records.clone(),
                config.services.clone(),
                &config.celery_app,
                config.result_backend.clone(),
                config.broker_timeout,
                &reply_queue,
            );
            setup.hub = hub.clone();
            setup.result_expires = config.result_expires;
            let broker = AmqpBroker::open(setup, background).await?;
            let inner = Inner {
                config,
                records,
                broker: AnyBroker::Amqp(broker),
                embedded: None,
                hub,
                runners: HashMap::new(),
                unflushed: Mutex::default(),
                db: Some(db),
                background: background.clone(),
                drivers: Mutex::default(),
            };
            return Ok(Jobs::start(inner, background).await);
        }
        let mut setup = Setup::new(
            db.clone(),
            records.clone(),
            config.services.clone(),
            config.lease,
        );
        setup.hub = hub.clone();
        let embedded = EmbeddedBroker::open(setup, background).await?;
        let runners = if options.no_slots {
            HashMap::new()
        } else {
            start_runners(&config, &embedded, background, children)?
        };
        let inner = Inner {
            config,
            records,
            broker: AnyBroker::Embedded(embedded.clone()),
            embedded: Some(embedded),
            hub,
            runners,
            unflushed: Mutex::default(),
            db: Some(db),
            background: background.clone(),
            drivers: Mutex::default(),
        };
        Ok(Jobs::start(inner, background).await)
    }

    /// Starts the invocation flusher, the capacity loop and the workflows' resumption.
    async fn start(inner: Inner, background: &service::Background) -> Jobs {
        let jobs = Jobs {
            inner: Arc::new(inner),
        };
        background.spawn_with_token("jobs-invocations", {
            let jobs = jobs.clone();
            |token| async move { jobs.flush_invocations_until(token).await }
        });
        background.spawn("jobs-capacity", {
            let jobs = jobs.clone();
            async move { jobs.follow_capacity().await }
        });
        // Now (a local read; a task left reading jobs.redb would keep it open after a stop),
        // and again in the background until it works when the records do not answer yet.
        match jobs.resume_workflows().await {
            Ok(0) => {}
            Ok(resumed) => tracing::info!(resumed, "resumed unfinished workflows"),
            Err(error) => {
                tracing::warn!(%error, "resuming workflows: retrying in the background");
                background.spawn("jobs-workflows-resume", {
                    let jobs = jobs.clone();
                    async move { jobs.resume_workflows_until_done().await }
                });
            }
        }
        jobs
    }

    /// The config, with `security.jwt_key` always set (generated when it was not).
    pub fn config(&self) -> &JobsConfig {
        &self.inner.config
    }

    /// The job records (for tools and tests).
    pub fn records(&self) -> &Records {
        &self.inner.records
    }

    fn check_service(&self, service: &str) -> Result<(), Error> {
        match self.inner.config.service(service) {
            Some(_) => Ok(()),
            None => Err(Error::UnknownService(service.to_string())),
        }
    }

    /// Submits a job; durable before `Ok` (the embedded queue fsync'd, group-committed).
    pub async fn submit(&self, service: &str, message: Value) -> Result<Job, Error> {
        self.check_service(service)?;
        let job = Job::new(service, message, OffsetDateTime::now_utc());
        self.inner.broker.submit(job).await
    }

    /// [`Jobs::submit`] with the job's id chosen by the caller (a workflow stores its
    /// step's id before submitting it).
    pub async fn submit_with_id(
        &self,
        service: &str,
        id: JobId,
        message: Value,
    ) -> Result<Job, Error> {
        self.check_service(service)?;
        let mut job = Job::new(service, message, OffsetDateTime::now_utc());
        job.id = id;
        self.inner.broker.submit(job).await
    }

    pub(crate) fn background(&self) -> &service::Background {
        &self.inner.background
    }

    /// Marks the workflow's driver as running; `false` when it already was.
    pub(crate) fn claim_driver(&self, id: JobId) -> bool {
        let mut drivers = self.inner.drivers.lock().unwrap_or_else(|p| p.into_inner());
        drivers.insert(id)
    }

    pub(crate) fn release_driver(&self, id: JobId) {
        let mut drivers = self.inner.drivers.lock().unwrap_or_else(|p| p.into_inner());
        drivers.remove(&id);
    }

    pub async fn job(&self, id: &JobId) -> Result<Option<Job>, Error> {
        self.inner.records.get(*id).await
    }

    /// Revokes: a queued job never starts, a running one has its process group killed;
    /// returns the job as it is at that instant (`None`: unknown id).
    /// A workflow's cancel also cancels its running step.
    pub async fn cancel(&self, id: &JobId) -> Result<Option<Job>, Error> {
        if self.workflow(id).await?.is_some() {
            return self.cancel_workflow(id).await;
        }
        self.inner.broker.cancel(*id).await
    }

    /// Cancels a job that is not a workflow (a workflow's step).
    pub(crate) async fn cancel_job(&self, id: &JobId) -> Result<Option<Job>, Error> {
        self.inner.broker.cancel(*id).await
    }

    /// Tells followers (`changes`) about a record changed outside the broker (workflows).
    pub(crate) fn publish(&self, job: &Job) {
        self.inner.hub.publish(job);
    }

    /// Every change of the job after version `after_version` (first item: the current
    /// record when it is newer), ending after a final state. For SSE with `Last-Event-ID`.
    /// An unknown job gives one `Err(UnknownJob)`; a store error is an item and the stream
    /// goes on (the caller may stop).
    pub fn changes(
        &self,
        id: &JobId,
        after_version: u64,
    ) -> impl Stream<Item = Result<Job, Error>> + Send + 'static {
        self.inner
            .hub
            .follow(self.inner.records.clone(), *id, after_version)
    }

    /// A page of jobs, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, Error> {
        self.inner.records.list(filter).await
    }

    /// Counts one invocation of `service` (a submission, status or cancel call) for
    /// `/stats`. In memory; stored every second.
    pub async fn count_invocation(&self, service: &str) -> Result<(), Error> {
        self.check_service(service)?;
        let mut unflushed = self
            .inner
            .unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match unflushed.get_mut(service) {
            Some(count) => *count += 1,
            None => {
                unflushed.insert(service.to_string(), 1);
            }
        }
        Ok(())
    }

    /// Invocations of `service` (of all services: `None`) and the last reset time.
    pub async fn invocations(&self, service: Option<&str>) -> Result<Invocations, Error> {
        if let Some(service) = service {
            self.check_service(service)?;
        }
        let mut stored = self.inner.records.invocations(service).await?;
        let unflushed = self
            .inner
            .unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let pending: u64 = unflushed
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == name.as_str()))
            .map(|(_, n)| *n)
            .sum();
        stored.invocations = stored.invocations.saturating_add(pending);
        Ok(stored)
    }

    /// CANARIE `activeWorkers`: workers consuming the service's queue now (local slots and
    /// remote workers seen in the last minute).
    pub async fn active_workers(&self, service: &str) -> Result<usize, Error> {
        self.check_service(service)?;
        self.inner.broker.active_workers(service).await
    }

    /// Spec section 4, per service, in config order.
    pub fn capacity(&self) -> Vec<ServiceCapacity> {
        let now = tokio::time::Instant::now();
        self.inner
            .config
            .services
            .iter()
            .map(|service| self.capacity_of(&service.name, service.workers, now))
            .collect()
    }

    fn capacity_of(
        &self,
        name: &str,
        workers: Workers,
        now: tokio::time::Instant,
    ) -> ServiceCapacity {
        let Some(broker) = &self.inner.embedded else {
            // AMQP: RabbitMQ's queue depth; its workers are not Portico's to count here.
            let counts = Counts {
                depth: self.inner.broker.depth(name),
                ..Counts::default()
            };
            return capacity::estimate(
                name,
                Default::default(),
                counts,
                self.inner.config.target_wait,
            );
        };
        let (flights_local, remote_busy) = broker.busy(name);
        let runner = self.inner.runners.get(name);
        let slots = runner.map_or(0, Runner::slots);
        // A slot takes its next job while the last one's result is still being stored,
        // so count busy slots, not runs in flight.
        let local_busy = runner.map_or(flights_local, Runner::busy);
        let remote = broker.remote_workers(name);
        let counts = Counts {
            depth: broker.depth(name),
            busy: local_busy + remote_busy,
            idle: slots.saturating_sub(local_busy) + remote.saturating_sub(remote_busy),
            slots,
            slots_min: workers.min(),
            slots_max: workers.max(),
        };
        let reading = broker.meter().read(name, now);
        capacity::estimate(name, reading, counts, self.inner.config.target_wait)
    }

    /// Per service in config order: jobs submitted and runs finished since this process
    /// started (the dashboard turns them into arrival and completion rates).
    pub fn totals(&self) -> Vec<ServiceTotals> {
        let Some(broker) = &self.inner.embedded else {
            return Vec::new();
        };
        self.inner
            .config
            .services
            .iter()
            .map(|service| {
                let (submitted, finished) = broker.meter().totals(&service.name);
                ServiceTotals {
                    service: service.name.clone(),
                    submitted,
                    finished,
                }
            })
            .collect()
    }

    /// Every worker the broker saw (local slots once they took a job, remote workers), with
    /// the jobs each runs now.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.inner
            .embedded
            .as_ref()
            .map_or_else(Vec::new, EmbeddedBroker::workers)
    }

    /// Celery workers (any on the AMQP broker's queues, Python or `portico worker --broker`)
    /// as their `celeryev` events show them; empty with the embedded broker.
    pub fn celery_workers(&self) -> Vec<CeleryWorker> {
        match &self.inner.broker {
            AnyBroker::Amqp(broker) => broker.celery_workers(),
            AnyBroker::Embedded(_) => Vec::new(),
        }
    }

    // Remote workers (`portico worker --gateway`), embedded broker.

    fn embedded(&self) -> Result<&EmbeddedBroker, Error> {
        self.inner.embedded.as_ref().ok_or_else(|| {
            Error::Unsupported("remote pull workers need the embedded broker".into())
        })
    }

    /// The next job of `service` for the remote worker `worker`, waiting up to `wait`.
    pub async fn lease(
        &self,
        service: &str,
        worker: &str,
        wait: Duration,
    ) -> Result<Option<Lease>, Error> {
        self.check_service(service)?;
        self.embedded()?.lease(service, worker, wait).await
    }

    pub async fn renew(&self, lease: &LeaseId) -> Result<LeaseStatus, Error> {
        self.embedded()?.renew(lease).await
    }

    pub async fn progress(&self, lease: &LeaseId, percent: u8, meta: Value) -> Result<(), Error> {
        self.embedded()?.progress(lease, percent, meta).await
    }

    /// The end of a remote run, with the last 64 KiB of its log; answers once durable.
    pub async fn finish(
        &self,
        lease: &LeaseId,
        outcome: Outcome,
        log: String,
    ) -> Result<(), Error> {
        self.embedded()?.finish(lease, outcome, log).await
    }

    /// Stop taking jobs: remote long polls end empty, local slots take no new job.
    pub async fn drain(&self) {
        self.inner.broker.drain();
    }

    /// Stops local slots: running jobs get `kill_grace` to finish, then are killed and
    /// given back (they run again at the next start, the attempt not counted); stores the
    /// invocation counts.
    pub async fn stop(&self) {
        self.inner.broker.drain();
        let grace = self.inner.config.kill_grace;
        futures::future::join_all(self.inner.runners.values().map(|r| r.stop(grace))).await;
        self.flush_invocations().await;
    }

    async fn flush_invocations(&self) {
        let counts: Vec<(String, u64)> = {
            let mut unflushed = self
                .inner
                .unflushed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            unflushed.drain().collect()
        };
        if counts.is_empty() {
            return;
        }
        if let Err(error) = self.inner.records.add_invocations(counts.clone()).await {
            tracing::warn!(%error, "storing invocation counts failed; kept for the next try");
            let mut unflushed = self
                .inner
                .unflushed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (service, n) in counts {
                *unflushed.entry(service).or_default() += n;
            }
        }
    }

    async fn flush_invocations_until(&self, token: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(INVOCATION_FLUSH) => self.flush_invocations().await,
            }
        }
        self.flush_invocations().await;
    }

    /// Every second: estimate, set the gauges, move `"MIN-MAX"` pools.
    async fn follow_capacity(&self) {
        let mut scalers: HashMap<String, Scaler> = self
            .inner
            .config
            .services
            .iter()
            .filter_map(|s| match s.workers {
                Workers::Range { min, max } => Some((
                    s.name.clone(),
                    Scaler::new(min, max, self.inner.config.scale_down_delay),
                )),
                Workers::Fixed(_) => None,
            })
            .collect();
        loop {
            tokio::time::sleep(CAPACITY_PERIOD).await;
            let now = tokio::time::Instant::now();
            for capacity in self.capacity() {
                capacity::publish_gauges(&capacity);
                let (Some(scaler), Some(runner)) = (
                    scalers.get_mut(&capacity.service),
                    self.inner.runners.get(&capacity.service),
                ) else {
                    continue;
                };
                let target = scaler.decide(runner.slots(), capacity.workers_needed, now);
                if target != runner.slots() {
                    tracing::info!(service = %capacity.service, from = runner.slots(), to = target, needed = capacity.workers_needed, "resizing local slots");
                    runner.resize(target);
                }
            }
        }
    }

    /// The job database (tests of crash recovery close and reopen it).
    pub fn local_db(&self) -> Option<&LocalDb> {
        self.inner.db.as_ref()
    }
}

/// The file in the data directory naming Portico's `rpc` reply queue.
pub const REPLY_QUEUE_FILE: &str = "amqp-reply-queue";

/// Portico's durable `rpc` reply queue: `portico.replies.<random>`, made once per data
/// directory and kept there, so a restart reads the states that came while it was down.
async fn reply_queue_name(data_dir: &service::DataDir) -> Result<String, Error> {
    let data_dir = data_dir.clone();
    let task = tokio::task::spawn_blocking(move || {
        let dir = data_dir.dir();
        match dir.read_to_string(REPLY_QUEUE_FILE) {
            Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let name = format!("portico.replies.{}", uuid::Uuid::new_v4().simple());
        dir.write(REPLY_QUEUE_FILE, name.as_bytes())?;
        Ok(name)
    });
    task.await
        .map_err(|e| Error::Failed(format!("naming the reply queue: {e}")))?
        .map_err(|e| Error::Failed(format!("the reply queue's name in {REPLY_QUEUE_FILE}: {e}")))
}

async fn open_db(
    data_dir: &service::DataDir,
    faults: Option<durable::Faults>,
) -> Result<LocalDb, Error> {
    let dir = data_dir.dir().try_clone().map_err(|e| {
        Error::Failed(format!(
            "opening the data directory {}: {e}",
            data_dir.path().display()
        ))
    })?;
    tokio::task::spawn_blocking(move || LocalDb::open(dir, faults))
        .await
        .map_err(|e| Error::Failed(format!("opening jobs.redb: {e}")))?
}

fn register_health(readiness: &service::Readiness, db: &LocalDb) {
    let health = db.watch_health();
    readiness.add_check("jobs", move || {
        let now = health.borrow();
        (!now.is_healthy()).then(|| format!("job store {}", *now))
    });
}

fn start_runners(
    config: &JobsConfig,
    broker: &EmbeddedBroker,
    background: &service::Background,
    children: ChildRegistry,
) -> Result<HashMap<String, Runner>, Error> {
    let mut settings = RunnerSettings::from_config(config);
    settings.children = Some(children);
    let mut runners = HashMap::new();
    for service in &config.services {
        let source = broker.source(&service.name)?;
        let initial = service.workers.min();
        let broker_for_slots = broker.clone();
        let name = service.name.clone();
        let runner = Runner::start(
            service.clone(),
            settings.clone(),
            source,
            background,
            initial,
            Box::new(move |slots| broker_for_slots.set_local_slots(&name, slots)),
        );
        runners.insert(service.name.clone(), runner);
    }
    Ok(runners)
}
