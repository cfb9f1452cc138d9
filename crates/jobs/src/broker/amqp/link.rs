//! `Link`: one AMQP connection with publisher-confirm channels, made again after it breaks.
//!
//! A link has one or more confirm channels ([`Live::publisher`] hands them out in turn).
//! RabbitMQ runs each channel as one Erlang process that handles its publishes one after
//! another, so a single channel caps confirmed publishes at what one scheduler does; the
//! gateway's submissions spread over [`PUBLISH_CHANNELS`] (bench/RESULTS.md, "Jobs over
//! RabbitMQ", has the measurement).
//!
//! The connection is made on the runtime the link was created on (the service's background
//! runtime), whichever task asks first: lapin registers its socket with the runtime it
//! connects from and spawns its own tasks there. Made from a gateway worker's
//! single-threaded runtime, every confirm of every worker waited until that worker, busy
//! with HTTP, next polled its I/O driver: submissions averaged 16 ms with 150 ms spikes.
//!
//! Publishers call [`Link::live`]: the current connection when it is healthy (read without a
//! lock: with a fair async mutex on every publish, hundreds of concurrent submissions queued
//! behind each other's wake-ups and the rate fell by a third at 512 connections), else a new
//! one (the first caller after a break connects; the others wait for it on the mutex). Callers
//! bound the whole operation with `broker_timeout`, so a RabbitMQ that is down costs a
//! submission at most that long (then `503`, vesta 205). Background readers (results,
//! pidbox) open their own connections with [`connect`] and loop on breaks with [`Backoff`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
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

/// Confirm channels of the gateway's publishing link.
pub const PUBLISH_CHANNELS: usize = 4;

/// A connection and its confirm channels.
pub struct Live {
    pub connection: Connection,
    /// The first confirm channel (declares, and every publish of a one-channel link).
    pub channel: Channel,
    /// Every confirm channel, `channel` first.
    publishers: Vec<Channel>,
    next: AtomicUsize,
    /// Queues declared on this connection already.
    declared: Mutex<HashSet<String>>,
}

impl Live {
    fn healthy(&self) -> bool {
        self.connection.status().connected()
            && self
                .publishers
                .iter()
                .all(|channel| channel.status().connected())
    }

    /// The next confirm channel, in turn.
    pub fn publisher(&self) -> &Channel {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.publishers[turn % self.publishers.len()]
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
    channels: usize,
    /// Where connections are made (`None` outside a runtime: the caller's).
    runtime: Option<tokio::runtime::Handle>,
    /// The connection publishers use, read without a lock.
    current: ArcSwapOption<Live>,
    /// Held while replacing `current`.
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("name", &self.name).finish()
    }
}

impl Link {
    /// A link with one confirm channel.
    pub fn new(url: &str, name: &str) -> Link {
        Link::with_channels(url, name, 1)
    }

    /// A link with `channels` confirm channels (at least one).
    pub fn with_channels(url: &str, name: &str, channels: usize) -> Link {
        Link {
            url: url.to_string(),
            name: name.to_string(),
            channels: channels.max(1),
            runtime: tokio::runtime::Handle::try_current().ok(),
            current: ArcSwapOption::empty(),
            live: tokio::sync::Mutex::new(None),
        }
    }

    /// The healthy connection, connecting when there is none.
    pub async fn live(&self) -> Result<Arc<Live>, lapin::Error> {
        if let Some(live) = self.current.load_full().filter(|live| live.healthy()) {
            return Ok(live);
        }
        let mut guard = self.live.lock().await;
        if let Some(live) = guard.as_ref().filter(|live| live.healthy()) {
            return Ok(live.clone());
        }
        if let Some(old) = guard.take() {
            self.current.store(None);
            tracing::info!(name = %self.name, "AMQP connection lost; reconnecting");
            let _ = old.connection.close(0, "reconnecting").await;
        }
        let opening = open(self.url.clone(), self.name.clone(), self.channels);
        let (connection, publishers) = match &self.runtime {
            Some(runtime) => runtime.spawn(opening).await.map_err(|e| {
                lapin::Error::IOError(Arc::new(std::io::Error::other(format!(
                    "connecting to RabbitMQ: {e}"
                ))))
            })??,
            None => opening.await?,
        };
        let live = Arc::new(Live {
            connection,
            channel: publishers[0].clone(),
            publishers,
            next: AtomicUsize::new(0),
            declared: Mutex::default(),
        });
        *guard = Some(live.clone());
        self.current.store(Some(live.clone()));
        Ok(live)
    }

    /// Forgets the connection (after an error on it), so the next call connects again.
    pub async fn reset(&self, broken: &Arc<Live>) {
        let mut guard = self.live.lock().await;
        if guard.as_ref().is_some_and(|live| Arc::ptr_eq(live, broken)) {
            *guard = None;
            self.current.store(None);
        }
        drop(guard);
        let _ = broken.connection.close(0, "broken").await;
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.current.store(None);
        if let Some(live) = self.live.lock().await.take() {
            let _ = live.connection.close(200, "bye").await;
        }
    }
}

/// A connection with `channels` confirm channels.
async fn open(
    url: String,
    name: String,
    channels: usize,
) -> Result<(Connection, Vec<Channel>), lapin::Error> {
    let connection = connect(&url, &name).await?;
    let mut publishers = Vec::with_capacity(channels);
    for _ in 0..channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publishers.push(channel);
    }
    Ok((connection, publishers))
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
