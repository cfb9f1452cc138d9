//! The `[messages]` config section and which store it selects.
//!
//! Store precedence: `store` in the config file wins; when it is absent and the environment
//! variable `MESSAGES_REDIS_HOST` (the original app's) is set, Redis on that host, port 6379,
//! db 0; otherwise the embedded store in `data_dir`.

use std::time::Duration;

use serde::Deserialize;

/// The original app's environment variable naming its Redis host.
pub const REDIS_HOST_ENV: &str = "MESSAGES_REDIS_HOST";

/// Default request body limit: under the gateway's 1 MiB so oversize bodies get this
/// service's JSON 413 rather than the gateway's.
pub const DEFAULT_MAX_BODY_BYTES: usize = 512 * 1024;
/// Largest body limit accepted.
pub const MAX_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Default bound of the embedded store's cache of read messages.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Default number of shared Redis connections: 0, one connection per serving thread, so a
/// request and its connection stay on one thread (bench/messages). Shared connections: one
/// pipelined best (64 clients over one gave ~15% more GETs/s than over four).
pub const DEFAULT_REDIS_CONNECTIONS: usize = 0;
/// Default bound on one Redis operation, reconnecting included: a Redis that is down
/// answers 503 within this time.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The `[messages]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `"embedded"` or `"redis://host:port/db"`; absent: see the module docs.
    pub store: Option<String>,
    /// Prepended to every Redis key (empty: bare digests, like the original app).
    pub key_prefix: String,
    /// Largest accepted request body; bigger bodies get 413.
    pub max_body_bytes: usize,
    /// Embedded store: bytes of read messages kept in memory (0: none).
    pub cache_bytes: usize,
    /// Shared multiplexed Redis connections used round-robin; 0: one per serving thread.
    pub redis_connections: usize,
    /// Bound on one Redis operation, e.g. `"1s"` or `"500ms"`.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: None,
            key_prefix: String::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            cache_bytes: DEFAULT_CACHE_BYTES,
            redis_connections: DEFAULT_REDIS_CONNECTIONS,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }
}

/// The store a config selects, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// redb file `messages.redb` in the data directory.
    Embedded,
    /// Redis at `url`; `from_env` when it came from `MESSAGES_REDIS_HOST`.
    Redis { url: String, from_env: bool },
}

impl Config {
    /// Every problem with this section, each naming its key (`messages.store: ...`).
    pub fn validate(&self) -> Vec<String> {
        self.validate_with_env(std::env::var(REDIS_HOST_ENV).ok().as_deref())
    }

    /// The store this config selects, given the process environment.
    pub fn store_choice(&self) -> Result<StoreChoice, String> {
        self.store_choice_with_env(std::env::var(REDIS_HOST_ENV).ok().as_deref())
    }

    /// `validate` with the value of `MESSAGES_REDIS_HOST` passed in (testable).
    pub fn validate_with_env(&self, redis_host: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        match self.store_choice_with_env(redis_host) {
            Ok(StoreChoice::Redis { url, .. }) => {
                if let Err(e) = store::RedisStore::new(&self.redis_options(url)) {
                    problems.push(format!("messages.store: {e}"));
                }
            }
            Ok(StoreChoice::Embedded) => {}
            Err(problem) => problems.push(problem),
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_MAX_BODY_BYTES {
            problems.push(format!(
                "messages.max_body_bytes: must be between 1 and {MAX_MAX_BODY_BYTES}, got {}",
                self.max_body_bytes
            ));
        }
        if self.redis_connections > 64 {
            problems.push(format!(
                "messages.redis_connections: must be between 0 and 64, got {}",
                self.redis_connections
            ));
        }
        if self.redis_timeout < Duration::from_millis(10)
            || self.redis_timeout > Duration::from_secs(60)
        {
            problems.push(format!(
                "messages.redis_timeout: must be between 10ms and 60s, got {:?}",
                self.redis_timeout
            ));
        }
        problems
    }

    /// `store_choice` with the value of `MESSAGES_REDIS_HOST` passed in (testable).
    pub fn store_choice_with_env(&self, redis_host: Option<&str>) -> Result<StoreChoice, String> {
        match (self.store.as_deref(), redis_host) {
            (Some("embedded"), _) | (None, None) => Ok(StoreChoice::Embedded),
            (Some(url), _) if url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://") || url.starts_with("unix://") => {
                Ok(StoreChoice::Redis {
                    url: url.to_string(),
                    from_env: false,
                })
            }
            (Some(other), _) => Err(format!(
                "messages.store: must be \"embedded\" or a Redis URL like \"redis://127.0.0.1:6379/0\", got {other:?}"
            )),
            (None, Some(host)) => redis_url_for_host(host).map(|url| StoreChoice::Redis {
                url,
                from_env: true,
            }),
        }
    }

