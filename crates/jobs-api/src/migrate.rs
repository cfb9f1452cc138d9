//! `portico migrate servicegateway CONF.py`: the original's Python config module (the file
//! `VRP_CONFIGURATION` pointed at) turned into the `[jobs]` TOML of spec section 5.
//!
//! The module is Python, so Python reads it: python3 runs once on it (as Flask's
//! `from_pyfile` did: every UPPERCASE name it defines) and prints those names as JSON; the
//! rest is pure translation ([`translate`]), tested without Python. Every key that cannot be
//! carried over becomes a comment saying why (its value is not copied: `OPS_CONFIG` and
//! friends hold passwords). Keys the module does not define keep Portico's defaults, which
//! are the original's.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How long python3 may take to read the module.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(30);

/// The program that loads the module and prints its UPPERCASE names as JSON. Values JSON
/// cannot hold are named by type; `timedelta`s become seconds.
const LOADER: &str = r#"
import datetime, json, os, runpy, sys
path = sys.argv[1]
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
names = runpy.run_path(path)
def plain(value):
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    return {"__python_type__": type(value).__name__}
json.dump({k: plain(v) for k, v in names.items() if k.isupper()}, sys.stdout)
"#;

/// Why the module could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "python3 was not found on PATH: migrate runs the original config module with python3 \
         once; install python3 (apt-get install python3) or run migrate where the gateway ran"
    )]
    NoPython,
    #[error("config module {path} not found")]
    NoModule { path: String },
    #[error("running python3 on {path}: {error}")]
    Run { path: String, error: std::io::Error },
    #[error("python3 could not load {path}:\n{stderr}")]
    Python { path: String, stderr: String },
    #[error("python3 took more than {:?} to load {path}", PYTHON_TIMEOUT)]
    Timeout { path: String },
    #[error("reading what python3 printed for {path}: {error}")]
    Output {
        path: String,
        error: serde_json::Error,
    },
}

/// Runs python3 on the module at `path`; its UPPERCASE names as JSON.
pub fn load_module(path: &Path) -> Result<Map<String, Value>, MigrateError> {
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(MigrateError::NoModule { path: shown });
    }
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(LOADER)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => MigrateError::NoPython,
            _ => MigrateError::Run {
                path: shown.clone(),
                error,
            },
        })?;
    let output = collect_output(&mut child, &shown)?;
    if !output.status.success() {
        return Err(MigrateError::Python {
            path: shown,
            stderr: output.stderr.trim_end().to_string(),
        });
    }
    serde_json::from_str(&output.stdout)
        .map_err(|error| MigrateError::Output { path: shown, error })
}

