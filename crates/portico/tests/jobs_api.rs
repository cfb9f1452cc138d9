//! The job API over real sockets: every route of the original ServiceGateway (the spec's
//! first section) with its statuses, content types and vesta codes, tokens made the way the
//! original's clients made them (PyJWT from PyPI in a venv, base64 key, HS512, `aud`,
//! `exp`), and the modern API with server-sent events. With `CI` set, a missing python3 or
//! PyPI fails these tests.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{Portico, Venv};

const KEY: &str = "vJmMvm44x6RJcVXNPy6UDcSfJHOHNHrT1tKpo4IQ4MU=";
const AUDIENCE: &str = "vlbTest";

const CONFIG: &str = r#"
[jobs.security]
jwt_key = "vJmMvm44x6RJcVXNPy6UDcSfJHOHNHrT1tKpo4IQ4MU="
jwt_audience = "vlbTest"

[[jobs.service]]
name = "transcoder"
celery_queue_name = "transcoder_0.2.7"
version = "0.2.7"
command = ["sh", "-c", "cat >/dev/null; echo 'progress 50' >&2; echo '{\"annotations\": [1, 2.5, \"\u00e9\"]}'"]
workers = 2
[jobs.service.canarie]
name = "Transcoder"
synopsis = "Converts media"
institution = "CRIM"
release_time = "2019-03-20T00:00:00Z"
support_email = "support@example.org"
category = "Data Manipulation"
research_subject = "Multimedia"
tags = ["audio", "video"]
doc = "https://example.org/doc"
source = ",204"
tryme = "Not available,404"

[[jobs.service]]
name = "echo"
version = "1.0"
noparams = true
command = ["sh", "-c", "input=$(cat); echo 'progress 30' >&2; sleep 0.3; echo 'progress 60' >&2; sleep 0.3; printf '%s' \"$input\""]

[[jobs.service]]
name = "slow"
version = "1.0"
noparams = true
command = ["sh", "-c", "cat >/dev/null; echo 'progress 10' >&2; sleep 60; echo '{}'"]
"#;

/// PyJWT, as the original's clients and `jwt_` used it.
const MAKE_TOKEN: &str = r#"
import base64, datetime, sys, jwt
key, aud, alg, offset = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
claims = {"aud": aud, "exp": datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset)}
secret = None if alg == "none" else base64.b64decode(key)
print(jwt.encode(claims, secret, algorithm=alg))
"#;

struct Tokens {
    venv: Venv,
}

impl Tokens {
    fn new() -> Option<Tokens> {
        Venv::with_packages(&["PyJWT"]).map(|venv| Tokens { venv })
    }

    fn make(&self, key: &str, aud: &str, alg: &str, seconds: i64) -> String {
        self.venv
            .run(MAKE_TOKEN, &[key, aud, alg, &seconds.to_string()])
    }

    fn valid(&self) -> String {
        self.make(KEY, AUDIENCE, "HS512", 600)
    }
}

async fn start() -> Portico {
    Portico::start(env!("CARGO_BIN_EXE_portico"), CONFIG)
        .await
        .expect("portico starts")
}

async fn text(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Submits `doc_url` to `service` as the original's curl example did; the uuid.
async fn annotate(server: &Portico, token: &str, service: &str) -> String {
    let response = server
        .client()
        .post(server.url(&format!("/{service}/annotate")))
        .header("Authorization", token)
        .form(&[("doc_url", "http://h/a.wav"), ("ann_doc_id", "A1")])
        .send()
        .await
        .unwrap();
    let (status, content_type, body) = text(response).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{body}"
    );
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        body,
        format!("{{\"uuid\":\"{uuid}\"}}\n"),
        "the original's bytes"
    );
    uuid
}

