//! The service manager in the table of services: the built-in service `manager`, whose routes
//! are the management API, mounted on every listener that mounts `admin`, and opened whenever
//! `admin` or the proxy is mounted. Opening it opens the registry `[manager]` names, puts the
//! `[[manager.service]]` entries into the catalog, starts the view and, when this process runs
//! its host's agent, the agent (its drain and stop hooks stop the instances). What it opened is
//! left in `Shared::manager` for the proxy, opened after it.

use std::sync::Arc;
use std::time::Duration;

use registry::{AnyRegistry, Change, Registry, ServiceSpec, View};
use service::{Background, Service};

use super::{BuiltIn, Context};
use crate::config::{env_override, EnvKind, EnvOverride};
use crate::manager::{api, open_registry, ManagerConfig};

/// Pause between attempts to put the configured services while the registry is down.
const SEED_RETRY: Duration = Duration::from_secs(2);

/// `[manager]`: catalog, agents and instances (`/manager/...` on admin listeners).
pub struct Manager;

/// What the manager opened, for the proxy.
#[derive(Clone)]
pub struct ManagerHandle {
    /// The registry's view (`view.registry()` is the registry).
    pub view: View,
    /// This host's agent id (the proxy places new instances there when it has room).
    pub local_agent: String,
}

impl BuiltIn for Manager {
    const NAME: &'static str = "manager";
    const ENV: &'static [EnvOverride] = &[
        env_override(
            "PORTICO_MANAGER_REGISTRY",
            "manager",
            "registry",
            EnvKind::Text,
        ),
        env_override(
            "PORTICO_MANAGER_AGENT_ID",
            "manager",
            "agent_id",
            EnvKind::Text,
        ),
    ];
    const MOUNT_WITH: &'static [&'static str] = &[gateway::ADMIN];
    const OPEN_WITH: &'static [&'static str] = &["proxy"];
    type Config = ManagerConfig;

    fn validate(config: &ManagerConfig) -> Vec<String> {
        config.validate(super::SERVICE_NAMES)
    }

    async fn open(config: &ManagerConfig, context: Context<'_>) -> anyhow::Result<Service> {
        let registry = open_registry(config, context.data_dir).await?;
        seed_catalog(&registry, &config.services, &context.background).await;
        let view = View::start(registry.clone(), &context.background).await;
        let agent = match config.runs_agent() {
            true => {
                let agent_config = config.agent_config(&context.config.log);
                Some(
                    agent::Agent::start(
                        agent_config,
                        view.clone(),
                        context.data_dir,
                        &context.background,
                    )
                    .await?,
                )
            }
            false => None,
        };
        let handle = ManagerHandle {
            view,
            local_agent: config.agent_id(),
        };
        let _ = context.shared.manager.set(handle);
        let reserved = super::SERVICE_NAMES.iter().map(|n| n.to_string()).collect();
        let router = api::router(api::Api {
            registry,
            reserved: Arc::new(reserved),
        });
        let service = Service::new(Self::NAME, router).with_background(context.background);
        Ok(match agent {
            Some(agent) => {
                let draining = agent.clone();
                service
                    .on_drain(move || async move { draining.drain() })
                    .on_stop(move || async move { agent.stop().await })
            }
            None => service,
        })
    }
}

/// Puts the configured services into the catalog now, or in the background until the
/// registry answers; after the registry comes back from an outage, puts back any of them it
/// lost (a Redis restarted without its data).
async fn seed_catalog(registry: &AnyRegistry, specs: &[ServiceSpec], background: &Background) {
    if specs.is_empty() {
        return;
    }
    let changes = registry.subscribe();
    let missing = put_missing(registry, specs, false).await;
    let registry = registry.clone();
    let specs = specs.to_vec();
    background.spawn("manager catalog seed", async move {
        let mut changes = changes;
        let mut pending = missing;
        loop {
            while pending {
                tokio::time::sleep(SEED_RETRY).await;
                pending = put_missing(&registry, &specs, false).await;
            }
            match changes.recv().await {
                Ok(Change::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    pending = put_missing(&registry, &specs, true).await;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Puts `specs` (with `only_missing`, those the catalog lacks); whether to try again.
async fn put_missing(registry: &AnyRegistry, specs: &[ServiceSpec], only_missing: bool) -> bool {
    for spec in specs {
        if only_missing {
            match registry.service(&spec.name).await {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    tracing::warn!(service = %spec.name, "configured service missing from the registry; putting it back")
                }
                Err(_) => return true,
            }
        }
        if let Err(error) = registry.put_service(spec).await {
            tracing::warn!(service = %spec.name, %error, "putting a configured service into the catalog; will retry");
            return true;
        }
    }
    false
}
