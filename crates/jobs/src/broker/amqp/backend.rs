//! Result backends, both ways: [`follow`] reads the states workers write and applies them
//! to Portico's records (the gateway side); [`StateWriter`] writes states as a Celery worker
//! does (`portico worker --broker`).
//!
//! - `rpc`: states are messages to the task's `reply_to` queue with `correlation_id` = task
//!   id, on the default exchange. Portico's reply queue is durable and not auto-delete, so
//!   states that reached RabbitMQ survive a Portico restart; a state is acked only once
//!   applied to the records.
//! - `redis://`: `celery-task-meta-<id>` (SETEX, one day) and a PUBLISH on the channel of
//!   the same name. The follower PSUBSCRIBEs to `celery-task-meta-*`, then GETs every job it
//!   watches (states written while it was not subscribed), then follows the channel; it does
//!   that again after every reconnection (a Redis restart).
//! - `amqp` (Celery 4's; Celery 5 removed it): per task a queue named the id without
//!   dashes (durable, auto-delete, `x-expires` = `result_expires`) bound to the direct
//!   exchange `celeryresults`. Portico declares it before publishing the task (as Celery's
//!   client does) and polls it with `basic.get` (a consumer would make the auto-delete
//!   queue vanish when it stops): every state is applied in order, the newest is requeued
//!   so other readers still find it, as Celery's own `AsyncResult` does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::celery::ResultMeta;
use super::link::{connect, Backoff, Link};
use crate::config::ResultBackend;
use crate::hub::Hub;
use crate::records::Records;
use crate::{Error, JobId};

/// How long Celery's Redis backend keeps a state (`result_expires`, one day).
pub const REDIS_EXPIRES: Duration = Duration::from_secs(24 * 3600);

/// The jobs whose states Portico still waits for (not final yet), and of those the ones
/// whose record is still being written: a submission publishes its task while its record
/// commits (both waits at once), so a fast worker's first state can arrive before the
/// record exists; [`Sink::apply`] then waits for that write ([`Watched::record_written`]).
#[derive(Debug, Clone, Default)]
pub struct Watched(Arc<Mutex<HashMap<JobId, Option<watch::Receiver<()>>>>>);

/// A record being written; dropping it (the write done or failed) wakes the waiters.
#[derive(Debug)]
pub struct Writing {
    watched: Watched,
    id: JobId,
    _done: watch::Sender<()>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Some(entry) = self.watched.lock().get_mut(&self.id) {
            *entry = None;
        }
    }
}

impl Watched {
    pub fn add(&self, id: JobId) {
        self.lock().insert(id, None);
    }

    /// Watches `id`, whose record is being written until the returned guard drops.
    pub fn add_writing(&self, id: JobId) -> Writing {
        let (done, written) = watch::channel(());
        self.lock().insert(id, Some(written));
        Writing {
            watched: self.clone(),
            id,
            _done: done,
        }
    }

    /// Waits until `id`'s record write (if one is under way) is over; `true` when there was
    /// one to wait for.
    pub async fn record_written(&self, id: &JobId) -> bool {
        let writing = self.lock().get(id).cloned().flatten();
        let Some(mut written) = writing else {
            return false;
        };
        // Nothing is ever sent: `changed` fails when the guard drops the sender.
        while written.changed().await.is_ok() {}
        true
    }

    pub fn remove(&self, id: &JobId) {
        self.lock().remove(id);
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.lock().contains_key(id)
    }

    pub fn all(&self) -> Vec<JobId> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Option<watch::Receiver<()>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where states go once read.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub(crate) records: Records,
    pub(crate) hub: Hub,
    pub(crate) watched: Watched,
}

impl Sink {
    /// Applies one state to the record; publishes the change; stops watching a final job.
    pub async fn apply(&self, meta: &ResultMeta) -> Result<(), Error> {
        let mut applied = self.records.apply_one(meta.task_id, meta.change()).await?;
        if applied.is_none() && self.watched.record_written(&meta.task_id).await {
            applied = self.records.apply_one(meta.task_id, meta.change()).await?;
        }
        let Some(applied) = applied else {
            // Not one of ours (another client's task on a shared backend).
            return Ok(());
        };
        if applied.changed {
            self.hub.publish(&applied.job);
        }
        if applied.job.state.is_final() {
            self.watched.remove(&meta.task_id);
        }
        Ok(())
    }
}

