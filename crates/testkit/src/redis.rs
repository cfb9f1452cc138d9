//! Redis for tests: the shared test server's URL and key prefixes that keep tests apart, the
//! rule for a missing server (a failure when `CI` is set, else a skip), and a private
//! `redis-server` for tests that stop and restart Redis (the shared one must never be
//! stopped): its own port and directory, no persistence, killed on drop.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared test Redis: `PORTICO_TEST_REDIS`, default `redis://127.0.0.1:6379`.
pub fn test_redis_url() -> String {
    std::env::var("PORTICO_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test RabbitMQ: `PORTICO_TEST_AMQP`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn test_amqp_url() -> String {
    std::env::var("PORTICO_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A key prefix no other test run uses (tests share one Redis; each cleans only its prefix).
pub fn unique_key_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("portico-test:{test}:{}-{nanos}:", std::process::id())
}

/// A server the test needs (`what`) is not usable: with `CI` set that is a failure (this
/// panics); otherwise the test should skip, and this says why.
pub fn server_missing(what: &str, error: impl std::fmt::Display) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and {what} is not usable: {error}");
    }
    eprintln!("skipping: {what} is not usable: {error}");
}

/// Whether the test runs as root; when it does not, the rule of [`server_missing`] applies
/// (a failure with `CI` set, else a skip that says `why` root is needed).
pub fn have_root(why: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    server_missing("root", format!("{why} needs root"));
    false
}

/// A running private `redis-server`.
pub struct PrivateRedis {
    child: Child,
}

impl PrivateRedis {
    /// Starts `redis-server` on `127.0.0.1:port` with `dir` as its directory and waits (at
    /// most 10 s) until it accepts connections.
    pub fn start(port: u16, dir: &Path) -> std::io::Result<PrivateRedis> {
        PrivateRedis::start_on(IpAddr::from([127, 0, 0, 1]), port, dir)
    }

    /// `start`, bound to `ip` (a bridge address other network namespaces reach).
    pub fn start_on(ip: IpAddr, port: u16, dir: &Path) -> std::io::Result<PrivateRedis> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                &ip.to_string(),
                "--protected-mode",
                "no",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()?;
        let redis = PrivateRedis { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "redis-server did not start on {port}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    /// `start`, or `None` (the test skips) when `redis-server` cannot run and `CI` is not
    /// set; with `CI` set a missing server is a failure (panic).
    pub fn start_or_skip(port: u16, dir: &Path) -> Option<PrivateRedis> {
        match PrivateRedis::start(port, dir) {
            Ok(redis) => Some(redis),
            Err(error) => {
                server_missing("redis-server", error);
                None
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
