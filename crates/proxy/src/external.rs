//! Instances started by something else, registered by this process for as long as it runs
//! (`[[proxy.register]]`; the original proxy's server mode, `portico proxy PORT SERVICE IP`).
//!
//! Each is put into the registry as a ready instance with a lease renewed every third of it,
//! and removed when the proxy stops; if the process dies, the lease runs out and proxies stop
//! using it, as with an agent's. Its `agent` is `{local_agent}.registered`, which no agent
//! takes for its own. A service missing from the catalog is added with a command that fails
//! saying why (no agent can start another instance of a program it did not start), so that
//! proxies route to it; an existing catalog entry is never changed.

use std::time::{Duration, SystemTime};

use registry::{new_id, Instance, InstanceState, Registry, ServiceSpec, View};
use tokio_util::sync::CancellationToken;

use crate::config::External;

/// Registers `externals` now and keeps them registered until `stop`, then removes them.
pub(crate) async fn keep_registered(
    view: View,
    externals: Vec<External>,
    local_agent: String,
    lease: Duration,
    stop: CancellationToken,
) {
    let agent = format!("{local_agent}.registered");
    let instances: Vec<Instance> = externals
        .iter()
        .map(|external| Instance {
            id: new_id(),
            service: external.service.clone(),
            agent: agent.clone(),
            addr: external.addr,
            state: InstanceState::Ready,
            started_at: SystemTime::now(),
        })
        .collect();
    let mut renew = tokio::time::interval(lease / 3);
    loop {
        tokio::select! {
            _ = renew.tick() => {
                for instance in &instances {
                    register(&view, instance, lease).await;
                }
            }
            () = stop.cancelled() => break,
        }
    }
    for instance in &instances {
        let removed = view
            .registry()
            .remove_instance(&instance.service, &instance.id)
            .await;
        match removed {
            Ok(()) => {
                tracing::info!(service = %instance.service, addr = %instance.addr, "registered instance removed")
            }
            Err(error) => {
                tracing::warn!(service = %instance.service, %error, "removing a registered instance; its lease will run out")
            }
        }
    }
}

/// Puts (or renews) one registered instance, adding its service to the catalog if missing.
async fn register(view: &View, instance: &Instance, lease: Duration) {
    let registry = view.registry();
    if view.service(&instance.service).is_none() {
        match registry.service(&instance.service).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let spec = placeholder(&instance.service);
                if let Err(error) = registry.put_service(&spec).await {
                    tracing::warn!(service = %instance.service, %error, "adding a registered instance's service to the catalog");
                } else {
                    tracing::info!(service = %instance.service, "service added to the catalog for a registered instance (no command)");
                }
            }
            Err(error) => {
                tracing::warn!(service = %instance.service, %error, "reading the catalog");
            }
        }
    }
    match registry.put_instance(instance, lease).await {
        Ok(()) => {
            tracing::debug!(service = %instance.service, addr = %instance.addr, "registered instance renewed")
        }
        Err(error) => {
            tracing::warn!(service = %instance.service, addr = %instance.addr, %error, "registering an instance; retrying")
        }
    }
}

/// The catalog entry of a service whose instances only come from registrations.
fn placeholder(service: &str) -> ServiceSpec {
    let message = format!(
        "echo 'service {service} has no command: its instances are registered by portico proxy \
         (server mode); add a command with portico services add' >&2; exit 1"
    );
    ServiceSpec::new(service, &["/bin/sh", "-c", &message])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_is_a_valid_entry_that_says_why_it_cannot_start() {
        let spec = placeholder("hello-world-server");
        assert!(spec.validate().is_empty(), "{:?}", spec.validate());
        assert!(spec.command[2].contains("registered by portico proxy"));
    }
}
