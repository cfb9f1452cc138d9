//! The table of built-in services: the one place that lists them. Each service is one
//! [`BuiltIn`] implementation in its own file here (its name, its config section and the
//! environment variables that set keys of it, its validation, how it opens into a
//! `service::Service`, and its probe in `portico check`) plus one line in the `services!`
//! list below. Everything else (the config's sections, `SERVICE_NAMES`, the overrides, the
//! validation of every section, opening what listeners mount, the probes) is derived from that
//! list.

pub mod dashboard;
pub mod fib;
pub mod jobs;
pub mod manager;
pub mod messages;
pub mod migrate;
pub mod proxy;
pub mod region;
pub mod worker;

use std::future::Future;
use std::sync::OnceLock;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use service::{Background, DataDir, Readiness, Service};

use crate::config::{Config, EnvOverride};

/// What `portico serve` hands a service when it opens it.
pub struct Context<'a> {
    /// The whole config (a service may read another's section: the proxy reads `[manager]`).
    pub config: &'a Config,
    /// What services opened earlier share with later ones.
    pub shared: &'a Shared,
    /// The data directory, opened before privileges were dropped: open files through it.
    pub data_dir: &'a DataDir,
    /// Register checks that make `/readyz` fail while the service cannot serve.
    pub readiness: &'a Readiness,
    /// Start background tasks through this (stopped after the service's stop hook).
    pub background: Background,
}

/// What services opened earlier leave for later ones (the list's order is the opening order).
#[derive(Default)]
pub struct Shared {
    /// The manager's registry and view, for the proxy and the dashboard.
    pub manager: OnceLock<manager::ManagerHandle>,
    /// The job queue, for the dashboard.
    pub jobs: OnceLock<::jobs::Jobs>,
    /// The proxy, for the dashboard.
    pub proxy: OnceLock<::proxy::Proxy>,
}

/// One built-in service, as the binary knows it.
pub trait BuiltIn {
    /// Its name: the entry in a listener's `services`, its config section `[NAME]`, its tag in
    /// logs and metrics.
    const NAME: &'static str;
    /// Environment variables that set keys of its section (`section` = `NAME`).
    const ENV: &'static [EnvOverride] = &[];
    /// Its probe in `portico check`, if it has one.
    const PROBE: Option<check::Probe> = None;
    /// Services whose listeners mount this one too (`manager` goes with `admin`).
    const MOUNT_WITH: &'static [&'static str] = &[];
    /// Services that need this one opened (before them) even where it is not mounted.
    const OPEN_WITH: &'static [&'static str] = &[];
    /// Its config section (every key defaulted).
    type Config: DeserializeOwned + Default + Clone + std::fmt::Debug;

    /// Every problem in its section, each naming its key.
    fn validate(config: &Self::Config) -> Vec<String>;

    /// Opens the service: its stores, its routes, its background tasks and hooks.
    fn open(
        config: &Self::Config,
        context: Context<'_>,
    ) -> impl Future<Output = anyhow::Result<Service>> + Send;
}

/// Generates the parts of the binary that list the services, from one list of
/// `section_name: Type` (`Type: BuiltIn`, `Type::NAME == "section_name"`).
macro_rules! services {
    ($($name:ident: $service:ty),* $(,)?) => {
        /// Every built-in service's config section.
        #[derive(Debug, Clone, Default)]
        pub struct Sections {
            $(pub $name: <$service as BuiltIn>::Config,)*
        }

        impl Sections {
            /// Takes each service's section out of the file's table and parses it (the rest of
            /// the table is the gateway's).
            pub fn take_from(table: &mut toml::Table) -> anyhow::Result<Sections> {
                Ok(Sections {
                    $($name: take_section::<$service>(table)?,)*
                })
            }

            /// Every problem in every section.
            pub fn validate(&self) -> Vec<String> {
                let mut errors = Vec::new();
                $(errors.extend(<$service as BuiltIn>::validate(&self.$name));)*
                errors
            }
        }

        /// Names of the built-in services a listener may mount (besides `*`).
        pub const SERVICE_NAMES: &[&str] = &[gateway::ADMIN, $(<$service as BuiltIn>::NAME),*];

        /// The environment variables of every service.
        pub fn service_env() -> Vec<EnvOverride> {
            let mut all = Vec::new();
            $(all.extend_from_slice(<$service as BuiltIn>::ENV);)*
            all
        }

        /// `(with, service)`: listeners that mount `with` also mount `service`.
        pub fn mounted_with() -> Vec<(&'static str, &'static str)> {
            let mut all = Vec::new();
            $(for with in <$service as BuiltIn>::MOUNT_WITH {
                all.push((*with, <$service as BuiltIn>::NAME));
            })*
            all
        }

        /// `portico check`'s probes, by service name.
        pub fn probes() -> Vec<(&'static str, check::Probe)> {
            let mut all = Vec::new();
            $(if let Some(probe) = <$service as BuiltIn>::PROBE {
                all.push((<$service as BuiltIn>::NAME, probe));
            })*
            all
        }

        /// Opens the services that at least one listener mounts, in the list's order.
        pub async fn build(
            config: &Config,
            data_dir: &DataDir,
            readiness: &Readiness,
        ) -> anyhow::Result<gateway::Services> {
            let mut services = gateway::Services::new();
            let shared = Shared::default();
            $(if let Some(service) =
                open_if_wanted::<$service>(&config.services.$name, config, &shared, data_dir, readiness).await?
            {
                services.insert(service);
            })*
            Ok(services)
        }
    };
}

