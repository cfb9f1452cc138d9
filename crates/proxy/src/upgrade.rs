//! WebSocket (and any HTTP/1.1 `Upgrade`) pass-through.
//!
//! The handshake goes to the instance on a connection of its own with upgrades enabled
//! (never pooled: after a `101` it belongs to the tunnel). The instance's answer goes back
//! as it is; when it is `101 Switching Protocols`, a task on the worker joins the two
//! connections once hyper has handed both over, and copies bytes both ways until either
//! side closes. The client's side stays under the gateway's watchdog (idle and send
//! timeouts of an upgraded connection) and keeps its slot of `max_connections` while the
//! tunnel lives.
//!
//! A connect failure is retried on another instance like any request's; a handshake that
//! failed after it was sent is not (the head has gone to the instance).

use std::net::SocketAddr;

use axum::response::Response;
use http::{Request, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::body::OutBody;
use crate::error::ProxyError;
use crate::forward::{describe, respond, Exchange, Failed};
use crate::instances::Picked;
use crate::pool;

/// One handshake attempt on `picked`'s instance.
pub(crate) async fn attempt(
    exchange: &mut Exchange<'_>,
    mut picked: Picked,
) -> Result<Response, Failed> {
    let settings = &exchange.shared().settings;
    let addr = picked.upstream.addr();
    let mut sender = match pool::connect(addr, settings.connect_timeout, true).await {
        Ok(sender) => sender,
        Err(error) => return Err(exchange.connect_failed(picked, error.to_string())),
    };
    let (Some(head), Some(client)) = (exchange.take_head(), exchange.client_upgrade.take()) else {
        picked.abandon();
        let error = "the handshake was already sent".to_string();
        return Err(Failed::Final(upstream_error(exchange, addr, error)));
    };
    let sent_at = Instant::now();
    let sending = sender.send_request(Request::from_parts(head, OutBody::Empty));
    let mut response = match tokio::time::timeout(settings.upstream_timeout, sending).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            picked.failed();
            return Err(Failed::Final(upstream_error(
                exchange,
                addr,
                describe(&error),
            )));
        }
        Err(_) => {
            picked.failed();
            return Err(Failed::Final(exchange.timed_out(addr)));
        }
    };
    let answered = Instant::now();
    picked.succeeded(answered - sent_at, answered.into_std());
    exchange
        .shared()
        .report_usage(&picked.upstream, answered.into_std());
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        spawn_tunnel(
            client,
            upstream,
            picked.upstream.instance.service.clone(),
            addr,
        );
    }
    Ok(respond(response, None, &picked.upstream, settings))
}

fn upstream_error(exchange: &Exchange<'_>, addr: SocketAddr, error: String) -> ProxyError {
    ProxyError::Upstream {
        service: exchange.service_name().to_string(),
        addr,
        error,
    }
}

/// Joins the client's and the instance's upgraded connections on this worker.
fn spawn_tunnel(client: OnUpgrade, upstream: OnUpgrade, service: String, addr: SocketAddr) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(service, %addr, %error, "upgrade not completed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(service, %addr, up, down, "tunnel closed"),
            Err(error) => tracing::debug!(service, %addr, %error, "tunnel broke"),
        }
    });
}
