//! `AmqpBroker`: jobs over RabbitMQ with Celery's wire protocol, so unmodified Celery 4/5
//! workers (and `portico worker --broker`) run them.
//!
//! - **Submit**: the record is stored (PENDING), then a protocol 2 task message
//!   ([`celery`]) is published on the default exchange to the service's queue (declared
//!   with Celery's flags) and confirmed by RabbitMQ; only then `Ok` (the `200`). The whole
//!   publish is bounded by `broker_timeout`: a RabbitMQ that is down gives
//!   `Error::BrokerUnreachable` (503, vesta 205) and the record is made FAILURE (the client
//!   never got its id). The connection is made again by the next submission ([`link`]).
//! - **States**: [`backend::follow`] reads the result backend (`rpc`: Portico's durable
//!   reply queue; `redis://`: `celery-task-meta-*`) and applies each state to the records as
//!   `Change::External`, so status answers outlive the backend's expiry.
//! - **Cancel**: REVOKED is stored, then a pidbox `revoke` (terminate, SIGKILL) is
//!   broadcast. Revoked ids are kept (three hours) and given to every worker that says
//!   `hello` on the pidbox (Celery's "mingle" at worker start, and `portico worker`), so a
//!   worker that was offline at the revoke skips the job too.
//! - **Lost work** ([`events`]): `celeryev` heartbeats say which workers live and
//!   `task-started` which runs what; the jobs of a worker that stopped beating are
//!   published again (RETRY) within `max_attempts`, as Celery itself never does.
//! - **Workers**: `active_workers` asks `active_queues` over the pidbox and counts the
//!   replies listing the service's queue (collected for [`ACTIVE_WAIT`]).
//! - **Consumers**: [`consumer::CelerySource`] is a Celery worker's end written as a
//!   [`crate::runner::JobSource`] (`portico worker --broker`, and this broker's run of the
//!   conformance suite).

pub mod backend;
pub mod celery;
pub mod consumer;
pub mod events;
pub mod link;
pub mod pidbox;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::backend::{Sink, Source, Watched};
use self::celery::{NewTask, TaskMessage};
use self::link::Link;
use self::pidbox::{Event, Mailbox};
use crate::broker::Broker;
use crate::config::{ResultBackend, ServiceConfig};
use crate::hub::Hub;
use crate::records::Records;
use crate::{Change, Error, Failure, Job, JobId, ListFilter, State};

/// How long `active_queues` replies are collected.
pub const ACTIVE_WAIT: Duration = Duration::from_secs(1);
/// How long a revoked id is kept for workers that come online later.
const REVOKED_KEPT: f64 = 3.0 * 3600.0;
/// How often queue depths are read.
const DEPTH_PERIOD: Duration = Duration::from_secs(1);

/// What [`AmqpBroker::open`] needs.
pub struct AmqpSetup {
    /// `amqp://user:pass@host:5672/vhost`.
    pub url: String,
    pub records: Records,
    pub services: Vec<ServiceConfig>,
    /// Task names are `<celery_app>.<celery_task_name>`.
    pub celery_app: String,
    pub result_backend: ResultBackend,
    pub broker_timeout: Duration,
    /// Portico's durable `rpc` reply queue (stable across restarts).
    pub reply_queue: String,
    /// `x-expires` of `amqp` result queues: must equal the workers'
    /// `CELERY_TASK_RESULT_EXPIRES` (RabbitMQ refuses a second declare that differs).
    pub result_expires: Duration,
    pub(crate) hub: Hub,
}

impl AmqpSetup {
    pub fn new(
        url: &str,
        records: Records,
        services: Vec<ServiceConfig>,
        celery_app: &str,
        result_backend: ResultBackend,
        broker_timeout: Duration,
        reply_queue: &str,
    ) -> AmqpSetup {
        AmqpSetup {
            url: url.to_string(),
            records,
            services,
            celery_app: celery_app.to_string(),
            result_backend,
            broker_timeout,
            reply_queue: reply_queue.to_string(),
            result_expires: crate::config::DEFAULT_RESULT_EXPIRES,
            hub: Hub::new(),
        }
    }
}