/// What python3 did.
struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for the child (killing it past the timeout) and reads both pipes.
fn collect_output(child: &mut std::process::Child, path: &str) -> Result<Output, MigrateError> {
    let run_error = |error| MigrateError::Run {
        path: path.to_string(),
        error,
    };
    // Readers on threads, so a module printing a lot cannot fill a pipe and stall python3.
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).map(|_| text)
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        err.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + PYTHON_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(run_error)? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(MigrateError::Timeout {
                path: path.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let joined = |handle: std::thread::JoinHandle<std::io::Result<String>>| {
        handle
            .join()
            .unwrap_or_else(|_| Ok(String::new()))
            .map_err(run_error)
    };
    let stdout = joined(out_reader)?;
    let stderr = joined(err_reader)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// The TOML for the module's names (`source` is named in the header comment).
pub fn translate(names: &Map<String, Value>, source: &str) -> String {
    let mut toml = Toml::default();
    let _ = writeln!(
        toml.text,
        "# Written by `portico migrate servicegateway` from {source}.\n\
         # Keys that could not be carried over are comments saying why. Keys the module did\n\
         # not set keep Portico's defaults, which are the original's."
    );
    let mut used = vec!["WORKER_SERVICES"];
    jobs_section(&mut toml, names, &mut used);
    security_section(&mut toml, names, &mut used);
    storage_section(&mut toml, names, &mut used);
    leftover_top_level(&mut toml, names, &used);
    if let Some(services) = names.get("WORKER_SERVICES").and_then(Value::as_object) {
        for (key, service) in services {
            service_section(&mut toml, key, service);
        }
    }
    toml.text
}

/// The TOML text being written.
#[derive(Default)]
struct Toml {
    text: String,
}

impl Toml {
    fn section(&mut self, header: &str) {
        let _ = write!(self.text, "\n{header}\n");
    }

    fn key(&mut self, key: &str, value: toml::Value) {
        let _ = writeln!(self.text, "{key} = {value}");
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key, toml::Value::String(value.to_string()));
    }

    fn comment(&mut self, text: &str) {
        let _ = writeln!(self.text, "# {text}");
    }

    fn duration(&mut self, key: &str, original: &str, seconds: &Value) {
        match seconds.as_f64().filter(|s| s.is_finite() && *s >= 0.0) {
            Some(seconds) => {
                let duration = Duration::from_secs_f64(seconds);
                self.string(key, &humantime::format_duration(duration).to_string());
            }
            None => self.comment(&format!(
                "not carried over: {original} (not a number of seconds)"
            )),
        }
    }
}

fn jobs_section(toml: &mut Toml, names: &Map<String, Value>, used: &mut Vec<&'static str>) {
    toml.section("[jobs]");
    used.extend(["CELERY_PROJ_NAME", "CELERY", "AMQP_TIMEOUT", "BROKER_URL"]);
    if let Some(app) = names.get("CELERY_PROJ_NAME").and_then(Value::as_str) {
        toml.string("celery_app", app);
    }
    let celery = names.get("CELERY").and_then(Value::as_object);
    let setting = |key: &str| celery.and_then(|c| c.get(key)).or_else(|| names.get(key));
    if let Some(broker) = setting("BROKER_URL").and_then(Value::as_str) {
        toml.string("broker", broker);
    }
    if let Some(backend) = setting("CELERY_RESULT_BACKEND").and_then(Value::as_str) {
        match result_backend(backend) {
            Some(value) => toml.string("result_backend", &value),
            None => toml.comment(&format!(
                "not carried over: CELERY_RESULT_BACKEND {backend:?} (Portico reads amqp, rpc or redis)"
            )),
        }
    }
    if let Some(expires) = setting("CELERY_TASK_RESULT_EXPIRES") {
        toml.duration("result_expires", "CELERY_TASK_RESULT_EXPIRES", expires);
    }
    if let Some(timeout) = names.get("AMQP_TIMEOUT") {
        toml.duration("broker_timeout", "AMQP_TIMEOUT", timeout);
    }
    if let Some(celery) = celery {
        celery_leftovers(toml, celery);
    }
}

/// `amqp://` -> `amqp`, `rpc://` -> `rpc`, `redis://...` as it is.
fn result_backend(text: &str) -> Option<String> {
    let scheme = text.split("://").next().unwrap_or(text);
    match scheme {
        "amqp" => Some("amqp".into()),
        "rpc" => Some("rpc".into()),
        "redis" | "rediss" => Some(text.to_string()),
        _ => None,
    }
}

/// Celery settings Portico does not take: JSON is the only serializer, so those settings
/// are dropped silently when they say JSON and noted otherwise.
fn celery_leftovers(toml: &mut Toml, celery: &Map<String, Value>) {
    const TAKEN: &[&str] = &[
        "BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "CELERY_TASK_RESULT_EXPIRES",
    ];
    for (key, value) in celery {
        if TAKEN.contains(&key.as_str()) {
            continue;
        }
        let is_json = match value {
            Value::String(text) => text == "json",
            Value::Array(items) => items.iter().all(|item| item == "json"),
            _ => false,
        };
        let serializer = key.contains("SERIALIZER") || key == "CELERY_ACCEPT_CONTENT";
        if serializer && is_json {
            continue;
        }
        let why = if serializer {
            "Portico's messages are JSON"
        } else {
            "no Portico equivalent"
        };
        toml.comment(&format!("not carried over: CELERY[{key:?}] ({why})"));
    }
}

fn security_section(toml: &mut Toml, names: &Map<String, Value>, used: &mut Vec<&'static str>) {
    used.push("SECURITY");
    let Some(security) = names.get("SECURITY").and_then(Value::as_object) else {
        return;
    };
    toml.section("[jobs.security]");
    if let Some(bypass) = security.get("BYPASS_SECURITY").and_then(Value::as_bool) {
        toml.key("bypass", toml::Value::Boolean(bypass));
    }
    if security.contains_key("AUTHORISATION_KEY") {
        toml.comment(
            "not carried over: SECURITY[\"AUTHORISATION_KEY\"] (the workers' shared key for the \
             rubber; Portico's remote workers use tokens)",
        );
    }
    let jwt = security.get("JWT").and_then(Value::as_object);
    let jwt_text = |key: &str| jwt.and_then(|j| j.get(key)).and_then(Value::as_str);
    if let Some(key) = jwt_text("JWT_SIGNATURE_KEY") {
        toml.string("jwt_key", key);
    }
    if let Some(audience) = jwt_text("JWT_AUDIENCE") {
        toml.string("jwt_audience", audience);
    }
    if let Some(algorithm) = jwt_text("JWT_ALGORITHM") {
        if crate::jwt::signing_algorithm(algorithm).is_some() {
            toml.string("jwt_algorithm", algorithm);
        } else {
            toml.comment(&format!(
                "not carried over: JWT_ALGORITHM {algorithm:?} (HS256, HS384 or HS512)"
            ));
        }
    }
    if let Some(duration) = jwt.and_then(|j| j.get("JWT_DURATION")) {
        toml.duration("jwt_duration", "JWT_DURATION", duration);
    }
}

fn storage_section(toml: &mut Toml, names: &Map<String, Value>, used: &mut Vec<&'static str>) {
    const KEYS: &[(&str, &str)] = &[
        ("GET_STORAGE_DOC_REQ_URL", "get_doc_url"),
        ("POST_STORAGE_DOC_REQ_URL", "post_doc_url"),
        ("POST_ANNOTATIONS_REQ_URL", "post_annotations_url"),
    ];
    used.extend(KEYS.iter().map(|(original, _)| *original));
    if !KEYS
        .iter()
        .any(|(original, _)| names.contains_key(*original))
    {
        return;
    }
    toml.section("[jobs.storage]");
    for (original, key) in KEYS {
        if let Some(url) = names.get(*original).and_then(Value::as_str) {
            toml.string(key, url);
        }
    }
}

/// Why each known top-level key of the original has no Portico key.
fn why_not_carried(key: &str) -> &'static str {
    match key {
        "MY_SERVER_NAME" => "Portico's pages link relative to the request",
        "DATABASES" | "REQUEST_REGISTER_FN" => "Portico keeps its job records itself ([jobs] state)",
        "BROKER_ADMIN_PORT" | "BROKER_ADMIN_UNAME" | "BROKER_ADMIN_PASS" | "FLOWER_API_URL" => {
            "Portico reads queue depths itself; see GET /jobs/capacity"
        }
        "OPS_CONFIG" => "OpenStack VMs are not started by Portico; GET /jobs/capacity and the /metrics gauges tell an autoscaler what is needed",
        key if key.starts_with("RUBBER_") => "the rubber is replaced by GET /jobs/capacity and workers = \"MIN-MAX\"",
        "MSS" => "the multimedia storage service is a service of its own",
        _ => "no Portico equivalent",
    }
}

