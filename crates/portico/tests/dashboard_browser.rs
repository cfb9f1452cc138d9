//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven over the
//! Chrome DevTools Protocol, with a small WebSocket client here (no browser-automation crate:
//! one `Runtime.evaluate` at a time is all these tests need). Each test starts Portico and a
//! browser, opens `/dashboard`, and watches the page change without reloading it. Screenshots
//! go to `target/dashboard-screenshots/`; those in `docs/dashboard/` are copies of them.
//!
//! Without `chromium` the tests say so and pass; with `CI` set they fail (`.ci/run` installs
//! it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use testkit::Portico;

/// One browser at a time: each is several processes, and the machine may have two cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const JOBS: &str = r#"
[[jobs.service]]
name = "steps"
version = "1.0"
noparams = true
command = ["sh", "-c", "input=$(cat); for p in 20 40 60 80; do echo \"progress $p\" >&2; sleep 0.6; done; printf '%s' \"$input\""]

[[jobs.service]]
name = "slow"
version = "1.0"
noparams = true
command = ["sh", "-c", "cat >/dev/null; echo 'progress 10' >&2; sleep 60; echo '{}'"]
"#;

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and chromium is missing (apt-get install chromium)"
        );
        eprintln!("chromium not found: browser tests skipped");
    }
    found
}

/// A headless Chromium with its DevTools port.
struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn launch(binary: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end so that chromium never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    let _ = sender.send(port);
                }
            }
        });
        let port = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium prints its DevTools port");
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// A new tab, its DevTools connection open, runtime and log events on.
    fn tab(&self) -> Tab {
        let answer = http(self.port, "PUT", "/json/new?about:blank");
        let target: Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        let url = target["webSocketDebuggerUrl"].as_str().unwrap();
        let path = url
            .split_once(&format!("127.0.0.1:{}", self.port))
            .unwrap()
            .1;
        let mut tab = Tab {
            socket: websocket(self.port, path),
            next_id: 1,
            errors: Vec::new(),
        };
        tab.call("Runtime.enable", json!({}));
        tab.call("Log.enable", json!({}));
        tab.call("Page.enable", json!({}));
        tab
    }
}

/// A plain HTTP/1.1 request to the DevTools port; the body (read to its Content-Length:
/// Chromium keeps the connection open whatever `Connection: close` says).
fn http(port: u16, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

fn websocket(port: u16, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// One tab over the DevTools protocol: one command at a time; events seen while waiting for
/// an answer are checked for errors.
struct Tab {
    socket: TcpStream,
    next_id: u64,
    /// Console errors, uncaught exceptions and error log entries, as text.
    errors: Vec<String>,
}

impl Tab {
    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mask = [0x5a, 0x13, 0xc4, 0x7e];
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).unwrap();
    }

    /// The next text message (fragments joined; pings answered).
    fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).unwrap();
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.socket.read_exact(&mut n).unwrap();
                    u64::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.socket.read_exact(&mut n).unwrap();
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.socket.read_exact(&mut payload).unwrap();
            match opcode {
                0x9 => {
                    let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    self.socket.write_all(&pong).unwrap();
                }
                0x8 => panic!("the browser closed the DevTools connection"),
                _ => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return String::from_utf8(message).unwrap();
                    }
                }
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"id": id, "method": method, "params": params}).to_string());
        loop {
            let message: Value = serde_json::from_str(&self.receive()).unwrap();
            if message["id"] == id {
                assert!(message["error"].is_null(), "{method}: {message}");
                return message["result"].clone();
            }
            self.event(&message);
        }
    }

    fn event(&mut self, message: &Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", params["exceptionDetails"]));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", params["args"]));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", params["entry"]));
            }
            _ => {}
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The value of `expression` (promises awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy (not null, false, 0 or ""); its value.
    fn wait_for(&mut self, expression: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(expression);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "never true: {expression}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG of the viewport to `target/dashboard-screenshots/NAME.png`.
    fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    fn assert_no_errors(&self) {
        assert!(self.errors.is_empty(), "page errors: {:#?}", self.errors);
    }
}

async fn start_jobs(bypass: bool, extra: &str) -> Portico {
    Portico::builder(env!("CARGO_BIN_EXE_portico"))
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"*\"]\n")
        .toml(&format!("[jobs.security]\nbypass = {bypass}\n"))
        .toml(JOBS)
        .toml("[dashboard]\ninterval = \"200ms\"\ncapacity_interval = \"1s\"\n")
        .toml(extra)
        .start()
        .await
        .expect("portico starts")
}

async fn submit(server: &Portico, service: &str, token: Option<&str>) -> String {
    let mut request = server
        .client()
        .post(server.url(&format!("/jobs/{service}")))
        .json(&json!({"text": "hello"}));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    job["id"].as_str().unwrap().to_string()
}

async fn job_state(server: &Portico, id: &str) -> String {
    let url = server.url(&format!("/dashboard/api/task/info/{id}"));
    let info: Value = server
        .client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["state"].as_str().unwrap().to_string()
}

