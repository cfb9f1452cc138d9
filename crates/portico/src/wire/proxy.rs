//! The proxy in the table of services: the built-in service `proxy` (`/{service}/{rest}` for
//! the catalog's services), configured by `[proxy]`. It reads the registry through the view
//! the manager opened (the manager is opened whenever the proxy is mounted, before it), and
//! its own host is the manager's `agent_id`.

use anyhow::Context as _;
use service::Service;

use super::{BuiltIn, Context};

/// `[proxy]`: `/{service}/{path}` to a managed service's instances.
pub struct ProxyService;

impl BuiltIn for ProxyService {
    const NAME: &'static str = "proxy";
    type Config = proxy::ProxyConfig;

    fn validate(config: &proxy::ProxyConfig) -> Vec<String> {
        config.validate()
    }

    async fn open(config: &proxy::ProxyConfig, context: Context<'_>) -> anyhow::Result<Service> {
        let manager = context
            .shared
            .manager
            .get()
            .context("the manager (opened with the proxy) is not open")?;
        let mut settings = config
            .settings(&manager.local_agent)
            .map_err(|problems| anyhow::anyhow!(problems.join("; ")))?;
        settings.register_lease = context.config.services.manager.lease;
        let proxy = proxy::Proxy::start(settings, manager.view.clone(), &context.background);
        let metrics = proxy.clone();
        Ok(Service::new(Self::NAME, proxy.router())
            .with_background(context.background)
            .with_metrics(move |out| metrics.render_metrics(out)))
    }
}
