//! The config file: parsed into raw serde structs (unknown keys are errors naming the key),
//! overridden by `PORTICO_<SECTION>_<KEY>` environment variables (each read as its key's
//! type: the gateway's in [`GATEWAY_ENV`], each service's in its entry of the table of
//! services, `wire`), then validated as a whole with every problem reported. Each built-in
//! service's section (`[messages]`, `[fib]`, ...) is taken out of the file by that table and
//! parsed into its own type; the rest is the gateway's.

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
    /// The built-in services' sections (see `wire`).
    #[serde(skip)]
    pub services: crate::wire::Sections,
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

/// The TOML type of the key an environment variable overrides. The variable's text is read
/// as this type, never guessed from how it looks: `PORTICO_USER=1000` is a user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// A string or a path: the text as it is.
    Text,
    /// An integer (decimal, optional sign).
    Integer,
    /// `true` or `false`.
    // No boolean key has an override yet; the kind is tested so the first one just works.
    #[allow(dead_code)]
    Bool,
}

/// One environment variable that overrides a key of the file.
#[derive(Debug, Clone, Copy)]
pub struct EnvOverride {
    pub var: &'static str,
    /// The key's table; empty for a top-level key.
    pub section: &'static str,
    pub key: &'static str,
    pub kind: EnvKind,
}

pub const fn env_override(
    var: &'static str,
    section: &'static str,
    key: &'static str,
    kind: EnvKind,
) -> EnvOverride {
    EnvOverride {
        var,
        section,
        key,
        kind,
    }
}

/// Environment variables that override the gateway's keys; each service's are in its entry
/// of the table of services (`wire`).
pub const GATEWAY_ENV: &[EnvOverride] = &[
    env_override("PORTICO_DATA_DIR", "", "data_dir", EnvKind::Text),
    env_override("PORTICO_USER", "", "user", EnvKind::Text),
    env_override("PORTICO_LOG_DIR", "log", "dir", EnvKind::Text),
    env_override("PORTICO_LOG_LEVEL", "log", "level", EnvKind::Text),
];

/// Every environment variable that overrides the file: the gateway's, then each service's.
pub fn env_overrides() -> Vec<EnvOverride> {
    let mut all = GATEWAY_ENV.to_vec();
    all.extend(crate::wire::service_env());
    all
}

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
        for entry in env_overrides() {
            if let Some((_, value)) = env.iter().find(|(name, _)| name == entry.var) {
                entry.apply(&mut table, value)?;
            }
        }
        let services = crate::wire::Sections::take_from(&mut table)?;
        let mut config = Config::deserialize(table)?;
        config.services = services;
        Ok(config)
    }

    /// Every problem in the config, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let services = crate::wire::SERVICE_NAMES;
        let mut errors = self.gateway().validate(services);
        errors.extend(self.log.validate());
        errors.extend(self.services.validate());
        errors
    }

    /// The gateway's part. Listeners also mount the services that go with the ones they
    /// name (`manager` with `admin`).
    pub fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            data_dir: self.data_dir.clone(),
            listeners: self.listeners.iter().map(with_companions).collect(),
            limits: self.limits.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            allow_root: self.allow_root,
            workers: self.workers,
        }
    }
}

/// `listener` with the services that go with the ones it names (`*` needs none).
fn with_companions(listener: &ListenerConfig) -> ListenerConfig {
    let mut listener = listener.clone();
    for (with, service) in crate::wire::mounted_with() {
        let named = |name: &str| listener.services.iter().any(|s| s == name);
        if named(with) && !named(service) && !named("*") {
            listener.services.push(service.to_string());
        }
    }
    listener
}

impl EnvOverride {
    /// Sets the key in `table` to `text` read as the key's kind; an error names the variable.
    fn apply(&self, table: &mut toml::Table, text: &str) -> anyhow::Result<()> {
        let value = self
            .value(text)
            .with_context(|| format!("environment variable {}", self.var))?;
        let target = if self.section.is_empty() {
            table
        } else {
            let entry = table
                .entry(self.section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => inner,
                _ => bail!(
                    "environment variable {}: [{}] in the file is not a table",
                    self.var,
                    self.section
                ),
            }
        };
        target.insert(self.key.to_string(), value);
        Ok(())
    }

    fn value(&self, text: &str) -> anyhow::Result<toml::Value> {
        let key = self.dotted_key();
        match self.kind {
            EnvKind::Text => Ok(toml::Value::String(text.to_string())),
            EnvKind::Integer => text
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| anyhow::anyhow!("{key} takes an integer, got {text:?}")),
            EnvKind::Bool => match text {
                "true" => Ok(toml::Value::Boolean(true)),
                "false" => Ok(toml::Value::Boolean(false)),
                _ => bail!("{key} takes true or false, got {text:?}"),
            },
        }
    }

    /// `section.key`, or `key` at the top level (for messages).
    fn dotted_key(&self) -> String {
        if self.section.is_empty() {
            self.key.to_string()
        } else {
            format!("{}.{}", self.section, self.key)
        }
    }
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
        assert_eq!(config.services.fib.limit, 50);
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse(text, env)
    }

    #[test]
    fn string_overrides_stay_strings_whatever_they_look_like() {
        let config = with_env(
            "",
            &[
                ("PORTICO_USER", "1000"),
                ("PORTICO_LOG_LEVEL", "true"),
                ("PORTICO_DATA_DIR", "1e3"),
                ("PORTICO_MESSAGES_STORE", "2024-01-01"),
            ],
        )
        .unwrap();
        assert_eq!(config.user.as_deref(), Some("1000"));
        assert_eq!(config.log.level, "true");
        assert_eq!(config.data_dir, PathBuf::from("1e3"));
        assert_eq!(
            config.services.messages.store.as_deref(),
            Some("2024-01-01")
        );
    }

    #[test]
    fn integer_override_with_other_text_names_the_variable_and_the_type() {
        for bad in ["fifty", "5.0", "", "true"] {
            let err = format!(
                "{:#}",
                with_env("", &[("PORTICO_FIB_LIMIT", bad)]).unwrap_err()
            );
            assert!(err.contains("PORTICO_FIB_LIMIT"), "{err}");
            assert!(err.contains("an integer"), "{err}");
        }
    }

    #[test]
    fn every_override_sets_a_key_of_its_declared_type() {
        // A value of the declared kind must deserialize: a table entry with the wrong kind
        // (a path marked as an integer, a count marked as text) fails here.
        for entry in env_overrides() {
            let sample = match entry.kind {
                EnvKind::Text => "1000",
                EnvKind::Integer => "7",
                EnvKind::Bool => "true",
            };
            with_env("", &[(entry.var, sample)])
                .unwrap_or_else(|e| panic!("{} = {sample}: {e:#}", entry.var));
        }
    }

    #[test]
    fn boolean_overrides_take_true_or_false_only() {
        let flag = EnvOverride {
            var: "PORTICO_TEST_FLAG",
            section: "s",
            key: "flag",
            kind: EnvKind::Bool,
        };
        let mut table = toml::Table::new();
        flag.apply(&mut table, "false").unwrap();
        assert_eq!(table["s"]["flag"], toml::Value::Boolean(false));
        let err = format!("{:#}", flag.apply(&mut table, "yes").unwrap_err());
        assert!(
            err.contains("PORTICO_TEST_FLAG") && err.contains("true or false"),
            "{err}"
        );
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
