//! Finding and starting `portico-testserver` (`src/bin/portico-testserver.rs`) from the tests
//! of any crate. Cargo gives a crate's tests the paths of its own binaries only, so
//! [`testserver_bin`] looks next to the running test executable (`target/<profile>/`) and
//! builds the binary with cargo when it is missing or older than its source.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

const BIN_NAME: &str = "portico-testserver";
const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/bin/portico-testserver.rs");
const WORKSPACE_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");

/// The path of the test server binary, built first if needed (once per test process).
pub fn testserver_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_or_build() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the test executable")?;
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
    let bin = profile_dir.join(BIN_NAME);
    if is_fresh(&bin) {
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--quiet",
            "-p",
            "testkit",
            "--bin",
            BIN_NAME,
            "--manifest-path",
        ])
        .arg(WORKSPACE_MANIFEST);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    let status = command
        .status()
        .context("running cargo build for the test server")?;
    if !status.success() || !bin.exists() {
        bail!("building {BIN_NAME} failed ({status})");
    }
    Ok(bin)
}

fn is_fresh(bin: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (modified(bin), modified(Path::new(SOURCE))) {
        (Some(built), Some(source)) => built >= source,
        (Some(_), None) => true,
        _ => false,
    }
}

/// A running test server, killed on drop.
pub struct TestServer {
    child: Child,
    port: u16,
}

impl TestServer {
    /// Starts the test server on a free port with extra `args` (`--delay 50ms`, `--id x`)
    /// and waits (at most 10 s) until it accepts connections.
    pub fn start(args: &[&str]) -> anyhow::Result<TestServer> {
        let port = free_port()?;
        let child = Command::new(testserver_bin()?)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the test server")?;
        let server = TestServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("the test server did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listened on a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
