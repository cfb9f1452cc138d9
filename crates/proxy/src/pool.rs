//! Keep-alive connections to instances, one pool per gateway worker.
//!
//! A gateway worker is a single-threaded runtime that keeps each client connection for its
//! whole life (docs/ARCHITECTURE.md, serving model). Its upstream connections live on it too:
//! the pool is a thread-local map from instance address to idle HTTP/1.1 connections (hyper's
//! `SendRequest` handles, whose connection tasks run on the same worker), so a request and its
//! upstream round trip never cross threads and taking a connection costs no lock.
//!
//! A connection is taken out for one request and given back when that request's response
//! body has ended (`crate::forward::ResponseBody`), last in first out (the most recently used
//! is the least likely to have been closed by the instance). Idle connections older than
//! `pool_idle_timeout` are not reused: instances close idle keep-alive connections after a
//! while, and one they are closing as a request goes out fails that request. At most
//! `max_idle_per_instance` idle connections are kept per instance per worker; past that the
//! oldest is closed.
//!
//! Body-less `GET` and `HEAD` go through the proxy's own client (`crate::h1`), whose
//! connections are pooled the same way in a pool of their own (a connection of one kind
//! never serves the other).
//!
//! WebSocket handshakes get a connection of their own with upgrades enabled, never pooled.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::thread::LocalKey;
use std::time::Duration;

// Read twice a request (take, give back): foldhash, not SipHash.
use foldhash::HashMap;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::OutBody;
use crate::h1::Conn;
use crate::metrics;

pub(crate) type Sender = SendRequest<OutBody>;

/// Why a connection to an instance could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to {addr}: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {}", humantime::format_duration(*.after))]
    TimedOut { addr: SocketAddr, after: Duration },
    #[error("starting HTTP/1.1 with {addr}: {error}")]
    Handshake {
        addr: SocketAddr,
        error: hyper::Error,
    },
}

/// A pooled connection: whether it is still worth keeping.
pub(crate) trait Reusable {
    fn is_closed(&self) -> bool;
}

impl Reusable for Sender {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

impl Reusable for Conn {
    /// Not known until it is used: a closed one is found out as the request goes out.
    fn is_closed(&self) -> bool {
        false
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// One worker's idle connections of one kind, and when they were last swept.
struct Pool<C> {
    idle: HashMap<SocketAddr, Vec<Idle<C>>>,
    swept: Option<Instant>,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            idle: HashMap::default(),
            swept: None,
        }
    }
}

type Local<C> = LocalKey<RefCell<Pool<C>>>;

thread_local! {
    /// hyper's connections (requests with bodies).
    static IDLE: RefCell<Pool<Sender>> = RefCell::new(Pool::default());
    /// The proxy's own client's connections (`crate::h1`).
    static CONNS: RefCell<Pool<Conn>> = RefCell::new(Pool::default());
}

/// An idle pooled connection to `addr` that can take a request now, if there is one: the
/// common case, which needs no await (and so adds nothing to the request's future).
pub(crate) fn ready(addr: SocketAddr, idle_timeout: Duration) -> Option<Sender> {
    let sender = take_idle(&IDLE, addr, idle_timeout)?;
    if sender.is_ready() {
        return Some(sender);
    }
    // Not ready yet: back on top for `checkout`, which can wait for it.
    IDLE.with_borrow_mut(|pool| {
        let idle = Idle {
            conn: sender,
            since: Instant::now(),
        };
        pool.idle.entry(addr).or_default().push(idle);
    });
    None
}

/// A connection to `addr` for one request: an idle pooled one when there is a usable one
/// (`true`: reused), else a new one.
pub(crate) async fn checkout(
    addr: SocketAddr,
    idle_timeout: Duration,
    connect_timeout: Duration,
) -> Result<(Sender, bool), ConnectError> {
    while let Some(mut sender) = take_idle(&IDLE, addr, idle_timeout) {
        if sender.is_ready() {
            return Ok((sender, true));
        }
        // Given back as its response ended, before its connection task said it wants the next
        // request: that takes one turn of the worker's loop, unless the connection is closing.
        if let Ok(Ok(())) = tokio::time::timeout(connect_timeout, sender.ready()).await {
            return Ok((sender, true));
        }
    }
    Ok((connect(addr, connect_timeout, false).await?, false))
}

/// Gives `sender` back after its response ended (closed connections are dropped). Now and
/// then (every `idle_timeout`) the whole pool is swept of closed and stale connections, so
/// instances that went away leave nothing behind.
pub(crate) fn give_back(addr: SocketAddr, sender: Sender, max_idle: usize, idle_timeout: Duration) {
    give_back_to(&IDLE, addr, sender, max_idle, idle_timeout);
}

/// The most recently given back idle connection of the proxy's own client to `addr`.
pub(crate) fn take_conn(addr: SocketAddr, idle_timeout: Duration) -> Option<Conn> {
    take_idle(&CONNS, addr, idle_timeout)
}

/// Gives a connection of the proxy's own client back after its answer was read whole.
pub(crate) fn give_back_conn(
    addr: SocketAddr,
    conn: Conn,
    max_idle: usize,
    idle_timeout: Duration,
) {
    give_back_to(&CONNS, addr, conn, max_idle, idle_timeout);
}

fn give_back_to<C: Reusable + 'static>(
    pool: &'static Local<C>,
    addr: SocketAddr,
    conn: C,
    max_idle: usize,
    idle_timeout: Duration,
) {
    if conn.is_closed() || max_idle == 0 {
        return;
    }
    let now = Instant::now();
    let idle = Idle { conn, since: now };
    pool.with_borrow_mut(|pool| {
        if pool
            .swept
            .is_none_or(|at| now.duration_since(at) >= idle_timeout)
        {
            pool.sweep(now, idle_timeout);
        }
        let list = pool.idle.entry(addr).or_default();
        if list.len() >= max_idle {
            list.remove(0);
        }
        list.push(idle);
    });
}

