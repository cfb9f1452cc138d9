//! `[proxy]`: the proxy's own settings (the services it routes to, with their latency limits,
//! are the registry's catalog). Parsed as a raw serde struct with defaults, then validated
//! into [`Settings`] with every problem named by its key.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The manager's `alloc_timeout`: how long a request waits for an instance to be had.
pub const DEFAULT_ALLOC_TIMEOUT: Duration = Duration::from_secs(5);
/// The manager's `upstream_timeout`: how long an instance has to send a response head.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TCP connection to an instance may take. Instances are on the same host or the
/// same network: a connection that takes longer is a host that is gone, and the request is
/// better retried on another instance than left waiting for the kernel's SYN retries.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The manager's `alloc_cooldown` (see `balance::ALLOC_COOLDOWN`).
pub const DEFAULT_ALLOC_COOLDOWN: Duration = balance::ALLOC_COOLDOWN;
/// Idle keep-alive connections kept per instance on each gateway worker: at least the
/// requests a busy worker has in flight to one instance (a smaller pool churns connections:
/// 64 concurrent requests against 32 kept opened a connection for 1 request in 11).
pub const DEFAULT_MAX_IDLE_PER_INSTANCE: usize = 128;
/// An idle pooled connection older than this is closed rather than reused: instances (like
/// most HTTP servers) close idle keep-alive connections after a while, and a connection they
/// are closing just as a request goes out fails that request.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `[proxy]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// A request for a service with no ready instance waits this long for one.
    #[serde(with = "humantime_serde")]
    pub alloc_timeout: Duration,
    /// An instance that has not sent its response head this long after the request was sent
    /// is answered for with 504.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// A TCP connection to an instance that takes longer fails (retried on another).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// After an allocation completes, none is asked for the same service for this long.
    #[serde(with = "humantime_serde")]
    pub alloc_cooldown: Duration,
    /// Idle keep-alive connections kept per instance on each gateway worker.
    pub max_idle_per_instance: usize,
    /// Idle pooled connections older than this are closed, not reused.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Overrides every service's `soft_latency` in this proxy (the legacy `portico proxy`
    /// sets it from conf.json's `Perf.SoftReq.RTT`).
    #[serde(with = "humantime_serde::option")]
    pub soft_latency: Option<Duration>,
    /// Overrides every service's `hard_latency` in this proxy (`Perf.HardReq.RTT`).
    #[serde(with = "humantime_serde::option")]
    pub hard_latency: Option<Duration>,
    /// `[[proxy.register]]`: instances started by something else that this process
    /// registers for as long as it runs (the legacy `portico proxy PORT SERVICE IP` server
    /// mode).
    pub register: Vec<External>,
}

/// An instance this process registers for another program (see [`ProxyConfig::register`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    /// The catalog service it is an instance of (added to the catalog when missing, with no
    /// command of its own).
    pub service: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            alloc_timeout: DEFAULT_ALLOC_TIMEOUT,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            alloc_cooldown: DEFAULT_ALLOC_COOLDOWN,
            max_idle_per_instance: DEFAULT_MAX_IDLE_PER_INSTANCE,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            soft_latency: None,
            hard_latency: None,
            register: Vec::new(),
        }
    }
}

/// The validated settings the proxy runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub alloc_timeout: Duration,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    pub alloc_cooldown: Duration,
    pub max_idle_per_instance: usize,
    pub pool_idle_timeout: Duration,
    /// The agent whose instances are on this proxy's host: they win ties, and allocations
    /// go there while it has room (`[manager] agent_id`).
    pub local_agent: String,
    pub soft_latency: Option<Duration>,
    pub hard_latency: Option<Duration>,
    pub register: Vec<External>,
    /// Lease of the registered instances, renewed every third (the manager's `lease`).
    pub register_lease: Duration,
}

/// The manager's default lease, for registered instances unless the caller sets another.
const DEFAULT_REGISTER_LEASE: Duration = Duration::from_secs(10);

impl ProxyConfig {
    /// Every problem, each naming its key (`proxy.KEY`).
    pub fn validate(&self) -> Vec<String> {
        self.settings("").err().unwrap_or_default()
    }

