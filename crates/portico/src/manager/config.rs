//! `[manager]` and its `[[manager.service]]` entries: where the registry is, whether this
//! process runs its host's agent and how (the proxy reads `agent_id`: its own host). The
//! proxy's own settings are its section, `[proxy]` (`proxy::ProxyConfig`). Raw serde with defaults; `validate` reports every problem naming its key.

use std::net::IpAddr;
use std::time::Duration;

use registry::ServiceSpec;
use serde::Deserialize;

/// `registry` value for the in-process registry.
pub const EMBEDDED: &str = "embedded";
/// Default admin listener of `portico agent`.
pub const DEFAULT_AGENT_LISTEN: &str = "127.0.0.1:8090";

pub const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The `[manager]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// `embedded` (one host, in process) or `redis://host:port/db` (many hosts).
    pub registry: String,
    /// Prefix of every Redis key and of the change channel.
    pub key_prefix: String,
    /// Bound on one registry call (Redis).
    #[serde(with = "humantime_serde")]
    pub registry_timeout: Duration,
    /// Run this host's agent in this process (default: true with the embedded registry,
    /// false with Redis, where hosts run `portico agent`).
    pub agent: Option<bool>,
    /// This host's agent id (default: the host name); the proxy prefers this agent.
    pub agent_id: Option<String>,
    /// Address proxies reach this host's instances on (default 127.0.0.1 with the embedded
    /// registry; required when this process runs an agent on Redis).
    pub advertise: Option<IpAddr>,
    /// Instances the agent runs at most (0: 4 per core).
    pub max_instances: u32,
    /// Lease of the agent and of its instances, renewed every third.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Time a stopping instance keeps serving requests in flight.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// Time between SIGTERM and SIGKILL.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// `[[manager.service]]`: put into the catalog at start.
    #[serde(rename = "service")]
    pub services: Vec<ServiceSpec>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            registry: EMBEDDED.to_string(),
            key_prefix: registry::DEFAULT_KEY_PREFIX.to_string(),
            registry_timeout: DEFAULT_REGISTRY_TIMEOUT,
            agent: None,
            agent_id: None,
            advertise: None,
            max_instances: 0,
            lease: agent::DEFAULT_LEASE,
            drain: agent::DEFAULT_DRAIN,
            stop_timeout: agent::DEFAULT_STOP_TIMEOUT,
            services: Vec::new(),
        }
    }
}

impl ManagerConfig {
    pub fn is_embedded(&self) -> bool {
        self.registry == EMBEDDED
    }

    /// Whether this process runs its host's agent.
    pub fn runs_agent(&self) -> bool {
        self.agent.unwrap_or_else(|| self.is_embedded())
    }

    /// This host's agent id.
    pub fn agent_id(&self) -> String {
        self.agent_id.clone().unwrap_or_else(agent::host_name)
    }

    /// The address this host's instances are reached on.
    pub fn advertise(&self) -> IpAddr {
        self.advertise.unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// The agent's settings; instance logs rotate like Portico's own (`[log]`).
    pub fn agent_config(&self, log: &gateway::LogConfig) -> agent::AgentConfig {
        let mut config = agent::AgentConfig::new(&self.agent_id(), self.advertise());
        if self.max_instances > 0 {
            config.max_instances = self.max_instances;
        }
        config.lease = self.lease;
        config.drain = self.drain;
        config.stop_timeout = self.stop_timeout;
        config.log_max_bytes = log.max_bytes;
        config.log_backups = log.backups;
        config
    }

    /// Every problem, each naming its key; `reserved` are names of this process's routes.
    pub fn validate(&self, reserved: &[&str]) -> Vec<String> {
        let ManagerConfig {
            registry,
            key_prefix: _,
            registry_timeout,
            agent,
            agent_id,
            advertise,
            max_instances: _,
            lease,
            drain: _,
            stop_timeout,
            services,
        } = self;
        let mut problems = Vec::new();
        if let Some(problem) = registry_problem(registry) {
            problems.push(format!("manager.registry: {problem}"));
        }
        for (key, value) in [
            ("registry_timeout", registry_timeout),
            ("lease", lease),
            ("stop_timeout", stop_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("manager.{key}: must be more than 0s"));
            }
        }
        if lease.as_millis() > 0 && *lease < Duration::from_millis(300) {
            problems.push("manager.lease: must be at least 300ms (renewed every third)".into());
        }
        if let Some(id) = agent_id {
            if !is_agent_id(id) {
                problems.push(format!(
                    "manager.agent_id {id:?}: must be 1-64 characters a-z, A-Z, 0-9, '.', '_' or '-'"
                ));
            }
        }
        let remote_agent = agent.unwrap_or(false) && !self.is_embedded();
        if remote_agent && advertise.is_none() {
            problems.push(
                "manager.advertise: required when this process runs an agent on a Redis \
                 registry (the address other hosts reach its instances on)"
                    .into(),
            );
        }
        if advertise.is_some_and(|ip| ip.is_unspecified()) {
            problems.push(
                "manager.advertise: must be an address proxies can reach, not 0.0.0.0 or ::".into(),
            );
        }
        problems.extend(service_problems(services, reserved));
        problems
    }
}

