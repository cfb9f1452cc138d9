//! One accepted connection, from the TCP stream to its last response: connection limit, TLS
//! handshake, the choice of HTTP/1.1 or HTTP/2, the head watchdog and graceful shutdown.
//!
//! **Protocol.** Over TLS, ALPN decides (`h2` or HTTP/1.1). In the clear, the first bytes
//! decide: the HTTP/2 preface means prior-knowledge h2c, anything else HTTP/1.1. Each protocol
//! is then served by hyper's own connection type, without a sniffing wrapper around the IO.
//!
//! **Head watchdog.** `header_timeout` bounds how long an HTTP/1 connection may sit without a
//! request in progress: from accept (the TLS handshake included, and again from its end) and
//! from the end of each response until the next request's head is complete. It cuts off
//! clients that send headers slowly or stall a handshake, and closes idle keep-alive
//! connections. hyper has this built in
//! (`header_read_timeout`), but it arms and drops a boxed timer for every request, which cost
//! about 20% of the requests/s of `/healthz` (bench/gateway). Here a small task beside each
//! connection's own holds one timer that fires at most once per `header_timeout` and, when the
//! connection has been waiting for a head that long, aborts the connection's task (closing the
//! socket). A request only marks itself in progress and stores an instant when it ends, and
//! the connection's task never polls the timer. HTTP/2 connections have no head watchdog
//! (hyper has none either); the request timeout applies.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::coalesce::Coalescing;
use crate::config::LimitsConfig;
use crate::service::{ConnectionService, ListenerApp};
use crate::tls::LoadedTls;

/// What every worker shares about one listener.
pub(crate) struct Listener {
    tls: Option<TlsAcceptor>,
    app: Arc<ListenerApp>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    header_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

impl Listener {
    pub(crate) fn new(app: ListenerApp, tls: Option<LoadedTls>, limits: &LimitsConfig) -> Self {
        Listener {
            tls: tls.map(|loaded| TlsAcceptor::from(loaded.server_config)),
            app: Arc::new(app),
            http1: http1_builder(limits),
            http2: http2_builder(limits),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            header_timeout: limits.header_timeout,
        }
    }

