//! Configuration of the job queue: `[jobs]`, `[jobs.security]`, `[jobs.storage]` and
//! `[[jobs.service]]` (spec section 5, plus the keys the core needs, documented in
//! `portico.example.toml` under `# [jobs] core`).
//!
//! Two layers, as everywhere in Portico: [`RawJobsConfig`] is what serde reads (defaults,
//! unknown keys refused); [`RawJobsConfig::validate`] destructures every field into the
//! runtime [`JobsConfig`], collecting every problem, each naming its key
//! (`jobs.service[1].workers: ...`), so one start reports all of them.

mod raw;
mod secret;

use std::time::Duration;

use base64::Engine;

pub use raw::*;
pub use secret::{load_or_create_jwt_key, JWT_KEY_FILE};

/// Route keywords a service may not take: the job API's own first path segments and the
/// gateway's.
pub const RESERVED_NAMES: &[&str] = &[
    "jobs",
    "info",
    "stats",
    "service",
    "simple_workflow",
    "temporary_upload_path",
    "temporary_file",
    "metrics",
    "healthz",
    "readyz",
    "livez",
    "admin",
    "worker",
    "static",
];

/// The validated `[jobs]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct JobsConfig {
    pub broker: BrokerConfig,
    /// Where AMQP workers write states (read by the AMQP broker only).
    pub result_backend: ResultBackend,
    pub celery_app: String,
    pub broker_timeout: Duration,
    pub result_expires: Duration,
    pub state: StateConfig,
    pub state_timeout: Duration,
    pub api_version: String,
    pub lease: Duration,
    pub kill_grace: Duration,
    pub target_wait: Duration,
    pub scale_down_delay: Duration,
    pub max_output: usize,
    pub temporary_files_ttl: Duration,
    pub temporary_files_max_bytes: u64,
    /// Without a trailing `/`; empty: from each request.
    pub public_url: String,
    pub security: Security,
    pub storage: Storage,
    pub services: Vec<ServiceConfig>,
}

impl JobsConfig {
    /// The service with this route keyword.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl Default for JobsConfig {
    /// The defaults with no service.
    fn default() -> Self {
        RawJobsConfig::default()
            .validate()
            .expect("the defaults are valid")
    }
}

/// Which broker runs the jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    /// Durable queues in the data directory, local slots and remote pull workers.
    Embedded,
    /// RabbitMQ with Celery's wire protocol (next issue).
    Amqp { url: String },
}

/// Where Celery workers write states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultBackend {
    Amqp,
    Rpc,
    Redis { url: String },
}

/// Where Portico keeps its job records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateConfig {
    /// `jobs.redb` in the data directory.
    Embedded,
    /// Redis, shared by several gateways; every key starts with `prefix`.
    Redis { url: String, prefix: String },
}

/// `[jobs.security]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    pub bypass: bool,
    /// `None`: generated on first start and kept in the data directory
    /// ([`load_or_create_jwt_key`]); [`crate::Jobs::config`] always has it set.
    pub jwt_key: Option<JwtKey>,
    pub jwt_audience: String,
    pub jwt_algorithm: JwtAlgorithm,
    pub jwt_duration: Duration,
}

/// The HMAC key: as configured (base64) and decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtKey {
    pub base64: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKey({} bytes)", self.bytes.len())
    }
}

impl JwtKey {
    /// Decodes base64 (standard or URL-safe alphabet, padded or not), as the original's
    /// `base64.b64decode` of `JWT_SIGNATURE_KEY`; the key may not be empty.
    pub fn from_base64(text: &str) -> Result<JwtKey, String> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let trimmed = text.trim();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(trimmed).ok())
            .ok_or_else(|| "is not base64".to_string())?;
        if bytes.is_empty() {
            return Err("decodes to an empty key".into());
        }
        Ok(JwtKey {
            base64: trimmed.to_string(),
            bytes,
        })
    }
}

/// The HMAC algorithms accepted (never `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Hs384,
    Hs512,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Hs384 => "HS384",
            JwtAlgorithm::Hs512 => "HS512",
        }
    }

    fn parse(text: &str) -> Option<JwtAlgorithm> {
        match text {
            "HS256" => Some(JwtAlgorithm::Hs256),
            "HS384" => Some(JwtAlgorithm::Hs384),
            "HS512" => Some(JwtAlgorithm::Hs512),
            _ => None,
        }
    }
}