/// What the follower reads.
#[derive(Debug, Clone)]
pub struct Source {
    pub amqp_url: String,
    pub backend: ResultBackend,
    pub reply_queue: String,
    /// `x-expires` of `amqp` result queues.
    pub result_expires: Duration,
}

/// Celery's `amqp` result exchange.
pub const RESULTS_EXCHANGE: &str = "celeryresults";
/// How often `amqp` result queues are polled.
const AMQP_POLL: Duration = Duration::from_millis(250);

/// The `amqp` result queue of a task: its id without dashes.
pub fn result_queue(id: &JobId) -> String {
    id.as_uuid().simple().to_string()
}

/// Declares `celeryresults` (direct, durable, as Celery 4 does) unless it exists, then the
/// task's result queue and its binding. A queue that exists with another `x-expires` makes
/// RabbitMQ answer 406, whose text names both values.
pub async fn declare_result_queue(
    connection: &lapin::Connection,
    channel: &lapin::Channel,
    id: &JobId,
    expires: Duration,
) -> Result<(), lapin::Error> {
    declare_results_exchange(connection).await?;
    let name = result_queue(id);
    let mut arguments = FieldTable::default();
    let millis = i32::try_from(expires.as_millis()).unwrap_or(i32::MAX);
    arguments.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(millis));
    let options = QueueDeclareOptions {
        durable: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(&name, options, arguments).await?;
    channel
        .queue_bind(
            &name,
            RESULTS_EXCHANGE,
            &name,
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn declare_results_exchange(connection: &lapin::Connection) -> Result<(), lapin::Error> {
    let probe = connection.create_channel().await?;
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = probe
        .exchange_declare(
            RESULTS_EXCHANGE,
            lapin::ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = probe.close(200, "declared").await;
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    let options = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            RESULTS_EXCHANGE,
            lapin::ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared").await;
    Ok(())
}

/// Reads states until cancelled, reconnecting after every break.
pub(crate) async fn follow(source: Source, sink: Sink, stop: tokio_util::sync::CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let round = async {
            match &source.backend {
                ResultBackend::Rpc => follow_rpc(&source, &sink, &mut backoff).await,
                ResultBackend::Redis { url } => follow_redis(url, &sink, &mut backoff).await,
                ResultBackend::Amqp => follow_amqp(&source, &sink, &mut backoff).await,
            }
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = round => outcome,
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, "result backend: following states failed; reconnecting");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

/// Portico's own reply queue: durable, not exclusive, not auto-delete.
pub fn reply_queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        exclusive: false,
        auto_delete: false,
        ..QueueDeclareOptions::default()
    }
}

async fn follow_rpc(source: &Source, sink: &Sink, backoff: &mut Backoff) -> Result<(), String> {
    let connection = connect(&source.amqp_url, "portico-results")
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_declare(
            &source.reply_queue,
            reply_queue_options(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring {}: {e}", source.reply_queue))?;
    channel
        .basic_qos(256, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            &source.reply_queue,
            "portico-results",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    backoff.reset();
    tracing::info!(queue = %source.reply_queue, "following rpc states");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| e.to_string())?;
        match ResultMeta::parse(&delivery.data) {
            Ok(meta) => {
                if let Err(error) = sink.apply(&meta).await {
                    // The records cannot take it now: leave it in the queue for later.
                    tracing::warn!(%error, "storing a state failed; it stays queued");
                    let _ = delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
            Err(error) => tracing::warn!(%error, "ignoring a reply that is not a Celery state"),
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    Err("the reply consumer ended".into())
}

async fn follow_amqp(source: &Source, sink: &Sink, backoff: &mut Backoff) -> Result<(), String> {
    let connection = connect(&source.amqp_url, "portico-results")
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    backoff.reset();
    let mut declared: HashSet<JobId> = HashSet::new();
    // Jobs whose newest state this connection put back: the next poll finds it first and
    // must not apply it again (the record may have moved on since, through events).
    let mut requeued: HashSet<JobId> = HashSet::new();
    tracing::info!("following amqp result queues");
    loop {
        let watched = sink.watched.all();
        declared.retain(|id| watched.contains(id));
        requeued.retain(|id| watched.contains(id));
        for id in watched {
            if declared.insert(id) {
                declare_result_queue(&connection, &channel, &id, source.result_expires)
                    .await
                    .map_err(|e| format!("declaring the result queue of {id}: {e}"))?;
            }
            let seen = requeued.contains(&id);
            if poll_result_queue(&channel, sink, &id, seen).await? {
                requeued.insert(id);
            }
        }
        tokio::time::sleep(AMQP_POLL).await;
    }
}

/// Takes every state waiting in the task's queue, applies them in order (but the one this
/// connection requeued last time, `seen`, found first and redelivered), acks all but the
/// newest and requeues that one; says whether it requeued one.
async fn poll_result_queue(
    channel: &lapin::Channel,
    sink: &Sink,
    id: &JobId,
    mut seen: bool,
) -> Result<bool, String> {
    let queue = result_queue(id);
    let mut newest: Option<lapin::message::BasicGetMessage> = None;
    loop {
        let got = channel
            .basic_get(&queue, lapin::options::BasicGetOptions::default())
            .await
            .map_err(|e| format!("reading {queue}: {e}"))?;
        let Some(message) = got else { break };
        let again = std::mem::take(&mut seen) && message.delivery.redelivered;
        match ResultMeta::parse(&message.delivery.data) {
            Ok(_) if again => {}
            Ok(meta) => sink.apply(&meta).await.map_err(|e| e.to_string())?,
            Err(error) => {
                tracing::warn!(%error, %queue, "ignoring a result that is not a Celery state")
            }
        }
        if let Some(older) = newest.replace(message) {
            older
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        if message_was_redelivered_newest(&newest) {
            break;
        }
    }
    let Some(newest) = newest else {
        return Ok(false);
    };
    newest
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// A message requeued by the last poll is the newest there was then; reading on would take
/// it again and again, so a poll stops at a redelivered message that is the queue's last.
fn message_was_redelivered_newest(newest: &Option<lapin::message::BasicGetMessage>) -> bool {
    newest
        .as_ref()
        .is_some_and(|m| m.delivery.redelivered && m.message_count == 0)
}

/// The Redis key (and channel) of a task's state.
pub fn redis_key(id: &JobId) -> String {
    format!("celery-task-meta-{id}")
}

async fn follow_redis(url: &str, sink: &Sink, backoff: &mut Backoff) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(5);
    let mut pubsub = tokio::time::timeout(limit, client.get_async_pubsub())
        .await
        .map_err(|_| "connecting to Redis timed out".to_string())?
        .map_err(|e| format!("connecting to Redis: {e}"))?;
    pubsub
        .psubscribe("celery-task-meta-*")
        .await
        .map_err(|e| e.to_string())?;
    let mut connection = tokio::time::timeout(limit, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| "connecting to Redis timed out".to_string())?
        .map_err(|e| format!("connecting to Redis: {e}"))?;
    backoff.reset();
    // Subscribed: whatever is written from now on reaches us; read what came before.
    for id in sink.watched.all() {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(redis_key(&id))
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(value) = value {
            apply_bytes(sink, &value).await?;
        }
    }
    tracing::info!("following redis states");
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        apply_bytes(sink, message.get_payload_bytes()).await?;
    }
    Err("the Redis subscription ended".into())
}

async fn apply_bytes(sink: &Sink, bytes: &[u8]) -> Result<(), String> {
    match ResultMeta::parse(bytes) {
        Ok(meta) => sink.apply(&meta).await.map_err(|e| e.to_string()),
        Err(error) => {
            tracing::warn!(%error, "ignoring a Redis state that is not a Celery state");
            Ok(())
        }
    }
}

/// Publishes one state and waits for RabbitMQ's confirm.
async fn publish_state(
    link: &Link,
    live: &Arc<super::link::Live>,
    exchange: &str,
    routing_key: &str,
    meta: &ResultMeta,
    body: &str,
) -> Result<(), Error> {
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(2)
        .with_correlation_id(ShortString::from(meta.task_id.to_string()));
    let published = async {
        live.channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?
            .await
    }
    .await;
    match published {
        Ok(confirmation) if confirmation.is_nack() => Err(Error::BrokerUnreachable(
            "RabbitMQ refused the state (nack)".into(),
        )),
        Ok(_) => Ok(()),
        Err(error) => {
            link.reset(live).await;
            Err(Error::BrokerUnreachable(error.to_string()))
        }
    }
}

/// Writes states as a Celery worker does.
#[derive(Clone)]
pub enum StateWriter {
    /// To each task's `reply_to`, on the given link.
    Rpc(Arc<Link>),
    Redis(redis::aio::ConnectionManager),
    /// To the task's queue on `celeryresults` (declared with this `x-expires`).
    Amqp(Arc<Link>, Duration),
}

impl std::fmt::Debug for StateWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateWriter::Rpc(_) => f.write_str("StateWriter::Rpc"),
            StateWriter::Redis(_) => f.write_str("StateWriter::Redis"),
            StateWriter::Amqp(..) => f.write_str("StateWriter::Amqp"),
        }
    }
}

impl StateWriter {
    /// Writes `meta`; `reply_to` is the task message's (rpc). Returns once the backend has
    /// it (rpc: confirmed by RabbitMQ).
    pub async fn write(&self, meta: &ResultMeta, reply_to: Option<&str>) -> Result<(), Error> {
        let body = meta.to_json(OffsetDateTime::now_utc()).to_string();
        match self {
            StateWriter::Amqp(link, expires) => {
                let live = link
                    .live()
                    .await
                    .map_err(|e| Error::BrokerUnreachable(e.to_string()))?;
                let declared =
                    declare_result_queue(&live.connection, &live.channel, &meta.task_id, *expires)
                        .await;
                if let Err(error) = declared {
                    link.reset(&live).await;
                    return Err(Error::BrokerUnreachable(format!(
                        "declaring the result queue: {error}"
                    )));
                }
                publish_state(
                    link,
                    &live,
                    RESULTS_EXCHANGE,
                    &result_queue(&meta.task_id),
                    meta,
                    &body,
                )
                .await
            }
            StateWriter::Rpc(link) => {
                let Some(reply_to) = reply_to.filter(|r| !r.is_empty()) else {
                    return Ok(());
                };
                let live = link
                    .live()
                    .await
                    .map_err(|e| Error::BrokerUnreachable(e.to_string()))?;
                publish_state(link, &live, "", reply_to, meta, &body).await
            }
            StateWriter::Redis(connection) => {
                let key = redis_key(&meta.task_id);
                let mut connection = connection.clone();
                redis::pipe()
                    .cmd("SETEX")
                    .arg(&key)
                    .arg(REDIS_EXPIRES.as_secs())
                    .arg(&body)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&key)
                    .arg(&body)
                    .ignore()
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(|e| Error::unavailable(format!("writing a state to Redis: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::records::LocalDb;
    use crate::{Job, State};

    async fn sink() -> (tempfile::TempDir, Sink) {
        let temp = tempfile::tempdir().unwrap();
        let db = LocalDb::open_at(temp.path()).await.unwrap();
        let sink = Sink {
            records: Records::Embedded(db),
            hub: Hub::new(),
            watched: Watched::default(),
        };
        (temp, sink)
    }

    fn started(job: &Job) -> ResultMeta {
        ResultMeta {
            task_id: job.id,
            status: State::Started,
            result: json!({"pid": 1, "hostname": "w1@host"}),
            traceback: None,
        }
    }

    #[tokio::test]
    async fn a_state_that_beats_its_record_is_applied_once_the_record_is_written() {
        let (_temp, sink) = sink().await;
        let job = Job::new("noop", json!({}), OffsetDateTime::now_utc());
        let writing = sink.watched.add_writing(job.id);
        let applying = tokio::spawn({
            let sink = sink.clone();
            let state = started(&job);
            async move { sink.apply(&state).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !applying.is_finished(),
            "the state did not wait for its record"
        );
        sink.records.insert(&job).await.unwrap();
        drop(writing);
        applying.await.unwrap().unwrap();
        let record = sink.records.get(job.id).await.unwrap().unwrap();
        assert_eq!(record.state, State::Started);
    }

    #[tokio::test]
    async fn a_state_of_a_job_that_is_not_being_written_is_dropped_at_once() {
        let (_temp, sink) = sink().await;
        let job = Job::new("noop", json!({}), OffsetDateTime::now_utc());
        sink.watched.add(job.id);
        let state = started(&job);
        let applied = tokio::time::timeout(Duration::from_secs(5), sink.apply(&state));
        applied.await.expect("waited for no write").unwrap();
        assert_eq!(sink.records.get(job.id).await.unwrap(), None);
    }
}
