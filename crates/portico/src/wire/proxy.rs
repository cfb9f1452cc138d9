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
        let _ = context.shared.proxy.set(proxy.clone());
        let (metrics, direct) = (proxy.clone(), proxy.clone());
        Ok(Service::new(Self::NAME, proxy.router())
            .with_direct(move |request, client| direct.answer(request, client))
            .with_background(context.background)
            .with_metrics(move |out| metrics.render_metrics(out)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_proxy_section_documents_the_defaults() {
        let example = include_str!("../../../../portico.example.toml");
        let table: toml::Table = toml::from_str(example).expect("the example parses");
        let section = table["proxy"].clone();
        let documented: proxy::ProxyConfig = section.try_into().expect("[proxy] parses");
        let defaults = proxy::ProxyConfig::default();
        assert_eq!(format!("{documented:?}"), format!("{defaults:?}"));
        let keys = table["proxy"].as_table().expect("a table").len();
        assert_eq!(keys, 6, "every key with a default is written out");
    }
}
