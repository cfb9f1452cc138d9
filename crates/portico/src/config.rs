//! The config file: parsed into raw serde structs (unknown keys are errors naming the key),
//! overridden by `PORTICO_<SECTION>_<KEY>` environment variables, then validated as a whole
//! with every problem reported.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use gateway::{GatewayConfig, LimitsConfig, ListenerConfig, LogConfig, TlsConfig};
use serde::Deserialize;

/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./portico-data";

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Switch to this user after binding (when started as root).
    #[serde(default)]
    pub user: Option<String>,
    /// Switch to this group instead of the user's primary group.
    #[serde(default)]
    pub group: Option<String>,
    /// Serve as root when no `user` is set.
    #[serde(default)]
    pub allow_root: bool,
    /// Event loops serving connections (threads); 0: one per core.
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default = "default_listeners", rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub messages: messages::Config,
    #[serde(default)]
    pub region: region::Config,
    #[serde(default)]
    pub fib: fib::Config,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// HTTP on 127.0.0.1:8080 and HTTPS (self-signed) on 127.0.0.1:8443, every service on both.
fn default_listeners() -> Vec<ListenerConfig> {
    vec![
        ListenerConfig::new(gateway::config::DEFAULT_HTTP_ADDR, None),
        ListenerConfig::new(
            gateway::config::DEFAULT_HTTPS_ADDR,
            Some(TlsConfig::self_signed()),
        ),
    ]
}

/// Environment variables that override the file, with the TOML key each sets.
pub const ENV_OVERRIDES: &[(&str, &str, &str)] = &[
    ("PORTICO_DATA_DIR", "", "data_dir"),
    ("PORTICO_USER", "", "user"),
    ("PORTICO_LOG_DIR", "log", "dir"),
    ("PORTICO_LOG_LEVEL", "log", "level"),
    ("PORTICO_MESSAGES_STORE", "messages", "store"),
    ("PORTICO_REGION_DATA", "region", "data"),
    ("PORTICO_FIB_LIMIT", "fib", "limit"),
];

impl Config {
    /// Reads `path` (or the defaults when `None`), applies the environment and validates.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?,
            None => String::new(),
        };
        let name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let config =
            Config::parse(&text, std::env::vars()).with_context(|| format!("config {name}"))?;
        let errors = config.validate();
        if !errors.is_empty() {
            bail!(
                "config {name} has {} problem(s):\n  {}",
                errors.len(),
                errors.join("\n  ")
            );
        }
        Ok(config)
    }

    /// Parses TOML text with environment overrides taken from `env`.
    pub fn parse(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text)?;
        let env: Vec<(String, String)> = env.collect();
        for (var, section, key) in ENV_OVERRIDES {
            if let Some((_, value)) = env.iter().find(|(name, _)| name == var) {
                set_override(&mut table, section, key, value)
                    .with_context(|| format!("environment variable {var}"))?;
            }
        }
        Ok(Config::deserialize(table)?)
    }

    /// Every problem in the config, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let services = crate::wire::SERVICE_NAMES;
        let mut errors = self.gateway().validate(services);
        errors.extend(self.log.validate());
        errors.extend(self.messages.validate());
        errors.extend(self.region.validate());
        errors.extend(self.fib.validate());
        errors
    }

    /// The gateway's part.
    pub fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            data_dir: self.data_dir.clone(),
            listeners: self.listeners.clone(),
            limits: self.limits.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            allow_root: self.allow_root,
            workers: self.workers,
        }
    }
}

/// Sets `section.key` (or a top-level `key`) to `value`: TOML syntax when it parses as a
/// number or boolean, else a string.
fn set_override(
    table: &mut toml::Table,
    section: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| v.is_integer() || v.is_bool() || v.is_float())
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let target = if section.is_empty() {
        table
    } else {
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(inner) => inner,
            _ => bail!("[{section}] in the file is not a table"),
        }
    };
    target.insert(key.to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, std::iter::empty())
    }

    #[test]
    fn empty_file_means_http_and_https_on_loopback() {
        let config = parse("").unwrap();
        assert_eq!(config.listeners.len(), 2);
        assert_eq!(config.listeners[0].addr, "127.0.0.1:8080");
        assert!(config.listeners[1].tls.as_ref().unwrap().self_signed);
        assert!(config.validate().is_empty(), "{:?}", config.validate());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = format!("{:#}", parse("[log]\nmax_bites = 3\n").unwrap_err());
        assert!(err.contains("max_bites"), "{err}");
        let err = format!("{:#}", parse("colour = \"red\"\n").unwrap_err());
        assert!(err.contains("colour"), "{err}");
        let err = format!(
            "{:#}",
            parse("[[listener]]\naddr = \"127.0.0.1:1\"\ntls = { crt = \"x\" }\n").unwrap_err()
        );
        assert!(err.contains("crt"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = format!("{:#}", parse("[log]\nbackups = \"five\"\n").unwrap_err());
        assert!(err.contains("backups"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("PORTICO_LOG_LEVEL".to_string(), "debug".to_string()),
            ("PORTICO_FIB_LIMIT".to_string(), "50".to_string()),
        ];
        let config = Config::parse("[log]\nlevel = \"warn\"\n", env.into_iter()).unwrap();
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.fib.limit, 50);
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_zero_config_listeners() {
        let text = include_str!("../../../portico.example.toml");
        let config = parse(text).unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let defaults = parse("").unwrap();
        let addrs = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| l.addr.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs(&config), addrs(&defaults));
        assert_eq!(config.limits.max_body_bytes, defaults.limits.max_body_bytes);
        assert_eq!(config.log.max_bytes, defaults.log.max_bytes);
    }

    #[test]
    fn every_validation_problem_is_reported() {
        let config = parse(
            "[[listener]]\naddr = \"nowhere\"\nservices = [\"bogus\"]\n[log]\nmax_bytes = 0\n",
        )
        .unwrap();
        let errors = config.validate();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
