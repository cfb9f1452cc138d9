//! The messages service in the table of services.

use service::Service;

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

    async fn open(config: &messages::Config, context: Context<'_>) -> anyhow::Result<Service> {
        let service = messages::MessagesService::open(config, context.data_dir.path()).await?;
        Ok(Service::new(Self::NAME, service.router()).with_background(context.background))
    }
}
