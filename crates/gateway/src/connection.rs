//! One accepted connection, from the TCP stream to its last response: the connection limit,
//! the TLS handshake, the choice of HTTP/1.1 or HTTP/2, the watchdog beside it and graceful
//! shutdown.
//!
//! **Connection limit.** The accept loop takes a slot (`max_connections` per listener) before
//! anything else. Without one, the connection is refused, costing no TLS handshake: a TLS
//! client sees the connection close at once (no ServerHello); a cleartext one gets a static
//! `503` with `Retry-After` written without hyper, once its request has started to arrive (an
//! HTTP client takes an answer that comes before its request for a broken connection), by a
//! small task that waits at most `REFUSAL_WAIT`; past `MAX_REFUSING` such tasks, refused
//! connections are closed at once. Answering through hyper, as this did before, meant a full
//! handshake per refused connection, and on HTTP/2 a GOAWAY dance.
//!
//! **Protocol.** Over TLS, ALPN decides (`h2` or HTTP/1.1). In the clear, the first bytes
//! decide: the HTTP/2 preface means prior-knowledge h2c, anything else HTTP/1.1. Each protocol
//! is then served by hyper's own connection type over `ConnectionStream` (coalesced small
//! writes, watchdog records).
//!
//! **Watchdog.** Each connection runs as a task with a small task beside it that holds the
//! connection's one timer (`watchdog`): it closes connections that are idle, slow to send a
//! head or a handshake, or that stop taking their responses, and asks idle HTTP/2 connections
//! (and, on shutdown, every connection) to finish gracefully. The connection's own task never
//! polls a timer; asking it to finish sets a flag it reads on each wake-up.
//!
//! **Upgrades.** HTTP/1 connections are served with hyper's upgrades enabled, so a service
//! may answer `101 Switching Protocols` and take the connection over (the proxy does, for
//! WebSockets). hyper's part then ends, but the connection does not: its guard goes on
//! holding its slot of `max_connections` and running its watchdog (idle and send timeouts
//! of an upgraded connection) until the service drops the stream.
//!
//! **Keep-alive probes.** HTTP/2 connections are sent a PING after `idle_timeout` of silence
//! from the peer, which must answer within `header_timeout` (hyper's keep-alive); every
//! accepted socket has TCP keepalive (`tcp_keepalive`, set on the listening socket, whose
//! accepted sockets inherit it: no system call per connection). Both find peers that vanished
//! while a request waits for a slow service, where no timeout of the watchdog runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::LimitsConfig;
use crate::request::{ConnectionService, ListenerApp};
use crate::stream::ConnectionStream;
use crate::tls::LoadedTls;
use crate::watchdog::{self, Activity, Phase, Rules};