fn leftover_top_level(toml: &mut Toml, names: &Map<String, Value>, used: &[&str]) {
    let leftovers: Vec<&String> = names
        .keys()
        .filter(|key| !used.contains(&key.as_str()))
        .collect();
    if leftovers.is_empty() {
        return;
    }
    toml.text.push('\n');
    for key in leftovers {
        toml.comment(&format!(
            "not carried over: {key} ({})",
            why_not_carried(key)
        ));
    }
}

/// The original's CANARIE keys and theirs in `[jobs.service.canarie]`.
const CANARIE_KEYS: &[(&str, &str)] = &[
    ("name", "name"),
    ("synopsis", "synopsis"),
    ("institution", "institution"),
    ("releaseTime", "release_time"),
    ("supportEmail", "support_email"),
    ("category", "category"),
    ("researchSubject", "research_subject"),
    ("home", "home"),
    ("doc", "doc"),
    ("releasenotes", "releasenotes"),
    ("support", "support"),
    ("source", "source"),
    ("tryme", "tryme"),
    ("licence", "licence"),
    ("provenance", "provenance"),
];

/// Keys of a `WORKER_SERVICES` entry that go to `[[jobs.service]]` itself.
const SERVICE_KEYS: &[&str] = &[
    "route_keyword",
    "celery_task_name",
    "celery_queue_name",
    "version",
    "noparams",
];