/// Opens the dashboard at `view`, waits for the live stream, marks the page (a reload would
/// lose the mark).
fn open(tab: &mut Tab, server: &Portico, view: &str) {
    tab.navigate(&server.url(&format!("/dashboard#{view}")));
    tab.wait_for(
        "document.readyState === 'complete' && document.querySelector('#live.on') !== null",
        Duration::from_secs(20),
    );
    tab.eval("window.__mark = 'not reloaded'");
}

/// `[state, progress]` of the job's row, or null.
fn row(tab: &mut Tab, id: &str) -> Value {
    tab.eval(&format!(
        "(() => {{ const r = document.querySelector('tr[data-id=\"{id}\"]'); \
         return r ? [r.dataset.state, r.querySelector('progress').value] : null; }})()"
    ))
}

#[tokio::test]
async fn a_job_appears_its_progress_bar_advances_and_it_ends_success_without_reload() {
    let Some(binary) = chromium() else { return };
    let _one = ONE_BROWSER.lock().await;
    let server = start_jobs(true, "").await;
    let browser = Browser::launch(&binary);
    let mut tab = browser.tab();
    open(&mut tab, &server, "jobs");
    let id = submit(&server, "steps", None).await;
    tab.wait_for(
        &format!("document.querySelector('tr[data-id=\"{id}\"]') !== null"),
        Duration::from_secs(10),
    );
    let mut seen: Vec<i64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let last_state = loop {
        let now = row(&mut tab, &id);
        let state = now[0].as_str().unwrap_or_default().to_string();
        let progress = now[1].as_f64().unwrap_or(0.0) as i64;
        if seen.last() != Some(&progress) {
            seen.push(progress);
        }
        if state == "SUCCESS" || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(last_state, "SUCCESS", "progress seen: {seen:?}");
    let between: Vec<&i64> = seen.iter().filter(|p| **p > 0 && **p < 100).collect();
    assert!(between.len() >= 2, "the bar moved through steps: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "only forward: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&100));
    assert_eq!(tab.eval("window.__mark"), "not reloaded");
    tab.screenshot("jobs-after-success");
    tab.assert_no_errors();
}

#[tokio::test]
async fn cancel_from_the_page_with_a_token_revokes_a_running_job() {
    let Some(binary) = chromium() else { return };
    let _one = ONE_BROWSER.lock().await;
    let server = start_jobs(false, "").await;
    let token = server.job_token().unwrap();
    let browser = Browser::launch(&binary);
    let mut tab = browser.tab();
    open(&mut tab, &server, "jobs");
    let id = submit(&server, "slow", Some(&token)).await;
    tab.wait_for(
        &format!("(document.querySelector('tr[data-id=\"{id}\"]') || {{dataset: {{}}}}).dataset.state === 'PROGRESS'"),
        Duration::from_secs(10),
    );
    assert_eq!(
        tab.eval("document.getElementById('token-label').hidden"),
        false,
        "the token field shows when bypass is off"
    );
    tab.eval("window.__alerts = []; window.alert = (text) => window.__alerts.push(text)");
    // Without the token the server refuses and the page says so.
    tab.eval(&format!(
        "document.querySelector('button[data-cancel=\"{id}\"]').click()"
    ));
    tab.wait_for("window.__alerts.length", Duration::from_secs(5));
    assert_eq!(job_state(&server, &id).await, "PROGRESS");
    // The browser logs the refusal it was meant to get; nothing else may be there.
    let refused = tab.errors.len();
    tab.errors
        .retain(|e| !e.contains("status of 401") || !e.contains("/task/revoke/"));
    assert_eq!(refused - tab.errors.len(), 1, "{:?}", tab.errors);
    tab.eval(&format!(
        "document.querySelector('#job-filter input[name=token]').value = {}",
        json!(token)
    ));
    tab.eval(&format!(
        "document.querySelector('button[data-cancel=\"{id}\"]').click()"
    ));
    tab.wait_for(
        &format!("(document.querySelector('tr[data-id=\"{id}\"]') || {{dataset: {{}}}}).dataset.state === 'REVOKED'"),
        Duration::from_secs(10),
    );
    assert_eq!(job_state(&server, &id).await, "REVOKED");
    assert_eq!(tab.eval("window.__mark"), "not reloaded");
    tab.assert_no_errors();
}

/// The test server as a managed service `hello`, none running; instances die with the test.
async fn start_managed() -> ManagedGuard {
    let testserver = testkit::testserver_bin().unwrap().display().to_string();
    let server = start_jobs(
        true,
        &format!(
            "[manager]\nagent_id = \"test-host\"\ndrain = \"200ms\"\nstop_timeout = \"1s\"\n\
             [[manager.service]]\nname = \"hello\"\ncommand = [{testserver:?}, \"--port\", \"{{port}}\"]\n\
             health = \"/_health\"\n"
        ),
    )
    .await;
    ManagedGuard(server)
}

/// The server, then the agent's instances (each in its own process group), killed when
/// dropped: in that order, or the agent restarts what was killed.
struct ManagedGuard(Portico);