/// `[jobs.storage]`, unchanged (templates are filled by the API layer).
pub type Storage = RawStorage;
/// `[jobs.service.canarie]`, unchanged.
pub type Canarie = RawCanarie;

/// One validated `[[jobs.service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub celery_task_name: String,
    pub celery_queue_name: String,
    pub version: String,
    pub noparams: bool,
    /// Program and arguments; empty only with an AMQP broker.
    pub command: Vec<String>,
    pub mode: Mode,
    pub workers: Workers,
    pub timeout: Option<Duration>,
    pub max_attempts: u32,
    pub canarie: Canarie,
}

/// How the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One process per job (stdin message, stderr progress, stdout result).
    PerJob,
    /// One long-lived process per slot, JSON lines in and out.
    Persistent,
}

/// Local slots: a fixed number, or a range the capacity estimate moves within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Fixed(usize),
    Range { min: usize, max: usize },
}

impl Workers {
    pub fn min(self) -> usize {
        match self {
            Workers::Fixed(n) => n,
            Workers::Range { min, .. } => min,
        }
    }

    pub fn max(self) -> usize {
        match self {
            Workers::Fixed(n) => n,
            Workers::Range { max, .. } => max,
        }
    }

    /// `"4"` or `"1-8"` (MIN may be 0; MAX at least MIN). `0` (or `"0-0"`): no local slot,
    /// the service's jobs wait for remote workers (`portico worker --gateway`).
    pub fn parse(text: &str) -> Result<Workers, String> {
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{text:?} is not a number of slots nor \"MIN-MAX\""))
        };
        let workers = match text.split_once('-') {
            Some((min, max)) => Workers::Range {
                min: number(min)?,
                max: number(max)?,
            },
            None => Workers::Fixed(number(text)?),
        };
        workers.check()
    }

    fn check(self) -> Result<Workers, String> {
        match self {
            Workers::Range { min, max } if min > max => {
                Err(format!("MIN ({min}) is more than MAX ({max})"))
            }
            Workers::Fixed(n) | Workers::Range { max: n, .. } if n > MAX_SLOTS => {
                Err(format!("at most {MAX_SLOTS} slots"))
            }
            other => Ok(other),
        }
    }
}

/// More local slots than this is a typo, not a plan.
pub const MAX_SLOTS: usize = 4096;

/// The machine's cores: the default number of slots.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Collects problems, each prefixed by its key.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: &str, problem: impl std::fmt::Display) {
        self.0.push(format!("{key}: {problem}"));
    }
}

impl RawJobsConfig {
    /// The runtime config, or every problem found, each naming its key.
    pub fn validate(&self) -> Result<JobsConfig, Vec<String>> {
        self.validate_with(&[])
    }