/// The AMQP broker. Clones share it.
#[derive(Debug, Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    records: Records,
    services: HashMap<String, ServiceConfig>,
    celery_app: String,
    broker_timeout: Duration,
    reply_queue: String,
    /// `Some(x-expires)` with the `amqp` result backend: result queues are declared
    /// before the task is published.
    result_queues: Option<Duration>,
    hub: Hub,
    link: Link,
    watched: Watched,
    /// Revoked ids and when (seconds since the epoch), for workers' `hello`.
    revoked: Mutex<HashMap<JobId, f64>>,
    mailbox: Mailbox,
    draining: AtomicBool,
    origin: String,
    depths: Mutex<HashMap<String, usize>>,
    /// The last `active_queues` replies and when they came (one broadcast serves every
    /// service's `/info` for [`ACTIVE_FRESH`]).
    active: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<serde_json::Value>)>>,
    /// Celery workers' liveness from `celeryev` (the events task writes, the dashboard reads).
    liveness: Mutex<events::Liveness>,
}

/// How long `active_queues` replies are reused.
const ACTIVE_FRESH: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("reply_queue", &self.reply_queue)
            .finish()
    }
}

/// `<pid>@<host>`, Celery's `origin` header.
pub fn origin() -> String {
    format!("{}@{}", std::process::id(), hostname())
}

/// The machine's name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

impl AmqpBroker {
    /// Starts the result follower, the pidbox mailbox and the depth reader on `background`.
    /// Does not need RabbitMQ to be up: everything connects (again) by itself.
    pub async fn open(
        setup: AmqpSetup,
        background: &service::Background,
    ) -> Result<AmqpBroker, Error> {
        let stop = background.token().child_token();
        let (events, received) = mpsc::unbounded_channel();
        let mailbox = Mailbox::start(
            &setup.url,
            "portico-pidbox",
            events,
            stop.clone(),
            setup.broker_timeout,
        )
        .await;
        let watched = Watched::default();
        let inner = Arc::new(Inner {
            records: setup.records.clone(),
            services: setup
                .services
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            celery_app: setup.celery_app.clone(),
            broker_timeout: setup.broker_timeout,
            reply_queue: setup.reply_queue.clone(),
            result_queues: matches!(setup.result_backend, ResultBackend::Amqp)
                .then_some(setup.result_expires),
            hub: setup.hub.clone(),
            link: Link::with_channels(&setup.url, "portico-publish", link::PUBLISH_CHANNELS),
            watched: watched.clone(),
            revoked: Mutex::default(),
            mailbox,
            draining: AtomicBool::new(false),
            origin: origin(),
            depths: Mutex::default(),
            active: tokio::sync::Mutex::new(None),
            liveness: Mutex::default(),
        });
        let broker = AmqpBroker { inner };
        broker.watch_unfinished().await?;
        let source = Source {
            amqp_url: setup.url.clone(),
            backend: setup.result_backend.clone(),
            reply_queue: setup.reply_queue.clone(),
            result_expires: setup.result_expires,
        };
        let sink = Sink {
            records: setup.records.clone(),
            hub: setup.hub.clone(),
            watched,
        };
        background.spawn(
            "jobs-amqp-results",
            backend::follow(source, sink, stop.clone()),
        );
        background.spawn("jobs-amqp-pidbox", {
            let broker = broker.clone();
            async move { broker.answer_broadcasts(received).await }
        });
        background.spawn(
            "jobs-amqp-events",
            events::follow(broker.clone(), setup.url.clone(), stop.clone()),
        );
        background.spawn("jobs-amqp-depth", {
            let broker = broker.clone();
            async move { broker.read_depths(stop).await }
        });
        Ok(broker)
    }

    /// The records this broker keeps.
    pub fn records(&self) -> &Records {
        &self.inner.records
    }

