//! Binding listeners and serving connections.
//!
//! Like nginx, Portico serves with `workers` independent event loops (default: one per
//! core), each a single-threaded tokio runtime on its own OS thread. A connection lives on
//! one worker for its whole life: no work stealing and no cross-thread wake-ups on the hot
//! path, which measured ~2x the throughput (50k -> 110k req/s) of one shared multi-threaded
//! runtime on the 2-core bench machine (bench/gateway). Services' background tasks run on
//! the main runtime; CPU-heavy work goes to `spawn_blocking` as everywhere.
//!
//! All workers accept from one listening socket per listener, as nginx does by default: a
//! new connection goes to whichever worker is free to accept it, so a worker busy with a
//! long request does not collect connections that wait behind it. `SO_REUSEPORT` (one
//! socket and queue per worker, spread by a hash of the client's address) was measured
//! too: no faster on the bench machine, and it lets a second server bind the same port.
//!
//! What happens on a connection is `connection`'s. On shutdown (`shut_down`) `/readyz` turns
//! 503 for `drain_delay`, then every worker stops accepting, asks its connections to finish
//! (HTTP/1 closes after the in-flight response, HTTP/2 sends GOAWAY) and waits for them at
//! most `drain_timeout` while the services drain; then the services stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use service::Readiness;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::app::{self, Services};
use crate::config::{GatewayConfig, LimitsConfig, ListenerConfig};
use crate::connection::{stopped, Listener};
use crate::tls::{self, LoadedTls};
use crate::Error;

/// A listener as bound: what to print and what tests connect to.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Services as configured (`*` not expanded).
    pub services: Vec<String>,
    /// The certificate clients should trust, for TLS listeners.
    pub cert_path: Option<PathBuf>,
}

impl ListenerInfo {
    /// `https://127.0.0.1:8443` or `http://...`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

struct BoundListener {
    config: ListenerConfig,
    addr: SocketAddr,
    /// The listening socket, once per worker (duplicated descriptors of one socket).
    sockets: Vec<std::net::TcpListener>,
    tls: Option<LoadedTls>,
}

/// The gateway with its sockets bound (call `bind` before dropping privileges).
pub struct Gateway {
    listeners: Vec<BoundListener>,
    limits: LimitsConfig,
    workers: usize,
}

impl Gateway {
    /// Binds every listener (one socket per worker) and loads its TLS setting.
    pub fn bind(config: &GatewayConfig) -> Result<Gateway, Error> {
        app::metrics_handle();
        let workers = config.worker_count();
        let listeners = config
            .listeners
            .iter()
            .map(|listener| bind_listener(listener, config, workers))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Gateway {
            listeners,
            limits: config.limits.clone(),
            workers,
        })
    }

    /// The bound listeners, in config order.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners.iter().map(BoundListener::info).collect()
    }

    /// Serves `services` until `shutdown` completes, then shuts down in order (see
    /// [`shut_down`]).
    pub async fn serve(
        self,
        mut services: Services,
        readiness: Readiness,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut per_worker: Vec<Vec<(std::net::TcpListener, Arc<Listener>)>> =
            (0..self.workers).map(|_| Vec::new()).collect();
        for bound in self.listeners {
            let app = app::listener_app(&bound.config, &services, &self.limits, &readiness);
            let listener = Arc::new(Listener::new(app, bound.tls, &self.limits));
            for (worker, socket) in bound.sockets.into_iter().enumerate() {
                per_worker[worker].push((socket, listener.clone()));
            }
        }
        let drain = self.limits.drain_timeout;
        let threads: Vec<_> = per_worker
            .into_iter()
            .enumerate()
            .map(|(index, sockets)| spawn_worker(index, sockets, stop_rx.clone(), drain))
            .collect();
        shutdown.await;
        let workers = Workers {
            stop: stop_tx,
            threads,
        };
        shut_down(&self.limits, &mut services, &readiness, workers).await;
    }
}

/// The worker threads and the signal that stops their accept loops.
struct Workers {
    stop: watch::Sender<bool>,
    threads: Vec<std::io::Result<std::thread::JoinHandle<()>>>,
}

/// The shutdown order:
/// 1. `/readyz` answers 503 while everything still serves, for `drain_delay`, so a load
///    balancer that polls it stops sending new connections first;
/// 2. accept stops, connections finish their in-flight requests (at most `drain_timeout`),
///    and meanwhile every service drains (stops taking new work, gives back what it took);
/// 3. every service's stop hook runs and its background tasks are stopped.
async fn shut_down(
    limits: &LimitsConfig,
    services: &mut Services,
    readiness: &Readiness,
    workers: Workers,
) {
    readiness.start_draining();
    if !limits.drain_delay.is_zero() {
        tracing::info!(delay = ?limits.drain_delay, "shutting down: /readyz answers 503, still serving");
        tokio::time::sleep(limits.drain_delay).await;
    }
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = workers.stop.send(true);
    let threads = workers.threads;
    let joined = tokio::task::spawn_blocking(move || {
        threads.into_iter().filter_map(Result::ok).for_each(|t| {
            let _ = t.join();
        })
    });
    let (_, _) = tokio::join!(services.drain(), joined);
    services.stop(limits.drain_timeout).await;
}

