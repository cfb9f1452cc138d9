//! Binding listeners and serving connections: accept loop, connection limit, TLS handshake
//! under a timeout, HTTP/1.1 and HTTP/2 (by ALPN or preface) through hyper, and the graceful
//! drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::app::{self, Services};
use crate::config::{GatewayConfig, LimitsConfig, ListenerConfig};
use crate::tls::{self, LoadedTls};
use crate::Error;

/// A listener as bound: what to print and what tests connect to.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Services mounted here (`*` expanded by `Gateway::serve`; as configured before).
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
    tcp: TcpListener,
    tls: Option<LoadedTls>,
}

/// The gateway with its sockets bound (call `bind` before dropping privileges).
pub struct Gateway {
    listeners: Vec<BoundListener>,
    limits: LimitsConfig,
}

impl Gateway {
    /// Binds every listener and loads its TLS setting. Needs a tokio runtime.
    pub fn bind(config: &GatewayConfig) -> Result<Gateway, Error> {
        app::metrics_handle();
        let listeners = config
            .listeners
            .iter()
            .map(|listener| bind_one(listener, config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Gateway {
            listeners,
            limits: config.limits.clone(),
        })
    }

    /// The bound listeners, in config order.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners.iter().map(BoundListener::info).collect()
    }

    /// Serves `services` until `shutdown` completes, then drains in-flight requests for at
    /// most `limits.drain_timeout`.
    pub async fn serve(self, services: Services, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(true));
        let graceful = Arc::new(GracefulShutdown::new());
        let mut loops = Vec::new();
        for listener in self.listeners {
            let router = app::listener_router(&listener.config, &services, &self.limits, &ready);
            let accept = AcceptLoop::new(listener, router, &self.limits, graceful.clone());
            loops.push(tokio::spawn(accept.run(stop_rx.clone())));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        ready.store(false, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        for accept in loops {
            let _ = accept.await;
        }
        drain(graceful, self.limits.drain_timeout).await;
    }
}

async fn drain(graceful: Arc<GracefulShutdown>, limit: Duration) {
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::error!("connections still referenced after accept loops ended");
        return;
    };
    match tokio::time::timeout(limit, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(after = ?limit, "drain timeout: closing remaining connections"),
    }
}

fn bind_one(listener: &ListenerConfig, config: &GatewayConfig) -> Result<BoundListener, Error> {
    let addr: SocketAddr = listener.addr.parse().map_err(|_| Error::Bind {
        addr: listener.addr.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an address:port"),
    })?;
    let tcp = bind_tcp(addr).map_err(|source| Error::Bind {
        addr: listener.addr.clone(),
        source,
    })?;
    let tls = match &listener.tls {
        Some(tls_config) => Some(tls::load(tls_config, &config.data_dir)?),
        None => None,
    };
    Ok(BoundListener {
        config: listener.clone(),
        tcp,
        tls,
    })
}

/// Binds with `SO_REUSEADDR`; an IPv6 wildcard is dual-stack (accepts IPv4 as v4-mapped).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl BoundListener {
    fn info(&self) -> ListenerInfo {
        ListenerInfo {
            addr: self
                .tcp
                .local_addr()
                .expect("a bound socket has an address"),
            tls: self.tls.is_some(),
            services: self.config.services.clone(),
            cert_path: self.tls.as_ref().map(|t| t.cert_path.clone()),
        }
    }
}

/// Accepts connections of one listener and serves each on its own task.
struct AcceptLoop {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    http: auto::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    header_timeout: Duration,
    graceful: Arc<GracefulShutdown>,
}

impl AcceptLoop {
    fn new(
        listener: BoundListener,
        router: axum::Router,
        limits: &LimitsConfig,
        graceful: Arc<GracefulShutdown>,
    ) -> Self {
        AcceptLoop {
            tcp: listener.tcp,
            tls: listener.tls.map(|t| TlsAcceptor::from(t.server_config)),
            router,
            http: http_builder(limits),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            header_timeout: limits.header_timeout,
            graceful,
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        loop {
            tokio::select! {
                accepted = this.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let this = this.clone();
                        tokio::spawn(async move { this.connection(stream, peer).await });
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => break,
            }
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let permit = self.slots.clone().try_acquire_owned().ok();
        let router = match permit {
            Some(_) => self.router.clone(),
            None => app::overloaded_router(),
        };
        match &self.tls {
            None => self.serve_io(TokioIo::new(stream), peer, router).await,
            Some(acceptor) => {
                let handshake = tokio::time::timeout(self.header_timeout, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(tls_stream)) => {
                        self.serve_io(TokioIo::new(tls_stream), peer, router).await
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
        drop(permit);
    }

    async fn serve_io<I>(&self, io: TokioIo<I>, peer: SocketAddr, router: axum::Router)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = self.http.serve_connection(io, service);
        let connection = self.graceful.watch(connection.into_owned());
        if let Err(error) = connection.await {
            tracing::debug!(%peer, error = %error, "connection ended with an error");
        }
    }
}

fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}
