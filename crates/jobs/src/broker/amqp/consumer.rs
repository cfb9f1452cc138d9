//! `CelerySource`: a Celery worker's end of the queue, as a [`JobSource`] for the runner
//! (`portico worker --broker amqp://... --queue Q`), so Portico workers and Python workers
//! can share a queue.
//!
//! - Starts on the first `next()`: the pidbox mailbox comes up, a `hello` is broadcast and
//!   the revoked ids in the replies (Portico gateways, Celery workers) are merged in (as
//!   Celery's "mingle" does), then the queue is consumed with `prefetch` = slots and late
//!   acks: a message is acked only after its final state is written, so a worker killed
//!   mid-job leaves it to RabbitMQ, which gives it to another worker.
//! - Each run writes STARTED (`{"pid","hostname"}`), PROGRESS (the meta, `current` and
//!   `total` filled in), then SUCCESS or FAILURE (Celery's exception shape) to the result
//!   backend ([`StateWriter`]).
//! - `Outcome::Retry` (the command's process died): the message is published again with
//!   `retries` + 1 and RETRY written, or FAILURE "worker lost" once `max_attempts` runs were
//!   made.
//! - pidbox: `revoke` (a running job's stop token fires when `terminate`; a queued one is
//!   skipped and written REVOKED), `active_queues`, `ping` and `hello` are answered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::acker::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

use super::backend::StateWriter;
use super::celery::{self, ReceivedTask, ResultMeta};
use super::events;
use super::link::{self, connect, Backoff, Link};
use super::pidbox::{self, Event, Mailbox};
use crate::config::ResultBackend;
use crate::runner::{JobSource, Task};
use crate::{Error, Job, LeaseId, Outcome, State};

/// How often a worker beats on `celeryev`.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a starting worker collects `hello` replies.
pub const MINGLE_WAIT: Duration = Duration::from_secs(1);

/// What a Celery consumer needs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub url: String,
    pub queue: String,
    /// The service name put in the jobs it hands out.
    pub service: String,
    /// Prefetch: messages held unacked at once (= slots).
    pub prefetch: u16,
    pub backend: ResultBackend,
    /// Celery node name (`portico@host`): pidbox replies and STARTED's `hostname`.
    pub node: String,
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// `x-expires` of `amqp` result queues (the gateways' `result_expires`).
    pub result_expires: Duration,
}

/// The consumer. Clones share it.
#[derive(Clone)]
pub struct CelerySource {
    inner: Arc<SourceInner>,
}

impl std::fmt::Debug for CelerySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelerySource")
            .field("queue", &self.inner.config.queue)
            .finish()
    }
}

struct SourceInner {
    config: ConsumerConfig,
    started: OnceCell<Started>,
    stop: CancellationToken,
}

