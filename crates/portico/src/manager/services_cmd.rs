//! `portico services list|add|rm`: the catalog from the command line, against
//!
//! - `--registry redis://...`: the registry itself (many hosts);
//! - `--registry http://HOST:PORT` (or https, with `--cacert`): a running Portico's
//!   `/manager` API (the only way into an embedded registry, which lives in that process);
//! - `--config FILE`: what that file's `[manager]` names (Redis, or for `embedded` the file's
//!   first listener mounting `admin`);
//! - nothing: `http://127.0.0.1:8080`, where `portico serve` listens without a config.
//!
//! A spec is checked here first (every bad field named), then by whoever stores it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use registry::{AnyRegistry, Registry, ServiceSpec};
use serde::Deserialize;

use crate::config::Config;
use crate::manager::ManagerConfig;

/// `portico services` without --registry or --config.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Bound on one call to the API.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[command(subcommand)]
    pub command: ServicesCommand,
    /// `redis://HOST:6379/0`, or `http(s)://HOST:PORT` of a Portico mounting `admin`.
    #[arg(long, global = true, value_name = "URL")]
    pub registry: Option<String>,
    /// Prefix of the registry's Redis keys.
    #[arg(long, global = true, default_value = registry::DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
    /// Take the registry from this config file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https:// URL.
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServicesCommand {
    /// List the catalog.
    List {
        /// Print the specs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add or replace a service: `add NAME [flags] -- COMMAND...`, or `--file SPEC`.
    Add(AddArgs),
    /// Remove a service; its instances drain and stop.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The service name (optional with a --file that names it).
    pub name: Option<String>,
    /// A spec as JSON (`.json`) or TOML (anything else); flags override its fields.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Health check path (default `/`).
    #[arg(long)]
    pub health: Option<String>,
    #[arg(long)]
    pub min: Option<u32>,
    #[arg(long)]
    pub max: Option<u32>,
    #[arg(long, value_name = "DURATION")]
    pub soft_latency: Option<humantime::Duration>,
    #[arg(long, value_name = "DURATION")]
    pub hard_latency: Option<humantime::Duration>,
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<humantime::Duration>,
    #[arg(long, value_name = "DURATION")]
    pub start_timeout: Option<humantime::Duration>,
    /// Environment of the instances (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The command (after `--`); `{port}` is the instance's port.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs the subcommand; exit status 1 on any failure.
pub fn run(args: ServicesArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let target = Target::resolve(&args)?;
        match args.command {
            ServicesCommand::List { json } => list(&target, json).await,
            ServicesCommand::Add(add) => {
                let spec = build_spec(add)?;
                let replaced = target.put(&spec).await?;
                let verb = if replaced { "replaced" } else { "added" };
                println!("{verb} {}", spec.name);
                Ok(())
            }
            ServicesCommand::Rm { name } => {
                let stopping = target.remove(&name).await?;
                println!("removed {name} ({stopping} instance(s) stopping)");
                Ok(())
            }
        }
    })
}

async fn list(target: &Target, json: bool) -> anyhow::Result<()> {
    let specs = target.list().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&specs)?);
        return Ok(());
    }
    if specs.is_empty() {
        println!("no services");
    }
    for spec in specs {
        println!(
            "{}  min {} max {}  soft {} hard {}  idle {}  health {}  {}",
            spec.name,
            spec.min,
            spec.max,
            humantime::format_duration(spec.soft_latency),
            humantime::format_duration(spec.hard_latency),
            humantime::format_duration(spec.idle_timeout),
            spec.health,
            spec.command.join(" ")
        );
    }
    Ok(())
}

