//! The `[fib]` section of the config file, with its defaults and validation.

use std::net::ToSocketAddrs;
use std::time::Duration;

use serde::Deserialize;

/// Largest N served by default.
pub const DEFAULT_LIMIT: u64 = 100_000;
/// Default budget of the shared number cache: holds F(0) .. F(~24,700).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Default time allowed for one back-end call (connect, send, first reply bytes).
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default connections per back end (calls in flight to it; more wait for a free one).
pub const DEFAULT_POOL_SIZE: usize = 32;
/// Default budget of the REST tier's cache of back-end replies.
pub const DEFAULT_CLIENT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The `[fib]` section of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest N served.
    pub limit: u64,
    /// Remote back ends (`host:port`); empty computes in process.
    pub backends: Vec<String>,
    /// Bytes of decimal text the in-process cache may hold (0: no cache).
    pub cache_bytes: u64,
    /// Time allowed for one back-end call before it is retried elsewhere.
    #[serde(with = "humantime_serde")]
    pub backend_timeout: Duration,
    /// Connections per back end, kept open between calls; calls past it wait for a free one.
    pub pool_size: usize,
    /// Bytes of back-end replies the REST tier keeps (0: none). Failures are never kept.
    pub client_cache_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: DEFAULT_LIMIT,
            backends: Vec::new(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            backend_timeout: DEFAULT_BACKEND_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            client_cache_bytes: DEFAULT_CLIENT_CACHE_BYTES,
        }
    }
}

impl Config {
    /// Every problem with this section, each naming its key (`fib.limit: ...`).
    pub fn validate(&self) -> Vec<String> {
        let Config {
            limit,
            backends,
            cache_bytes: _,
            backend_timeout,
            pool_size,
            client_cache_bytes: _,
        } = self;
        let mut problems = Vec::new();
        if *limit == 0 || *limit > crate::length::MAX_N {
            problems.push(format!(
                "fib.limit: must be from 1 to {}, got {limit}",
                crate::length::MAX_N
            ));
        }
        for (i, backend) in backends.iter().enumerate() {
            if let Err(problem) = check_backend_address(backend) {
                problems.push(format!("fib.backends[{i}]: {problem}"));
            }
        }
        if backend_timeout.is_zero() {
            problems.push("fib.backend_timeout: must be more than 0s".into());
        }
        if *pool_size == 0 {
            problems.push("fib.pool_size: must be at least 1".into());
        }
        problems
    }
}

/// `host:port` with a port; the host is resolved when connecting, but an IP must parse.
fn check_backend_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("\"{address}\" is not host:port"));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!(
            "\"{address}\" is not host:port with a port from 1 to 65535"
        ));
    }
    let looks_like_ip =
        host.starts_with('[') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if looks_like_ip && address.to_socket_addrs().is_err() {
        return Err(format!("\"{address}\" is not a valid IP address and port"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let config: Config = toml::from_str(
            r#"
            limit = 0
            backends = ["127.0.0.1:2003", "nohost", "10.0.0.300:2003", "[::1]:0"]
            backend_timeout = "0s"
            pool_size = 0
            "#,
        )
        .expect("parses");
        let problems = config.validate();
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert!(problems[0].starts_with("fib.limit:"));
        assert!(problems[1].starts_with("fib.backends[1]:"));
        assert!(problems[2].starts_with("fib.backends[2]:"));
        assert!(problems[3].starts_with("fib.backends[3]:"));
        assert!(problems[4].starts_with("fib.backend_timeout:"));
        assert!(problems[5].starts_with("fib.pool_size:"));
    }

    #[test]
    fn the_example_config_shows_the_defaults() {
        let text = include_str!("../../../portico.example.toml");
        let whole: toml::Value = toml::from_str(text).expect("the example is TOML");
        let section = whole.get("fib").expect("[fib] in the example").clone();
        let example: Config = section.try_into().expect("[fib] of the example is valid");
        assert_eq!(format!("{example:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("limt = 5").expect_err("unknown key");
        assert!(err.to_string().contains("limt"), "{err}");
    }
}
