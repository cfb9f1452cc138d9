//! `celery.pidbox`: Celery's control channel (kombu's `Mailbox`), as Portico speaks it.
//!
//! - Broadcasts go to the fanout exchange `celery.pidbox` (not durable; kombu's own flags,
//!   see [`declare_exchanges`]: other flags make RabbitMQ refuse a declare with 406) with
//!   the body `{"method","arguments","destination","pattern","matcher"}` and the headers
//!   `clock` and `expires`; a request that wants answers adds `ticket` and `reply_to`
//!   `{"exchange":"reply.celery.pidbox","routing_key":<our id>}`.
//! - Replies come on the direct exchange `reply.celery.pidbox` with our id as routing key,
//!   the body `{"<worker>": <answer>}` and the header `ticket`.
//! - [`Mailbox`] is one connection's worth of both: a queue of our own bound to the fanout
//!   (so we see `hello` and `revoke` broadcasts) and a reply queue; both exclusive (RabbitMQ
//!   4.3 refuses transient non-exclusive queues).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::link::{connect, Backoff};

pub const EXCHANGE: &str = "celery.pidbox";
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// Seconds since the epoch, as Python's `time()`.
pub fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Makes sure both exchanges exist without fighting the workers over their flags: kombu
/// changed them (Celery 4.3's kombu declared them auto-delete; Celery 5.7's does not), and
/// RabbitMQ refuses a declare whose flags differ with 406, closing the channel. So each is
/// declared passively first, and only when missing is it made, with current kombu's flags
/// (not durable, not auto-delete).
pub async fn declare_exchanges(connection: &Connection) -> Result<(), lapin::Error> {
    for (name, kind) in [
        (EXCHANGE, ExchangeKind::Fanout),
        (REPLY_EXCHANGE, ExchangeKind::Direct),
    ] {
        let probe = connection.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let exists = probe
            .exchange_declare(name, kind.clone(), passive, FieldTable::default())
            .await
            .is_ok();
        if exists {
            let _ = probe.close(200, "declared").await;
            continue;
        }
        let channel = connection.create_channel().await?;
        let options = ExchangeDeclareOptions {
            durable: false,
            auto_delete: false,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(name, kind, options, FieldTable::default())
            .await?;
        let _ = channel.close(200, "declared").await;
    }
    Ok(())
}

/// A broadcast, ready to publish.
pub struct Broadcast {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// `method` with `arguments` to every worker; `reply`: (ticket, our reply routing key).
pub fn broadcast(method: &str, arguments: Value, reply: Option<(&str, &str)>) -> Broadcast {
    let mut body = json!({
        "method": method,
        "arguments": arguments,
        "destination": null,
        "pattern": null,
        "matcher": null,
    });
    if let Some((ticket, oid)) = reply {
        body["ticket"] = json!(ticket);
        body["reply_to"] = json!({"exchange": REPLY_EXCHANGE, "routing_key": oid});
    }
    let mut headers = FieldTable::default();
    headers.insert("clock".into(), AMQPValue::LongInt(1));
    headers.insert("expires".into(), AMQPValue::Double(now_seconds() + 10.0));
    Broadcast {
        body: body.to_string().into_bytes(),
        properties: json_properties().with_headers(headers),
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(1)
}

/// Publishes a broadcast on `channel` (no confirm wait: a control message).
pub async fn publish(channel: &Channel, message: Broadcast) -> Result<(), lapin::Error> {
    channel
        .basic_publish(
            EXCHANGE,
            "",
            BasicPublishOptions::default(),
            &message.body,
            message.properties,
        )
        .await?;
    Ok(())
}

/// Answers a request: `{"<node>": answer}` to its `reply_to`, with its `ticket`.
pub async fn reply(
    channel: &Channel,
    request: &Value,
    node: &str,
    answer: Value,
) -> Result<(), lapin::Error> {
    let (Some(ticket), Some(reply_to)) = (request.get("ticket"), request.get("reply_to")) else {
        return Ok(());
    };
    let exchange = reply_to
        .get("exchange")
        .and_then(Value::as_str)
        .unwrap_or(REPLY_EXCHANGE);
    let routing_key = reply_to
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ticket = ticket
        .as_str()
        .map_or_else(|| ticket.to_string(), str::to_string);
    let mut headers = FieldTable::default();
    headers.insert(
        "ticket".into(),
        AMQPValue::LongString(LongString::from(ticket)),
    );
    headers.insert("clock".into(), AMQPValue::LongInt(1));
    let body = json!({ node: answer }).to_string();
    channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body.as_bytes(),
            json_properties().with_headers(headers),
        )
        .await?;
    Ok(())
}

/// What a mailbox hands to its owner.
#[derive(Debug)]
pub enum Event {
    /// A broadcast (`{"method",...}`) seen on `celery.pidbox`.
    Broadcast(Value),
}

/// Outstanding requests: ticket -> where replies go.
type Waiting = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>>;

/// A pidbox endpoint: sees broadcasts, asks questions and collects replies, reconnecting
/// by itself. Clones share it.
#[derive(Clone)]
pub struct Mailbox {
    /// Our reply routing key (kombu's `oid`).
    pub oid: String,
    channel: Arc<tokio::sync::RwLock<Option<Channel>>>,
    waiting: Waiting,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("oid", &self.oid).finish()
    }
}

impl Mailbox {
    /// Starts the mailbox on `background`; broadcasts go to `events`. Returns once the first
    /// connection is set up or `wait` passed (it keeps trying after that).
    pub async fn start(
        url: &str,
        name: &str,
        events: mpsc::UnboundedSender<Event>,
        stop: tokio_util::sync::CancellationToken,
        wait: Duration,
    ) -> Mailbox {
        let mailbox = Mailbox {
            oid: uuid::Uuid::new_v4().to_string(),
            channel: Arc::default(),
            waiting: Waiting::default(),
        };
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        tokio::spawn({
            let mailbox = mailbox.clone();
            let url = url.to_string();
            let name = name.to_string();
            async move { mailbox.run(url, name, events, stop, ready).await }
        });
        let _ = tokio::time::timeout(wait, is_ready).await;
        mailbox
    }

    async fn run(
        &self,
        url: String,
        name: String,
        events: mpsc::UnboundedSender<Event>,
        stop: tokio_util::sync::CancellationToken,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut backoff = Backoff::default();
        loop {
            let round = self.round(&url, &name, &events, &mut ready, &mut backoff);
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = round => outcome,
            };
            *self.channel.write().await = None;
            if let Err(error) = outcome {
                tracing::debug!(%error, "pidbox: reconnecting");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = backoff.wait() => {}
            }
        }
    }

    async fn round(
        &self,
        url: &str,
        name: &str,
        events: &mpsc::UnboundedSender<Event>,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let connection = connect(url, name).await.map_err(|e| e.to_string())?;
        declare_exchanges(&connection)
            .await
            .map_err(|e| format!("declaring the pidbox exchanges: {e}"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let broadcasts = format!("{}.{EXCHANGE}", self.oid);
        let replies = format!("{}.{REPLY_EXCHANGE}", self.oid);
        for (queue, exchange, key) in [
            (&broadcasts, EXCHANGE, ""),
            (&replies, REPLY_EXCHANGE, self.oid.as_str()),
        ] {
            channel
                .queue_declare(queue, exclusive, FieldTable::default())
                .await
                .map_err(|e| e.to_string())?;
            channel
                .queue_bind(
                    queue,
                    exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut seen = channel
            .basic_consume(&broadcasts, "", no_ack, FieldTable::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut answers = channel
            .basic_consume(&replies, "", no_ack, FieldTable::default())
            .await
            .map_err(|e| e.to_string())?;
        *self.channel.write().await = Some(channel);
        backoff.reset();
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            tokio::select! {
                delivery = seen.next() => {
                    let delivery = delivery.ok_or("broadcasts ended")?.map_err(|e| e.to_string())?;
                    if let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) {
                        let _ = events.send(Event::Broadcast(body));
                    }
                }
                delivery = answers.next() => {
                    let delivery = delivery.ok_or("replies ended")?.map_err(|e| e.to_string())?;
                    self.collect(&delivery);
                }
            }
        }
    }

    fn collect(&self, delivery: &lapin::message::Delivery) {
        let ticket = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("ticket").cloned());
        let Some(AMQPValue::LongString(ticket)) = ticket else {
            return;
        };
        let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
            return;
        };
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = waiting.get(&ticket.to_string()) {
            let _ = sender.send(body);
        }
    }

    /// The channel, when connected (to publish broadcasts and replies on).
    pub async fn channel(&self) -> Option<Channel> {
        self.channel.read().await.clone()
    }

    /// Broadcasts without asking for replies.
    pub async fn tell(&self, method: &str, arguments: Value) -> Result<(), String> {
        let channel = self.channel().await.ok_or("pidbox is not connected")?;
        publish(&channel, broadcast(method, arguments, None))
            .await
            .map_err(|e| e.to_string())
    }

    /// Broadcasts and collects the replies that come within `wait` (`{"<node>": answer}`
    /// each).
    pub async fn ask(
        &self,
        method: &str,
        arguments: Value,
        wait: Duration,
    ) -> Result<Vec<Value>, String> {
        let channel = self.channel().await.ok_or("pidbox is not connected")?;
        let ticket = uuid::Uuid::new_v4().to_string();
        let (sender, mut receiver) = mpsc::unbounded_channel();
        self.lock_waiting().insert(ticket.clone(), sender);
        let sent = publish(
            &channel,
            broadcast(method, arguments, Some((&ticket, &self.oid))),
        )
        .await;
        let mut replies = Vec::new();
        if sent.is_ok() {
            let deadline = tokio::time::Instant::now() + wait;
            while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, receiver.recv()).await {
                replies.push(reply);
            }
        }
        self.lock_waiting().remove(&ticket);
        sent.map_err(|e| e.to_string())?;
        Ok(replies)
    }

    fn lock_waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Value>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Workers (reply keys) whose `active_queues` answer lists `queue`.
pub fn workers_on_queue(replies: &[Value], queue: &str) -> usize {
    replies
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|reply| reply.values())
        .filter(|queues| {
            queues.as_array().is_some_and(|list| {
                list.iter()
                    .any(|q| q.get("name").and_then(Value::as_str) == Some(queue))
            })
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_broadcast_is_what_celery_expects() {
        let message = broadcast(
            "revoke",
            json!({"task_id": "x", "terminate": true, "signal": "SIGKILL"}),
            None,
        );
        let body: Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(
            body,
            json!({"method": "revoke", "arguments": {"task_id": "x", "terminate": true, "signal": "SIGKILL"},
                   "destination": null, "pattern": null, "matcher": null})
        );
        let headers = message.properties.headers().clone().unwrap();
        assert!(headers.inner().contains_key("clock"));
        assert!(headers.inner().contains_key("expires"));
    }

    #[test]
    fn active_queues_replies_count_workers_of_a_queue() {
        let replies = vec![
            json!({"celery@a": [{"name": "q1"}, {"name": "q2"}]}),
            json!({"celery@b": [{"name": "q2"}]}),
            json!({"celery@c": "garbage"}),
        ];
        assert_eq!(workers_on_queue(&replies, "q1"), 1);
        assert_eq!(workers_on_queue(&replies, "q2"), 2);
        assert_eq!(workers_on_queue(&replies, "q3"), 0);
    }
}
