//! `portico migrate servicegateway`: real config modules shaped like the original's
//! (VestaRestPackage's `default_configuration.py` and a deployment's override), read by
//! python3 through the binary. With `CI` set a missing python3 fails these tests.

use std::path::Path;
use std::process::{Command, Output};

const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

/// A deployment's module, as the original's users wrote them: imports, computed values, a
/// timedelta, dicts of services.
const DEPLOYMENT: &str = r#"
# coding: utf-8
from datetime import timedelta
from os.path import dirname, join
__THIS_DIR__ = dirname(__file__)

MY_SERVER_NAME = "vesta.example.org"
DATABASES = {'Invocations': {'filename': "service_invocations.db",
                             'schema_filename': join(__THIS_DIR__, "x.sql")}}
CELERY_PROJ_NAME = "worker"
CELERY = {
    'BROKER_URL': "amqp://vesta:pw@rabbit.example.org:5672//",
    'CELERY_RESULT_BACKEND': "amqp://",
    'CELERY_TASK_SERIALIZER': "json",
    'CELERY_RESULT_SERIALIZER': "json",
    'CELERY_ACCEPT_CONTENT': ["json"],
    'CELERY_TASK_RESULT_EXPIRES': timedelta(hours=2)}
AMQP_TIMEOUT = 5
SECURITY = {
    'AUTHORISATION_KEY': "aed9yhfapgaegaeg",
    'JWT': {
        'JWT_SIGNATURE_KEY': "vJmMvm44x6RJcVXNPy6UDcSfJHOHNHrT1tKpo4IQ4MU=",
        'JWT_AUDIENCE': "vlbTest",
        'JWT_ALGORITHM': "HS512",
        'JWT_DURATION': 600}}
GET_STORAGE_DOC_REQ_URL = "http://mss.example.org/get/{storage_doc_id}"
POST_STORAGE_DOC_REQ_URL = ("http://mss.example.org/add"
                            "?service_key=" + SECURITY["AUTHORISATION_KEY"])
POST_ANNOTATIONS_REQ_URL = ("http://jass.example.org/"
                            "document/{ann_doc_id}/annotations?storageType=2")
WORKER_SERVICES = {
    'transcoder': {
        'route_keyword': 'transcoder',
        'celery_task_name': 'transcoder',
        'celery_queue_name': 'transcoder_0.2.7',
        'name': 'Transcoder',
        'synopsis': "RESTful service providing transcoding.",
        'version': "0.2.7",
        'institution': 'CRIM',
        'releaseTime': '2019-03-20T00:00:00Z',
        'supportEmail': 'support@crim.ca',
        'category': "Data Manipulation",
        'researchSubject': "Multimedia",
        'tags': "transcoding, audio, video",
        'home': "http://vesta.example.org/docs/transcoder.html",
        'doc': "http://vesta.example.org/docs/transcoder.html",
        'releasenotes': "http://vesta.example.org/docs/transcoder.html",
        'support': "http://vesta.example.org/docs/transcoder.html",
        'source': ",204",
        'tryme': "http://vesta.example.org/docs/transcoder.html",
        'licence': "http://vesta.example.org/docs/transcoder.html",
        'provenance': "http://vesta.example.org/docs/transcoder.html",
        'os_args': {'image': 'transcoder_v_0.2.7', 'instance_type': 'm1.large'},
        'rubber_params': {'spawn_ratio': 0.1}},
    'diarisation': {
        'route_keyword': 'diarisation',
        'celery_task_name': 'diarisation',
        'celery_queue_name': 'diarisation_1.0',
        'version': "1.0", 'name': 'Diarisation', 'noparams': False,
        'tags': "speech"},
}
BROKER_ADMIN_PASS = 'guest'
OPS_CONFIG = {'name': 'My OpenStack', 'password': 'MY_PASSWORD'}
RUBBER_MAX_VM_QTY = 50
"#;

fn migrate(module: &Path, path_env: Option<&str>) -> Output {
    let mut command = Command::new(PORTICO);
    command.args(["migrate", "servicegateway"]).arg(module);
    if let Some(path) = path_env {
        command.env("PATH", path);
    }
    command.output().expect("running portico")
}

#[test]
fn an_original_deployment_config_becomes_jobs_toml_with_notes() {
    if testkit::python3().is_none() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let module = temp.path().join("sg_config.py");
    std::fs::write(&module, DEPLOYMENT).unwrap();
    let output = migrate(&module, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let text = String::from_utf8(output.stdout).unwrap();
    let parsed: toml::Table = toml::from_str(&text).expect(&text);
    let jobs = parsed["jobs"].as_table().unwrap();
    assert_eq!(
        jobs["broker"].as_str(),
        Some("amqp://vesta:pw@rabbit.example.org:5672//")
    );
    assert_eq!(
        jobs["result_expires"].as_str(),
        Some("2h"),
        "a timedelta becomes a duration"
    );
    assert_eq!(
        jobs["storage"]["post_doc_url"].as_str(),
        Some("http://mss.example.org/add?service_key=aed9yhfapgaegaeg"),
        "values computed by the module are carried over as computed"
    );
    let services = jobs["service"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    let transcoder = services
        .iter()
        .find(|s| s["name"].as_str() == Some("transcoder"))
        .unwrap();
    assert_eq!(
        transcoder["canarie"]["tags"].as_array().unwrap().len(),
        3,
        "{text}"
    );
    for note in [
        "MY_SERVER_NAME",
        "DATABASES",
        "OPS_CONFIG",
        "RUBBER_MAX_VM_QTY",
        "BROKER_ADMIN_PASS",
        "os_args",
        "rubber_params",
    ] {
        assert!(
            text.contains(&format!("# not carried over: {note} (")),
            "{note}:\n{text}"
        );
    }
    assert!(!text.contains("MY_PASSWORD"), "{text}");

    // -o writes the same text to a file.
    let out = temp.path().join("jobs.toml");
    let status = Command::new(PORTICO)
        .args(["migrate", "servicegateway"])
        .arg(&module)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

#[test]
fn a_module_python_cannot_load_is_reported_with_pythons_message() {
    if testkit::python3().is_none() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let module = temp.path().join("broken.py");
    std::fs::write(&module, "WORKER_SERVICES = {\n").unwrap();
    let output = migrate(&module, None);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("python3 could not load") && stderr.contains("SyntaxError"),
        "{stderr}"
    );
    let missing = migrate(&temp.path().join("nope.py"), None);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.py not found"));
}

#[test]
fn without_python3_the_error_says_what_is_needed() {
    let temp = tempfile::tempdir().unwrap();
    let module = temp.path().join("sg_config.py");
    std::fs::write(&module, DEPLOYMENT).unwrap();
    let empty = temp.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let output = migrate(&module, Some(empty.to_str().unwrap()));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("python3 was not found on PATH"), "{stderr}");
}
