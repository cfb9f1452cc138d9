//! `ServiceSpec`: one catalog entry, how to start a service and what latency it should have,
//! and its validation (every bad field named, so an operator fixes them all at once).
//!
//! The same JSON is the body of `PUT /manager/services/NAME`, the value of
//! `portico:svc:NAME` in Redis and an entry of the embedded catalog file; durations are
//! humantime strings (`"100ms"`, `"5m"`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Names a service may not take: the first path segments of Portico's own routes (built-in
/// services, the gateway's and admin's paths), which win over the proxy's `/{service}/...`,
/// so a catalog entry with one of these names could never be reached.
pub const RESERVED_NAMES: &[&str] = &[
    "admin",
    "api",
    "dashboard",
    "fib",
    "gateway",
    "healthz",
    "info",
    "jobs",
    "manager",
    "messages",
    "metrics",
    "proxy",
    "readyz",
    "region",
    "regioninfo",
    "service",
    "stats",
];

/// Longest DNS label.
const MAX_NAME_LEN: usize = 63;
/// A bound on `max` that catches typos (`max = 40000`) before an agent tries to honour them.
const MAX_INSTANCES_PER_SERVICE: u32 = 1000;

pub const DEFAULT_HEALTH: &str = "/";
pub const DEFAULT_MIN: u32 = 0;
pub const DEFAULT_MAX: u32 = 4;
pub const DEFAULT_SOFT_LATENCY: Duration = Duration::from_millis(100);
pub const DEFAULT_HARD_LATENCY: Duration = Duration::from_secs(1);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// One service of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Lowercase DNS label; the first path segment the proxy routes by.
    #[serde(default)]
    pub name: String,
    /// argv; `{port}` is replaced by the instance's port, `{host}` by the agent's advertised
    /// address; env `PORT` is set too.
    #[serde(default)]
    pub command: Vec<String>,
    /// Path probed over HTTP: ready once it answers with a status below 500.
    #[serde(default = "default_health")]
    pub health: String,
    /// Instances kept running at all times.
    #[serde(default)]
    pub min: u32,
    /// Instances never exceeded (across all agents).
    #[serde(default = "default_max")]
    pub max: u32,
    /// Latency above which the proxy asks for one more instance.
    #[serde(default = "default_soft_latency", with = "humantime_serde")]
    pub soft_latency: Duration,
    /// Latency above which the proxy ejects an instance.
    #[serde(default = "default_hard_latency", with = "humantime_serde")]
    pub hard_latency: Duration,
    /// An instance above `min` that served nothing for this long is stopped.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time an instance has to answer its health check after it was started.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// Extra environment of the instance's process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_health() -> String {
    DEFAULT_HEALTH.to_string()
}
fn default_max() -> u32 {
    DEFAULT_MAX
}
fn default_soft_latency() -> Duration {
    DEFAULT_SOFT_LATENCY
}
fn default_hard_latency() -> Duration {
    DEFAULT_HARD_LATENCY
}
fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}
fn default_start_timeout() -> Duration {
    DEFAULT_START_TIMEOUT
}

impl ServiceSpec {
    /// A spec with every field at its default.
    pub fn new(name: &str, command: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            health: default_health(),
            min: DEFAULT_MIN,
            max: DEFAULT_MAX,
            soft_latency: DEFAULT_SOFT_LATENCY,
            hard_latency: DEFAULT_HARD_LATENCY,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            start_timeout: DEFAULT_START_TIMEOUT,
            env: BTreeMap::new(),
        }
    }

    /// Every problem of the spec, each naming its field; empty when it is valid. Names in
    /// [`RESERVED_NAMES`] are refused.
    pub fn validate(&self) -> Vec<String> {
        self.validate_reserving(&[])
    }

    /// [`ServiceSpec::validate`], also refusing the names in `reserved` (routes of this
    /// process that the registry crate cannot know, such as configured job services).
    pub fn validate_reserving(&self, reserved: &[&str]) -> Vec<String> {
        let ServiceSpec {
            name,
            command,
            health,
            min,
            max,
            soft_latency,
            hard_latency,
            idle_timeout,
            start_timeout,
            env,
        } = self;
        let mut errors = Vec::new();
        errors.extend(name_problem(name, reserved));
        errors.extend(command_problem(command));
        if !health.starts_with('/') || health.chars().any(char::is_whitespace) {
            errors.push(format!(
                "health {health:?}: must be a path starting with '/' without spaces"
            ));
        }
        if *max == 0 || *max > MAX_INSTANCES_PER_SERVICE {
            errors.push(format!(
                "max ({max}): must be between 1 and {MAX_INSTANCES_PER_SERVICE}"
            ));
        }
        if min > max {
            errors.push(format!("min ({min}): must not exceed max ({max})"));
        }
        for (field, value) in [
            ("soft_latency", soft_latency),
            ("hard_latency", hard_latency),
            ("idle_timeout", idle_timeout),
            ("start_timeout", start_timeout),
        ] {
            if value.is_zero() {
                errors.push(format!("{field}: must be longer than zero"));
            }
        }
        if soft_latency >= hard_latency {
            errors.push(format!(
                "soft_latency ({}): must be below hard_latency ({})",
                humantime::format_duration(*soft_latency),
                humantime::format_duration(*hard_latency)
            ));
        }
        errors.extend(env.keys().filter_map(|key| env_problem(key, &env[key])));
        errors
    }
}