fn service_section(toml: &mut Toml, key: &str, service: &Value) {
    toml.section("[[jobs.service]]");
    let Some(service) = service.as_object() else {
        toml.comment(&format!(
            "not carried over: WORKER_SERVICES[{key:?}] (not a dict)"
        ));
        return;
    };
    let text = |name: &str| service.get(name).and_then(Value::as_str);
    let route = text("route_keyword").unwrap_or(key);
    if route == "." {
        toml.comment(&format!(
            "route_keyword \".\" (no keyword) is not supported: the service is named {key:?}"
        ));
        toml.string("name", key);
    } else {
        toml.string("name", route);
    }
    for name in ["celery_task_name", "celery_queue_name", "version"] {
        if let Some(value) = text(name) {
            toml.string(name, value);
        }
    }
    if let Some(noparams) = service.get("noparams").and_then(Value::as_bool) {
        toml.key("noparams", toml::Value::Boolean(noparams));
    }
    toml.comment(
        "command = [...]  # needed only with broker = \"embedded\": your existing Celery \
         workers keep serving the AMQP broker",
    );
    for (original, _) in service.iter().filter(|(name, _)| {
        !SERVICE_KEYS.contains(&name.as_str())
            && name.as_str() != "tags"
            && !CANARIE_KEYS.iter().any(|(o, _)| o == name)
    }) {
        let why = match original.as_str() {
            "os_args" | "rubber_params" => "Portico starts no VMs; see GET /jobs/capacity",
            _ => "no Portico equivalent",
        };
        toml.comment(&format!("not carried over: {original} ({why})"));
    }
    canarie_section(toml, service);
}