impl Drop for SourceInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Started {
    deliveries: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    link: Arc<Link>,
    writer: StateWriter,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    revoked: Mutex<HashSet<crate::JobId>>,
    running: Mutex<HashMap<LeaseId, Running>>,
    processed: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn is_revoked(&self, id: &crate::JobId) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Running {
    task: ReceivedTask,
    acker: Acker,
    properties: BasicProperties,
    body: Vec<u8>,
    stop: CancellationToken,
}

impl CelerySource {
    pub fn new(config: ConsumerConfig) -> CelerySource {
        CelerySource {
            inner: Arc::new(SourceInner {
                config,
                started: OnceCell::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Stops consuming (messages held unacked go back to the queue when the connection
    /// closes).
    pub fn close(&self) {
        self.inner.stop.cancel();
    }

    async fn started(&self) -> Result<&Started, Error> {
        self.inner
            .started
            .get_or_try_init(|| start(&self.inner.config, &self.inner.stop))
            .await
    }

    fn reply_to(properties: &BasicProperties) -> Option<String> {
        properties.reply_to().as_ref().map(|r| r.to_string())
    }

    async fn write(
        &self,
        started: &Started,
        running: &Running,
        status: State,
        result: Value,
    ) -> Result<(), Error> {
        let meta = ResultMeta {
            task_id: running.task.id,
            status,
            result,
            traceback: None,
        };
        started
            .writer
            .write(&meta, Self::reply_to(&running.properties).as_deref())
            .await
    }

    /// Takes deliveries until one may run (not revoked, well-formed).
    async fn take(&self, started: &Started, worker: &str) -> Result<Option<Task>, Error> {
        loop {
            let delivery = {
                let mut deliveries = started.deliveries.lock().await;
                tokio::select! {
                    delivery = deliveries.recv() => delivery,
                    _ = self.inner.stop.cancelled() => None,
                }
            };
            let Some(delivery) = delivery else {
                return Ok(None);
            };
            let task =
                match celery::parse_task(delivery.properties.headers().as_ref(), &delivery.data) {
                    Ok(task) => task,
                    Err(error) => {
                        tracing::warn!(%error, "dropping a message that is not a Celery task");
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                        continue;
                    }
                };
            let running = Running {
                task,
                acker: delivery.acker,
                properties: delivery.properties,
                body: delivery.data,
                stop: CancellationToken::new(),
            };
            if started.shared.is_revoked(&running.task.id) {
                let result = celery::exception("TaskRevokedError", "revoked");
                self.write(started, &running, State::Revoked, result)
                    .await?;
                let _ = running.acker.ack(BasicAckOptions::default()).await;
                continue;
            }
            return self.begin(started, running, worker).await.map(Some);
        }
    }

    async fn begin(
        &self,
        started: &Started,
        running: Running,
        worker: &str,
    ) -> Result<Task, Error> {
        let pid = std::process::id();
        let info = json!({"pid": pid, "hostname": self.inner.config.node});
        self.write(started, &running, State::Started, info).await?;
        let now = OffsetDateTime::now_utc();
        let mut job = Job::new(
            &self.inner.config.service,
            running.task.message.clone(),
            now,
        );
        job.id = running.task.id;
        job.state = State::Started;
        job.attempts = running.task.retries.saturating_add(1);
        job.started_at = Some(now);
        job.worker = Some(worker.to_string());
        let lease = LeaseId::new();
        let task = Task {
            job,
            lease,
            stop: running.stop.clone(),
        };
        let mut fields = serde_json::Map::new();
        fields.insert("uuid".into(), json!(running.task.id.to_string()));
        started.shared.running().insert(lease, running);
        let _ = events::emit(
            &started.link,
            "task-started",
            &self.inner.config.node,
            fields,
        )
        .await;
        Ok(task)
    }

    /// Publishes the message again with `retries` + 1 (confirmed).
    async fn republish(&self, started: &Started, running: &Running) -> Result<(), Error> {
        let mut headers = running.properties.headers().clone().unwrap_or_default();
        headers.insert(
            "retries".into(),
            AMQPValue::LongInt(running.task.retries.saturating_add(1).min(i32::MAX as u32) as i32),
        );
        let properties = running.properties.clone().with_headers(headers);
        let live = started
            .link
            .live()
            .await
            .map_err(|e| Error::BrokerUnreachable(e.to_string()))?;
        let confirmed = async {
            live.channel
                .basic_publish(
                    "",
                    &self.inner.config.queue,
                    BasicPublishOptions::default(),
                    &running.body,
                    properties,
                )
                .await?
                .await
        }
        .await;
        match confirmed {
            Ok(c) if c.is_ack() => Ok(()),
            Ok(_) => Err(Error::BrokerUnreachable("republish refused (nack)".into())),
            Err(error) => {
                started.link.reset(&live).await;
                Err(Error::BrokerUnreachable(error.to_string()))
            }
        }
    }

    async fn end(
        &self,
        started: &Started,
        running: &Running,
        outcome: Outcome,
    ) -> Result<(), Error> {
        match outcome {
            Outcome::Success(value) => self.write(started, running, State::Success, value).await,
            Outcome::Failure(message) => {
                let result = celery::exception("Exception", &message);
                self.write(started, running, State::Failure, result).await
            }
            Outcome::Retry(reason) => {
                let runs = running.task.retries.saturating_add(1);
                if runs >= self.inner.config.max_attempts {
                    let message = format!(
                        "worker lost: {reason} (after {runs} attempt{})",
                        if runs == 1 { "" } else { "s" }
                    );
                    let result = celery::exception("WorkerLostError", &message);
                    return self.write(started, running, State::Failure, result).await;
                }
                let message = format!("worker lost: {reason}; running it again");
                let result = celery::exception("WorkerLostError", &message);
                self.write(started, running, State::Retry, result).await?;
                self.republish(started, running).await
            }
        }
    }
}

impl JobSource for CelerySource {
    async fn next(&self, worker: &str) -> Result<Option<Task>, Error> {
        let started = self.started().await?;
        self.take(started, worker).await
    }

    async fn progress(&self, task: &Task, percent: u8, meta: Value) -> Result<(), Error> {
        let started = self.started().await?;
        let mut meta = match meta {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        meta.entry("current").or_insert(json!(percent.min(100)));
        meta.entry("total").or_insert(json!(100));
        let (properties, id) = {
            let running = started.shared.running();
            let Some(running) = running.get(&task.lease) else {
                return Err(Error::UnknownLease(task.lease));
            };
            (running.properties.clone(), running.task.id)
        };
        let state = ResultMeta {
            task_id: id,
            status: State::Progress,
            result: Value::Object(meta),
            traceback: None,
        };
        started
            .writer
            .write(&state, Self::reply_to(&properties).as_deref())
            .await
    }

    async fn finish(&self, task: &Task, outcome: Outcome, _log: String) -> Result<(), Error> {
        let started = self.started().await?;
        let Some(running) = started.shared.running().remove(&task.lease) else {
            return Err(Error::UnknownLease(task.lease));
        };
        let event = match &outcome {
            Outcome::Success(_) => "task-succeeded",
            _ => "task-failed",
        };
        if started.shared.is_revoked(&running.task.id) {
            let result = celery::exception("TaskRevokedError", "terminated");
            self.write(started, &running, State::Revoked, result)
                .await?;
        } else if let Err(error) = self.end(started, &running, outcome).await {
            // Not written: leave the message to RabbitMQ (another worker runs it again).
            let _ = running
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            return Err(error);
        }
        started
            .shared
            .processed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut fields = serde_json::Map::new();
        fields.insert("uuid".into(), json!(running.task.id.to_string()));
        let _ = events::emit(&started.link, event, &self.inner.config.node, fields).await;
        running
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| Error::BrokerUnreachable(e.to_string()))
    }

    async fn release(&self, task: &Task) -> Result<(), Error> {
        let started = self.started().await?;
        let Some(running) = started.shared.running().remove(&task.lease) else {
            return Ok(());
        };
        let _ = self
            .write(started, &running, State::Pending, Value::Null)
            .await;
        running
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::BrokerUnreachable(e.to_string()))
    }
}

async fn start(config: &ConsumerConfig, stop: &CancellationToken) -> Result<Started, Error> {
    let link = Arc::new(Link::new(&config.url, "portico-worker-publish"));
    let writer = match &config.backend {
        ResultBackend::Rpc => StateWriter::Rpc(link.clone()),
        ResultBackend::Redis { url } => {
            let client =
                redis::Client::open(url.as_str()).map_err(|e| Error::Invalid(e.to_string()))?;
            let manager = tokio::time::timeout(
                config.connect_timeout,
                redis::aio::ConnectionManager::new(client),
            )
            .await
            .map_err(|_| Error::unavailable("connecting to the Redis result backend timed out"))?
            .map_err(|e| {
                Error::unavailable(format!("connecting to the Redis result backend: {e}"))
            })?;
            StateWriter::Redis(manager)
        }
        ResultBackend::Amqp => StateWriter::Amqp(link.clone(), config.result_expires),
    };
    let shared = Arc::new(Shared::default());
    let (events, received) = mpsc::unbounded_channel();
    let mailbox = Mailbox::start(
        &config.url,
        "portico-worker-pidbox",
        events,
        stop.clone(),
        config.connect_timeout,
    )
    .await;
    tokio::spawn(answer_pidbox(
        config.clone(),
        mailbox.clone(),
        shared.clone(),
        received,
    ));
    mingle(&mailbox, &shared).await;
    let (sender, deliveries) = mpsc::channel(usize::from(config.prefetch.max(1)));
    tokio::spawn(consume(config.clone(), sender, stop.clone()));
    tokio::spawn(beat(
        config.clone(),
        link.clone(),
        shared.clone(),
        stop.clone(),
    ));
    Ok(Started {
        deliveries: tokio::sync::Mutex::new(deliveries),
        link,
        writer,
        shared,
    })
}

/// `worker-online`, then a `worker-heartbeat` every 2 s, then `worker-offline` at the end
/// (gateways mark the jobs of a worker that stopped beating as lost).
async fn beat(
    config: ConsumerConfig,
    link: Arc<Link>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    if let Ok(live) = link.live().await {
        if let Err(error) = events::declare_exchange(&live.connection).await {
            tracing::warn!(%error, "declaring celeryev failed; no heartbeats");
        }
    }
    let online = events::emit(
        &link,
        "worker-online",
        &config.node,
        events::heartbeat(0, 0),
    )
    .await;
    if let Err(error) = online {
        tracing::debug!(%error, "worker-online not sent");
    }
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let active = shared.running().len();
        let processed = shared.processed.load(std::sync::atomic::Ordering::Relaxed);
        let fields = events::heartbeat(active, processed);
        if let Err(error) = events::emit(&link, "worker-heartbeat", &config.node, fields).await {
            tracing::debug!(%error, "heartbeat not sent");
        }
    }
    let _ = events::emit(
        &link,
        "worker-offline",
        &config.node,
        events::heartbeat(0, 0),
    )
    .await;
}

/// Celery's mingle: ask every node for its revoked ids.
async fn mingle(mailbox: &Mailbox, shared: &Shared) {
    let replies = match mailbox
        .ask(
            "hello",
            json!({"from_node": "portico", "revoked": {}}),
            MINGLE_WAIT,
        )
        .await
    {
        Ok(replies) => replies,
        Err(error) => {
            tracing::warn!(%error, "pidbox hello failed; starting without the revoked ids");
            return;
        }
    };
    let mut revoked = shared.revoked.lock().unwrap_or_else(|p| p.into_inner());
    for reply in replies.iter().filter_map(Value::as_object) {
        for answer in reply.values() {
            let Some(ids) = answer.get("revoked").and_then(Value::as_object) else {
                continue;
            };
            revoked.extend(ids.keys().filter_map(|id| id.parse::<crate::JobId>().ok()));
        }
    }
}

async fn answer_pidbox(
    config: ConsumerConfig,
    mailbox: Mailbox,
    shared: Arc<Shared>,
    mut received: mpsc::UnboundedReceiver<Event>,
) {
    while let Some(Event::Broadcast(request)) = received.recv().await {
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let destination = request.get("destination").and_then(Value::as_array);
        if destination.is_some_and(|d| !d.iter().any(|n| n.as_str() == Some(config.node.as_str())))
        {
            continue;
        }
        let arguments = request.get("arguments").cloned().unwrap_or(Value::Null);
        let answer = match method {
            "revoke" => {
                revoke(&shared, &arguments);
                json!({"ok": "tasks revoked"})
            }
            "active_queues" => json!([{
                "name": config.queue, "exchange": {"name": config.queue, "type": "direct"},
                "routing_key": config.queue, "durable": true, "exclusive": false, "auto_delete": false,
                "no_ack": false, "queue_arguments": null, "binding_arguments": null,
            }]),
            "ping" => json!({"ok": "pong"}),
            "hello" => {
                let revoked: serde_json::Map<String, Value> = shared
                    .revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|id| (id.to_string(), json!(pidbox::now_seconds())))
                    .collect();
                json!({"clock": 1, "revoked": revoked})
            }
            _ => continue,
        };
        if let Some(channel) = mailbox.channel().await {
            let _ = pidbox::reply(&channel, &request, &config.node, answer).await;
        }
    }
}

fn revoke(shared: &Shared, arguments: &Value) {
    let ids: Vec<crate::JobId> = match arguments.get("task_id") {
        Some(Value::String(id)) => id.parse().ok().into_iter().collect(),
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|i| i.as_str()?.parse().ok())
            .collect(),
        _ => Vec::new(),
    };
    let terminate = arguments.get("terminate").and_then(Value::as_bool) == Some(true);
    shared
        .revoked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(ids.iter().copied());
    if terminate {
        for running in shared.running().values() {
            if ids.contains(&running.task.id) {
                running.stop.cancel();
            }
        }
    }
}

/// Consumes the queue into `sender`, reconnecting after every break.
async fn consume(config: ConsumerConfig, sender: mpsc::Sender<Delivery>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let round = consume_once(&config, &sender, &mut backoff);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = round => outcome,
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, queue = %config.queue, "consuming failed; reconnecting");
        }
        if sender.is_closed() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

async fn consume_once(
    config: &ConsumerConfig,
    sender: &mpsc::Sender<Delivery>,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let connection = connect(&config.url, "portico-worker")
        .await
        .map_err(|e| e.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_declare(
            &config.queue,
            link::task_queue_options(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring {}: {e}", config.queue))?;
    channel
        .basic_qos(config.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            &config.queue,
            &config.node,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    backoff.reset();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| e.to_string())?;
        if sender.send(delivery).await.is_err() {
            return Ok(());
        }
    }
    Err("the consumer ended".into())
}