    /// The settings for a proxy on the host of agent `local_agent`, or every problem.
    pub fn settings(&self, local_agent: &str) -> Result<Settings, Vec<String>> {
        let ProxyConfig {
            alloc_timeout,
            upstream_timeout,
            connect_timeout,
            alloc_cooldown,
            max_idle_per_instance,
            pool_idle_timeout,
            soft_latency,
            hard_latency,
            register,
        } = self;
        let mut errors = Vec::new();
        for (key, value) in [
            ("alloc_timeout", alloc_timeout),
            ("upstream_timeout", upstream_timeout),
            ("connect_timeout", connect_timeout),
            ("pool_idle_timeout", pool_idle_timeout),
        ] {
            if value.is_zero() {
                errors.push(format!("proxy.{key}: must be longer than zero"));
            }
        }
        for (key, value) in [
            ("soft_latency", soft_latency),
            ("hard_latency", hard_latency),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                errors.push(format!("proxy.{key}: must be longer than zero"));
            }
        }
        if let (Some(soft), Some(hard)) = (soft_latency, hard_latency) {
            if soft >= hard {
                errors.push(format!(
                    "proxy.soft_latency ({}): must be below proxy.hard_latency ({})",
                    humantime::format_duration(*soft),
                    humantime::format_duration(*hard)
                ));
            }
        }
        for (index, external) in register.iter().enumerate() {
            if !registry::is_dns_label(&external.service) {
                errors.push(format!(
                    "proxy.register[{index}].service {:?}: must be a lowercase DNS label",
                    external.service
                ));
            }
            if external.addr.ip().is_unspecified() || external.addr.port() == 0 {
                errors.push(format!(
                    "proxy.register[{index}].addr {}: must be an address proxies can reach",
                    external.addr
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            alloc_timeout: *alloc_timeout,
            upstream_timeout: *upstream_timeout,
            connect_timeout: *connect_timeout,
            alloc_cooldown: *alloc_cooldown,
            max_idle_per_instance: *max_idle_per_instance,
            pool_idle_timeout: *pool_idle_timeout,
            local_agent: local_agent.to_string(),
            soft_latency: *soft_latency,
            hard_latency: *hard_latency,
            register: register.clone(),
            register_lease: DEFAULT_REGISTER_LEASE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_takes_the_spec_defaults() {
        let config: ProxyConfig = toml::from_str("").unwrap();
        let settings = config.settings("host1").unwrap();
        assert_eq!(settings.alloc_timeout, Duration::from_secs(5));
        assert_eq!(settings.upstream_timeout, Duration::from_secs(30));
        assert_eq!(settings.alloc_cooldown, Duration::from_secs(5));
        assert_eq!(settings.local_agent, "host1");
        assert_eq!(settings.soft_latency, None);
    }

    #[test]
    fn every_bad_key_is_named() {
        let text = "alloc_timeout = \"0s\"\nupstream_timeout = \"0s\"\nsoft_latency = \"2s\"\n\
                    hard_latency = \"1s\"\n";
        let config: ProxyConfig = toml::from_str(text).unwrap();
        let errors = config.validate();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("proxy.alloc_timeout"));
        assert!(errors[1].starts_with("proxy.upstream_timeout"));
        assert!(errors[2].starts_with("proxy.soft_latency (2s)"));
    }

    #[test]
    fn registered_instances_name_their_service_and_a_reachable_address() {
        let text = "[[register]]\nservice = \"hello-world\"\naddr = \"10.0.0.5:8080\"\n\
                    [[register]]\nservice = \"Bad\"\naddr = \"0.0.0.0:0\"\n";
        let config: ProxyConfig = toml::from_str(text).unwrap();
        let errors = config.validate();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("proxy.register[1].service"));
        assert!(errors[1].starts_with("proxy.register[1].addr"));
        assert_eq!(config.register[0].addr.to_string(), "10.0.0.5:8080");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = toml::from_str::<ProxyConfig>("alloc_timout = \"1s\"\n").unwrap_err();
        assert!(error.to_string().contains("alloc_timout"), "{error}");
    }
}