fn registry_problem(registry: &str) -> Option<String> {
    if registry == EMBEDDED {
        return None;
    }
    let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !known.iter().any(|scheme| registry.starts_with(scheme)) {
        return Some(format!(
            "{registry:?} is neither \"embedded\" nor a redis:// URL"
        ));
    }
    redis::Client::open(registry)
        .err()
        .map(|error| format!("{registry:?}: {error}"))
}

/// Agent ids appear in Redis keys and log lines: a small safe alphabet.
pub fn is_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn service_problems(services: &[ServiceSpec], reserved: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, spec) in services.iter().enumerate() {
        let key = format!("manager.service[{i}]");
        for problem in spec.validate_reserving(reserved) {
            problems.push(format!("{key}.{problem}"));
        }
        if !spec.name.is_empty() && !seen.insert(spec.name.as_str()) {
            problems.push(format!("{key}.name {:?}: listed twice", spec.name));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ManagerConfig {
        let table: toml::Table = toml::from_str(text).unwrap();
        ManagerConfig::deserialize(table["manager"].clone()).unwrap()
    }

    #[test]
    fn defaults_are_the_spec_s() {
        let config = ManagerConfig::default();
        assert!(config.is_embedded() && config.runs_agent());
        assert_eq!(config.advertise(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(config.lease, Duration::from_secs(10));
        assert_eq!(config.drain, Duration::from_secs(5));
        assert_eq!(config.stop_timeout, Duration::from_secs(10));
        assert!(config.validate(&[]).is_empty());
    }

    #[test]
    fn service_entries_parse_with_spec_defaults() {
        let config = parse(
            "[manager]\nregistry = \"redis://127.0.0.1:6379/0\"\n\
             [[manager.service]]\nname = \"hello\"\n\
             command = [\"python3\", \"-m\", \"http.server\", \"{port}\"]\nmax = 3\nsoft_latency = \"50ms\"\n",
        );
        assert!(!config.runs_agent(), "Redis: agents run as portico agent");
        let spec = &config.services[0];
        assert_eq!((spec.name.as_str(), spec.min, spec.max), ("hello", 0, 3));
        assert_eq!(spec.soft_latency, Duration::from_millis(50));
        assert_eq!(spec.idle_timeout, Duration::from_secs(300));
        assert!(
            config.validate(&[]).is_empty(),
            "{:?}",
            config.validate(&[])
        );
    }

    #[test]
    fn every_problem_is_named_with_its_key() {
        let config = parse(
            "[manager]\nregistry = \"http://x\"\nlease = \"0s\"\nagent_id = \"a b\"\n\
             [[manager.service]]\nname = \"fib\"\ncommand = [\"x\"]\n\
             [[manager.service]]\nname = \"ok\"\ncommand = []\nmin = 9\n\
             [[manager.service]]\nname = \"ok\"\ncommand = [\"y\"]\n",
        );
        let problems = config.validate(&["fib"]);
        for expected in [
            "manager.registry:",
            "manager.lease: must be more than 0s",
            "manager.agent_id \"a b\"",
            "manager.service[0].name \"fib\"",
            "manager.service[1].command",
            "manager.service[1].min (9)",
            "manager.service[2].name \"ok\": listed twice",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 7, "{problems:#?}");
    }

    #[test]
    fn the_example_service_entry_documents_the_defaults() {
        let example = include_str!("../../../../portico.example.toml");
        let start = example
            .find("# [[manager.service]]")
            .expect("the documented entry");
        let entry: String = example[start..]
            .lines()
            .filter(|line| !line.starts_with("# #"))
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = parse(&format!("[manager]\n{entry}"));
        let spec = &config.services[0];
        let mut defaults = ServiceSpec::new("hello", &[]);
        defaults.command = spec.command.clone();
        defaults.env = spec.env.clone();
        assert_eq!(spec, &defaults, "every value in the example is the default");
        assert!(
            config.validate(&[]).is_empty(),
            "{:?}",
            config.validate(&[])
        );
    }

    #[test]
    fn an_agent_on_redis_needs_an_address_to_advertise() {
        let config = parse("[manager]\nregistry = \"redis://r:6379/0\"\nagent = true\n");
        let problems = config.validate(&[]);
        assert!(
            problems[0].starts_with("manager.advertise: required"),
            "{problems:?}"
        );
        let config = parse(
            "[manager]\nregistry = \"redis://r:6379/0\"\nagent = true\nadvertise = \"0.0.0.0\"\n",
        );
        assert!(config.validate(&[])[0].contains("not 0.0.0.0"));
    }
}