    /// As [`RawJobsConfig::validate`]; `taken` are first path segments other services of
    /// the gateway use, which job services may not take either.
    pub fn validate_with(&self, taken: &[&str]) -> Result<JobsConfig, Vec<String>> {
        let RawJobsConfig {
            broker,
            result_backend,
            celery_app,
            broker_timeout,
            result_expires,
            state,
            state_prefix,
            state_timeout,
            api_version,
            lease,
            kill_grace,
            target_wait,
            scale_down_delay,
            max_output,
            temporary_files_ttl,
            temporary_files_max_bytes,
            public_url,
            security,
            storage,
            services,
        } = self;
        let mut problems = Problems::default();
        let broker = parse_broker(broker).unwrap_or_else(|p| {
            problems.add("jobs.broker", p);
            BrokerConfig::Embedded
        });
        let result_backend = parse_result_backend(result_backend).unwrap_or_else(|p| {
            problems.add("jobs.result_backend", p);
            ResultBackend::Amqp
        });
        if celery_app.trim().is_empty() {
            problems.add("jobs.celery_app", "may not be empty");
        }
        for (key, value) in [
            ("jobs.broker_timeout", broker_timeout),
            ("jobs.result_expires", result_expires),
            ("jobs.state_timeout", state_timeout),
            ("jobs.lease", lease),
            ("jobs.target_wait", target_wait),
        ] {
            if value.is_zero() {
                problems.add(key, "must be more than 0s");
            }
        }
        if *lease < Duration::from_secs(1) {
            problems.add(
                "jobs.lease",
                "must be at least 1s (workers renew at a third of it)",
            );
        }
        let state = parse_state(state, state_prefix).unwrap_or_else(|p| {
            problems.add("jobs.state", p);
            StateConfig::Embedded
        });
        let max_output = usize::try_from(*max_output).unwrap_or(usize::MAX);
        if max_output < 1024 {
            problems.add("jobs.max_output", "must be at least 1024 bytes");
        }
        if temporary_files_ttl.is_zero() {
            problems.add("jobs.temporary_files_ttl", "must be more than 0s");
        }
        if *temporary_files_max_bytes == 0 {
            problems.add("jobs.temporary_files_max_bytes", "must be more than 0");
        }
        let public_url = validate_public_url(public_url).unwrap_or_else(|p| {
            problems.add("jobs.public_url", p);
            String::new()
        });
        let security = validate_security(security, &mut problems);
        let embedded = broker == BrokerConfig::Embedded;
        let services = validate_services(services, embedded, taken, &mut problems);
        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        Ok(JobsConfig {
            broker,
            result_backend,
            celery_app: celery_app.clone(),
            broker_timeout: *broker_timeout,
            result_expires: *result_expires,
            state,
            state_timeout: *state_timeout,
            api_version: api_version.clone(),
            lease: *lease,
            kill_grace: *kill_grace,
            target_wait: *target_wait,
            scale_down_delay: *scale_down_delay,
            max_output,
            temporary_files_ttl: *temporary_files_ttl,
            temporary_files_max_bytes: *temporary_files_max_bytes,
            public_url,
            security,
            storage: storage.clone(),
            services,
        })
    }
}

/// `""`, or an `http(s)://host[:port][/path]` URL without query, kept without its trailing `/`.
fn validate_public_url(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Ok(String::new());
    }
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?} is not an http:// or https:// URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} may not have a query or a fragment"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn parse_broker(text: &str) -> Result<BrokerConfig, String> {
    if text == "embedded" {
        return Ok(BrokerConfig::Embedded);
    }
    let url = url::Url::parse(text)
        .map_err(|e| format!("{text:?} is neither \"embedded\" nor an amqp:// URL: {e}"))?;
    if !matches!(url.scheme(), "amqp" | "amqps") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?} is neither \"embedded\" nor an amqp:// or amqps:// URL with a host"
        ));
    }
    Ok(BrokerConfig::Amqp { url: text.into() })
}

fn parse_result_backend(text: &str) -> Result<ResultBackend, String> {
    match text {
        "amqp" => Ok(ResultBackend::Amqp),
        "rpc" => Ok(ResultBackend::Rpc),
        _ => check_redis_url(text)
            .map(|url| ResultBackend::Redis { url })
            .map_err(|e| format!("{text:?} is not \"amqp\", \"rpc\" nor a redis:// URL: {e}")),
    }
}

fn parse_state(text: &str, prefix: &str) -> Result<StateConfig, String> {
    if text == "embedded" {
        return Ok(StateConfig::Embedded);
    }
    check_redis_url(text)
        .map(|url| StateConfig::Redis {
            url,
            prefix: prefix.to_string(),
        })
        .map_err(|e| format!("{text:?} is neither \"embedded\" nor a redis:// URL: {e}"))
}

