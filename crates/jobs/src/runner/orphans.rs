//! Commands left running by a Portico that was killed (SIGKILL, OOM, power cut of the
//! process only): found and killed at the next start.
//!
//! Commands run in their own process groups, so they outlive a Portico that dies without
//! its orderly stop; their jobs run again after the restart, and the old run must not go on
//! beside the new one. Each command's group is registered while it runs: a file named after
//! the group id in `children/` of the data directory, holding the leader's start time (from
//! `/proc/<pid>/stat`, in clock ticks since boot). At start, every file left there names a
//! group that was running when Portico died: if a process with that id and that start time
//! still exists it is the same command (a reused pid has another start time), and its group
//! is SIGKILLed. Files go through the data directory handle, like everything there.

use std::sync::Arc;

use cap_std::fs::Dir;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::Error;

/// The directory of running command groups, under the data directory.
pub const CHILDREN_DIR: &str = "children";

/// Where running command groups are registered. Clones share the directory.
#[derive(Debug, Clone)]
pub struct ChildRegistry {
    dir: Arc<Dir>,
}

/// One registered group; unregistered on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    dir: Arc<Dir>,
    name: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.dir.remove_file(&self.name);
    }
}

impl ChildRegistry {
    /// The registry in `data_dir` (created if missing).
    pub fn open(data_dir: &service::DataDir) -> Result<ChildRegistry, Error> {
        let children = data_dir
            .subdir(CHILDREN_DIR)
            .map_err(|e| Error::Failed(e.to_string()))?;
        let dir = children
            .dir()
            .try_clone()
            .map_err(|e| Error::Failed(format!("opening {}: {e}", children.path().display())))?;
        Ok(ChildRegistry { dir: Arc::new(dir) })
    }

    /// Registers the group `pgid` (its leader just started). `None` when it cannot be
    /// recorded (the command runs anyway; only a crash's clean-up would miss it).
    pub(crate) fn register(&self, pgid: i32) -> Option<Registration> {
        let started = start_time(pgid)?;
        let name = pgid.to_string();
        if let Err(error) = self.dir.write(&name, started.to_string()) {
            tracing::warn!(%error, pgid, "recording a command's process group failed");
            return None;
        }
        Some(Registration {
            dir: self.dir.clone(),
            name,
        })
    }

    /// Kills the groups a previous Portico left running; returns how many it killed.
    pub fn kill_orphans(&self) -> usize {
        let Ok(entries) = self.dir.entries() else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let recorded = self
                .dir
                .read_to_string(&name)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            if let (Ok(pgid), Some(recorded)) = (name.parse::<i32>(), recorded) {
                if pgid > 1 && start_time(pgid) == Some(recorded) {
                    tracing::warn!(
                        pgid,
                        "killing a command left running by the previous Portico"
                    );
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                    killed += 1;
                }
            }
            let _ = self.dir.remove_file(&name);
        }
        killed
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), if it exists.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = stat.rsplit_once(") ")?.1;
    after_name.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn registry() -> (tempfile::TempDir, ChildRegistry) {
        let temp = tempfile::tempdir().unwrap();
        let (data_dir, _) = service::DataDir::open_or_create(temp.path()).unwrap();
        let registry = ChildRegistry::open(&data_dir).unwrap();
        (temp, registry)
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_group_left_registered_is_killed_at_the_next_start() {
        let (temp, registry) = registry();
        let mut child = sleeper();
        let pgid = child.id() as i32;
        let registration = registry.register(pgid).expect("registered");
        assert!(temp.path().join("children").join(pgid.to_string()).exists());
        std::mem::forget(registration); // Portico died: nothing unregistered it.
        assert_eq!(registry.kill_orphans(), 1);
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed: {status:?}");
        assert!(std::fs::read_dir(temp.path().join("children"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn a_reused_pid_or_an_ended_command_is_left_alone() {
        let (temp, registry) = registry();
        let mut child = sleeper();
        let pgid = child.id() as i32;
        // Recorded with another start time: the pid now belongs to another process.
        std::fs::write(temp.path().join("children").join(pgid.to_string()), "1").unwrap();
        assert_eq!(registry.kill_orphans(), 0);
        assert!(child.try_wait().unwrap().is_none(), "still running");
        let registration = registry.register(pgid).unwrap();
        drop(registration);
        assert_eq!(registry.kill_orphans(), 0, "unregistered on drop");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
