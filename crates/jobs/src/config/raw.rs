//! The `[jobs]` section as it is written: serde structs with the defaults of spec section 5
//! (named constants) and `deny_unknown_fields`, so a misspelt key is an error naming it.
//! Nothing here is checked beyond its TOML type; [`super::validate`] turns these into the
//! runtime types, reporting every problem.

use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_BROKER: &str = "embedded";
pub const DEFAULT_RESULT_BACKEND: &str = "amqp";
pub const DEFAULT_CELERY_APP: &str = "worker";
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(2 * 3600);
pub const DEFAULT_STATE: &str = "embedded";
pub const DEFAULT_STATE_PREFIX: &str = "portico:jobs:";
pub const DEFAULT_STATE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_API_VERSION: &str = "1.9.3";
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
pub const DEFAULT_TARGET_WAIT: Duration = Duration::from_secs(10);
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_OUTPUT: u64 = 16 * 1024 * 1024;
pub const DEFAULT_JWT_AUDIENCE: &str = "vlbTest";
pub const DEFAULT_JWT_ALGORITHM: &str = "HS512";
pub const DEFAULT_JWT_DURATION: Duration = Duration::from_secs(600);
pub const DEFAULT_GET_DOC_URL: &str = "http://localhost:5002/get/{storage_doc_id}";
pub const DEFAULT_POST_DOC_URL: &str = "http://localhost:5002/add";
pub const DEFAULT_POST_ANNOTATIONS_URL: &str =
    "http://localhost:5001/document/{ann_doc_id}/annotations?storageType=2";
pub const DEFAULT_MODE: &str = "per_job";
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_TEMPORARY_FILES_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_TEMPORARY_FILES_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// `[jobs]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawJobsConfig {
    /// `"embedded"` or `"amqp://user:pass@host:5672/vhost"`.
    pub broker: String,
    /// With AMQP: `"amqp"`, `"rpc"` or `"redis://host:6379/0"`.
    pub result_backend: String,
    /// Celery app name: task name = `<celery_app>.<celery_task_name>`.
    pub celery_app: String,
    #[serde(with = "humantime_serde")]
    pub broker_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub result_expires: Duration,
    /// Where Portico keeps its job records: `"embedded"` or `"redis://..."`.
    pub state: String,
    /// Prefix of every Redis key of the job records (`state = "redis://..."`).
    pub state_prefix: String,
    /// Bound on one call to the Redis job records, connecting included.
    #[serde(with = "humantime_serde")]
    pub state_timeout: Duration,
    /// First half of CANARIE `version`.
    pub api_version: String,
    /// How long a remote worker's lease lasts without renewal.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// After SIGTERM to a command's process group, how long until SIGKILL.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Capacity: the queue wait the estimate of workers needed aims under.
    #[serde(with = "humantime_serde")]
    pub target_wait: Duration,
    /// `workers = "MIN-MAX"`: how long fewer slots must suffice before slots are removed.
    #[serde(with = "humantime_serde")]
    pub scale_down_delay: Duration,
    /// Most bytes of a command's stdout kept as its result (more fails the job).
    pub max_output: u64,
    /// How long a temporary file (`POST /temporary_file`) is kept after its upload.
    #[serde(with = "humantime_serde")]
    pub temporary_files_ttl: Duration,
    /// Most bytes all temporary files may hold together (an upload past it: 507).
    pub temporary_files_max_bytes: u64,
    /// The gateway's URL as clients reach it (`https://gw.example.org`), the base of
    /// temporary file URLs; empty: the request's scheme and `Host`.
    pub public_url: String,
    pub security: RawSecurity,
    pub storage: RawStorage,
    #[serde(rename = "service")]
    pub services: Vec<RawService>,
}

impl Default for RawJobsConfig {
    fn default() -> Self {
        RawJobsConfig {
            broker: DEFAULT_BROKER.into(),
            result_backend: DEFAULT_RESULT_BACKEND.into(),
            celery_app: DEFAULT_CELERY_APP.into(),
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            result_expires: DEFAULT_RESULT_EXPIRES,
            state: DEFAULT_STATE.into(),
            state_prefix: DEFAULT_STATE_PREFIX.into(),
            state_timeout: DEFAULT_STATE_TIMEOUT,
            api_version: DEFAULT_API_VERSION.into(),
            lease: DEFAULT_LEASE,
            kill_grace: DEFAULT_KILL_GRACE,
            target_wait: DEFAULT_TARGET_WAIT,
            scale_down_delay: DEFAULT_SCALE_DOWN_DELAY,
            max_output: DEFAULT_MAX_OUTPUT,
            temporary_files_ttl: DEFAULT_TEMPORARY_FILES_TTL,
            temporary_files_max_bytes: DEFAULT_TEMPORARY_FILES_MAX_BYTES,
            public_url: String::new(),
            security: RawSecurity::default(),
            storage: RawStorage::default(),
            services: Vec::new(),
        }
    }
}

/// `[jobs.security]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecurity {
    pub bypass: bool,
    /// Base64 HMAC key; unset: generated once and kept in the data directory.
    pub jwt_key: Option<String>,
    pub jwt_audience: String,
    pub jwt_algorithm: String,
    #[serde(with = "humantime_serde")]
    pub jwt_duration: Duration,
}

impl Default for RawSecurity {
    fn default() -> Self {
        RawSecurity {
            bypass: false,
            jwt_key: None,
            jwt_audience: DEFAULT_JWT_AUDIENCE.into(),
            jwt_algorithm: DEFAULT_JWT_ALGORITHM.into(),
            jwt_duration: DEFAULT_JWT_DURATION,
        }
    }
}

/// `[jobs.storage]`: the original's document and annotation store URL templates.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    pub get_doc_url: String,
    pub post_doc_url: String,
    pub post_annotations_url: String,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            get_doc_url: DEFAULT_GET_DOC_URL.into(),
            post_doc_url: DEFAULT_POST_DOC_URL.into(),
            post_annotations_url: DEFAULT_POST_ANNOTATIONS_URL.into(),
        }
    }
}

/// One `[[jobs.service]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    /// Default: `name`.
    #[serde(default)]
    pub celery_task_name: Option<String>,
    /// Default: `name`.
    #[serde(default)]
    pub celery_queue_name: Option<String>,
    /// Expected `worker_id_version`; second half of CANARIE `version`.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub noparams: bool,
    /// The handler (embedded broker): program and arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// `"per_job"` or `"persistent"`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Local slots: an integer, or `"MIN-MAX"`; default: the machine's cores.
    #[serde(default)]
    pub workers: Option<RawWorkers>,
    /// Per-job time limit; unset: none.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i64,
    #[serde(default)]
    pub canarie: RawCanarie,
}

fn default_mode() -> String {
    DEFAULT_MODE.into()
}

fn default_max_attempts() -> i64 {
    i64::from(DEFAULT_MAX_ATTEMPTS)
}

/// `workers` as written: an integer or a string (`"4"`, `"1-8"`), checked by validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawWorkers {
    Count(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawWorkers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawWorkers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer or a \"MIN-MAX\" range")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Count(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[jobs.service.canarie]`: every field optional (empty when unset).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RawCanarie {
    pub name: String,
    pub synopsis: String,
    pub institution: String,
    pub release_time: String,
    pub support_email: String,
    pub category: String,
    pub research_subject: String,
    pub tags: Vec<String>,
    pub doc: String,
    pub releasenotes: String,
    pub support: String,
    pub source: String,
    pub tryme: String,
    pub licence: String,
    pub provenance: String,
    pub home: String,
}
