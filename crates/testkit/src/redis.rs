//! A private `redis-server` for tests that stop and restart Redis (the shared one on 6379
//! must never be stopped): its own port and directory, no persistence, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private `redis-server`.
pub struct PrivateRedis {
    child: Child,
}

impl PrivateRedis {
    /// Starts `redis-server` on `127.0.0.1:port` with `dir` as its directory and waits (at
    /// most 10 s) until it accepts connections.
    pub fn start(port: u16, dir: &Path) -> std::io::Result<PrivateRedis> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()?;
        let redis = PrivateRedis { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
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
            Err(error) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping: cannot run redis-server: {error}");
                None
            }
            Err(error) => panic!("CI is set and redis-server cannot run: {error}"),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