/// Polls the status until `state` (at most 20 s); the last body.
async fn wait_for(server: &Portico, service: &str, uuid: &str, state: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = server.url(&format!("/{service}/status?uuid={uuid}"));
        let (status, _, body) = text(server.client().get(url).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        if json(&body)["status"] == state {
            return body;
        }
        assert!(Instant::now() < deadline, "never {state}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_vesta(body: &str, status: u16, code: u64) {
    let value = json(body);
    assert_eq!(value["status"], status, "{body}");
    assert_eq!(value["vesta"]["code"], code, "{body}");
    assert!(
        value["description"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert_eq!(value["description"], value["vesta"]["message"], "{body}");
}

#[tokio::test]
async fn annotate_then_status_in_json_and_xml_as_the_original() {
    let Some(tokens) = Tokens::new() else { return };
    let server = start().await;
    let uuid = annotate(&server, &tokens.valid(), "transcoder").await;
    let body = wait_for(&server, "transcoder", &uuid, "SUCCESS").await;
    assert_eq!(
        body,
        format!("{{\"result\":{{\"annotations\":[1,2.5,\"\\u00e9\"]}},\"status\":\"SUCCESS\",\"uuid\":\"{uuid}\"}}\n"),
        "compact, sorted, ASCII, one newline"
    );
    let response = server
        .client()
        .get(server.url(&format!("/transcoder/status?uuid={uuid}")))
        .header("Accept", "application/xml")
        .send()
        .await
        .unwrap();
    let (status, content_type, body) = text(response).await;
    assert_eq!((status, content_type.as_str()), (200, "application/xml"));
    assert_eq!(
        body,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" ?><process_status><status>SUCCESS</status>\
             <uuid>{uuid}</uuid><result><annotations><item>1</item><item>2.5</item><item>\u{e9}</item>\
             </annotations></result></process_status>"
        )
    );
}

#[tokio::test]
async fn status_errors_have_the_original_codes() {
    let server = start().await;
    let get = |path: &str| server.client().get(server.url(path)).send();
    let (status, content_type, body) = text(get("/transcoder/status").await.unwrap()).await;
    assert_eq!((status, content_type.as_str()), (400, "application/json"));
    assert_vesta(&body, 400, 206);
    assert!(body.contains("uuid"), "{body}");
    let unknown = "/transcoder/status?uuid=8a3c1f2e-0000-4000-8000-000000000000";
    let (status, _, body) = text(get(unknown).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 203);
    let (status, _, body) = text(get("/transcoder/status?uuid=not-a-uuid").await.unwrap()).await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 203);
    let (status, _, body) = text(get("/nope/status?uuid=x").await.unwrap()).await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 202);
    let response = server
        .client()
        .get(server.url("/transcoder/status"))
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    let (status, content_type, body) = text(response).await;
    assert_eq!(status, 400);
    assert!(
        content_type.starts_with("text/html"),
        "browsers get a page: {content_type}"
    );
    assert!(body.contains("206"), "{body}");
}

#[tokio::test]
async fn submissions_are_checked_before_they_are_queued() {
    let Some(tokens) = Tokens::new() else { return };
    let server = start().await;
    let token = tokens.valid();
    let post = |path: &str, form: &'static [(&'static str, &'static str)]| {
        server
            .client()
            .post(server.url(path))
            .header("Authorization", token.clone())
            .form(form)
            .send()
    };
    let (status, _, body) = text(post("/transcoder/annotate", &[]).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 206);
    let (status, _, body) = text(
        post("/transcoder/annotate", &[("doc_url", "http://host")])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 207);
    let (status, _, body) = text(
        post(
            "/transcoder/process",
            &[("doc_url", "http://h/a"), ("x_url", "nope")],
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 207);
    let (status, _, body) = text(post("/nope/process", &[]).await.unwrap()).await;
    assert_eq!(
        status, 400,
        "an unknown service on /process is 400/202 (the original: 500)"
    );
    assert_vesta(&body, 400, 202);
    let response = server
        .client()
        .post(server.url("/transcoder/process"))
        .header("Authorization", token.clone())
        .header("Content-Type", "application/json")
        .body("[1, 2")
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 101);
}