    /// The Redis store options for `url` under this config.
    pub fn redis_options(&self, url: String) -> store::RedisOptions {
        store::RedisOptions {
            url,
            key_prefix: self.key_prefix.clone(),
            connections: self.redis_connections,
            timeout: self.redis_timeout,
        }
    }
}

/// `redis://HOST:6379/0` for the original app's `MESSAGES_REDIS_HOST=HOST`.
fn redis_url_for_host(host: &str) -> Result<String, String> {
    let host = host.trim();
    let bad =
        |why: &str| format!("messages.store: environment variable {REDIS_HOST_ENV}={host:?} {why}");
    if host.is_empty() {
        return Err(bad("is empty; unset it or name a host"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if !host.chars().all(allowed) {
        return Err(bad("is not a host name or IP address"));
    }
    if host.contains(':') {
        // Only an IPv6 address has colons here; the port is always 6379.
        return match host.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Ok(format!("redis://[{ip}]:6379/0")),
            Err(_) => Err(bad(
                "is not a host name or IP address (the port is always 6379)",
            )),
        };
    }
    Ok(format!("redis://{host}:6379/0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn empty_section_is_the_embedded_default() {
        let config = parse("").expect("empty section");
        assert_eq!(config, Config::default());
        assert_eq!(
            config.store_choice_with_env(None),
            Ok(StoreChoice::Embedded)
        );
        assert!(config.validate_with_env(None).is_empty());
    }

    #[test]
    fn redis_host_env_selects_redis_when_the_file_names_no_store() {
        let config = Config::default();
        let choice = config.store_choice_with_env(Some("redis"));
        let expected = StoreChoice::Redis {
            url: "redis://redis:6379/0".into(),
            from_env: true,
        };
        assert_eq!(choice, Ok(expected));
    }

    #[test]
    fn file_store_wins_over_redis_host_env() {
        let config = parse(r#"store = "embedded""#).expect("valid");
        assert_eq!(
            config.store_choice_with_env(Some("redis")),
            Ok(StoreChoice::Embedded)
        );
        let config = parse(r#"store = "redis://10.0.0.1:6380/2""#).expect("valid");
        let choice = config.store_choice_with_env(Some("redis"));
        let expected = StoreChoice::Redis {
            url: "redis://10.0.0.1:6380/2".into(),
            from_env: false,
        };
        assert_eq!(choice, Ok(expected));
    }

    #[test]
    fn redis_host_env_accepts_ipv6_and_rejects_junk() {
        let config = Config::default();
        let choice = config.store_choice_with_env(Some("::1"));
        assert!(
            matches!(choice, Ok(StoreChoice::Redis { url, .. }) if url == "redis://[::1]:6379/0")
        );
        for junk in ["", "host:6379", "a b", "redis://x"] {
            let problems = config.validate_with_env(Some(junk));
            assert_eq!(problems.len(), 1, "{junk:?}: {problems:?}");
            assert!(
                problems[0].starts_with("messages.store: environment variable MESSAGES_REDIS_HOST")
            );
        }
    }

    #[test]
    fn unknown_store_is_named() {
        let config = parse(r#"store = "postgres://x""#).expect("parses");
        let problems = config.validate_with_env(None);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("messages.store") && problems[0].contains("postgres://x"));
    }

    #[test]
    fn every_bad_value_is_reported() {
        let config = parse(
            "store = \"redis://\"\nmax_body_bytes = 0\nredis_connections = 65\nredis_timeout = \"1ms\"",
        )
        .expect("parses");
        let problems = config.validate_with_env(None);
        let keys: Vec<&str> = problems
            .iter()
            .filter_map(|p| p.split(':').next())
            .collect();
        assert_eq!(
            keys,
            [
                "messages.store",
                "messages.max_body_bytes",
                "messages.redis_connections",
                "messages.redis_timeout"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let error = parse("stroe = \"embedded\"").expect_err("typo");
        assert!(error.to_string().contains("stroe"), "{error}");
    }
}
