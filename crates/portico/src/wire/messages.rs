//! The messages service in the table of services.

use service::{Readiness, Service};
use store::Health;

use super::{BuiltIn, Context};
use crate::config::{env_override, EnvKind, EnvOverride};

/// `[messages]`: the Paxos messages exercise (`/messages`).
pub struct Messages;

impl BuiltIn for Messages {
    const NAME: &'static str = "messages";
    const ENV: &'static [EnvOverride] = &[env_override(
        "PORTICO_MESSAGES_STORE",
        "messages",
        "store",
        EnvKind::Text,
    )];
    const PROBE: Option<check::Probe> = Some(check::messages_probe);
    type Config = messages::Config;

    fn validate(config: &messages::Config) -> Vec<String> {
        config.validate()
    }

    /// Opens the store through the data directory handle `serve` opened before dropping
    /// privileges, and makes `/readyz` follow the store's disk health.
    async fn open(config: &messages::Config, context: Context<'_>) -> anyhow::Result<Service> {
        let service = messages::MessagesService::open(config, context.data_dir.dir()).await?;
        follow_store_health(&service, context.readiness);
        Ok(Service::new(Self::NAME, service.router()).with_background(context.background))
    }
}

/// `/readyz` fails while the embedded store is broken (disk full, I/O error) and recovers
/// with it.
fn follow_store_health(service: &messages::MessagesService, readiness: &Readiness) {
    let health = service.watch_health();
    readiness.add_check(Messages::NAME, move || match &*health.borrow() {
        Health::Healthy => None,
        Health::Unavailable { reason } => Some(format!("message store unavailable: {reason}")),
        Health::DiskFull { reason } => Some(format!("message store disk full: {reason}")),
    });
}
