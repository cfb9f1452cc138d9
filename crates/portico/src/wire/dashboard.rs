//! The dashboard in the table of services (`[dashboard]`): `/dashboard` on every listener
//! that mounts `admin`, opened last so that it can read what the others opened (the job
//! queue, the manager's view) through `Shared`. It only reads; a process without jobs or
//! manager shows a dashboard without those views filled.

use std::sync::Arc;

use dashboard::{Dashboard, DashboardConfig, ListenerInfo, Sources};
use service::Service;

use super::{BuiltIn, Context};

/// `[dashboard]`: the live web page.
pub struct DashboardService;

impl BuiltIn for DashboardService {
    const NAME: &'static str = "dashboard";
    const MOUNT_WITH: &'static [&'static str] = &[gateway::ADMIN];
    type Config = DashboardConfig;

    fn validate(config: &DashboardConfig) -> Vec<String> {
        config.validate()
    }

    async fn open(config: &DashboardConfig, context: Context<'_>) -> anyhow::Result<Service> {
        let sources = sources(&context);
        let dashboard = Dashboard::new(config.clone(), sources);
        if config.enabled {
            dashboard.start(&context.background);
        }
        Ok(Service::new(Self::NAME, dashboard.router()).with_background(context.background))
    }
}

fn sources(context: &Context<'_>) -> Sources {
    let mut sources = Sources {
        version: env!("CARGO_PKG_VERSION").to_string(),
        listeners: context
            .config
            .listeners
            .iter()
            .map(|l| ListenerInfo {
                addr: l.addr.clone(),
                tls: l.tls.is_some(),
                services: l.services.clone(),
            })
            .collect(),
        ..Sources::default()
    };
    sources.requests = Some(Arc::new(GatewayRequests));
    if let Some(jobs) = context.shared.jobs.get() {
        let portico = Arc::new(dashboard::PorticoJobs::new(jobs.clone()));
        sources.jobs = Some(portico.clone());
        sources.workers.push(portico);
        sources
            .workers
            .push(Arc::new(dashboard::CeleryWorkers(jobs.clone())));
    }
    if let Some(manager) = context.shared.manager.get() {
        let proxy = context.shared.proxy.get().cloned();
        let view = dashboard::RegistryManager::new(manager.view.clone(), proxy);
        sources.manager = Some(Arc::new(view));
    }
    sources
}

/// The gateway's request counters, for the dashboard (which does not depend on the gateway).
struct GatewayRequests;

impl dashboard::RequestSource for GatewayRequests {
    fn bounds_micros(&self) -> &[u64] {
        &gateway::request_metrics::BOUNDS_MICROS
    }

    fn totals(&self) -> Vec<dashboard::RequestTotals> {
        gateway::request_metrics::totals()
            .into_iter()
            .map(|t| dashboard::RequestTotals {
                service: t.service,
                route: t.route,
                requests: t.requests,
                errors: t.errors,
                buckets: t.buckets.to_vec(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_dashboard_section_documents_the_defaults() {
        let example = include_str!("../../../../portico.example.toml");
        let table: toml::Table = toml::from_str(example).expect("the example parses");
        let section = table["dashboard"].clone();
        let documented: dashboard::DashboardConfig = section.try_into().expect("parses");
        assert_eq!(documented, dashboard::DashboardConfig::default());
        let keys = table["dashboard"].as_table().expect("a table").len();
        assert_eq!(keys, 6, "every key is written out");
    }
}