/// What every worker shares about one listener.
pub(crate) struct Listener {
    tls: Option<TlsAcceptor>,
    app: Arc<ListenerApp>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    /// Cleartext refusals waiting for the client's request (see the module doc).
    refusing: Arc<Semaphore>,
    rules: Rules,
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
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            rules: Rules::new(limits),
        }
    }

    /// Serves one accepted connection until it ends or, after `stop`, drains, with its
    /// watchdog beside it; refuses it at once when the listener has no free slot.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
        connections: &TaskTracker,
    ) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return self.refuse(stream, peer);
        };
        let activity = Arc::new(Activity::new(Instant::now()));
        let listener = self.clone();
        let rules = self.rules;
        connections.spawn(async move {
            let served = tokio::spawn({
                let activity = activity.clone();
                async move { listener.connection(stream, peer, activity).await }
            });
            guard(served, &activity, rules, stop, peer, slot).await;
        });
    }

    /// A connection over `max_connections`: closed at once (TLS, or too many refusals in
    /// progress), or in the clear answered with a static 503 once its request starts.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) {
        metrics::counter!(REFUSED_METRIC).increment(1);
        tracing::debug!(%peer, "over max_connections: refused");
        if self.tls.is_some() {
            return;
        }
        if let Ok(permit) = self.refusing.clone().try_acquire_owned() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REFUSAL_WAIT, stream.readable()).await;
                write_refusal(&stream);
                drop(permit);
            });
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr, activity: Arc<Activity>) {
        let _ = stream.set_nodelay(true);
        let tls = self.tls.is_some();
        let service = ConnectionService::new(self.app.clone(), canonical_peer(peer), tls, activity);
        match &self.tls {
            None => match sniff(&stream).await {
                Ok(protocol) => self.serve(stream, protocol, service).await,
                Err(error) => tracing::debug!(%peer, %error, "reading the preface"),
            },
            // The watchdog bounds the handshake (the connection is still opening).
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => {
                    let protocol = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    self.serve(tls, protocol, service).await
                }
                Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            },
        }
    }

    async fn serve<S>(&self, stream: S, protocol: Protocol, service: ConnectionService)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = service.peer();
        let activity = service.activity().clone();
        let io = |http1| TokioIo::new(ConnectionStream::new(stream, activity.clone(), http1));
        let result = match protocol {
            Protocol::Http1 => {
                activity.opened(Phase::Http1);
                let connection = self.http1.serve_connection(io(true), service);
                let connection = connection.with_upgrades();
                drive(connection, |c| c.graceful_shutdown(), &activity).await
            }
            Protocol::Http2 => {
                activity.opened(Phase::Http2);
                let connection = self.http2.serve_connection(io(false), service);
                drive(connection, |c| c.graceful_shutdown(), &activity).await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

/// The counter of connections refused over `max_connections`.
const REFUSED_METRIC: &str = "portico_connections_refused_total";

/// How long a refused cleartext connection may take to start its request.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Refused cleartext connections waiting for their request at once, per listener.
const MAX_REFUSING: usize = 1024;

/// Waits for the connection task `served`; when the watchdog says the connection must end,
/// aborts it (which drops the connection, its response bodies and whatever they hold, and
/// closes the socket) and waits for that. A connection a service upgraded is watched on
/// until the service drops it (`watch_upgraded`). The listener's slot is given back after.
async fn guard(
    mut served: tokio::task::JoinHandle<()>,
    activity: &Activity,
    rules: Rules,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
) {
    tokio::select! {
        _ = &mut served => {
            if activity.is_upgraded() {
                watch_upgraded(activity, rules, stop, peer).await;
            }
        }
        reason = watchdog::watch(activity, &rules, stop.clone()) => {
            tracing::debug!(%peer, %reason, "closing the connection");
            served.abort();
            let _ = served.await;
        }
    }
    drop(slot);
}

/// An upgraded connection, now held by a service: cut when the watchdog says so (its stream
/// fails from then on, and the service drops it), else watched until the service drops it.
async fn watch_upgraded(
    activity: &Activity,
    rules: Rules,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
) {
    tokio::select! {
        () = activity.stream_gone() => {}
        reason = watchdog::watch(activity, &rules, stop) => {
            tracing::debug!(%peer, %reason, "cutting the upgraded connection");
            activity.cut();
        }
    }
}

/// Runs `connection` until it ends; once the connection is asked to close (`activity`),
/// calls `graceful` and lets it finish. Per wake-up this costs a flag load and a waker
/// comparison, not a poll of a shutdown future.
async fn drive<C>(
    connection: C,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    activity: &Activity,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(connection);
    let mut graceful = Some(graceful);
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(|cx| {
        if graceful.is_some() {
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                activity.wake_on_close(cx.waker());
                registered = Some(cx.waker().clone());
            }
            if activity.close_asked() {
                if let Some(graceful) = graceful.take() {
                    graceful(connection.as_mut());
                }
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}

/// Completes once shutdown was asked for (at once if it already was).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await: drop it here.
    let _ = stop.wait_for(|stopped| *stopped).await.is_ok();
}

/// What a cleartext client over `max_connections` reads before the connection closes.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 50\r\n\
\r\n\
{\"error\":\"too many connections: try again later\"}\n";

/// Writes `REFUSAL` without waiting (a new socket's buffer has room for it) and ends the
/// stream; what the client already sent is read and dropped first, so that closing does not
/// reset the connection before the client has read the answer.
fn write_refusal(stream: &TcpStream) {
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.try_write(REFUSAL);
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
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

/// TCP keepalive for the listening socket (accepted sockets inherit it): a peer silent for a
/// minute is probed every 10 s and dropped after 3 unanswered probes, so a vanished client
/// is found in about 90 s even while its request waits on a service.
pub(crate) fn tcp_keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3)
}

/// HTTP/1.1: keep-alive, the header size limit (hyper answers 431 over it) and vectored
/// writes (a large body is not copied; small responses become one write in `stream`).
/// No `header_read_timeout`: the watchdog does that job (see `watchdog`).
fn http1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .writev(true);
    builder
}

/// HTTP/2: the header size limit, 256 streams per connection, and a PING after
/// `idle_timeout` without a frame from the peer, to be answered within `header_timeout`.
fn http2_builder(limits: &LimitsConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.header_timeout);
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

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        assert_eq!(
            body,
            "{\"error\":\"too many connections: try again later\"}\n"
        );
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_tcp_keepalive_from_the_listener() {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.set_tcp_keepalive(&tcp_keepalive()).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(8).unwrap();
        let listener = std::net::TcpListener::from(socket);
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let accepted = socket2::SockRef::from(&accepted);
        assert!(accepted.keepalive().unwrap());
        assert_eq!(accepted.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            accepted.keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(accepted.keepalive_retries().unwrap(), 3);
    }
}
