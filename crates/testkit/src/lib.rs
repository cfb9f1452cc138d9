//! Test harness: starts the real `portico` binary on ephemeral ports with a config the test
//! gives, waits until it prints `ready`, and gives tests an HTTPS client that trusts only the
//! certificate the server generated. Integration tests of every service use it:
//!
//! ```ignore
//! # async fn example() -> anyhow::Result<()> {
//! let server = testkit::Portico::builder(env!("CARGO_BIN_EXE_portico"))
//!     .toml("[fib]\nlimit = 1000\n")
//!     .start()
//!     .await?;
//! let answer = server.client().get(server.url("/healthz")).send().await?;
//! assert_eq!(answer.status(), 200);
//! # Ok(()) }
//! ```
//!
//! The default config has one HTTPS listener on `127.0.0.1:0` (self-signed certificate,
//! every service) and a fresh temporary `data_dir`; `listeners_toml` replaces the listener
//! block, `toml` appends sections, `top_level` adds top-level keys. When the tests run as root
//! the config says `allow_root = true` (privilege drop has its own test).
//!
//! Beside it: `portico-testserver`, the service manager's test instance, and
//! [`TestServer`] to start it (`testserver.rs`); the test Redis and a private `redis-server` (`redis.rs`), and [`Tmpfs`], a
//! small real filesystem to fill up and grow again (`tmpfs.rs`, needs root).

mod python;
mod redis;
mod testserver;
mod tmpfs;

pub use python::{python3, python37, Venv};
pub use redis::{
    have_root, server_missing, test_amqp_url, test_redis_url, unique_key_prefix, PrivateRedis,
};
pub use testserver::{free_port, testserver_bin, TestServer};
pub use tmpfs::Tmpfs;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// How long a start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One listener as the server announced it.
#[derive(Debug, Clone)]
pub struct Listener {
    /// `https://127.0.0.1:PORT` or `http://...`.
    pub url: String,
    pub addr: SocketAddr,
    pub tls: bool,
    /// Services mounted there, as announced.
    pub services: Vec<String>,
}

/// Builds the config and starts the server.
#[derive(Debug, Clone)]
pub struct PorticoBuilder {
    bin: PathBuf,
    top_level: String,
    listeners: Option<String>,
    extra: String,
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    zero_config_in: Option<PathBuf>,
    command: Option<Vec<String>>,
}

