//! The way back for an ejected instance: once its backoff has passed, a health probe (`GET`
//! the service's `health` path on a connection of its own) decides. An answer below 500
//! within `hard_latency` puts it back in rotation with a fresh estimate; anything else
//! ejects it again for twice as long (`balance::Health`). The probe's answer time is the
//! instance's first latency sample after it (`balance::Endpoint::probe_succeeded`).
//!
//! The prober is a task of the proxy's `Background` (main runtime) that looks once a second.
//! On the way it brings every service's members up to date with the view (so an instance that
//! left is not probed) and forgets services that left the catalog.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use http::{header, HeaderValue, Request};

use crate::body::OutBody;
use crate::instances::{now, Upstream};
use crate::pool;
use crate::Shared;

/// How often the prober looks for instances due for a probe.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The prober task.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for (upstream, path, limit) in due(&shared) {
                    probes.push(probe(shared.clone(), upstream, path, limit));
                }
            }
            Some(()) = probes.next(), if !probes.is_empty() => {}
        }
    }
}

/// Ejected instances whose backoff has passed and that no probe is running for, each with
/// its service's health path and time limit (claimed: marked as being probed).
fn due(shared: &Shared) -> Vec<(Arc<Upstream>, String, Duration)> {
    shared.forget_removed_services();
    let now = now();
    let mut found = Vec::new();
    for state in shared.states() {
        let Some(spec) = shared.view.service(&state.name) else {
            continue;
        };
        let limits = shared.limits(&spec);
        let members = shared.members(&state, &spec, limits);
        for upstream in &members.list {
            let is_due = upstream.endpoint().health().probe_due(now);
            if is_due && !upstream.probing.swap(true, Ordering::Relaxed) {
                found.push((upstream.clone(), spec.health.clone(), limits.hard));
            }
        }
    }
    found
}

/// Probes one instance and reports the result.
async fn probe(shared: Arc<Shared>, upstream: Arc<Upstream>, path: String, limit: Duration) {
    let outcome = check(&shared, &upstream, &path, limit).await;
    let transition = match &outcome {
        Ok(latency) => upstream.endpoint().probe_succeeded(*latency, now()),
        Err(reason) => {
            tracing::debug!(service = %upstream.instance.service, instance = %upstream.instance.id, reason, "probe failed");
            upstream.endpoint().probe_failed(now())
        }
    };
    upstream.transition(transition, "its health probe failed");
    upstream.probing.store(false, Ordering::Relaxed);
}

/// How long `GET path` took to answer below 500 (within `limit`), or why it did not.
async fn check(
    shared: &Shared,
    upstream: &Upstream,
    path: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let addr = upstream.addr();
    let settings = &shared.settings;
    let mut sender = pool::connect(addr, settings.connect_timeout, false)
        .await
        .map_err(|error| error.to_string())?;
    let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
    let request = Request::get(path)
        .header(header::HOST, host)
        .body(OutBody::Empty)
        .map_err(|error| format!("health path {path:?}: {error}"))?;
    let sent = tokio::time::Instant::now();
    let answer = tokio::time::timeout(limit, sender.send_request(request)).await;
    match answer {
        Ok(Ok(response)) if response.status().as_u16() < 500 => Ok(sent.elapsed()),
        Ok(Ok(response)) => Err(format!("{path} answered {}", response.status())),
        Ok(Err(error)) => Err(format!("{path}: {error}")),
        Err(_) => Err(format!(
            "{path}: no answer within {}",
            humantime::format_duration(limit)
        )),
    }
}