    /// Watches every job of ours that is not final yet (after a restart).
    async fn watch_unfinished(&self) -> Result<(), Error> {
        for state in [
            State::Pending,
            State::Started,
            State::Progress,
            State::Retry,
            State::Storing,
        ] {
            let mut after = None;
            loop {
                let filter = ListFilter {
                    service: None,
                    state: Some(state.clone()),
                    limit: ListFilter::MAX_LIMIT,
                    after,
                };
                let page = self.inner.records.list(&filter).await?;
                for job in &page {
                    if self.inner.services.contains_key(&job.service) {
                        self.inner.watched.add(job.id);
                    }
                }
                match page.last() {
                    Some(last) if page.len() == filter.page_size() => after = Some(last.id),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    fn service(&self, name: &str) -> Result<&ServiceConfig, Error> {
        self.inner
            .services
            .get(name)
            .ok_or_else(|| Error::UnknownService(name.to_string()))
    }

    /// Publishes `job`'s task message (retries: Celery's `retries` header) and waits for
    /// RabbitMQ's confirm, within `broker_timeout`.
    pub async fn publish(&self, job: &Job, retries: u32) -> Result<(), Error> {
        let service = self.service(&job.service)?;
        let task = format!("{}.{}", self.inner.celery_app, service.celery_task_name);
        let build = || {
            celery::task_message(&NewTask {
                id: job.id,
                task: &task,
                message: &job.message,
                retries,
                reply_to: &self.inner.reply_queue,
                origin: &self.inner.origin,
            })
            .map_err(|e| Error::Invalid(format!("a task message Celery would refuse: {e}")))
        };
        // Built (and validated) before anything goes out; built again for a second attempt
        // rather than copied for every first one.
        let message = build()?;
        let queue = &service.celery_queue_name;
        let limit = self.inner.broker_timeout;
        let published = self.publish_confirmed(queue, job.id, message, build);
        match tokio::time::timeout(limit, published).await {
            Ok(result) => result,
            Err(_) => Err(Error::BrokerUnreachable(format!(
                "RabbitMQ did not confirm within broker_timeout ({limit:?})"
            ))),
        }
    }

    async fn publish_confirmed(
        &self,
        queue: &str,
        id: JobId,
        message: TaskMessage,
        build: impl Fn() -> Result<TaskMessage, Error>,
    ) -> Result<(), Error> {
        let mut last = String::new();
        let mut first = Some(message);
        for _ in 0..2 {
            let message = match first.take() {
                Some(message) => message,
                None => build()?,
            };
            let live = match self.inner.link.live().await {
                Ok(live) => live,
                Err(error) => {
                    last = error.to_string();
                    continue;
                }
            };
            let attempt = async {
                live.declare_task_queue(queue).await?;
                if let Some(expires) = self.inner.result_queues {
                    backend::declare_result_queue(&live.connection, &live.channel, &id, expires)
                        .await?;
                }
                live.publisher()
                    .basic_publish(
                        "",
                        queue,
                        BasicPublishOptions::default(),
                        &message.body,
                        message.properties,
                    )
                    .await?
                    .await
            };
            match attempt.await {
                Ok(confirmation) if confirmation.is_ack() => return Ok(()),
                Ok(_) => {
                    return Err(Error::BrokerUnreachable(
                        "RabbitMQ refused the message (nack)".into(),
                    ))
                }
                Err(error) => {
                    last = error.to_string();
                    self.inner.link.reset(&live).await;
                }
            }
        }
        Err(Error::BrokerUnreachable(last))
    }

    /// A job whose record was written but whose task RabbitMQ never confirmed: final, so
    /// its status says why (the client was answered with the error).
    async fn unpublished(&self, job: &Job, error: &Error) {
        self.inner.watched.remove(&job.id);
        let change = Change::External {
            state: State::Failure,
            progress: None,
            meta: serde_json::Value::Null,
            result: serde_json::Value::Null,
            error: Some(Failure::new(format!("not queued: {error}"))),
        };
        if let Err(store) = self.inner.records.apply_one(job.id, change).await {
            tracing::warn!(%store, job = %job.id, "marking an unpublished job failed");
        }
    }

    /// Revokes `id` on every worker (a cancel, or a task RabbitMQ confirmed whose record could
    /// not be written, so the client was told it failed): broadcast now, and kept for workers'
    /// next `hello`, so those that miss the broadcast learn it too.
    async fn revoke_on_workers(&self, id: JobId) {
        self.inner
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, pidbox::now_seconds());
        let arguments = json!({"task_id": id.to_string(), "terminate": true, "signal": "SIGKILL"});
        if let Err(error) = self.inner.mailbox.tell("revoke", arguments).await {
            tracing::warn!(%error, job = %id, "revoke broadcast failed; workers learn it at their next hello");
        }
    }

    /// Answers workers' `hello` (Celery's mingle) with the ids revoked.
    async fn answer_broadcasts(&self, mut received: mpsc::UnboundedReceiver<Event>) {
        while let Some(Event::Broadcast(request)) = received.recv().await {
            if request.get("method").and_then(|m| m.as_str()) != Some("hello") {
                continue;
            }
            let revoked = self.revoked_now();
            let Some(channel) = self.inner.mailbox.channel().await else {
                continue;
            };
            let answer = json!({"clock": 1, "revoked": revoked});
            let node = format!("portico@{}", hostname());
            if let Err(error) = pidbox::reply(&channel, &request, &node, answer).await {
                tracing::debug!(%error, "pidbox: answering hello failed");
            }
        }
    }

    fn revoked_now(&self) -> serde_json::Map<String, serde_json::Value> {
        let now = pidbox::now_seconds();
        let mut revoked = self.inner.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, at| now - *at < REVOKED_KEPT);
        revoked
            .iter()
            .map(|(id, at)| (id.to_string(), json!(at)))
            .collect()
    }

    async fn read_depths(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(DEPTH_PERIOD) => {}
            }
            let Ok(Ok(live)) =
                tokio::time::timeout(self.inner.broker_timeout, self.inner.link.live()).await
            else {
                continue;
            };
            for service in self.inner.services.values() {
                let declared = live
                    .channel
                    .queue_declare(
                        &service.celery_queue_name,
                        link::task_queue_options(),
                        lapin::types::FieldTable::default(),
                    )
                    .await;
                if let Ok(queue) = declared {
                    self.inner
                        .depths
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(service.name.clone(), queue.message_count() as usize);
                }
            }
        }
    }
}