/// The spec from the file (if any) and the flags, checked.
fn build_spec(add: AddArgs) -> anyhow::Result<ServiceSpec> {
    let AddArgs {
        name,
        file,
        health,
        min,
        max,
        soft_latency,
        hard_latency,
        idle_timeout,
        start_timeout,
        env,
        command,
    } = add;
    let mut spec = match &file {
        Some(path) => read_spec(path)?,
        None => ServiceSpec::new("", &[]),
    };
    match (name, spec.name.is_empty()) {
        (Some(name), true) => spec.name = name,
        (Some(name), false) if name != spec.name => {
            bail!(
                "the name {name:?} differs from the file's ({:?})",
                spec.name
            )
        }
        (None, true) => bail!("a service name is needed: `portico services add NAME ...`"),
        _ => {}
    }
    if !command.is_empty() {
        spec.command = command;
    }
    spec.health = health.unwrap_or(spec.health);
    spec.min = min.unwrap_or(spec.min);
    spec.max = max.unwrap_or(spec.max);
    spec.soft_latency = soft_latency.map_or(spec.soft_latency, Into::into);
    spec.hard_latency = hard_latency.map_or(spec.hard_latency, Into::into);
    spec.idle_timeout = idle_timeout.map_or(spec.idle_timeout, Into::into);
    spec.start_timeout = start_timeout.map_or(spec.start_timeout, Into::into);
    for pair in env {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {pair:?}: expected KEY=VALUE"))?;
        spec.env.insert(key.to_string(), value.to_string());
    }
    let problems = spec.validate_reserving(crate::wire::SERVICE_NAMES);
    if !problems.is_empty() {
        bail!("invalid service spec:\n  {}", problems.join("\n  "));
    }
    Ok(spec)
}

fn read_spec(path: &Path) -> anyhow::Result<ServiceSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let parsed = if is_json {
        serde_json::from_str(&text).map_err(anyhow::Error::from)
    } else {
        toml::from_str(&text).map_err(anyhow::Error::from)
    };
    parsed.with_context(|| format!("service spec {}", path.display()))
}

/// Where the catalog is.
enum Target {
    Registry(AnyRegistry),
    Api {
        base: String,
        client: reqwest::Client,
    },
}

/// An API error answer.
#[derive(Deserialize)]
struct ApiError {
    error: String,
    #[serde(default)]
    problems: Vec<String>,
}

impl Target {
    fn resolve(args: &ServicesArgs) -> anyhow::Result<Target> {
        if let Some(url) = &args.registry {
            return Target::from_url(url, &args.key_prefix, args.cacert.as_deref());
        }
        let Some(path) = &args.config else {
            return Target::from_url(DEFAULT_URL, &args.key_prefix, None);
        };
        let config = Config::load(Some(path))?;
        let manager = &config.services.manager;
        if !manager.is_embedded() {
            return Ok(Target::Registry(AnyRegistry::Redis(
                crate::manager::redis_registry(manager)?,
            )));
        }
        let url = admin_url(&config).ok_or_else(|| {
            anyhow!(
                "{}: the registry is embedded and no listener mounts admin",
                path.display()
            )
        })?;
        Target::from_url(&url, &args.key_prefix, args.cacert.as_deref())
    }

    fn from_url(url: &str, key_prefix: &str, cacert: Option<&Path>) -> anyhow::Result<Target> {
        if url.starts_with("http://") || url.starts_with("https://") {
            let mut builder = reqwest::Client::builder()
                .no_proxy()
                .timeout(HTTP_TIMEOUT)
                .use_rustls_tls()
                .tls_built_in_root_certs(false);
            if let Some(path) = cacert {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
            }
            let base = format!("{}/manager", url.trim_end_matches('/'));
            return Ok(Target::Api {
                base,
                client: builder.build()?,
            });
        }
        let config = ManagerConfig {
            registry: url.to_string(),
            key_prefix: key_prefix.to_string(),
            ..ManagerConfig::default()
        };
        Ok(Target::Registry(AnyRegistry::Redis(
            crate::manager::redis_registry(&config)?,
        )))
    }

    async fn list(&self) -> anyhow::Result<Vec<ServiceSpec>> {
        match self {
            Target::Registry(registry) => Ok(registry.services().await?),
            Target::Api { base, client } => {
                let answer = client.get(format!("{base}/services")).send().await?;
                Ok(ok_json(answer).await?)
            }
        }
    }

    /// Puts `spec`; whether it replaced one.
    async fn put(&self, spec: &ServiceSpec) -> anyhow::Result<bool> {
        match self {
            Target::Registry(registry) => {
                let existed = registry.service(&spec.name).await?.is_some();
                registry.put_service(spec).await?;
                Ok(existed)
            }
            Target::Api { base, client } => {
                let url = format!("{base}/services/{}", spec.name);
                let answer = client.put(url).json(spec).send().await?;
                let replaced = answer.status() == reqwest::StatusCode::OK;
                ok_json::<ServiceSpec>(answer).await?;
                Ok(replaced)
            }
        }
    }