fn canarie_section(toml: &mut Toml, service: &Map<String, Value>) {
    toml.section("[jobs.service.canarie]");
    for (original, key) in CANARIE_KEYS {
        if let Some(value) = service.get(*original).and_then(Value::as_str) {
            toml.string(key, value);
        }
    }
    if let Some(tags) = service.get("tags") {
        let list: Vec<toml::Value> = match tags {
            // The original split its comma-separated string (keeping the spaces).
            Value::String(text) => text
                .split(',')
                .map(|tag| toml::Value::String(tag.trim().to_string()))
                .collect(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .map(|tag| toml::Value::String(tag.to_string()))
                .collect(),
            _ => Vec::new(),
        };
        toml.key("tags", toml::Value::Array(list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn original_config() -> Map<String, Value> {
        json!({
            "CELERY_PROJ_NAME": "worker",
            "CELERY": {
                "BROKER_URL": "amqp://guest:guest@rabbit:5672//",
                "CELERY_RESULT_BACKEND": "amqp://",
                "CELERY_TASK_SERIALIZER": "json",
                "CELERY_ACCEPT_CONTENT": ["json"],
                "CELERY_TASK_RESULT_EXPIRES": 7200,
                "CELERYD_PREFETCH_MULTIPLIER": 1,
            },
            "AMQP_TIMEOUT": 5,
            "SECURITY": {
                "AUTHORISATION_KEY": "secret-key",
                "JWT": {"JWT_SIGNATURE_KEY": "vJmMvm44x6RJcVXNPy6UDcSfJHOHNHrT1tKpo4IQ4MU=",
                        "JWT_AUDIENCE": "vlbTest", "JWT_ALGORITHM": "HS512", "JWT_DURATION": 600},
            },
            "GET_STORAGE_DOC_REQ_URL": "http://mss:5002/get/{storage_doc_id}",
            "POST_STORAGE_DOC_REQ_URL": "http://mss:5002/add",
            "POST_ANNOTATIONS_REQ_URL": "http://jass:5001/document/{ann_doc_id}/annotations?storageType=2",
            "OPS_CONFIG": {"password": "hunter2"},
            "RUBBER_MAX_VM_QTY": 50,
            "WORKER_SERVICES": {
                "transcoder": {
                    "route_keyword": "transcoder", "celery_task_name": "transcoder",
                    "celery_queue_name": "transcoder_0.2.7", "version": "0.2.7",
                    "name": "Transcoder", "synopsis": "Converts media", "institution": "CRIM",
                    "releaseTime": "2019-03-20T00:00:00Z", "supportEmail": "s@example.org",
                    "category": "Data Manipulation", "researchSubject": "Multimedia",
                    "tags": "audio, video", "doc": "https://example.org/doc", "source": ",204",
                    "os_args": {"image": "x"}, "rubber_params": {"spawn_ratio": 0.1},
                },
            },
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn every_key_is_carried_over_or_named_in_a_comment() {
        let text = translate(&original_config(), "sg.py");
        let parsed: toml::Table = toml::from_str(&text).expect(&text);
        let jobs = parsed["jobs"].as_table().unwrap();
        assert_eq!(
            jobs["broker"].as_str(),
            Some("amqp://guest:guest@rabbit:5672//")
        );
        assert_eq!(jobs["result_backend"].as_str(), Some("amqp"));
        assert_eq!(jobs["celery_app"].as_str(), Some("worker"));
        assert_eq!(jobs["result_expires"].as_str(), Some("2h"));
        assert_eq!(jobs["broker_timeout"].as_str(), Some("5s"));
        let security = jobs["security"].as_table().unwrap();
        assert_eq!(security["jwt_audience"].as_str(), Some("vlbTest"));
        assert_eq!(security["jwt_duration"].as_str(), Some("10m"));
        assert_eq!(
            jobs["storage"]["get_doc_url"].as_str(),
            Some("http://mss:5002/get/{storage_doc_id}")
        );
        let service = &jobs["service"].as_array().unwrap()[0];
        assert_eq!(service["name"].as_str(), Some("transcoder"));
        assert_eq!(
            service["celery_queue_name"].as_str(),
            Some("transcoder_0.2.7")
        );
        let canarie = service["canarie"].as_table().unwrap();
        assert_eq!(
            canarie["release_time"].as_str(),
            Some("2019-03-20T00:00:00Z")
        );
        assert_eq!(canarie["tags"].as_array().unwrap().len(), 2);
        assert_eq!(canarie["source"].as_str(), Some(",204"));
        for named in [
            "OPS_CONFIG",
            "RUBBER_MAX_VM_QTY",
            "AUTHORISATION_KEY",
            "os_args",
            "rubber_params",
            "CELERYD_PREFETCH_MULTIPLIER",
        ] {
            assert!(
                text.contains(&format!("not carried over: {named}"))
                    || text.contains(&format!("\"{named}\"")),
                "{named}:\n{text}"
            );
        }
        assert!(
            !text.contains("hunter2"),
            "secrets of dropped keys are not copied"
        );
        assert!(
            !text.contains("CELERY_TASK_SERIALIZER"),
            "JSON serializers need no note"
        );
    }

    #[test]
    fn unusual_values_are_noted_not_guessed() {
        let names = json!({
            "CELERY": {"CELERY_RESULT_BACKEND": "mongodb://m/", "CELERY_TASK_SERIALIZER": "pickle"},
            "SECURITY": {"BYPASS_SECURITY": true, "JWT": {"JWT_ALGORITHM": "RS256", "JWT_DURATION": {"__python_type__": "object"}}},
            "WORKER_SERVICES": {"root": {"route_keyword": "."}},
        });
        let text = translate(names.as_object().unwrap(), "x.py");
        let parsed: toml::Table = toml::from_str(&text).expect(&text);
        assert_eq!(parsed["jobs"]["security"]["bypass"].as_bool(), Some(true));
        assert_eq!(parsed["jobs"]["service"][0]["name"].as_str(), Some("root"));
        for note in [
            "CELERY_RESULT_BACKEND \"mongodb://m/\"",
            "CELERY_TASK_SERIALIZER",
            "JWT_ALGORITHM \"RS256\"",
            "JWT_DURATION (not a number",
            "route_keyword \".\"",
        ] {
            assert!(text.contains(note), "{note}:\n{text}");
        }
    }
}