#[tokio::test]
async fn process_with_a_storage_id_and_a_json_body_builds_the_original_message() {
    let Some(tokens) = Tokens::new() else { return };
    let server = start().await;
    let response = server
        .client()
        .post(server.url("/echo/process/DOC7?lang=fr&storage_txt_id=T1"))
        .header("Authorization", format!("Bearer {}", tokens.valid()))
        .header("Content-Type", "application/json")
        .body(r#"{"model": "large", "lang": "en"}"#)
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let body = wait_for(&server, "echo", &uuid, "SUCCESS").await;
    let message = &json(&body)["result"];
    assert_eq!(
        message["service"]["document"]["url"],
        "http://localhost:5002/get/DOC7"
    );
    let misc = &message["service"]["misc"];
    assert_eq!(misc["model"], "large");
    assert_eq!(misc["lang"], "fr", "request values overwrite the body");
    assert_eq!(misc["txt_url"], "http://localhost:5002/get/T1");
    assert_eq!(misc["upload_url"], "http://localhost:5002/add");
    assert!(
        message["request_time"].as_str().unwrap().len() == 19,
        "{message}"
    );
}

#[tokio::test]
async fn tokens_are_checked_as_pyjwt_made_them_and_refusals_are_401() {
    let Some(tokens) = Tokens::new() else { return };
    let server = start().await;
    let refused = [
        ("missing", None),
        ("expired", Some(tokens.make(KEY, AUDIENCE, "HS512", -60))),
        (
            "wrong audience",
            Some(tokens.make(KEY, "other", "HS512", 600)),
        ),
        (
            "wrong key",
            Some(tokens.make("c2VjcmV0", AUDIENCE, "HS512", 600)),
        ),
        ("alg none", Some(tokens.make(KEY, AUDIENCE, "none", 600))),
        ("garbage", Some("garbage".to_string())),
    ];
    for (what, token) in refused {
        let mut request = server
            .client()
            .post(server.url("/transcoder/annotate"))
            .form(&[("doc_url", "http://h/a.wav")]);
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        let (status, content_type, body) = text(request.send().await.unwrap()).await;
        assert_eq!(
            (status, content_type.as_str()),
            (401, "application/json"),
            "{what}: {body}"
        );
        assert_vesta(&body, 401, 101);
    }
    for alg in ["HS256", "HS384", "HS512"] {
        annotate(&server, &tokens.make(KEY, AUDIENCE, alg, 600), "transcoder").await;
    }
    // Within the 10 s leeway.
    annotate(
        &server,
        &tokens.make(KEY, AUDIENCE, "HS512", -5),
        "transcoder",
    )
    .await;
    let cancel = server
        .client()
        .get(server.url("/transcoder/cancel?uuid=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 401);
}

#[tokio::test]
async fn cancel_revokes_a_running_job_and_answers_its_status() {
    let Some(tokens) = Tokens::new() else { return };
    let server = start().await;
    let token = tokens.valid();
    let uuid = annotate(&server, &token, "slow").await;
    wait_for(&server, "slow", &uuid, "PROGRESS").await;
    let response = server
        .client()
        .get(server.url(&format!("/slow/cancel?uuid={uuid}")))
        .header("Authorization", token)
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("{{\"result\":{{\"code\":109,\"message\":{}}},\"status\":\"REVOKED\",\"uuid\":\"{uuid}\"}}\n",
            serde_json::to_string(json(&body)["result"]["message"].as_str().unwrap()).unwrap())
    );
    wait_for(&server, "slow", &uuid, "REVOKED").await;
}

#[tokio::test]
async fn canarie_info_stats_and_pages() {
    let server = start().await;
    let client = server.client();
    let get = |path: &str, accept: &str| {
        client
            .get(server.url(path))
            .header("Accept", accept.to_string())
            .send()
    };
    for path in ["/transcoder/info", "/transcoder/service/info"] {
        let (status, content_type, body) = text(get(path, "*/*").await.unwrap()).await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(
            body.contains("Transcoder") && body.contains("1.9.3_0.2.7"),
            "{body}"
        );
        let (_, content_type, body) = text(get(path, "application/json").await.unwrap()).await;
        assert_eq!(content_type, "application/json");
        assert_eq!(
            body,
            "{\"activeWorkers\":2,\"category\":\"Data Manipulation\",\"institution\":\"CRIM\",\
             \"name\":\"Transcoder\",\"releaseTime\":\"2019-03-20T00:00:00Z\",\
             \"researchSubject\":\"Multimedia\",\"supportEmail\":\"support@example.org\",\
             \"synopsis\":\"Converts media\",\"tags\":[\"audio\",\"video\"],\"version\":\"1.9.3_0.2.7\"}\n"
        );
    }
    server
        .client()
        .get(server.url("/transcoder/status?uuid=x"))
        .send()
        .await
        .unwrap();
    for path in ["/transcoder/stats", "/transcoder/service/stats", "/stats"] {
        let (status, content_type, body) = text(get(path, "application/json").await.unwrap()).await;
        assert_eq!(
            (status, content_type.as_str()),
            (200, "application/json"),
            "{path}"
        );
        let stats = json(&body);
        assert!(
            stats["invocations"].as_u64().unwrap() >= 1,
            "{path}: {body}"
        );
        assert!(
            stats["lastReset"].as_str().unwrap().ends_with('Z'),
            "{body}"
        );
        let (_, content_type, _) = text(get(path, "*/*").await.unwrap()).await;
        assert!(content_type.starts_with("text/html"), "{path}");
    }
    for path in ["/info", "/service/info"] {
        let (status, _, body) = text(get(path, "*/*").await.unwrap()).await;
        assert_eq!(status, 200);
        let info = json(&body);
        assert_eq!(info["version"], "1.9.3");
        assert_eq!(
            info["services"]["transcoder"]["celery_queue_name"],
            "transcoder_0.2.7"
        );
        assert!(info["services"]["transcoder"].get("command").is_none());
    }
    let no_redirects = server
        .client_builder()
        .unwrap()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/transcoder/doc", "/transcoder/service/doc"] {
        let response = no_redirects.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(response.headers()["location"], "https://example.org/doc");
    }
    let (status, _, body) = text(get("/transcoder/source", "*/*").await.unwrap()).await;
    assert_eq!((status, body.as_str()), (204, ""));
    let (status, _, body) = text(get("/transcoder/service/tryme", "*/*").await.unwrap()).await;
    assert_eq!((status, body.as_str()), (404, "Not available"));
    let (status, _, _) = text(
        get("/transcoder/licence", "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "an unset page");
}

#[tokio::test]
async fn the_modern_api_submits_streams_events_and_lists() {
    let Some(tokens) = Tokens::new() else { return };
    let server = start().await;
    let token = format!("Bearer {}", tokens.valid());
    let response = server
        .client()
        .post(server.url("/jobs/echo"))
        .header("Authorization", token.clone())
        .json(&serde_json::json!({"text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job = json(&response.text().await.unwrap());
    assert_eq!(location, format!("/jobs/{}", job["id"].as_str().unwrap()));
    assert_eq!(job["state"], "PENDING");

    let events = server
        .client()
        .get(server.url(&format!("{location}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let stream = tokio::time::timeout(Duration::from_secs(20), events.text())
        .await
        .expect("the stream ends at a final state")
        .unwrap();
    let states: Vec<&str> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(states.last(), Some(&"SUCCESS"), "{stream}");
    assert!(states.contains(&"PROGRESS"), "{stream}");
    let ids: Vec<u64> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Reconnecting after the second event replays what followed it, and only that.
    let resumed = server
        .client()
        .get(server.url(&format!("{location}/events")))
        .header("Last-Event-ID", ids[1].to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resumed_ids: Vec<u64> = resumed
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(resumed_ids.first(), Some(ids.last().unwrap()), "{resumed}");

    let done = json(
        &server
            .client()
            .get(server.url(&location))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(done["state"], "SUCCESS");
    assert_eq!(done["progress"], 100);
    assert_eq!(done["result"]["service"]["misc"]["text"], "hello");

    let list = json(
        &server
            .client()
            .get(server.url("/jobs?service=echo&limit=5"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(list["jobs"][0]["id"], done["id"]);
    let bad = server
        .client()
        .get(server.url("/jobs/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let missing = server
        .client()
        .get(server.url("/jobs/8a3c1f2e-0000-4000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let unauthenticated = server
        .client()
        .delete(server.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let capacity = json(
        &server
            .client()
            .get(server.url("/jobs/capacity"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(
        capacity["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == "echo"),
        "{capacity}"
    );
}

#[tokio::test]
async fn with_no_service_configured_echo_runs_and_portico_token_is_accepted() {
    let server = Portico::start(env!("CARGO_BIN_EXE_portico"), "")
        .await
        .expect("portico starts");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["token", "--ttl", "5m", "--config"])
        .arg(server.config_path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let key = std::fs::read_to_string(server.data_dir().join("jwt.key")).unwrap();
    assert!(
        !key.trim().is_empty(),
        "the generated key is kept in the data directory"
    );
    let uuid = annotate(&server, &token, "echo").await;
    let body = wait_for(&server, "echo", &uuid, "SUCCESS").await;
    assert_eq!(
        json(&body)["result"]["service"]["misc"]["doc_url"],
        "http://h/a.wav"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["token", "--ttl", "0s", "--config"])
        .arg(server.config_path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a zero ttl is refused");
}

#[tokio::test]
async fn a_bad_jobs_config_is_refused_naming_every_key() {
    let config = r#"
[jobs.security]
jwt_key = "%%% not base64"
jwt_algorithm = "RS256"
[[jobs.service]]
name = "jobs"
command = ["true"]
[[jobs.service]]
name = "pages"
command = ["true"]
[jobs.service.canarie]
doc = "missing-file.html"
"#;
    let Err(error) = Portico::start(env!("CARGO_BIN_EXE_portico"), config).await else {
        panic!("portico started with a bad [jobs] config");
    };
    let text = format!("{error:#}");
    for key in [
        "jobs.security.jwt_key",
        "jobs.security.jwt_algorithm",
        "jobs.service[0].name",
    ] {
        assert!(text.contains(key), "{key} not named in:\n{text}");
    }
    let config = "[[jobs.service]]\nname = \"pages\"\ncommand = [\"true\"]\n[jobs.service.canarie]\ndoc = \"missing-file.html\"\n";
    let Err(error) = Portico::start(env!("CARGO_BIN_EXE_portico"), config).await else {
        panic!("portico started with a page that is neither a URL, a file nor body,status");
    };
    let text = format!("{error:#}");
    assert!(
        text.contains("canarie.doc") && text.contains("missing-file.html"),
        "{text}"
    );
}

/// A token from `portico token` for `server`'s config (no Python needed).
fn portico_token(server: &Portico) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["token", "--ttl", "10m", "--config"])
        .arg(server.config_path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// `CONFIG` with top-level `[jobs]` keys and `extra` sections after it.
async fn start_with(jobs_keys: &str, extra: &str) -> Portico {
    let config = format!("[jobs]\n{jobs_keys}\n{CONFIG}\n{extra}");
    Portico::start(env!("CARGO_BIN_EXE_portico"), &config)
        .await
        .expect("portico starts")
}

/// GETs `url` (a temporary file's): status, content type, bytes.
async fn fetch(server: &Portico, url: &str) -> (u16, String, Vec<u8>) {
    let response = server.client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn multipart_submissions_are_request_values_and_files_become_temporary_urls() {
    let server = start().await;
    let token = portico_token(&server);
    let form = reqwest::multipart::Form::new()
        .text("lang", "en")
        .text("model", "large")
        .text("model", "small")
        .part(
            "audio",
            reqwest::multipart::Part::bytes(b"RIFF....WAVE".to_vec())
                .file_name("a.wav")
                .mime_str("audio/wav")
                .unwrap(),
        );
    let response = server
        .client()
        .post(server.url("/echo/process?lang=fr"))
        .header("Authorization", &token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let body = wait_for(&server, "echo", &uuid, "SUCCESS").await;
    let misc = json(&body)["result"]["service"]["misc"].clone();
    assert_eq!(misc["lang"], "fr", "the query's value comes first");
    assert_eq!(misc["model"], "large", "first value per key");
    assert!(misc.get("audio").is_none(), "a file is not a value: {misc}");
    let url = misc["audio_url"].as_str().expect("audio_url").to_string();
    assert!(
        url.starts_with(&server.url("/temporary_file/")),
        "{url} is the gateway's own"
    );
    let (status, content_type, bytes) = fetch(&server, &url).await;
    assert_eq!((status, content_type.as_str()), (200, "audio/wav"));
    assert_eq!(bytes, b"RIFF....WAVE");

    // A file part named `doc` is the document (`doc_url`).
    let form = reqwest::multipart::Form::new()
        .text("ann_doc_id", "A1")
        .part(
            "doc",
            reqwest::multipart::Part::bytes(b"text".to_vec()).file_name("d.txt"),
        );
    let response = server
        .client()
        .post(server.url("/echo/annotate"))
        .header("Authorization", &token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let body = wait_for(&server, "echo", &uuid, "SUCCESS").await;
    let message = json(&body)["result"].clone();
    let url = message["service"]["document"]["url"]
        .as_str()
        .expect("document.url")
        .to_string();
    assert!(
        url.starts_with(&server.url("/temporary_file/")),
        "{message}"
    );
    assert_eq!(
        message["annotation_service"]["url"],
        "http://localhost:5001/document/A1/annotations?storageType=2"
    );
    assert_eq!(fetch(&server, &url).await.2, b"text");
}

#[tokio::test]
async fn bad_multipart_bodies_are_400_saying_what_was_wrong() {
    let server = start().await;
    let token = portico_token(&server);
    let post = |content_type: &'static str, body: &'static [u8]| {
        server
            .client()
            .post(server.url("/echo/process"))
            .header("Authorization", &token)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let (status, content_type, body) =
        text(post("multipart/form-data", b"--x\r\n").await.unwrap()).await;
    assert_eq!((status, content_type.as_str()), (400, "application/json"));
    assert_vesta(&body, 400, 101);
    assert!(body.contains("no boundary"), "{body}");
    let truncated = b"--XyZ\r\nContent-Disposition: form-data; name=\"lang\"\r\n\r\nen";
    let (status, _, body) = text(
        post("multipart/form-data; boundary=XyZ", truncated)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_vesta(&body, 400, 101);
    assert!(body.contains("malformed"), "{body}");
    let binary =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"lang\"\r\n\r\n\xff\xfe\r\n--XyZ--\r\n";
    let (status, _, body) = text(
        post("multipart/form-data; boundary=XyZ", binary)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\\\"lang\\\""), "names the field: {body}");
    let unauthorized = server
        .client()
        .post(server.url("/echo/process"))
        .multipart(reqwest::multipart::Form::new().text("a", "b"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(unauthorized).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn temporary_files_upload_download_and_their_errors() {
    let server = start().await;
    let token = portico_token(&server);
    let (status, _, body) = text(
        server
            .client()
            .get(server.url("/temporary_upload_path"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "a token is needed: {body}");
    let path = |token: &str| {
        server
            .client()
            .get(server.url("/temporary_upload_path"))
            .header("Authorization", token.to_string())
            .send()
    };
    let (status, content_type, body) = text(path(&token).await.unwrap()).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let url = json(&body)["url"].as_str().unwrap().to_string();
    let name = url.rsplit('/').next().unwrap().to_string();
    assert_eq!(json(&body)["name"], name);
    assert!(name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()));
    let (_, _, other) = text(path(&token).await.unwrap()).await;
    assert_ne!(json(&other)["url"], url, "every path is fresh");
    let (status, _, body) = text(fetch_response(&server, &url).await).await;
    assert_eq!(status, 404, "nothing is stored before the upload: {body}");

    let upload = |url: String, bytes: &'static [u8]| {
        server
            .client()
            .post(url)
            .header("Authorization", &token)
            .header("Content-Type", "text/csv")
            .body(bytes)
            .send()
    };
    let (status, _, body) = text(upload(url.clone(), b"a,b\n1,2\n").await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["url"], url);
    let (status, content_type, bytes) = fetch(&server, &url).await;
    assert_eq!((status, content_type.as_str()), (200, "text/csv"));
    assert_eq!(bytes, b"a,b\n1,2\n");
    let (status, _, body) = text(upload(url.clone(), b"other").await.unwrap()).await;
    assert_eq!(status, 409, "a file is never replaced: {body}");
    assert_eq!(fetch(&server, &url).await.2, b"a,b\n1,2\n");

    // Multipart `file` part, to the name-less route.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![0u8, 1, 2, 255])
            .file_name("x.bin")
            .mime_str("application/x-thing")
            .unwrap(),
    );
    let response = server
        .client()
        .post(server.url("/temporary_file"))
        .header("Authorization", &token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
    let second = json(&body)["url"].as_str().unwrap().to_string();
    let (status, content_type, bytes) = fetch(&server, &second).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-thing")
    );
    assert_eq!(bytes, [0u8, 1, 2, 255]);
    let no_file = server
        .client()
        .post(server.url("/temporary_file"))
        .header("Authorization", &token)
        .multipart(reqwest::multipart::Form::new().text("file", "not a file"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(no_file).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("file"), "{body}");
    let unauthorized = server
        .client()
        .post(server.url("/temporary_file"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    let unknown = server.url(&format!("/temporary_file/{}", "0".repeat(32)));
    let (status, content_type, body) = text(fetch_response(&server, &unknown).await).await;
    assert_eq!((status, content_type.as_str()), (404, "application/json"));
    assert_vesta(&body, 404, 101);
    for bad in ["..%2F..%2Fjwt.key", "ABCDEF", "jwt.key", &"g".repeat(32)] {
        let bad_url = server.url(&format!("/temporary_file/{bad}"));
        let (status, _, body) = text(fetch_response(&server, &bad_url).await).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_vesta(&body, 400, 101);
        let (status, _, body) = text(upload(bad_url, b"x").await.unwrap()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // A job reads it by URL.
    let response = server
        .client()
        .post(server.url("/transcoder/annotate"))
        .header("Authorization", &token)
        .form(&[("doc_url", url.as_str())])
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
}

async fn fetch_response(server: &Portico, url: &str) -> reqwest::Response {
    server.client().get(url).send().await.unwrap()
}

#[tokio::test]
async fn temporary_files_have_a_quota_a_body_limit_and_expire() {
    let server = start_with(
        "temporary_files_ttl = \"2s\"\ntemporary_files_max_bytes = 3000",
        "[limits]\nmax_body_bytes = 5000",
    )
    .await;
    let token = portico_token(&server);
    let upload = |size: usize| {
        server
            .client()
            .post(server.url("/temporary_file"))
            .header("Authorization", &token)
            .body(vec![b'x'; size])
            .send()
    };
    let (status, _, body) = text(upload(2000).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let first = json(&body)["url"].as_str().unwrap().to_string();
    let (status, content_type, bytes) = fetch(&server, &first).await;
    assert_eq!(
        (status, content_type.as_str(), bytes.len()),
        (200, "application/octet-stream", 2000)
    );
    let (status, _, body) = text(upload(2000).await.unwrap()).await;
    assert_eq!(status, 507, "over the total quota: {body}");
    assert_vesta(&body, 507, 101);
    assert!(body.contains("temporary_files_max_bytes"), "{body}");
    let (status, _, body) = text(upload(4000).await.unwrap()).await;
    assert_eq!(status, 413, "larger than the quota itself: {body}");
    let (status, _, _) = text(upload(6000).await.unwrap()).await;
    assert_eq!(status, 413, "over the gateway's body limit");
    let leftovers = std::fs::read_dir(server.data_dir().join("temporary_files"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 2, "one file and its meta, nothing half-written");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, body) = fetch(&server, &first).await;
    assert_eq!(status, 404, "expired: {}", String::from_utf8_lossy(&body));
    let (status, _, body) = text(upload(2000).await.unwrap()).await;
    assert_eq!(status, 200, "the expired file was swept: {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = server
        .data_dir()
        .join("temporary_files")
        .join(first.rsplit('/').next().unwrap());
    while path.exists() {
        assert!(Instant::now() < deadline, "the expired file stays on disk");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Services the workflow tests add: one that fails, one that takes a while.
const WORKFLOW_SERVICES: &str = r#"
[[jobs.service]]
name = "fails"
version = "1.0"
noparams = true
max_attempts = 1
command = ["sh", "-c", "cat >/dev/null; echo 'progress 20' >&2; echo 'no model for this language' >&2; exit 3"]

[[jobs.service]]
name = "nap"
version = "1.0"
noparams = true
command = ["sh", "-c", "cat >/dev/null; echo 'progress 50' >&2; sleep 3; echo '{\"napped\": true}'"]
"#;

/// Posts a workflow; status and body.
async fn post_workflow(server: &Portico, token: &str, body: &str) -> (u16, String) {
    let response = server
        .client()
        .post(server.url("/simple_workflow/process"))
        .header("Authorization", token)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    (status, body)
}

/// Polls the workflow's status until a final state; every body seen, in order.
async fn follow_workflow(server: &Portico, uuid: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let url = server.url(&format!("/simple_workflow/status?uuid={uuid}"));
        let (status, _, body) = text(server.client().get(url).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        let value = json(&body);
        let state = value["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&value) {
            seen.push(value);
        }
        if ["SUCCESS", "FAILURE", "REVOKED"].contains(&state.as_str()) {
            return seen;
        }
        assert!(Instant::now() < deadline, "never final: {seen:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn a_workflow_runs_its_steps_in_order_passing_each_result_on() {
    let server = start().await;
    let token = portico_token(&server);
    let body = r#"{"steps": ["transcoder", {"service": "echo", "misc": {"speakers": 2}}],
                   "doc_url": "http://h/a.wav", "misc": {"lang": "fr"}}"#;
    let (status, body) = post_workflow(&server, &token, body).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    assert_eq!(body, format!("{{\"uuid\":\"{uuid}\"}}\n"));
    let seen = follow_workflow(&server, &uuid).await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "SUCCESS", "{seen:?}");
    // The last step's result: echo answers its task message.
    let message = &last["result"];
    assert_eq!(message["service"]["document"]["url"], "http://h/a.wav");
    let misc = &message["service"]["misc"];
    assert_eq!(
        misc["previous_result"],
        serde_json::json!({"annotations": [1, 2.5, "\u{e9}"]}),
        "the transcoder's result, passed on"
    );
    assert_eq!(misc["lang"], "fr");
    assert_eq!(misc["speakers"], 2);
    // Progress is overall, never goes back, and names the running step and its job.
    let progress: Vec<&Value> = seen.iter().filter(|v| v["status"] == "PROGRESS").collect();
    assert!(!progress.is_empty(), "{seen:?}");
    let currents: Vec<u64> = progress
        .iter()
        .map(|v| v["result"]["current"].as_u64().unwrap())
        .collect();
    assert!(currents.windows(2).all(|w| w[0] <= w[1]), "{currents:?}");
    assert!(currents.iter().all(|c| *c < 100), "{currents:?}");
    for value in &progress {
        let result = &value["result"];
        assert_eq!(result["total"], 100);
        assert_eq!(result["steps"], 2);
        let service = result["service"].as_str().unwrap();
        let job = result["job"].as_str().unwrap();
        let url = server.url(&format!("/{service}/status?uuid={job}"));
        let (status, _, body) = text(server.client().get(url).send().await.unwrap()).await;
        assert_eq!(status, 200, "the step is a job of its service: {body}");
    }
    let steps_seen: Vec<u64> = progress
        .iter()
        .map(|v| v["result"]["step"].as_u64().unwrap())
        .collect();
    assert!(
        steps_seen.windows(2).all(|w| w[0] <= w[1]),
        "in order: {steps_seen:?}"
    );
    assert!(
        progress.iter().all(|v| v["result"]["service"]
            == ["transcoder", "echo"][v["result"]["step"].as_u64().unwrap() as usize]),
        "{progress:?}"
    );
    assert!(
        steps_seen.contains(&1),
        "echo (300 ms a step) was seen running"
    );
    // The modern API sees the same record.
    let response = server
        .client()
        .get(server.url(&format!("/jobs/{uuid}")))
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["service"], "simple_workflow");
    assert_eq!(json(&body)["progress"], 100);
}

#[tokio::test]
async fn a_failing_step_fails_the_workflow_naming_it() {
    let server = start_with("", WORKFLOW_SERVICES).await;
    let token = portico_token(&server);
    let (status, body) =
        post_workflow(&server, &token, r#"{"steps": ["echo", "fails", "echo"]}"#).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let seen = follow_workflow(&server, &uuid).await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "FAILURE", "{seen:?}");
    let message = last["result"]["message"].as_str().unwrap();
    assert!(
        message.contains("step 2 of 3") && message.contains("fails"),
        "{message}"
    );
    assert_eq!(last["result"]["code"], 101);
    assert!(
        !seen
            .iter()
            .any(|v| v["status"] == "PROGRESS" && v["result"]["step"] == 2),
        "the third step never ran: {seen:?}"
    );
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_its_running_step() {
    let server = start().await;
    let token = portico_token(&server);
    let (status, body) = post_workflow(&server, &token, r#"{"steps": ["echo", "slow"]}"#).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let step_job = loop {
        let url = server.url(&format!("/simple_workflow/status?uuid={uuid}"));
        let (_, _, body) = text(server.client().get(url).send().await.unwrap()).await;
        let value = json(&body);
        if value["result"]["service"] == "slow" && value["result"]["current"].as_u64() >= Some(55) {
            break value["result"]["job"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "slow never ran: {body}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let cancel = |token: Option<&str>| {
        let mut request = server
            .client()
            .get(server.url(&format!("/simple_workflow/cancel?uuid={uuid}")));
        if let Some(token) = token {
            request = request.header("Authorization", token.to_string());
        }
        request.send()
    };
    let (status, _, body) = text(cancel(None).await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = text(cancel(Some(&token)).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "REVOKED", "{body}");
    wait_for(&server, "slow", &step_job, "REVOKED").await;
    let seen = follow_workflow(&server, &uuid).await;
    assert_eq!(seen.last().unwrap()["status"], "REVOKED");
}

#[tokio::test]
async fn workflows_are_checked_before_they_are_stored() {
    let server = start().await;
    let token = portico_token(&server);
    let cases = [
        (r#"{"steps": ["echo", "nope"]}"#, 202),
        (r#"{"doc_url": "http://h/a"}"#, 206),
        (r#"{"steps": ["echo", "transcoder"]}"#, 206),
        (r#"{"steps": ["transcoder"], "doc_url": "nope"}"#, 207),
        (r#"{"steps": "echo"}"#, 101),
        (r#"not json"#, 101),
    ];
    for (body, code) in cases {
        let (status, answer) = post_workflow(&server, &token, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_vesta(&answer, 400, code);
    }
    let (status, body) = post_workflow(&server, "garbage", r#"{"steps": ["echo"]}"#).await;
    assert_eq!(status, 401, "{body}");
    let get = |path: String| server.client().get(server.url(&path)).send();
    let (status, _, body) = text(get("/simple_workflow/status".into()).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 206);
    let unknown = "8a3c1f2e-0000-4000-8000-000000000000";
    let (status, _, body) = text(
        get(format!("/simple_workflow/status?uuid={unknown}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 203);
    // A job of a service is not a workflow.
    let job = annotate(&server, &token, "echo").await;
    let (status, _, body) = text(
        get(format!("/simple_workflow/status?uuid={job}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_vesta(&body, 400, 203);
}

#[tokio::test]
async fn a_workflow_interrupted_by_a_crash_is_resumed_at_the_next_start() {
    let mut server = start_with("", WORKFLOW_SERVICES).await;
    let token = portico_token(&server);
    let (status, body) = post_workflow(&server, &token, r#"{"steps": ["nap", "echo"]}"#).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = server.url(&format!("/simple_workflow/status?uuid={uuid}"));
        let (_, _, body) = text(server.client().get(url).send().await.unwrap()).await;
        if json(&body)["result"]["current"] == 25 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nap never reported progress: {body}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    server.kill9();
    server.restart().await.expect("portico restarts");
    let seen = follow_workflow(&server, &uuid).await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "SUCCESS", "{seen:?}");
    assert_eq!(
        last["result"]["service"]["misc"]["previous_result"],
        serde_json::json!({"napped": true})
    );
}

#[tokio::test]
async fn the_modern_api_streams_and_cancels_workflows() {
    let server = start().await;
    let token = portico_token(&server);
    let (status, body) = post_workflow(&server, &token, r#"{"steps": ["echo", "echo"]}"#).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let response = server
        .client()
        .get(server.url(&format!("/jobs/{uuid}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let stream = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .expect("the stream ends at the final state")
        .unwrap();
    let events: Vec<&str> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("event:"))
        .map(str::trim)
        .collect();
    assert_eq!(events.last(), Some(&"SUCCESS"), "{stream}");
    let progress = events.iter().filter(|e| **e == "PROGRESS").count();
    assert!(
        progress >= 3,
        "each change is pushed, not only read back every 2 s: {events:?}"
    );

    let (status, body) = post_workflow(&server, &token, r#"{"steps": ["slow"]}"#).await;
    assert_eq!(status, 200, "{body}");
    let uuid = json(&body)["uuid"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let step_job = loop {
        let url = server.url(&format!("/simple_workflow/status?uuid={uuid}"));
        let (_, _, body) = text(server.client().get(url).send().await.unwrap()).await;
        let value = json(&body);
        if value["result"]["current"].as_u64() >= Some(10) {
            break value["result"]["job"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "slow never ran: {body}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let response = server
        .client()
        .delete(server.url(&format!("/jobs/{uuid}")))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = text(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["state"], "REVOKED", "{body}");
    wait_for(&server, "slow", &step_job, "REVOKED").await;
}

/// A full disk: the data directory is a small tmpfs; uploads go on until one answers 507.
/// Every upload acknowledged before reads back whole, the refused one is not served (not
/// even half of it), and no partial file is left behind. Needs root (tmpfs): skipped
/// without it, unless `CI` is set.
#[tokio::test]
async fn a_full_disk_refuses_uploads_with_507_and_serves_no_half_written_file() {
    let Some(tmpfs) = testkit::Tmpfs::mount_or_skip(24 << 20) else {
        return;
    };
    let config = format!("[jobs]\ntemporary_files_max_bytes = 1073741824\n{CONFIG}");
    let server = Portico::builder(env!("CARGO_BIN_EXE_portico"))
        .toml(&config)
        .data_dir(tmpfs.path())
        .start()
        .await
        .expect("portico starts");
    let token = portico_token(&server);
    let mut stored = Vec::new();
    let refused_url = loop {
        assert!(stored.len() < 200, "the 24 MiB disk never filled");
        let (_, _, body) = text(
            server
                .client()
                .get(server.url("/temporary_upload_path"))
                .header("Authorization", &token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let url = json(&body)["url"].as_str().unwrap().to_string();
        let fill = u8::try_from(stored.len() % 250).unwrap();
        let response = server
            .client()
            .post(&url)
            .header("Authorization", &token)
            .body(vec![fill; 900 * 1024])
            .send()
            .await
            .unwrap();
        let (status, _, body) = text(response).await;
        match status {
            200 => stored.push((url, fill)),
            507 => {
                assert_vesta(&body, 507, 101);
                break url;
            }
            other => panic!("{other}: {body}"),
        }
    };
    assert!(!stored.is_empty(), "some uploads fit");
    let (status, _, _) = fetch(&server, &refused_url).await;
    assert_eq!(status, 404, "the refused upload is not served");
    for (url, fill) in &stored {
        let (status, _, bytes) = fetch(&server, url).await;
        assert_eq!(status, 200, "{url}");
        assert!(
            bytes.len() == 900 * 1024 && bytes.iter().all(|b| b == fill),
            "{url} reads back whole"
        );
    }
    let partial = std::fs::read_dir(tmpfs.path().join("temporary_files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with('.'))
        .count();
    assert_eq!(partial, 0, "no partial file left");
}
