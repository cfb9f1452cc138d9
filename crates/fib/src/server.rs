//! `fib-backend`: the original back-end protocol served on TCP. Each connection reads requests
//! through a [`RequestScanner`] (so split and coalesced requests both work), answers them in
//! order and streams large replies from the shared cache and its producers. Malformed input gets
//! an error reply and the connection stays usable; only an oversized request closes it. A
//! connection limit and an idle timeout bound what clients can hold.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::timeout;

use crate::cache::FibCache;
use crate::metrics;
use crate::protocol::{self, Event, RequestScanner};

/// Default connection limit of `fib-backend`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default idle timeout of `fib-backend` connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long shutdown waits for connections to finish the reply they are sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Replies up to this size are assembled and written in one piece.
const COALESCE_LIMIT: u64 = 64 * 1024;

/// Settings of the back-end server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest N answered.
    pub limit: u64,
    /// Connections served at once; more are answered with an error and closed.
    pub max_connections: usize,
    /// A connection with no request (or a stalled reader) for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limit: crate::config::DEFAULT_LIMIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Serves connections from `listener` until `shutdown` completes, then lets every connection
/// finish the reply it is sending (at most [`DRAIN_TIMEOUT`]) and returns.
pub async fn serve(
    listener: TcpListener,
    cache: Arc<FibCache>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let options = Arc::new(options);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors and the like: back off briefly rather than spin.
                tracing::warn!(error = %error, "fib-backend accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ::metrics::counter!(metrics::SERVER_CONNECTIONS).increment(1);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(refuse(stream, options.max_connections));
            continue;
        };
        let cache = Arc::clone(&cache);
        let options = Arc::clone(&options);
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(reason) = Connection::new(stream, cache, options, stop).run().await {
                tracing::debug!(%peer, reason, "fib-backend connection closed");
            }
            drop(permit);
        });
    }
    drain(&permits, options.max_connections, stop_tx).await;
}

/// Tells every connection to stop after its current reply and waits until all have.
async fn drain(permits: &Semaphore, max_connections: usize, stop: watch::Sender<bool>) {
    let _ = stop.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if timeout(DRAIN_TIMEOUT, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("fib-backend connections still busy after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// Tells a client over the connection limit why it is being closed.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let reply = protocol::error_reply(&format!(
        "too many connections (limit {limit}); try again later"
    ));
    let _ = timeout(Duration::from_secs(1), stream.write_all(&reply)).await;
}

struct Connection {
    stream: TcpStream,
    cache: Arc<FibCache>,
    options: Arc<ServerOptions>,
    scanner: RequestScanner,
    stop: watch::Receiver<bool>,
}

impl Connection {
    fn new(
        stream: TcpStream,
        cache: Arc<FibCache>,
        options: Arc<ServerOptions>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let _ = stream.set_nodelay(true);
        Connection {
            stream,
            cache,
            options,
            scanner: RequestScanner::new(),
            stop,
        }
    }

    /// Answers requests until the peer closes, goes idle, or a reply cannot be sent.
    async fn run(mut self) -> Result<(), &'static str> {
        let mut buf = vec![0u8; 8192];
        loop {
            while let Some(event) = self.scanner.next_event() {
                self.answer(event).await?;
            }
            if *self.stop.borrow() {
                return Err("server shutting down");
            }
            let idle = self.options.idle_timeout;
            let read = tokio::select! {
                read = timeout(idle, self.stream.read(&mut buf)) => read,
                _ = self.stop.changed() => return Err("server shutting down"),
            };
            match read {
                Err(_) => return Err("idle timeout"),
                Ok(Err(_)) => return Err("read failed"),
                Ok(Ok(0)) => {
                    if let Some(event) = self.scanner.finish() {
                        self.answer(event).await?;
                    }
                    return Ok(());
                }
                Ok(Ok(got)) => self.scanner.push(&buf[..got]),
            }
        }
    }

    async fn answer(&mut self, event: Event) -> Result<(), &'static str> {
        let n = match event {
            Event::Request(object) => {
                protocol::parse_request(&object, self.options.limit).map_err(|e| e.to_string())
            }
            Event::Garbage(sample) => Err(protocol::garbage_message(&sample)),
            Event::Truncated => Err("input ended inside a request object".to_string()),
            Event::TooLarge => {
                let message = format!(
                    "request longer than {} bytes; closing",
                    protocol::MAX_REQUEST_BYTES
                );
                self.write(&protocol::error_reply(&message)).await?;
                return Err("oversized request");
            }
        };
        match n {
            Ok(n) => self.send_numbers(n).await,
            Err(message) => {
                ::metrics::counter!(metrics::SERVER_BAD_REQUESTS).increment(1);
                self.write(&protocol::error_reply(&message)).await
            }
        }
    }

    async fn send_numbers(&mut self, n: u64) -> Result<(), &'static str> {
        ::metrics::counter!(metrics::REQUESTS, "bucket" => metrics::n_bucket(n), "outcome" => "ok")
            .increment(1);
        let mut text = match self.cache.text(n).await {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(error = %error, "fib-backend could not compute");
                return self
                    .write(&protocol::error_reply(
                        "internal error computing the numbers",
                    ))
                    .await;
            }
        };
        let mut start = protocol::reply_start(n, text.len);
        if text.rest.is_none() && text.len <= COALESCE_LIMIT {
            for part in text.ready.drain(..) {
                start.extend_from_slice(&part);
            }
            start.extend_from_slice(protocol::REPLY_TAIL);
            return self.write(&start).await;
        }
        self.write(&start).await?;
        let mut sent = 0u64;
        while let Some(chunk) = text.next_chunk().await {
            let chunk = chunk.map_err(|_| "number producer failed")?;
            sent += chunk.len() as u64;
            self.write(&chunk).await?;
        }
        if sent != text.len {
            return Err("reply shorter than announced; closing to keep framing");
        }
        self.write(protocol::REPLY_TAIL).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        match timeout(self.options.idle_timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("write failed (peer gone)"),
            Err(_) => Err("write timed out (peer not reading)"),
        }
    }
}
