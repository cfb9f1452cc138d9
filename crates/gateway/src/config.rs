//! The gateway's part of the config file: listeners, limits and logs, as serde structs with
//! defaults, and their validation (every problem reported, each naming its key).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default plain-HTTP listener of a zero-config start.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Default HTTPS listener of a zero-config start.
pub const DEFAULT_HTTPS_ADDR: &str = "127.0.0.1:8443";

/// One `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `host:port`; `[::]:port` is dual-stack.
    pub addr: String,
    /// TLS settings; omit for plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Names of built-in services mounted here, or `["*"]` for all.
    #[serde(default = "all_services")]
    pub services: Vec<String>,
}

fn all_services() -> Vec<String> {
    vec!["*".to_string()]
}

impl ListenerConfig {
    /// A listener on `addr` mounting every service.
    pub fn new(addr: &str, tls: Option<TlsConfig>) -> Self {
        ListenerConfig {
            addr: addr.to_string(),
            tls,
            services: all_services(),
        }
    }
}

/// `tls = { cert = "...", key = "..." }` or `tls = { self_signed = true }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Generate (once) and use a self-signed certificate in `data_dir/tls/`.
    #[serde(default)]
    pub self_signed: bool,
}

impl TlsConfig {
    /// The self-signed setting of a zero-config start.
    pub fn self_signed() -> Self {
        TlsConfig {
            self_signed: true,
            ..TlsConfig::default()
        }
    }
}

/// `[limits]`: protection of every listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request head (request line + headers), bytes. Larger: 431.
    pub max_header_bytes: usize,
    /// Largest request body, bytes. Larger: 413.
    pub max_body_bytes: usize,
    /// Time for a service to produce the response head. Longer: 504.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time for a client to complete the TLS handshake (in the clear: to send its first
    /// bytes), and to complete a request head once its first bytes arrived.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a connection may wait for its next request: an HTTP/1 keep-alive connection, or
    /// an HTTP/2 connection with no request in progress (closed with GOAWAY).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time a response may make no write progress (the client reads nothing, or withholds
    /// HTTP/2 flow-control credit) before it is aborted and its connection closed.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Open connections per listener; past it new connections are refused before any TLS
    /// handshake (plain HTTP: a static 503) and closed.
    pub max_connections: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may still run.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// On SIGTERM/SIGINT, how long `/readyz` answers 503 while everything still serves,
    /// before accepting stops (time for a load balancer to notice).
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Directory of `app.log` and `access.log`; absent: both go to stderr.
    pub dir: Option<PathBuf>,
    /// Rotate each file when it passes this size.
    pub max_bytes: u64,
    /// Rotated files kept: `.1` (newest) .. `.N`.
    pub backups: usize,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// Write the access log at all.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: None,
            max_bytes: 100_000_000,
            backups: 5,
            level: "info".to_string(),
            access_log: true,
        }
    }
}

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub data_dir: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub limits: LimitsConfig,
    /// Switch to this user (and its group) after binding.
    pub user: Option<String>,
    /// Switch to this group instead of the user's primary group.
    pub group: Option<String>,
    /// Serve as root when no `user` is set.
    pub allow_root: bool,
    /// Event loops serving connections; 0: one per core.
    pub workers: usize,
}

impl GatewayConfig {
    /// Every problem, each naming its key. `known_services` are the names a listener may mount.
    pub fn validate(&self, known_services: &[&str]) -> Vec<String> {
        let mut errors = Vec::new();
        if self.listeners.is_empty() {
            errors.push("listener: at least one [[listener]] is needed".to_string());
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            validate_listener(i, listener, known_services, &mut errors);
        }
        validate_limits(&self.limits, &mut errors);
        errors
    }
}

fn validate_listener(
    index: usize,
    listener: &ListenerConfig,
    known: &[&str],
    errors: &mut Vec<String>,
) {
    let key = format!("listener[{index}]");
    if listener.addr.parse::<SocketAddr>().is_err() {
        errors.push(format!(
            "{key}.addr: {:?} is not an address:port (IPv6 as \"[::]:443\")",
            listener.addr
        ));
    }
    for name in &listener.services {
        if name != "*" && !known.contains(&name.as_str()) {
            errors.push(format!(
                "{key}.services: unknown service {name:?} (known: {}, or \"*\")",
                known.join(", ")
            ));
        }
    }
    if let Some(tls) = &listener.tls {
        match (&tls.cert, &tls.key, tls.self_signed) {
            (Some(_), Some(_), false) | (None, None, true) => {}
            (Some(_), Some(_), true) => errors.push(format!(
                "{key}.tls: give either cert and key or self_signed = true, not both"
            )),
            _ => errors.push(format!(
                "{key}.tls: needs both cert and key, or self_signed = true"
            )),
        }
    }
}

