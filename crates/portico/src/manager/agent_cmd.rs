//! `portico agent` (and `portico allocator`, the original's name): this host's agent on its
//! own, for hosts that run instances but no gateway. It is `portico serve` with one listener
//! that mounts only `admin` (so `/manager/...`, `/metrics` and `/readyz` are there) and the
//! agent on: the same code path, the same drain and stop on SIGTERM.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::bail;
use gateway::ListenerConfig;

use crate::config::Config;
use crate::manager::config::DEFAULT_AGENT_LISTEN;

/// Flags of `portico agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The registry: `redis://host:6379/0` (required unless --config names one).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// Address other hosts reach this host's instances on.
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// This agent's id (default: the host name).
    #[arg(long)]
    pub id: Option<String>,
    /// Data directory: pid records of running instances, instance logs.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the admin listener (`/manager/...`, `/metrics`, `/readyz`).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_AGENT_LISTEN)]
    pub listen: String,
    /// Instances this agent runs at most (default: 4 per core).
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Prefix of the registry's Redis keys.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Switch to this user after binding (when started as root).
    #[arg(long)]
    pub user: Option<String>,
    /// Run as root when no --user is given.
    #[arg(long)]
    pub allow_root: bool,
    /// A config file for everything else (`[manager]`, `[log]`, `data_dir`); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = agent_config(args)?;
    crate::serve::run_with(config)
}

/// The config `serve` runs with: the file's (or the defaults), the flags on top, one admin
/// listener, the agent on.
fn agent_config(args: AgentArgs) -> anyhow::Result<Config> {
    let from_file = args.config.is_some();
    let mut config = Config::load(args.config.as_deref())?;
    let manager = &mut config.services.manager;
    match args.registry {
        Some(url) => manager.registry = url,
        None if from_file => {}
        None => bail!("--registry is required (redis://HOST:6379/0), or a --config naming one"),
    }
    manager.agent = Some(true);
    manager.agent_id = args.id.or(manager.agent_id.take());
    manager.advertise = args.advertise.or(manager.advertise);
    if let Some(max) = args.max_instances {
        manager.max_instances = max;
    }
    if let Some(prefix) = args.key_prefix {
        manager.key_prefix = prefix;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.user = args.user.or(config.user);
    config.allow_root |= args.allow_root;
    let mut admin = ListenerConfig::new(&args.listen, None);
    admin.services = vec![gateway::ADMIN.to_string()];
    config.listeners = vec![admin];
    let problems = config.validate();
    if !problems.is_empty() {
        bail!(
            "portico agent has {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<Config> {
        let args = Cli::try_parse_from(std::iter::once("agent").chain(flags.iter().copied()))?.args;
        agent_config(args)
    }

    #[test]
    fn flags_make_an_admin_only_agent_on_the_registry() {
        let config = config(&[
            "--registry",
            "redis://10.0.0.1:6379/0",
            "--advertise",
            "10.0.0.2",
            "--id",
            "host-b",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        let manager = &config.services.manager;
        assert!(manager.runs_agent());
        assert_eq!(manager.agent_id(), "host-b");
        assert_eq!(manager.advertise().to_string(), "10.0.0.2");
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].services, ["admin"]);
        assert_eq!(
            config.gateway().listeners[0].services,
            ["admin", "manager", "dashboard"]
        );
    }

    #[test]
    fn a_redis_agent_without_an_address_or_registry_is_refused() {
        let error = config(&["--registry", "redis://r:6379/0"]).unwrap_err();
        assert!(
            format!("{error:#}").contains("manager.advertise: required"),
            "{error:#}"
        );
        let error = config(&["--advertise", "10.0.0.2"]).unwrap_err();
        assert!(
            format!("{error:#}").contains("--registry is required"),
            "{error:#}"
        );
    }
}
