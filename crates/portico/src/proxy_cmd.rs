//! `portico proxy PORT [SERVICE IP[:PORT]] [--configfile conf.json] [--registry URL]`: the
//! original proxy's entry point (PhysarumSM's `proxy`), for scripts that start it.
//!
//! It is `portico serve` with one plain-HTTP listener on `127.0.0.1:PORT` that mounts only
//! the proxy: a request for `/SERVICE/PATH` goes to an instance of SERVICE as `/PATH`. With
//! SERVICE and IP (server mode) it also registers the instance of SERVICE already running at
//! IP:PORT (port 8080 by default, as the original) for as long as it runs
//! (`[[proxy.register]]`). The original's `conf.json` gives the latency limits
//! (`Perf.SoftReq.RTT`, `Perf.HardReq.RTT`, milliseconds; defaults 100 and 1000), applied to
//! every service in this proxy; its `Bootstraps` (libp2p peers) are not used: instances are
//! found through the registry (`--registry redis://...` for many hosts; else the embedded
//! one with this host's agent, as `portico serve` has).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use gateway::ListenerConfig;
use serde::Deserialize;

use crate::config::Config;

/// The original's default config file, relative to the working directory.
pub const DEFAULT_CONF_JSON: &str = "conf/conf.json";
/// The original's instance port when IP has none.
pub const DEFAULT_INSTANCE_PORT: u16 = 8080;

/// Flags of `portico proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Port of the HTTP proxy on 127.0.0.1.
    pub port: u16,
    /// Server mode: the service whose instance runs at IP.
    #[arg(requires = "ip")]
    pub service: Option<String>,
    /// IP[:PORT] of that instance (port 8080 when omitted).
    pub ip: Option<String>,
    /// The original's config file: `Perf.SoftReq.RTT` and `Perf.HardReq.RTT` in ms.
    #[arg(long, value_name = "FILE")]
    pub configfile: Option<PathBuf>,
    /// The registry: `redis://host:6379/0` (default: embedded, with this host's agent).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// A Portico config file for everything else (`[manager]`, `[log]`, `data_dir`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The original's `conf.json` (unknown fields are ignored, as the original's reader does).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConfJson {
    perf: Perf,
    bootstraps: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Perf {
    soft_req: Requirement,
    hard_req: Requirement,
}

impl Default for Perf {
    fn default() -> Self {
        Perf {
            soft_req: Requirement { rtt: 100 },
            hard_req: Requirement { rtt: 1000 },
        }
    }
}

#[derive(Debug, Deserialize)]
struct Requirement {
    /// Milliseconds.
    #[serde(rename = "RTT")]
    rtt: u64,
}

/// Runs the proxy until SIGTERM/SIGINT.
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = proxy_config(args)?;
    crate::serve::run_with(config)
}

/// The config `serve` runs with (see the module doc); says on stdout what it took from where.
fn proxy_config(args: ProxyArgs) -> anyhow::Result<Config> {
    let (conf, conf_path) = read_conf_json(args.configfile.as_deref())?;
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(url) = args.registry {
        config.services.manager.registry = url;
        config.services.manager.agent.get_or_insert(false);
    }
    let soft = Duration::from_millis(conf.perf.soft_req.rtt);
    let hard = Duration::from_millis(conf.perf.hard_req.rtt);
    let proxy = &mut config.services.proxy;
    proxy.soft_latency = Some(soft);
    proxy.hard_latency = Some(hard);
    println!(
        "portico proxy: performance requirements from {conf_path}: soft limit {}, hard limit {}",
        humantime::format_duration(soft),
        humantime::format_duration(hard)
    );
    println!(
        "portico proxy: Bootstraps ({} in {conf_path}) are not used: instances are found through \
         the registry ({})",
        conf.bootstraps.len(),
        config.services.manager.registry
    );
    if let (Some(service), Some(ip)) = (args.service, args.ip) {
        let addr = instance_addr(&ip)?;
        println!("portico proxy: server mode: registering {service} at {addr} while this runs");
        proxy.register.push(proxy::External { service, addr });
    }
    let mut listener = ListenerConfig::new(&format!("127.0.0.1:{}", args.port), None);
    listener.services = vec!["proxy".to_string()];
    config.listeners = vec![listener];
    let problems = config.validate();
    if !problems.is_empty() {
        bail!(
            "portico proxy has {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(config)
}

/// `conf.json` from `path`, or from the original's default place; a missing default file
/// means the original's defaults. Also says where the values came from.
fn read_conf_json(path: Option<&Path>) -> anyhow::Result<(ConfJson, String)> {
    let (path, given) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONF_JSON), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if !given && error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((ConfJson::default(), "the defaults".to_string()))
        }
        Err(error) => bail!("reading --configfile {}: {error}", path.display()),
    };
    let conf = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the original's conf.json", path.display()))?;
    Ok((conf, path.display().to_string()))
}

/// `IP` or `IP:PORT` (IPv6 as `[::1]:8080`), port 8080 when omitted.
fn instance_addr(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: IpAddr = text
        .parse()
        .with_context(|| format!("{text:?} is neither IP nor IP:PORT"))?;
    Ok(SocketAddr::new(ip, DEFAULT_INSTANCE_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<Config> {
        let args = Cli::try_parse_from(std::iter::once("proxy").chain(flags.iter().copied()))?;
        proxy_config(args.args)
    }

    #[test]
    fn client_mode_is_one_loopback_listener_with_the_proxy_and_the_default_limits() {
        let missing = config(&["1234", "--configfile", "/nonexistent/conf.json"]);
        assert!(format!("{:#}", missing.unwrap_err()).contains("/nonexistent/conf.json"));
        let temp = tempfile::tempdir().unwrap();
        let conf = temp.path().join("conf.json");
        std::fs::write(
            &conf,
            r#"{"Perf":{"SoftReq":{"RTT":50},"HardReq":{"RTT":700}},"Bootstraps":["/ip4/10.0.0.1/tcp/4001/p2p/Qm"],"Other":1}"#,
        )
        .unwrap();
        let config = config(&["1234", "--configfile", conf.to_str().unwrap()]).unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].addr, "127.0.0.1:1234");
        assert_eq!(config.listeners[0].services, ["proxy"]);
        let proxy = &config.services.proxy;
        assert_eq!(proxy.soft_latency, Some(Duration::from_millis(50)));
        assert_eq!(proxy.hard_latency, Some(Duration::from_millis(700)));
        assert!(proxy.register.is_empty());
    }

    #[test]
    fn server_mode_registers_the_instance_at_port_8080_unless_told() {
        let config = config(&["1234", "hello-world-server", "10.11.17.10"]).unwrap();
        let register = &config.services.proxy.register;
        assert_eq!(register[0].service, "hello-world-server");
        assert_eq!(register[0].addr.to_string(), "10.11.17.10:8080");
        let config = config_with_registry();
        assert_eq!(
            config.services.proxy.register[0].addr.to_string(),
            "10.0.0.9:9000"
        );
        assert_eq!(config.services.manager.registry, "redis://127.0.0.1:6379/0");
        assert!(!config.services.manager.runs_agent());
        assert!(Cli::try_parse_from(["proxy", "1234", "only-a-service"]).is_err());
    }

    fn config_with_registry() -> Config {
        config(&[
            "1234",
            "svc",
            "10.0.0.9:9000",
            "--registry",
            "redis://127.0.0.1:6379/0",
        ])
        .unwrap()
    }
}
