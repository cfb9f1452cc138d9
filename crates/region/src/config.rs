//! The `[region]` section of Portico's config file.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::net::{self, Net};

/// How often the data file is checked for changes by default (seconds).
pub const DEFAULT_WATCH_INTERVAL_SECS: u64 = 5;

/// The `[region]` section of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Path of `regionData.cfg`. Without it the service holds no regions and answers 404.
    pub data: Option<PathBuf>,
    /// Networks of reverse proxies whose `Forwarded` / `X-Forwarded-For` is believed
    /// (e.g. `["10.0.0.0/8", "::1"]`). Empty: the TCP peer is always the client, as in the
    /// original.
    pub trusted_proxies: Vec<String>,
    /// Print `SMTserverIP="None"` for IPv6-only servers, as the original does; by default the
    /// attribute is left out (the client treats it as optional).
    pub ipv6_only_server_ip_none: bool,
    /// Seconds between checks of the data file's size and mtime; a change reloads it.
    /// 0 turns the check off (SIGHUP still reloads).
    pub watch_interval_secs: u64,
    /// Log one line per request (client, hint, region provided or denied), as the original
    /// does. The gateway's access log has the client, the URL and the status either way.
    pub log_requests: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: None,
            trusted_proxies: Vec::new(),
            ipv6_only_server_ip_none: false,
            watch_interval_secs: DEFAULT_WATCH_INTERVAL_SECS,
            log_requests: true,
        }
    }
}

impl Config {
    /// Every problem with this section, each naming its key (`region.data: ...`).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(path) = &self.data {
            if path.as_os_str().is_empty() {
                problems.push("region.data: empty path".to_string());
            }
        }
        for item in &self.trusted_proxies {
            if let Err(e) = net::parse_any(item) {
                problems.push(format!(
                    "region.trusted_proxies: {item:?} is not a network: {e}"
                ));
            }
        }
        problems
    }

    /// The trusted proxy networks (invalid entries are reported by [`Config::validate`]).
    pub fn trusted_networks(&self) -> Vec<Net<IpAddr>> {
        self.trusted_proxies
            .iter()
            .filter_map(|item| net::parse_any(item).ok())
            .collect()
    }

    /// The watch interval, or `None` when watching is off.
    pub fn watch_interval(&self) -> Option<Duration> {
        (self.watch_interval_secs > 0).then(|| Duration::from_secs(self.watch_interval_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_trust_no_proxy_and_watch_every_five_seconds() {
        let c: Config = toml::from_str("").unwrap();
        assert!(c.trusted_proxies.is_empty());
        assert!(!c.ipv6_only_server_ip_none);
        assert_eq!(c.watch_interval(), Some(Duration::from_secs(5)));
        assert!(c.validate().is_empty());
    }

    #[test]
    fn bad_trusted_proxy_is_named() {
        let c = Config {
            trusted_proxies: vec!["10.0.0.0/8".into(), "10.0.0.1/8".into(), "nope".into()],
            ..Config::default()
        };
        let problems = c.validate();
        assert_eq!(problems.len(), 2);
        assert!(problems[0].starts_with("region.trusted_proxies: \"10.0.0.1/8\""));
        assert!(problems[1].starts_with("region.trusted_proxies: \"nope\""));
    }

    #[test]
    fn zero_interval_turns_watching_off() {
        let c = Config {
            watch_interval_secs: 0,
            ..Config::default()
        };
        assert_eq!(c.watch_interval(), None);
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err = toml::from_str::<Config>("dta = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("dta"), "{err}");
    }

    #[test]
    fn every_key_is_read() {
        let c: Config = toml::from_str(
            "data = \"/etc/regionService/regionData.cfg\"\n\
             trusted_proxies = [\"10.0.0.0/8\"]\n\
             ipv6_only_server_ip_none = true\n\
             watch_interval_secs = 2\n\
             log_requests = false\n",
        )
        .unwrap();
        assert_eq!(
            c.data.as_deref(),
            Some(std::path::Path::new("/etc/regionService/regionData.cfg"))
        );
        assert_eq!(c.trusted_networks().len(), 1);
        assert!(c.ipv6_only_server_ip_none);
        assert_eq!(c.watch_interval(), Some(Duration::from_secs(2)));
        assert!(!c.log_requests);
    }
}
