//! `Link`: one AMQP connection with a publisher-confirm channel, made again after it breaks.
//!
//! Publishers call [`Link::live`]: the current connection when it is healthy, else a new one
//! (the first caller after a break connects; the others wait for it on the mutex). Callers
//! bound the whole operation with `broker_timeout`, so a RabbitMQ that is down costs a
//! submission at most that long (then `503`, vesta 205). Background readers (results,
//! pidbox) open their own connections with [`connect`] and loop on breaks with [`Backoff`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

/// Opens a connection whose I/O runs on the current tokio runtime.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(url, properties).await
}

/// A connection and its confirm channel.
pub struct Live {
    pub connection: Connection,
    pub channel: Channel,
    /// Queues declared on this connection already.
    declared: Mutex<HashSet<String>>,
}

impl Live {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Declares a task queue as Celery does (durable, not exclusive, not auto-delete, no
    /// arguments: anything else makes RabbitMQ refuse Celery's own declare with 406), once
    /// per connection.
    pub async fn declare_task_queue(&self, queue: &str) -> Result<(), lapin::Error> {
        if self.is_declared(queue) {
            return Ok(());
        }
        self.channel
            .queue_declare(queue, task_queue_options(), FieldTable::default())
            .await?;
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_string());
        Ok(())
    }

    pub fn is_declared(&self, queue: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue)
    }
}

/// Celery's task queue flags.
pub fn task_queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        exclusive: false,
        auto_delete: false,
        ..QueueDeclareOptions::default()
    }
}

/// The publishing connection, reconnected on demand.
pub struct Link {
    url: String,
    name: String,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("name", &self.name).finish()
    }
}

impl Link {
    pub fn new(url: &str, name: &str) -> Link {
        Link {
            url: url.to_string(),
            name: name.to_string(),
            live: tokio::sync::Mutex::new(None),
        }
    }

    /// The healthy connection, connecting when there is none.
    pub async fn live(&self) -> Result<Arc<Live>, lapin::Error> {
        let mut guard = self.live.lock().await;
        if let Some(live) = guard.as_ref().filter(|live| live.healthy()) {
            return Ok(live.clone());
        }
        if let Some(old) = guard.take() {
            tracing::info!(name = %self.name, "AMQP connection lost; reconnecting");
            let _ = old.connection.close(0, "reconnecting").await;
        }
        let connection = connect(&self.url, &self.name).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let live = Arc::new(Live {
            connection,
            channel,
            declared: Mutex::default(),
        });
        *guard = Some(live.clone());
        Ok(live)
    }

    /// Forgets the connection (after an error on it), so the next call connects again.
    pub async fn reset(&self, broken: &Arc<Live>) {
        let mut guard = self.live.lock().await;
        if guard.as_ref().is_some_and(|live| Arc::ptr_eq(live, broken)) {
            *guard = None;
        }
        drop(guard);
        let _ = broken.connection.close(0, "broken").await;
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Some(live) = self.live.lock().await.take() {
            let _ = live.connection.close(200, "bye").await;
        }
    }
}

/// Waits between reconnections: 100 ms doubling to 5 s, back to 100 ms after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

/// Deletes queues (tools and tests cleaning up after themselves); missing ones are skipped.
pub async fn delete_queues(url: &str, queues: &[String]) -> Result<(), lapin::Error> {
    let connection = connect(url, "portico-cleanup").await?;
    for queue in queues {
        // A missing queue closes the channel (404): one channel per queue.
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete(queue, lapin::options::QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "cleaned up").await;
    Ok(())
}