fn check_redis_url(text: &str) -> Result<String, String> {
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| text.starts_with(s));
    if !scheme_ok {
        return Err("unknown scheme".into());
    }
    redis::Client::open(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

fn validate_security(raw: &RawSecurity, problems: &mut Problems) -> Security {
    let RawSecurity {
        bypass,
        jwt_key,
        jwt_audience,
        jwt_algorithm,
        jwt_duration,
    } = raw;
    let jwt_key = jwt_key.as_deref().and_then(|text| {
        JwtKey::from_base64(text)
            .map_err(|p| problems.add("jobs.security.jwt_key", p))
            .ok()
    });
    let algorithm = JwtAlgorithm::parse(jwt_algorithm).unwrap_or_else(|| {
        problems.add(
            "jobs.security.jwt_algorithm",
            format!("{jwt_algorithm:?} is not HS256, HS384 nor HS512"),
        );
        JwtAlgorithm::Hs512
    });
    if jwt_duration.is_zero() {
        problems.add("jobs.security.jwt_duration", "must be more than 0s");
    }
    Security {
        bypass: *bypass,
        jwt_key,
        jwt_audience: jwt_audience.clone(),
        jwt_algorithm: algorithm,
        jwt_duration: *jwt_duration,
    }
}

fn validate_services(
    raw: &[RawService],
    embedded: bool,
    taken: &[&str],
    problems: &mut Problems,
) -> Vec<ServiceConfig> {
    let mut services: Vec<ServiceConfig> = Vec::with_capacity(raw.len());
    for (i, service) in raw.iter().enumerate() {
        let key = format!("jobs.service[{i}]");
        let valid = validate_service(service, embedded, taken, &key, problems);
        if services.iter().any(|s| s.name == valid.name) {
            problems.add(
                &format!("{key}.name"),
                format!("{:?} is used by another service", valid.name),
            );
        }
        services.push(valid);
    }
    services
}

fn validate_service(
    raw: &RawService,
    embedded: bool,
    taken: &[&str],
    key: &str,
    problems: &mut Problems,
) -> ServiceConfig {
    let RawService {
        name,
        celery_task_name,
        celery_queue_name,
        version,
        noparams,
        command,
        mode,
        workers,
        timeout,
        max_attempts,
        canarie,
    } = raw;
    if let Err(problem) = check_route_keyword(name, taken) {
        problems.add(&format!("{key}.name"), problem);
    }
    let task = celery_task_name.clone().unwrap_or_else(|| name.clone());
    if task.trim().is_empty() {
        problems.add(&format!("{key}.celery_task_name"), "may not be empty");
    }
    let queue = celery_queue_name.clone().unwrap_or_else(|| name.clone());
    if queue.is_empty() || queue.len() > 255 {
        problems.add(
            &format!("{key}.celery_queue_name"),
            "must be 1 to 255 bytes (an AMQP queue name)",
        );
    }
    if embedded && command.first().is_none_or(|program| program.is_empty()) {
        problems.add(
            &format!("{key}.command"),
            "is required with the embedded broker (program and arguments)",
        );
    }
    let mode = match mode.as_str() {
        "per_job" => Mode::PerJob,
        "persistent" => Mode::Persistent,
        other => {
            problems.add(
                &format!("{key}.mode"),
                format!("{other:?} is not \"per_job\" nor \"persistent\""),
            );
            Mode::PerJob
        }
    };
    let workers = parse_workers(workers.as_ref()).unwrap_or_else(|p| {
        problems.add(&format!("{key}.workers"), p);
        Workers::Fixed(1)
    });
    if timeout.is_some_and(|t| t.is_zero()) {
        problems.add(
            &format!("{key}.timeout"),
            "must be more than 0s (leave it out for none)",
        );
    }
    let max_attempts = u32::try_from(*max_attempts)
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .unwrap_or_else(|| {
            problems.add(
                &format!("{key}.max_attempts"),
                format!("must be from 1 to 1000, got {max_attempts}"),
            );
            DEFAULT_MAX_ATTEMPTS
        });
    ServiceConfig {
        name: name.clone(),
        celery_task_name: task,
        celery_queue_name: queue,
        version: version.clone(),
        noparams: *noparams,
        command: command.clone(),
        mode,
        workers,
        timeout: *timeout,
        max_attempts,
        canarie: canarie.clone(),
    }
}

fn parse_workers(raw: Option<&RawWorkers>) -> Result<Workers, String> {
    match raw {
        None => Ok(Workers::Fixed(default_workers().min(MAX_SLOTS))),
        Some(RawWorkers::Count(n)) => usize::try_from(*n)
            .map_err(|_| format!("{n} is not a number of slots"))
            .and_then(|n| Workers::Fixed(n).check()),
        Some(RawWorkers::Text(text)) => Workers::parse(text),
    }
}

/// A route keyword: `/<name>/annotate`. Letters, digits, `_`, `-`, `.`; not a reserved
/// first segment; at most 64 characters.
fn check_route_keyword(name: &str, taken: &[&str]) -> Result<(), String> {
    if name.is_empty() {
        return Err("may not be empty".into());
    }
    if name.len() > 64 {
        return Err(format!("{name:?} is longer than 64 characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.chars().all(allowed) || name.starts_with('.') {
        return Err(format!(
            "{name:?} is not a route keyword (letters, digits, '_', '-', '.'; no '/')"
        ));
    }
    if RESERVED_NAMES.contains(&name) || taken.contains(&name) {
        return Err(format!("{name:?} is a route Portico uses itself"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RawJobsConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let config = JobsConfig::default();
        assert_eq!(config.broker, BrokerConfig::Embedded);
        assert_eq!(config.state, StateConfig::Embedded);
        assert_eq!(config.result_expires, Duration::from_secs(7200));
        assert_eq!(config.broker_timeout, Duration::from_secs(5));
        assert_eq!(config.api_version, "1.9.3");
        assert_eq!(config.security.jwt_audience, "vlbTest");
        assert_eq!(config.security.jwt_algorithm, JwtAlgorithm::Hs512);
        assert_eq!(config.security.jwt_duration, Duration::from_secs(600));
        assert!(config.security.jwt_key.is_none());
        assert!(config.services.is_empty());
    }

    #[test]
    fn the_spec_example_is_valid() {
        let config = parse(
            r#"
            broker = "amqp://guest:guest@127.0.0.1:5672/%2f"
            result_backend = "redis://127.0.0.1:6379/0"
            [security]
            jwt_key = "c2VjcmV0"
            [[service]]
            name = "transcoder"
            celery_task_name = "transcoder"
            celery_queue_name = "transcoder_0.2.7"
            version = "0.2.7"
            command = ["/opt/transcoder/run"]
            workers = "1-4"
            timeout = "1h"
            max_attempts = 3
            [service.canarie]
            name = "Transcoder"
            tags = ["audio", "video"]
            doc = "https://example.org/doc"
            "#,
        )
        .validate()
        .expect("valid");
        let service = config.service("transcoder").expect("the service");
        assert_eq!(service.workers, Workers::Range { min: 1, max: 4 });
        assert_eq!(service.timeout, Some(Duration::from_secs(3600)));
        assert_eq!(config.security.jwt_key.as_ref().unwrap().bytes, b"secret");
        assert!(matches!(config.result_backend, ResultBackend::Redis { .. }));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let problems = parse(
            r#"
            broker = "kafka://x"
            result_backend = "mongodb"
            state = "postgres://x"
            lease = "0s"
            [security]
            jwt_key = "not base64!"
            jwt_algorithm = "none"
            [[service]]
            name = "jobs"
            workers = "8-2"
            mode = "forever"
            max_attempts = 0
            [[service]]
            name = "a/b"
            command = ["x"]
            workers = -1
            [[service]]
            name = "ok"
            command = ["x"]
            workers = "x-y"
            timeout = "0s"
            [[service]]
            name = "ok"
            command = ["x"]
            "#,
        )
        .validate()
        .expect_err("invalid");
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        let expected = [
            "jobs.broker",
            "jobs.result_backend",
            "jobs.lease",
            "jobs.lease",
            "jobs.state",
            "jobs.security.jwt_key",
            "jobs.security.jwt_algorithm",
            "jobs.service[0].name",
            "jobs.service[0].command",
            "jobs.service[0].mode",
            "jobs.service[0].workers",
            "jobs.service[0].max_attempts",
            "jobs.service[1].name",
            "jobs.service[1].workers",
            "jobs.service[2].workers",
            "jobs.service[2].timeout",
            "jobs.service[3].name",
        ];
        assert_eq!(keys, expected, "{problems:#?}");
    }

    #[test]
    fn command_is_needed_only_with_the_embedded_broker() {
        let text = r#"
            [[service]]
            name = "remote"
        "#;
        assert!(parse(text).validate().is_err());
        let amqp = format!("broker = \"amqp://localhost\"\n{text}");
        assert!(parse(&amqp).validate().is_ok());
    }

    #[test]
    fn workers_take_a_count_or_a_range() {
        assert_eq!(Workers::parse("3"), Ok(Workers::Fixed(3)));
        assert_eq!(Workers::parse("0-8"), Ok(Workers::Range { min: 0, max: 8 }));
        assert_eq!(
            Workers::parse(" 2 - 2 "),
            Ok(Workers::Range { min: 2, max: 2 })
        );
        assert_eq!(
            Workers::parse("0"),
            Ok(Workers::Fixed(0)),
            "remote workers only"
        );
        for bad in ["3-1", "", "-", "1-", "a-b", "1-2-3", "99999"] {
            assert!(Workers::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn other_services_routes_are_refused() {
        let raw = parse(
            r#"
            [[service]]
            name = "fib"
            command = ["x"]
            "#,
        );
        assert!(raw.validate().is_ok());
        let problems = raw.validate_with(&["fib"]).expect_err("taken");
        assert!(
            problems[0].starts_with("jobs.service[0].name:"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_naming_them() {
        for text in [
            "brokr = \"x\"",
            "[security]\njwt_kee = \"x\"",
            "[[service]]\nname = \"a\"\ncomand = [\"x\"]",
            "[[service]]\nname = \"a\"\n[service.canarie]\ntag = []",
        ] {
            let error = toml::from_str::<RawJobsConfig>(text).expect_err(text);
            let message = error.to_string();
            assert!(message.contains("unknown field"), "{message}");
        }
    }

    #[test]
    fn jwt_keys_decode_like_python_b64decode() {
        assert_eq!(JwtKey::from_base64("c2VjcmV0").unwrap().bytes, b"secret");
        assert_eq!(JwtKey::from_base64("c2VjcmV0\n").unwrap().bytes, b"secret");
        assert_eq!(JwtKey::from_base64("YWI=").unwrap().bytes, b"ab");
        assert_eq!(JwtKey::from_base64("YWI").unwrap().bytes, b"ab");
        assert!(JwtKey::from_base64("").is_err());
        assert!(JwtKey::from_base64("%%%").is_err());
        assert_eq!(
            format!("{:?}", JwtKey::from_base64("YWI").unwrap()),
            "JwtKey(2 bytes)"
        );
    }

    #[test]
    fn the_example_config_shows_the_core_defaults() {
        let text = include_str!("../../../../portico.example.toml");
        let whole: toml::Value = toml::from_str(text).expect("the example is TOML");
        let Some(section) = whole.get("jobs") else {
            panic!("[jobs] is missing from portico.example.toml");
        };
        let example: RawJobsConfig = section.clone().try_into().expect("[jobs] parses");
        let defaults = RawJobsConfig::default();
        assert_eq!(example.lease, defaults.lease);
        assert_eq!(example.kill_grace, defaults.kill_grace);
        assert_eq!(example.target_wait, defaults.target_wait);
        assert_eq!(example.scale_down_delay, defaults.scale_down_delay);
        assert_eq!(example.max_output, defaults.max_output);
        assert_eq!(example.state_timeout, defaults.state_timeout);
        assert_eq!(example.state_prefix, defaults.state_prefix);
        assert_eq!(example.temporary_files_ttl, defaults.temporary_files_ttl);
        assert_eq!(
            example.temporary_files_max_bytes,
            defaults.temporary_files_max_bytes
        );
        assert_eq!(example.public_url, defaults.public_url);
    }

    #[test]
    fn temporary_file_keys_and_the_public_url_are_checked() {
        let raw = RawJobsConfig {
            temporary_files_ttl: Duration::ZERO,
            temporary_files_max_bytes: 0,
            public_url: "ftp://h".into(),
            ..RawJobsConfig::default()
        };
        let problems = raw.validate().unwrap_err().join("\n");
        assert!(problems.contains("jobs.temporary_files_ttl"), "{problems}");
        assert!(
            problems.contains("jobs.temporary_files_max_bytes"),
            "{problems}"
        );
        assert!(problems.contains("jobs.public_url"), "{problems}");
        let raw = RawJobsConfig {
            public_url: "https://gw.example.org/base/".into(),
            ..RawJobsConfig::default()
        };
        assert_eq!(
            raw.validate().unwrap().public_url,
            "https://gw.example.org/base"
        );
    }
}