fn validate_limits(limits: &LimitsConfig, errors: &mut Vec<String>) {
    let zero = Duration::ZERO;
    let checks = [
        (
            limits.max_header_bytes < 8192,
            "limits.max_header_bytes: must be at least 8192",
        ),
        (
            limits.max_body_bytes == 0,
            "limits.max_body_bytes: must be more than 0",
        ),
        (
            limits.request_timeout == zero,
            "limits.request_timeout: must be more than 0",
        ),
        (
            limits.header_timeout == zero,
            "limits.header_timeout: must be more than 0",
        ),
        (
            limits.idle_timeout == zero,
            "limits.idle_timeout: must be more than 0",
        ),
        (
            limits.send_timeout == zero,
            "limits.send_timeout: must be more than 0",
        ),
        (
            limits.max_connections == 0,
            "limits.max_connections: must be more than 0",
        ),
    ];
    errors.extend(
        checks
            .iter()
            .filter(|(bad, _)| *bad)
            .map(|(_, msg)| msg.to_string()),
    );
}

impl LogConfig {
    /// Every problem, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.max_bytes == 0 {
            errors.push("log.max_bytes: must be more than 0".to_string());
        }
        if !valid_level(&self.level) {
            errors.push(format!(
                "log.level: {:?} is not a level (error, warn, info, debug, trace)",
                self.level
            ));
        }
        errors
    }
}

/// A plain level name, or a tracing directive list such as `info,gateway=debug`.
fn valid_level(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_directive = level.contains('=') || level.contains(',');
    if is_directive {
        tracing_subscriber::EnvFilter::try_new(level).is_ok()
    } else {
        LEVELS.contains(&level.to_ascii_lowercase().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(listeners: Vec<ListenerConfig>) -> GatewayConfig {
        GatewayConfig {
            data_dir: PathBuf::from("/tmp"),
            listeners,
            limits: LimitsConfig::default(),
            user: None,
            group: None,
            allow_root: false,
            workers: 0,
        }
    }

    #[test]
    fn every_listener_problem_is_reported_with_its_key() {
        let mut bad = ListenerConfig::new("localhost", Some(TlsConfig::default()));
        bad.services = vec!["nope".into()];
        let errors = gateway(vec![bad]).validate(&["admin"]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("listener[0].addr"));
        assert!(errors[1].contains("unknown service \"nope\""));
        assert!(errors[2].starts_with("listener[0].tls"));
    }

    #[test]
    fn ipv6_and_wildcard_listeners_are_valid() {
        let config = gateway(vec![
            ListenerConfig::new("[::]:443", Some(TlsConfig::self_signed())),
            ListenerConfig::new("0.0.0.0:80", None),
        ]);
        assert!(config.validate(&["admin"]).is_empty());
    }

    #[test]
    fn log_levels_are_names_or_directives() {
        assert!(valid_level("INFO"));
        assert!(valid_level("info,gateway=debug"));
        assert!(!valid_level("loud"));
    }

    #[test]
    fn limits_parse_human_durations() {
        let text = "request_timeout = \"1m\"\nheader_timeout = \"500ms\"\n\
                    idle_timeout = \"2m\"\nsend_timeout = \"15s\"";
        let limits: LimitsConfig = toml::from_str(text).unwrap();
        assert_eq!(limits.request_timeout, Duration::from_secs(60));
        assert_eq!(limits.header_timeout, Duration::from_millis(500));
        assert_eq!(limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(limits.send_timeout, Duration::from_secs(15));
    }

    #[test]
    fn zero_idle_and_send_timeouts_are_refused_naming_their_keys() {
        let mut config = gateway(vec![ListenerConfig::new("127.0.0.1:0", None)]);
        config.limits.idle_timeout = Duration::ZERO;
        config.limits.send_timeout = Duration::ZERO;
        let errors = config.validate(&["admin"]);
        assert_eq!(
            errors,
            [
                "limits.idle_timeout: must be more than 0",
                "limits.send_timeout: must be more than 0"
            ]
        );
    }
}