impl GatewayConfig {
    /// `workers`, or the number of cores when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

fn bind_listener(
    listener: &ListenerConfig,
    config: &GatewayConfig,
    workers: usize,
) -> Result<BoundListener, Error> {
    let bind_error = |error| Error::Bind {
        addr: listener.addr.clone(),
        error,
    };
    let wanted: SocketAddr = listener.addr.parse().map_err(|_| {
        bind_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an address:port",
        ))
    })?;
    let socket = bind_tcp(wanted).map_err(bind_error)?;
    let addr = socket.local_addr().map_err(bind_error)?;
    // Every worker accepts from the same socket (one accept queue; see the module doc).
    let sockets = (0..workers)
        .map(|_| socket.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(bind_error)?;
    let tls = match &listener.tls {
        Some(tls_config) => Some(tls::load(tls_config, &config.data_dir)?),
        None => None,
    };
    Ok(BoundListener {
        config: listener.clone(),
        addr,
        sockets,
        tls,
    })
}

/// Binds with `SO_REUSEADDR` (a restart need not wait for old connections in TIME_WAIT) but
/// not `SO_REUSEPORT`, so a second server cannot silently share the port; an IPv6 wildcard
/// is dual-stack (accepts IPv4 as v4-mapped addresses). Accepted sockets inherit TCP
/// keepalive and `TCP_NODELAY` from it.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.set_tcp_keepalive(&crate::connection::tcp_keepalive())?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl BoundListener {
    fn info(&self) -> ListenerInfo {
        ListenerInfo {
            addr: self.addr,
            tls: self.tls.is_some(),
            services: self.config.services.clone(),
            cert_path: self.tls.as_ref().map(|t| t.cert_path.clone()),
        }
    }
}

/// Runs one worker: a single-threaded runtime serving its sockets until `stop`, then draining.
fn spawn_worker(
    index: usize,
    sockets: Vec<(std::net::TcpListener, Arc<Listener>)>,
    stop: watch::Receiver<bool>,
    drain: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name(format!("portico-worker-{index}"))
        .spawn(move || {
            // I/O and timers only: signals and child processes are the main runtime's, and
            // their drivers would be checked on every park.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return tracing::error!(%error, index, "worker runtime failed"),
            };
            runtime.block_on(run_worker(sockets, stop, drain));
        });
    if let Err(error) = &spawned {
        tracing::error!(%error, index, "could not start a worker thread");
    }
    spawned
}

async fn run_worker(
    sockets: Vec<(std::net::TcpListener, Arc<Listener>)>,
    stop: watch::Receiver<bool>,
    drain: Duration,
) {
    crate::logging::batch_access_lines();
    let ticker = tokio::spawn(flush_access_log_every(ACCESS_LOG_FLUSH));
    serve_worker(sockets, stop, drain).await;
    ticker.abort();
    crate::logging::flush_access_lines();
}

/// How old a worker's buffered access-log lines may get.
const ACCESS_LOG_FLUSH: Duration = Duration::from_millis(100);

async fn flush_access_log_every(period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        crate::logging::flush_access_lines();
    }
}

async fn serve_worker(
    sockets: Vec<(std::net::TcpListener, Arc<Listener>)>,
    stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let stop = worker_stop(stop);
    let connections = TaskTracker::new();
    let mut loops = Vec::new();
    for (socket, listener) in sockets {
        match TcpListener::from_std(socket) {
            Ok(socket) => loops.push(tokio::spawn(accept_loop(
                socket,
                listener,
                stop.clone(),
                connections.clone(),
            ))),
            Err(error) => tracing::error!(%error, "registering a listening socket failed"),
        }
    }
    for accept in loops {
        let _ = accept.await;
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(after = ?drain, left = connections.len(), "drain timeout: closing connections");
    }
}

/// A stop signal of this worker's own, set when `global` is: connections poll it on every
/// wake-up, and a channel shared by all workers would bounce between cores.
fn worker_stop(mut global: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (local, receiver) = watch::channel(false);
    tokio::spawn(async move {
        stopped(&mut global).await;
        let _ = local.send(true);
    });
    receiver
}

async fn accept_loop(
    socket: TcpListener,
    listener: Arc<Listener>,
    mut stop: watch::Receiver<bool>,
    connections: TaskTracker,
) {
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => listener.spawn(stream, peer, stop.clone(), &connections),
                // Out of file descriptors and the like: back off instead of spinning.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
    }
}
