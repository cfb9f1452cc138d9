//! Python for tests: `python3` itself, and virtual environments with packages from PyPI
//! (PyJWT to make tokens the way the original did, Celery for the next issue's workers).
//! A missing python3, or a venv that cannot be made, follows [`server_missing`]: a failure
//! with `CI` set, else a skip that says why.
//!
//! A venv is made once per package list and kept under the temporary directory
//! (`portico-test-venvs/<name>`); concurrent tests wait on a lock file, and a venv is used
//! only once the marker written after a successful install is there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::server_missing;

/// How long making a venv (pip downloading from PyPI) may take.
const VENV_TIMEOUT: Duration = Duration::from_secs(300);

/// `python3`, when it runs; otherwise the missing-server rule applies and this is `None`.
pub fn python3() -> Option<PathBuf> {
    match Command::new("python3").arg("--version").output() {
        Ok(output) if output.status.success() => Some(PathBuf::from("python3")),
        Ok(output) => {
            server_missing("python3", String::from_utf8_lossy(&output.stderr));
            None
        }
        Err(error) => {
            server_missing("python3", error);
            None
        }
    }
}

/// Python 3.7 (VestaService's Celery 4.3 runs on it): `PORTICO_TEST_PYTHON37`, else
/// `python3.7` on the PATH, else pyenv's newest 3.7; `None` after the missing-server rule.
pub fn python37() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PORTICO_TEST_PYTHON37")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(PathBuf::from("python3.7"));
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    if let Some(Ok(entries)) = root.map(|r| std::fs::read_dir(r.join("versions"))) {
        let mut versions: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("3.7"))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|v| v.join("bin/python")));
    }
    for candidate in &candidates {
        let runs = Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if runs {
            return Some(candidate.clone());
        }
    }
    server_missing("python3.7", format!("none of {candidates:?} runs"));
    None
}

/// A virtual environment with some packages installed.
#[derive(Debug, Clone)]
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// The venv holding `packages` (pip requirement strings), made on first use; `None` (after
    /// the missing-server rule) when python3 or pip cannot make it.
    pub fn with_packages(packages: &[&str]) -> Option<Venv> {
        python3()?;
        Venv::made_with(Path::new("python3"), "", packages)
    }

    /// A venv of another interpreter (`python3.7`, a pyenv version's path) holding
    /// `packages`; `None` (after the missing-server rule) when it cannot be made.
    pub fn with_interpreter(python: &Path, packages: &[&str]) -> Option<Venv> {
        let tag = python
            .to_string_lossy()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        Venv::made_with(python, &tag, packages)
    }

    fn made_with(python: &Path, tag: &str, packages: &[&str]) -> Option<Venv> {
        let name: String = packages
            .iter()
            .map(|p| p.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
            .collect::<Vec<_>>()
            .join("-");
        let name = if tag.is_empty() {
            name
        } else {
            format!("{tag}-{name}")
        };
        let dir = std::env::temp_dir().join("portico-test-venvs").join(name);
        match ensure_venv(python, &dir, packages) {
            Ok(()) => Some(Venv { dir }),
            Err(error) => {
                server_missing(&format!("a python venv with {packages:?}"), error);
                None
            }
        }
    }

    /// The venv's python.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }

    /// Runs `code` with the venv's python and `args`; its stdout (panics with stderr on failure).
    pub fn run(&self, code: &str, args: &[&str]) -> String {
        let output = Command::new(self.python())
            .arg("-c")
            .arg(code)
            .args(args)
            .output()
            .expect("running the venv's python");
        assert!(
            output.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

fn ensure_venv(python: &Path, dir: &Path, packages: &[&str]) -> Result<(), String> {
    let ready = dir.join(".portico-ready");
    if ready.exists() {
        return Ok(());
    }
    let parent = dir.parent().expect("the venv has a parent");
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let _lock = Lock::take(&dir.with_extension("lock"))?;
    if ready.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    run(Command::new(python).args(["-m", "venv"]).arg(dir))?;
    let pip = dir.join("bin/pip");
    run(Command::new(pip)
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(packages))?;
    std::fs::write(&ready, packages.join("\n")).map_err(|e| e.to_string())
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A lock file made with `create_new`: held while it exists (stale after the timeout).
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn take(path: &Path) -> Result<Lock, String> {
        let deadline = Instant::now() + VENV_TIMEOUT;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => {
                    return Ok(Lock {
                        path: path.to_path_buf(),
                    })
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Instant::now() > deadline {
                        // Its maker died; take it over.
                        let _ = std::fs::remove_file(path);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(format!("locking {}: {error}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