impl<C: Reusable> Pool<C> {
    fn sweep(&mut self, now: Instant, idle_timeout: Duration) {
        for list in self.idle.values_mut() {
            list.retain(|idle| {
                !idle.conn.is_closed() && now.duration_since(idle.since) < idle_timeout
            });
        }
        self.idle.retain(|_, list| !list.is_empty());
        self.swept = Some(now);
    }
}

/// The most recently given back idle connection to `addr` still young enough and open.
fn take_idle<C: Reusable + 'static>(
    pool: &'static Local<C>,
    addr: SocketAddr,
    idle_timeout: Duration,
) -> Option<C> {
    pool.with_borrow_mut(|pool| {
        let list = pool.idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) >= idle_timeout {
                // Everything below it is older still.
                list.clear();
                break;
            }
            if !idle.conn.is_closed() {
                return Some(idle.conn);
            }
        }
        pool.idle.remove(&addr);
        None
    })
}

/// A new TCP connection to `addr`, with Nagle's algorithm off.
pub(crate) async fn open(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(ConnectError::Io { addr, error }),
        Err(_) => {
            return Err(ConnectError::TimedOut {
                addr,
                after: timeout,
            })
        }
    };
    let _ = stream.set_nodelay(true);
    ::metrics::counter!(metrics::UPSTREAM_CONNECTIONS).increment(1);
    Ok(stream)
}

/// A new HTTP/1.1 connection to `addr`, its connection task spawned on this worker; with
/// `upgrades` it can switch protocols (WebSocket).
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    upgrades: bool,
) -> Result<Sender, ConnectError> {
    let stream = open(addr, timeout).await?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| ConnectError::Handshake { addr, error })?;
    tokio::spawn(async move {
        let result = if upgrades {
            connection.with_upgrades().await
        } else {
            connection.await
        };
        if let Err(error) = result {
            tracing::debug!(%addr, %error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Closes every idle connection to `addr` on this worker (the instance failed).
pub(crate) fn forget(addr: SocketAddr) {
    IDLE.with_borrow_mut(|pool| pool.idle.remove(&addr));
    CONNS.with_borrow_mut(|pool| pool.idle.remove(&addr));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;

    /// A real HTTP/1.1 server answering `ok` on a fresh port, counting its connections.
    async fn server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from("ok")),
                        ))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    async fn get(sender: &mut Sender) {
        let request = http::Request::builder()
            .uri("/")
            .header("host", "x")
            .body(OutBody::Empty)
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_connection_given_back_is_reused_and_a_stale_one_is_not() {
        let (addr, accepted) = server().await;
        let (mut sender, reused) = checkout(addr, SECOND * 30, SECOND).await.unwrap();
        assert!(!reused);
        get(&mut sender).await;
        give_back(addr, sender, 4, SECOND * 30);
        let (mut sender, reused) = checkout(addr, SECOND * 30, SECOND).await.unwrap();
        assert!(reused);
        get(&mut sender).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        give_back(addr, sender, 4, SECOND * 30);
        // Older than the idle timeout: a new connection instead.
        let (mut sender, reused) = checkout(addr, Duration::ZERO, SECOND).await.unwrap();
        assert!(!reused);
        get(&mut sender).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_of_instances_gone_quiet_are_swept() {
        let (addr, _) = server().await;
        let (mut sender, _) = checkout(addr, SECOND * 30, SECOND).await.unwrap();
        get(&mut sender).await;
        give_back(addr, sender, 4, SECOND * 30);
        assert_eq!(IDLE.with_borrow(|pool| pool.idle.len()), 1);
        // Another instance's connection comes back after the first has been idle too long.
        let (other, _) = server().await;
        let (mut sender, _) = checkout(other, SECOND * 30, SECOND).await.unwrap();
        get(&mut sender).await;
        give_back(other, sender, 4, Duration::ZERO);
        let left: Vec<SocketAddr> = IDLE.with_borrow(|pool| pool.idle.keys().copied().collect());
        assert_eq!(left, vec![other]);
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let error = checkout(addr, SECOND, SECOND).await.unwrap_err();
        assert!(error
            .to_string()
            .starts_with(&format!("connecting to {addr}: ")));
    }
}