impl std::ops::Deref for ManagedGuard {
    type Target = Portico;
    fn deref(&self) -> &Portico {
        &self.0
    }
}

impl Drop for ManagedGuard {
    fn drop(&mut self) {
        self.0.kill9();
        let Ok(agents) = std::fs::read_dir(self.0.data_dir().join("agent")) else {
            return;
        };
        for agent in agents.flatten() {
            let Ok(records) = std::fs::read_dir(agent.path().join("pids")) else {
                continue;
            };
            for record in records.flatten() {
                let record: Option<Value> = std::fs::read(record.path())
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                if let Some(pid) = record.and_then(|r| r["pid"].as_i64()) {
                    let group = nix::unistd::Pid::from_raw(-(pid as i32));
                    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

#[tokio::test]
async fn a_cold_request_makes_an_instance_appear_on_the_page() {
    let Some(binary) = chromium() else { return };
    let _one = ONE_BROWSER.lock().await;
    let server = start_managed().await;
    let browser = Browser::launch(&binary);
    let mut tab = browser.tab();
    open(&mut tab, &server, "managed");
    tab.wait_for(
        "document.querySelector('[data-service=\"hello\"]') !== null",
        Duration::from_secs(10),
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('tr[data-instance]').length"),
        0
    );
    let response = server
        .client()
        .get(server.url("/hello/"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let state = tab.wait_for(
        "(() => { const r = document.querySelector('tr[data-instance] .state'); \
         return r && r.textContent === 'ready' ? r.textContent : null; })()",
        Duration::from_secs(10),
    );
    assert_eq!(state, "ready");
    tab.wait_for(
        "document.querySelector('[data-service=\"hello\"] li') !== null",
        Duration::from_secs(5),
    );
    let allocation = tab.eval("document.querySelector('[data-service=\"hello\"] li').textContent");
    assert!(
        allocation.as_str().unwrap().starts_with("cold · ok"),
        "{allocation}"
    );
    assert_eq!(tab.eval("window.__mark"), "not reloaded");
    tab.assert_no_errors();
}

#[tokio::test]
async fn the_page_loads_without_console_errors_and_every_view_draws() {
    let Some(binary) = chromium() else { return };
    let _one = ONE_BROWSER.lock().await;
    let server = start_managed().await;
    for _ in 0..3 {
        submit(&server, "steps", None).await;
    }
    submit(&server, "slow", None).await;
    for _ in 0..20 {
        let _ = server.client().get(server.url("/hello/")).send().await;
        let _ = server.client().get(server.url("/healthz")).send().await;
    }
    let browser = Browser::launch(&binary);
    let mut tab = browser.tab();
    open(&mut tab, &server, "overview");
    tab.wait_for(
        "document.querySelectorAll('#requests tbody tr td:nth-child(3)').length >= 2",
        Duration::from_secs(10),
    );
    let version = tab.eval("document.getElementById('about').textContent");
    assert!(
        version
            .as_str()
            .unwrap()
            .contains(env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    tab.screenshot("overview");

    tab.eval("location.hash = 'jobs'");
    tab.wait_for(
        "document.querySelectorAll('#jobs tbody tr[data-id]').length >= 4 && \
         document.querySelectorAll('#job-services tbody tr').length === 2",
        Duration::from_secs(10),
    );
    tab.eval("document.querySelector('#jobs tbody tr[data-id]').click()");
    tab.wait_for(
        "!document.getElementById('job-detail').hidden",
        Duration::from_secs(5),
    );
    tab.screenshot("jobs");

    tab.eval("location.hash = 'workers'");
    tab.wait_for(
        "document.querySelectorAll('#workers tbody tr[data-worker]').length >= 2",
        Duration::from_secs(10),
    );
    tab.screenshot("workers");

    tab.eval("location.hash = 'managed'");
    tab.wait_for(
        "document.querySelectorAll('tr[data-instance]').length >= 1",
        Duration::from_secs(10),
    );
    tab.screenshot("managed");

    // A point per second here: wait for a few, then draw.
    std::thread::sleep(Duration::from_secs(4));
    tab.eval("location.hash = 'capacity'");
    tab.wait_for(
        "document.querySelectorAll('#charts svg polyline').length >= 4",
        Duration::from_secs(10),
    );
    tab.screenshot("capacity");

    tab.viewport(390, 844, true);
    tab.eval("location.hash = 'jobs'");
    tab.wait_for(
        "document.querySelectorAll('#jobs tbody tr[data-id]').length >= 4",
        Duration::from_secs(10),
    );
    tab.eval("document.querySelector('#job-detail button').click(); window.scrollTo(0, 0)");
    let overflow = tab.eval("document.documentElement.scrollWidth <= window.innerWidth + 1");
    assert_eq!(
        overflow, true,
        "the page fits a phone's width (tables scroll inside)"
    );
    tab.screenshot("phone-jobs");
    assert_eq!(tab.eval("window.__mark"), "not reloaded");
    tab.assert_no_errors();
}