impl PorticoBuilder {
    /// Runs `portico ARGS...` instead of `portico serve --config FILE` (`agent ...`): a
    /// command that announces its listeners and `ready` the way `serve` does.
    pub fn command(mut self, args: &[&str]) -> Self {
        self.command = Some(args.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Runs `portico serve` with no config at all, in the working directory `dir` (the
    /// README's first command: fixed ports 8080 and 8443, data in `dir/portico-data`).
    pub fn zero_config_in(mut self, dir: &Path) -> Self {
        self.zero_config_in = Some(dir.to_path_buf());
        self
    }

    /// Appends TOML sections (`[messages]`, `[fib]`, ...) to the config.
    pub fn toml(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    /// Adds top-level keys (they go before every table).
    pub fn top_level(mut self, keys: &str) -> Self {
        self.top_level.push_str(keys);
        self.top_level.push('\n');
        self
    }

    /// Replaces the default `[[listener]]` block (use port 0).
    pub fn listeners_toml(mut self, listeners: &str) -> Self {
        self.listeners = Some(listeners.to_string());
        self
    }

    /// Sets an environment variable for the server process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Uses this data directory instead of a fresh temporary one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Writes the config and starts the server; returns once it printed `ready`.
    pub async fn start(self) -> anyhow::Result<Portico> {
        let temp = tempfile::tempdir().context("making a temporary directory")?;
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| temp.path().join("data"));
        let config_path = temp.path().join("portico.toml");
        std::fs::write(&config_path, self.config_text(&data_dir)).context("writing the config")?;
        let mut server = Portico {
            builder: self,
            _temp: temp,
            data_dir,
            config_path,
            process: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    fn config_text(&self, data_dir: &Path) -> String {
        let allow_root = if nix::unistd::Uid::effective().is_root() {
            "allow_root = true\n"
        } else {
            ""
        };
        let listeners = self.listeners.clone().unwrap_or_else(|| {
            "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\nservices = [\"*\"]\n".into()
        });
        format!(
            "data_dir = {:?}\n{allow_root}{}\n{listeners}\n{}",
            data_dir.display().to_string(),
            self.top_level,
            self.extra
        )
    }
}

/// A running `portico serve` process.
pub struct Portico {
    builder: PorticoBuilder,
    _temp: tempfile::TempDir,
    data_dir: PathBuf,
    config_path: PathBuf,
    process: Option<Process>,
}

struct Process {
    child: Child,
    output: Arc<Mutex<Output>>,
    listeners: Vec<Listener>,
    cert_path: Option<PathBuf>,
    client: reqwest::Client,
}

#[derive(Default)]
struct Output {
    stdout: String,
    stderr: String,
    stdout_closed: bool,
}

impl Portico {
    /// A builder for the binary at `bin` (pass `env!("CARGO_BIN_EXE_portico")`).
    pub fn builder(bin: &str) -> PorticoBuilder {
        PorticoBuilder {
            bin: PathBuf::from(bin),
            top_level: String::new(),
            listeners: None,
            extra: String::new(),
            env: Vec::new(),
            data_dir: None,
            zero_config_in: None,
            command: None,
        }
    }

    /// Starts with the default listener and `extra` TOML sections.
    pub async fn start(bin: &str, extra: &str) -> anyhow::Result<Portico> {
        Portico::builder(bin).toml(extra).start().await
    }

    fn process(&self) -> &Process {
        self.process.as_ref().expect("the server is running")
    }

    /// URL of `path` on the first listener (`https://localhost:PORT/...` for TLS).
    pub fn url(&self, path: &str) -> String {
        listener_url(&self.process().listeners[0], path)
    }

    /// URL of `path` on the first listener with (`tls`) or without TLS.
    pub fn url_on(&self, tls: bool, path: &str) -> Option<String> {
        let listener = self.process().listeners.iter().find(|l| l.tls == tls)?;
        Some(listener_url(listener, path))
    }

    /// Client trusting only the generated certificate, resolving `localhost` to the listener.
    pub fn client(&self) -> reqwest::Client {
        self.process().client.clone()
    }

    /// A client builder with the same trust, for tests that need other settings.
    pub fn client_builder(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        client_builder(self.cert_path(), &self.process().listeners)
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.process().listeners
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.process().listeners[0].addr
    }

    /// The certificate the server told clients to trust.
    pub fn cert_path(&self) -> Option<&Path> {
        self.process().cert_path.as_deref()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A job API token signed with this server's key: what `portico token --config <its
    /// config>` prints.
    pub fn job_token(&self) -> anyhow::Result<String> {
        let output = Command::new(&self.builder.bin)
            .args(["token", "--config"])
            .arg(&self.config_path)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "portico token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout)?.trim().to_string();
        anyhow::ensure!(!token.is_empty(), "portico token printed nothing");
        Ok(token)
    }

    pub fn pid(&self) -> u32 {
        self.process().child.id()
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.process()
            .output
            .lock()
            .expect("output lock")
            .stdout
            .clone()
    }

    /// Everything the server wrote to stderr so far (logs, when `log.dir` is not set).
    pub fn stderr(&self) -> String {
        self.process()
            .output
            .lock()
            .expect("output lock")
            .stderr
            .clone()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(process) = self.process.as_mut() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// Sends a signal (e.g. `Signal::SIGHUP`) without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid())?);
        nix::sys::signal::kill(pid, signal).context("sending a signal")
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit status.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        self.wait_exit(limit).await
    }

    /// Waits (at most `limit`) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        let process = self
            .process
            .as_mut()
            .ok_or_else(|| anyhow!("not running"))?;
        loop {
            if let Some(status) = process.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("portico did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again with the same config and data directory (after `kill9` or
    /// `terminate`). Ports are new.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.builder.bin);
        match (&self.builder.command, &self.builder.zero_config_in) {
            (Some(args), _) => command.args(args),
            (None, Some(dir)) => command.arg("serve").current_dir(dir),
            (None, None) => command.arg("serve").arg("--config").arg(&self.config_path),
        };
        command
            .envs(self.builder.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.builder.bin.display()))?;
        let output = Arc::new(Mutex::new(Output::default()));
        collect(child.stdout.take(), output.clone(), true);
        collect(child.stderr.take(), output.clone(), false);
        let announced = wait_ready(&mut child, &output).await?;
        let client = client_builder(announced.1.as_deref(), &announced.0)?.build()?;
        self.process = Some(Process {
            child,
            output,
            listeners: announced.0,
            cert_path: announced.1,
            client,
        });
        Ok(())
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn listener_url(listener: &Listener, path: &str) -> String {
    if listener.tls {
        format!("https://localhost:{}{path}", listener.addr.port())
    } else {
        format!("{}{path}", listener.url)
    }
}

/// Trusts only `cert` (no system roots); `localhost` resolves to the first TLS listener.
fn client_builder(
    cert: Option<&Path>,
    listeners: &[Listener],
) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(60));
    if let Some(cert) = cert {
        let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    if let Some(tls) = listeners.iter().find(|l| l.tls) {
        builder = builder.resolve("localhost", tls.addr);
    }
    Ok(builder)
}

fn collect(stream: Option<impl Read + Send + 'static>, output: Arc<Mutex<Output>>, stdout: bool) {
    let Some(stream) = stream else { return };
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut output = output.lock().expect("output lock");
            let text = if stdout {
                &mut output.stdout
            } else {
                &mut output.stderr
            };
            text.push_str(&line);
            text.push('\n');
        }
        if stdout {
            output.lock().expect("output lock").stdout_closed = true;
        }
    });
}

type Announced = (Vec<Listener>, Option<PathBuf>);

async fn wait_ready(child: &mut Child, output: &Arc<Mutex<Output>>) -> anyhow::Result<Announced> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        {
            let output = output.lock().expect("output lock");
            if output.stdout.contains("portico: ready") {
                return parse_announcement(&output.stdout);
            }
        }
        if let Some(status) = child.try_wait()? {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let output = output.lock().expect("output lock");
            bail!(
                "portico exited with {status} before ready:\n{}{}",
                output.stdout,
                output.stderr
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("portico was not ready within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `portico: listening on URL (...; services: a, b)` and `clients should trust PATH`.
pub fn parse_announcement(stdout: &str) -> anyhow::Result<Announced> {
    let mut listeners = Vec::new();
    let mut cert = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("portico: listening on ") {
            listeners.push(parse_listener(rest)?);
        } else if let Some(path) = line.strip_prefix("portico: clients should trust ") {
            cert = Some(PathBuf::from(path.trim()));
        }
    }
    if listeners.is_empty() {
        bail!("no listener announced in:\n{stdout}");
    }
    Ok((listeners, cert))
}

fn parse_listener(rest: &str) -> anyhow::Result<Listener> {
    let (url, details) = rest
        .split_once(' ')
        .ok_or_else(|| anyhow!("bad line {rest:?}"))?;
    let tls = url.starts_with("https://");
    let host_port = url.split_once("://").map(|(_, h)| h).unwrap_or(url);
    let addr: SocketAddr = host_port
        .parse()
        .with_context(|| format!("address in {rest:?}"))?;
    let services = details
        .split_once("services: ")
        .map(|(_, list)| list.trim_end_matches(')'))
        .unwrap_or("")
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Ok(Listener {
        url: url.to_string(),
        addr,
        tls,
        services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_lines_are_parsed() {
        let out = "portico: listening on https://127.0.0.1:4443 (TLS, HTTP/1.1 and HTTP/2; services: admin, fib)\n\
                   portico: listening on http://[::1]:8080 (plain HTTP; services: region)\n\
                   portico: clients should trust /tmp/x/cert.pem\nportico: ready (pid 1, user root)\n";
        let (listeners, cert) = parse_announcement(out).unwrap();
        assert_eq!(listeners.len(), 2);
        assert!(listeners[0].tls);
        assert_eq!(listeners[0].services, ["admin", "fib"]);
        assert_eq!(listeners[1].addr, "[::1]:8080".parse().unwrap());
        assert_eq!(cert.unwrap(), PathBuf::from("/tmp/x/cert.pem"));
    }
}