    /// Serves one accepted connection until it ends or, after `stop`, drains; the head
    /// watchdog runs beside it (see the module doc).
    pub(crate) fn spawn(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
        connections: &TaskTracker,
    ) {
        let clock = Arc::new(HeadClock::starting_at(Instant::now()));
        let listener = self.clone();
        let limit = self.header_timeout;
        connections.spawn(async move {
            let served = tokio::spawn({
                let clock = clock.clone();
                async move { listener.connection(stream, peer, clock, stop).await }
            });
            guard_with_watchdog(served, &clock, limit, peer).await;
        });
    }

    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        clock: Arc<HeadClock>,
        stop: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let permit = self.slots.clone().try_acquire_owned().ok();
        let service = ConnectionService::new(self.app.clone(), canonical_peer(peer))
            .overloaded(permit.is_none());
        match &self.tls {
            None => match sniff(&stream).await {
                Ok(protocol) => self.serve(io(stream), protocol, service, clock, stop).await,
                Err(error) => tracing::debug!(%peer, %error, "reading the preface"),
            },
            // The watchdog bounds the handshake too: no request is in progress during it.
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => {
                    let protocol = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    clock.restart();
                    self.serve(io(tls), protocol, service, clock, stop).await
                }
                Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            },
        }
        drop(permit);
    }

    async fn serve<I>(
        &self,
        io: TokioIo<I>,
        protocol: Protocol,
        service: ConnectionService,
        clock: Arc<HeadClock>,
        stop: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = service.peer();
        let result = match protocol {
            Protocol::Http1 => {
                let service = service.with_head_clock(clock);
                let connection = self.http1.serve_connection(io, service);
                drive(connection, |c| c.graceful_shutdown(), stop).await
            }
            Protocol::Http2 => {
                // No head watchdog for HTTP/2: the connection counts as busy for its life.
                let _busy = InProgress::begin(&clock);
                // `Connection: close` means nothing in HTTP/2: a connection over the limit is
                // shut down gracefully at once (GOAWAY), after answering 503 to the requests
                // the client already sent.
                let stop = if service.is_overloaded() {
                    watch::channel(true).1
                } else {
                    stop
                };
                let connection = self.http2.serve_connection(io, service);
                drive(connection, |c| c.graceful_shutdown(), stop).await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

/// Waits for the connection task `served`; if the head watchdog fires first, aborts it
/// (which drops the connection and closes its socket) and waits for that. The connection's
/// own task never polls the watchdog, so requests do not pay for it.
async fn guard_with_watchdog(
    mut served: JoinHandle<()>,
    clock: &HeadClock,
    limit: Duration,
    peer: SocketAddr,
) {
    tokio::select! {
        _ = &mut served => {}
        _ = watchdog(clock, limit) => {
            tracing::debug!(%peer, "no request head within the header timeout: closing");
            served.abort();
            let _ = served.await;
        }
    }
}

/// Runs `connection` until it ends or shutdown is asked for; then calls `graceful` and lets
/// the connection finish.
async fn drive<C>(
    connection: C,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    mut stop: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(connection);
    tokio::select! {
        biased;
        result = connection.as_mut() => return result,
        _ = stopped(&mut stop) => graceful(connection.as_mut()),
    }
    connection.await
}

/// Completes once shutdown was asked for (at once if it already was).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await: drop it here.
    let _ = stop.wait_for(|stopped| *stopped).await.is_ok();
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 when the client opens with the h2 preface, else HTTP/1.1 (read without consuming).
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut start = [0u8; H2_PREFACE.len()];
    loop {
        let seen = stream.peek(&mut start).await?;
        match preface_match(&start[..seen]) {
            Some(protocol) => return Ok(protocol),
            // A preface cut short: peek answers at once while data waits, so pause instead
            // of spinning until the rest arrives.
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// What the first bytes of a cleartext connection say; `None` while they may still be the
/// start of the HTTP/2 preface. No bytes (the client closed) is HTTP/1, which sees the EOF.
fn preface_match(seen: &[u8]) -> Option<Protocol> {
    if seen.is_empty() || seen != &H2_PREFACE[..seen.len()] {
        Some(Protocol::Http1)
    } else if seen.len() == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// When an HTTP/1 connection last had no request in progress, for the head watchdog.
pub(crate) struct HeadClock {
    origin: Instant,
    in_progress: AtomicU32,
    /// Nanoseconds after `origin` at which the connection last became idle.
    idle_since: AtomicU64,
}

impl HeadClock {
    fn starting_at(origin: Instant) -> Self {
        HeadClock {
            origin,
            in_progress: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    /// Starts the idle time again (after the TLS handshake, which has its own timeout).
    fn restart(&self) {
        self.idle_since
            .store(self.nanos_since_origin(), Ordering::Relaxed);
    }

    fn nanos_since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Since when the connection has been waiting for a request head; `None` while one is
    /// being answered.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_progress.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.origin + Duration::from_nanos(self.idle_since.load(Ordering::Relaxed)))
    }
}

/// A request in progress on a connection with a head clock: from the complete head to the
/// end (or drop) of its response body.
pub(crate) struct InProgress(Arc<HeadClock>);

impl InProgress {
    pub(crate) fn begin(clock: &Arc<HeadClock>) -> Self {
        clock.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(clock.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let clock = &self.0;
        if clock.in_progress.fetch_sub(1, Ordering::Relaxed) == 1 {
            clock.restart();
        }
    }
}

/// Completes when the connection has waited `limit` for a request head. One timer, moved
/// forward when it finds a request in progress or a later idle start.
async fn watchdog(clock: &HeadClock, limit: Duration) {
    let first = clock.idle_since().unwrap_or_else(Instant::now) + limit;
    let timer = tokio::time::sleep_until(first);
    tokio::pin!(timer);
    loop {
        timer.as_mut().await;
        let now = Instant::now();
        let deadline = clock.idle_since().unwrap_or(now) + limit;
        if deadline <= now {
            return;
        }
        timer.as_mut().reset(deadline);
    }
}

/// The stream as hyper sees it: small vectored writes coalesced (see `coalesce`).
fn io<S>(stream: S) -> TokioIo<Coalescing<S>> {
    TokioIo::new(Coalescing::new(stream))
}

/// An IPv4 client of a dual-stack socket arrives as `::ffff:a.b.c.d`: services and logs see
/// it as the IPv4 address it is.
fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

/// HTTP/1.1: keep-alive, the header size limit (hyper answers 431 over it) and vectored
/// writes (a large body is not copied; small responses become one write in `coalesce`).
fn http1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .writev(true);
    builder
}

fn http2_builder(limits: &LimitsConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_peers_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(canonical_peer(mapped), "10.1.2.3:80".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(canonical_peer(v6), v6);
    }

    #[test]
    fn the_first_bytes_choose_the_protocol() {
        assert_eq!(preface_match(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(preface_match(b"P"), None);
        assert_eq!(preface_match(b"PRI * HTTP/2.0"), None);
        assert_eq!(preface_match(b"POST /"), Some(Protocol::Http1));
        assert_eq!(preface_match(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(preface_match(b""), Some(Protocol::Http1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_waits_for_idle_time_not_busy_time() {
        let clock = Arc::new(HeadClock::starting_at(Instant::now()));
        let limit = Duration::from_secs(10);
        let watch = tokio::spawn({
            let clock = clock.clone();
            async move { watchdog(&clock, limit).await }
        });
        // A request from 5 s to 25 s, then idle: the deadline is 35 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let request = InProgress::begin(&clock);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            !watch.is_finished(),
            "fired while a request was in progress"
        );
        drop(request);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            !watch.is_finished(),
            "fired before the idle time reached the limit"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(watch.is_finished(), "did not fire after the limit");
    }
}