    /// Removes `name`; how many instances were running.
    async fn remove(&self, name: &str) -> anyhow::Result<usize> {
        match self {
            Target::Registry(registry) => {
                let running = registry.instances(Some(name)).await?.len();
                if !registry.remove_service(name).await? {
                    bail!("unknown service {name:?}");
                }
                Ok(running)
            }
            Target::Api { base, client } => {
                let answer = client
                    .delete(format!("{base}/services/{name}"))
                    .send()
                    .await?;
                let removed: serde_json::Value = ok_json(answer).await?;
                Ok(removed["stopping"].as_u64().unwrap_or(0) as usize)
            }
        }
    }
}

/// The body of a 2xx answer, or the API's error as an error.
async fn ok_json<T: serde::de::DeserializeOwned>(answer: reqwest::Response) -> anyhow::Result<T> {
    let status = answer.status();
    let url = answer.url().to_string();
    let bytes = answer.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the answer of {url}"));
    }
    match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(error) if error.problems.is_empty() => bail!("{url}: {status}: {}", error.error),
        Ok(error) => bail!(
            "{url}: {status}: {}:\n  {}",
            error.error,
            error.problems.join("\n  ")
        ),
        Err(_) => bail!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ),
    }
}

/// `http(s)://ADDR` of the config's first listener mounting admin (a wildcard address is
/// reached on loopback).
fn admin_url(config: &Config) -> Option<String> {
    let listener = config
        .listeners
        .iter()
        .find(|l| l.services.iter().any(|s| s == "*" || s == gateway::ADMIN))?;
    let addr = listener
        .addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    let scheme = if listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServicesArgs,
    }

    fn add_args(flags: &[&str]) -> AddArgs {
        let cli =
            Cli::try_parse_from(std::iter::once("services").chain(flags.iter().copied())).unwrap();
        match cli.args.command {
            ServicesCommand::Add(add) => add,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_builds_a_spec_from_flags_and_the_command() {
        let spec = build_spec(add_args(&[
            "add",
            "hello",
            "--max",
            "3",
            "--soft-latency",
            "50ms",
            "--env",
            "A=b=c",
            "--",
            "python3",
            "-m",
            "http.server",
            "{port}",
        ]))
        .unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.max, 3);
        assert_eq!(spec.soft_latency, Duration::from_millis(50));
        assert_eq!(spec.env["A"], "b=c");
        assert_eq!(spec.command, ["python3", "-m", "http.server", "{port}"]);
    }

    #[test]
    fn add_checks_the_spec_naming_every_bad_field() {
        let error = build_spec(add_args(&["add", "Bad", "--min", "9"])).unwrap_err();
        let text = format!("{error:#}");
        for field in ["name \"Bad\"", "command", "min (9)"] {
            assert!(text.contains(field), "{field}: {text}");
        }
    }

    #[test]
    fn add_reads_json_and_toml_specs() {
        let temp = tempfile::tempdir().unwrap();
        let json = temp.path().join("s.json");
        std::fs::write(&json, r#"{"name":"a","command":["x","{port}"],"min":1}"#).unwrap();
        let spec = build_spec(add_args(&[
            "add",
            "--file",
            json.to_str().unwrap(),
            "--max",
            "2",
        ]))
        .unwrap();
        assert_eq!((spec.name.as_str(), spec.min, spec.max), ("a", 1, 2));
        let toml = temp.path().join("s.toml");
        std::fs::write(&toml, "command = [\"y\"]\nidle_timeout = \"1m\"\n").unwrap();
        let spec = build_spec(add_args(&["add", "b", "--file", toml.to_str().unwrap()])).unwrap();
        assert_eq!(spec.idle_timeout, Duration::from_secs(60));
        let error = build_spec(add_args(&[
            "add",
            "other",
            "--file",
            json.to_str().unwrap(),
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("differs"), "{error}");
    }

    #[test]
    fn the_admin_listener_of_a_config_is_found() {
        let config = Config::parse(
            "[[listener]]\naddr = \"0.0.0.0:9000\"\nservices = [\"messages\"]\n\
             [[listener]]\naddr = \"0.0.0.0:9001\"\nservices = [\"admin\"]\n",
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(admin_url(&config).unwrap(), "http://127.0.0.1:9001");
    }
}