impl Broker for AmqpBroker {
    async fn submit(&self, job: Job) -> Result<Job, Error> {
        if self.inner.draining.load(Ordering::Relaxed) {
            return Err(Error::Draining);
        }
        self.service(&job.service)?;
        // The record's commit and RabbitMQ's confirm are waited for at once: the 200 comes
        // after both, so the record is durable and the task queued when the client hears
        // of it (states that beat the record wait for it: `Watched::record_written`).
        let writing = self.inner.watched.add_writing(job.id);
        let (stored, published) =
            tokio::join!(self.inner.records.insert(&job), self.publish(&job, 0));
        drop(writing);
        match (stored, published) {
            (Ok(()), Ok(())) => Ok(job),
            (Ok(()), Err(error)) => {
                self.unpublished(&job, &error).await;
                Err(error)
            }
            (Err(store), published) => {
                self.inner.watched.remove(&job.id);
                if published.is_ok() {
                    self.revoke_on_workers(job.id).await;
                }
                Err(store)
            }
        }
    }

    async fn cancel(&self, id: JobId) -> Result<Option<Job>, Error> {
        let revoke = Change::Revoke {
            reason: "cancelled".into(),
        };
        let Some(applied) = self.inner.records.apply_one(id, revoke).await? else {
            return Ok(None);
        };
        if !applied.changed {
            return Ok(Some(applied.job));
        }
        self.inner.hub.publish(&applied.job);
        self.inner.watched.remove(&id);
        self.revoke_on_workers(id).await;
        Ok(Some(applied.job))
    }

    async fn active_workers(&self, service: &str) -> Result<usize, Error> {
        let queue = self.service(service)?.celery_queue_name.clone();
        // Held while asking: concurrent callers wait for the one broadcast.
        let mut active = self.inner.active.lock().await;
        let now = tokio::time::Instant::now();
        if let Some((at, replies)) = active.as_ref() {
            if now.duration_since(*at) < ACTIVE_FRESH {
                return Ok(pidbox::workers_on_queue(replies, &queue));
            }
        }
        let replies = self
            .inner
            .mailbox
            .ask("active_queues", json!({}), ACTIVE_WAIT)
            .await
            .map_err(Error::BrokerUnreachable)?;
        let count = pidbox::workers_on_queue(&replies, &queue);
        *active = Some((tokio::time::Instant::now(), replies));
        Ok(count)
    }

    fn depth(&self, service: &str) -> usize {
        self.inner
            .depths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .copied()
            .unwrap_or(0)
    }

    fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }
}