services! {
    messages: messages::Messages,
    region: region::Region,
    fib: fib::Fib,
    jobs: jobs::Jobs,
    manager: manager::Manager,
    proxy: proxy::ProxyService,
    dashboard: dashboard::DashboardService,
}

fn take_section<S: BuiltIn>(table: &mut toml::Table) -> anyhow::Result<S::Config> {
    match table.remove(S::NAME) {
        None => Ok(S::Config::default()),
        Some(toml::Value::Table(section)) => {
            serde::Deserialize::deserialize(section).with_context(|| format!("[{}]", S::NAME))
        }
        Some(other) => anyhow::bail!("[{}] must be a table, not {}", S::NAME, other.type_str()),
    }
}

async fn open_if_wanted<S: BuiltIn>(
    section: &S::Config,
    config: &Config,
    shared: &Shared,
    data_dir: &DataDir,
    readiness: &Readiness,
) -> anyhow::Result<Option<Service>> {
    let wanted = mounted(config, S::NAME)
        || S::MOUNT_WITH
            .iter()
            .chain(S::OPEN_WITH)
            .any(|with| mounted(config, with));
    if !wanted {
        return Ok(None);
    }
    let context = Context {
        config,
        shared,
        data_dir,
        readiness,
        background: Background::new(S::NAME),
    };
    let service = S::open(section, context)
        .await
        .with_context(|| format!("{} service", S::NAME))?;
    Ok(Some(service))
}

/// Whether any listener mounts `name` (by name or `*`).
pub fn mounted(config: &Config, name: &str) -> bool {
    config
        .listeners
        .iter()
        .any(|l| l.services.iter().any(|s| s == "*" || s == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, std::iter::empty())
    }

    #[test]
    fn a_bad_key_in_a_service_section_names_the_section_and_the_key() {
        let error = format!("{:#}", parse("[fib]\nlimitt = 3\n").unwrap_err());
        assert!(
            error.contains("[fib]") && error.contains("limitt"),
            "{error}"
        );
        let error = format!("{:#}", parse("fib = 3\n").unwrap_err());
        assert!(error.contains("[fib] must be a table"), "{error}");
    }

    #[test]
    fn sections_of_the_file_reach_their_service() {
        let config = parse("[fib]\nlimit = 77\n[messages]\nkey_prefix = \"p:\"\n").unwrap();
        assert_eq!(config.services.fib.limit, 77);
        assert_eq!(config.services.messages.key_prefix, "p:");
        assert_eq!(
            SERVICE_NAMES,
            &[
                "admin",
                "messages",
                "region",
                "fib",
                "jobs",
                "manager",
                "proxy",
                "dashboard"
            ]
        );
    }

    #[test]
    fn every_service_override_sets_a_key_of_its_own_section() {
        for entry in service_env() {
            assert!(
                SERVICE_NAMES.contains(&entry.section) && entry.var.starts_with("PORTICO_"),
                "{entry:?}"
            );
            let prefix = format!("PORTICO_{}_", entry.section.to_ascii_uppercase());
            assert!(entry.var.starts_with(&prefix), "{entry:?}");
        }
    }

    #[test]
    fn every_service_with_a_probe_is_probed_by_name() {
        let names: Vec<&str> = probes().iter().map(|(name, _)| *name).collect();
        assert_eq!(names, vec!["messages", "region", "fib"]);
    }
}
