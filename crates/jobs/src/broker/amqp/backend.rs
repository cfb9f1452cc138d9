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
//! - `amqp` (Celery 4's, removed in Celery 5): not read yet; see docs/jobs.md.

use std::collections::HashSet;
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

use super::celery::ResultMeta;
use super::link::{connect, Backoff, Link};
use crate::config::ResultBackend;
use crate::hub::Hub;
use crate::records::Records;
use crate::{Error, JobId};

/// How long Celery's Redis backend keeps a state (`result_expires`, one day).
pub const REDIS_EXPIRES: Duration = Duration::from_secs(24 * 3600);

/// The jobs whose states Portico still waits for (not final yet).
#[derive(Debug, Clone, Default)]
pub struct Watched(Arc<Mutex<HashSet<JobId>>>);

impl Watched {
    pub fn add(&self, id: JobId) {
        self.lock().insert(id);
    }

    pub fn remove(&self, id: &JobId) {
        self.lock().remove(id);
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.lock().contains(id)
    }

    pub fn all(&self) -> Vec<JobId> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
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
        let applied = self.records.apply_one(meta.task_id, meta.change()).await?;
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
}

/// Reads states until cancelled, reconnecting after every break.
pub(crate) async fn follow(source: Source, sink: Sink, stop: tokio_util::sync::CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let round = async {
            match &source.backend {
                ResultBackend::Rpc => follow_rpc(&source, &sink, &mut backoff).await,
                ResultBackend::Redis { url } => follow_redis(url, &sink, &mut backoff).await,
                ResultBackend::Amqp => {
                    // The `amqp` backend is read per task; nothing to follow here yet.
                    std::future::pending::<Result<(), String>>().await
                }
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

/// Writes states as a Celery worker does.
#[derive(Clone)]
pub enum StateWriter {
    /// To each task's `reply_to`, on the given link.
    Rpc(Arc<Link>),
    Redis(redis::aio::ConnectionManager),
}

impl std::fmt::Debug for StateWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateWriter::Rpc(_) => f.write_str("StateWriter::Rpc"),
            StateWriter::Redis(_) => f.write_str("StateWriter::Redis"),
        }
    }
}

impl StateWriter {
    /// Writes `meta`; `reply_to` is the task message's (rpc). Returns once the backend has
    /// it (rpc: confirmed by RabbitMQ).
    pub async fn write(&self, meta: &ResultMeta, reply_to: Option<&str>) -> Result<(), Error> {
        let body = meta.to_json(OffsetDateTime::now_utc()).to_string();
        match self {
            StateWriter::Rpc(link) => {
                let Some(reply_to) = reply_to.filter(|r| !r.is_empty()) else {
                    return Ok(());
                };
                let live = link
                    .live()
                    .await
                    .map_err(|e| Error::BrokerUnreachable(e.to_string()))?;
                let properties = BasicProperties::default()
                    .with_content_type(ShortString::from("application/json"))
                    .with_content_encoding(ShortString::from("utf-8"))
                    .with_delivery_mode(2)
                    .with_correlation_id(ShortString::from(meta.task_id.to_string()));
                let published = async {
                    live.channel
                        .basic_publish(
                            "",
                            reply_to,
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
                        link.reset(&live).await;
                        Err(Error::BrokerUnreachable(error.to_string()))
                    }
                }
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