fn name_problem(name: &str, reserved: &[&str]) -> Option<String> {
    if !is_dns_label(name) {
        return Some(format!(
            "name {name:?}: must be a lowercase DNS label (1-{MAX_NAME_LEN} characters a-z, 0-9 \
             and '-', not starting or ending with '-')"
        ));
    }
    if RESERVED_NAMES.contains(&name) || reserved.contains(&name) {
        return Some(format!(
            "name {name:?}: taken by a built-in route (/{name}); reserved names: {}",
            RESERVED_NAMES.join(", ")
        ));
    }
    None
}

/// `a-z0-9` and inner `-`, 1 to 63 characters.
pub fn is_dns_label(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(allowed)
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn command_problem(command: &[String]) -> Option<String> {
    match command.first() {
        None => Some("command: must not be empty (argv list, e.g. [\"python3\", \"-m\", \"http.server\", \"{port}\"])".into()),
        Some(program) if program.is_empty() => Some("command: the program (first element) must not be empty".into()),
        Some(_) if command.iter().any(|arg| arg.contains('\0')) => {
            Some("command: arguments must not contain NUL characters".into())
        }
        Some(_) => None,
    }
}

fn env_problem(key: &str, value: &str) -> Option<String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Some(format!(
            "env key {key:?}: must be non-empty, without '=' or NUL"
        ));
    }
    if key == "PORT" {
        return Some("env key \"PORT\": set by the agent to the instance's port".into());
    }
    value
        .contains('\0')
        .then(|| format!("env {key}: the value must not contain NUL characters"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_with_defaults_is_valid_and_round_trips_through_json() {
        let spec = ServiceSpec::new("hello", &["python3", "-m", "http.server", "{port}"]);
        assert!(spec.validate().is_empty(), "{:?}", spec.validate());
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"soft_latency\":\"100ms\""), "{json}");
        assert!(json.contains("\"idle_timeout\":\"5m\""), "{json}");
        let back: ServiceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn omitted_fields_take_the_spec_defaults() {
        let spec: ServiceSpec =
            serde_json::from_str(r#"{"name":"a","command":["x"],"max":2}"#).unwrap();
        assert_eq!(spec.health, "/");
        assert_eq!((spec.min, spec.max), (0, 2));
        assert_eq!(spec.hard_latency, Duration::from_secs(1));
        assert_eq!(spec.start_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let error = serde_json::from_str::<ServiceSpec>(r#"{"name":"a","comand":["x"]}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("comand"), "{error}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut spec = ServiceSpec::new("Bad_Name", &[]);
        spec.health = "healthz".into();
        spec.min = 5;
        spec.max = 3;
        spec.soft_latency = Duration::from_secs(2);
        spec.idle_timeout = Duration::ZERO;
        spec.env.insert("PORT".into(), "1".into());
        let errors = spec.validate();
        for field in [
            "name",
            "command",
            "health",
            "min (5)",
            "soft_latency (2s)",
            "idle_timeout",
            "env key \"PORT\"",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(field)),
                "{field} not named in {errors:?}"
            );
        }
        assert_eq!(errors.len(), 7, "{errors:?}");
    }

    #[test]
    fn names_of_built_in_routes_and_non_labels_are_refused() {
        for name in ["messages", "fib", "manager", "healthz", "metrics", "jobs"] {
            let errors = ServiceSpec::new(name, &["x"]).validate();
            assert!(errors[0].contains("built-in route"), "{name}: {errors:?}");
        }
        let errors = ServiceSpec::new("extra", &["x"]).validate_reserving(&["extra"]);
        assert_eq!(errors.len(), 1);
        for name in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(name), "{name:?}");
        }
        for name in ["a", "a-b", "x9", &"a".repeat(63)] {
            assert!(is_dns_label(name), "{name:?}");
        }
    }

    #[test]
    fn zero_max_and_equal_latencies_are_refused() {
        let mut spec = ServiceSpec::new("a", &["x"]);
        spec.max = 0;
        spec.hard_latency = spec.soft_latency;
        let errors = spec.validate();
        assert!(
            errors.iter().any(|e| e.starts_with("max (0)")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("soft_latency")),
            "{errors:?}"
        );
    }
}
