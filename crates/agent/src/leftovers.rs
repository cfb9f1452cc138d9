//! What an agent's previous run left behind. For each instance it starts the agent writes a
//! record (`agent/pids/ID.json`: service, pid, the process's start time) in its data
//! directory, through the directory handle, and deletes it once the process is gone. A run
//! that starts finds the records of a run that was killed, stops each process group still
//! running (SIGTERM, then SIGKILL after the stop timeout), removes the instance from the
//! registry and deletes the record. The start time guards against pid reuse: a record whose
//! pid now names a process started at another time is stale, and that process is left alone.
//!
//! Blocking file I/O: call these from a blocking thread.

use std::time::{Duration, Instant};

use cap_std::fs::Dir;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::process::{start_ticks, ProcessGroup};

/// One running instance's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    pub id: String,
    pub service: String,
    pub pid: u32,
    pub start_ticks: u64,
}

fn file_name(id: &str) -> String {
    format!("{id}.json")
}

/// Writes `record` into `dir`.
pub fn write(dir: &Dir, record: &PidRecord) -> std::io::Result<()> {
    let text = serde_json::to_vec(record).expect("a record always serializes");
    dir.write(file_name(&record.id), text)
}

/// Deletes the record of instance `id` (a missing one is fine).
pub fn remove(dir: &Dir, id: &str) {
    match dir.remove_file(file_name(id)) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(instance = id, %error, "deleting an instance's pid record"),
    }
}

/// Every record in `dir` (unreadable ones are deleted with a warning).
pub fn read_all(dir: &Dir) -> Vec<PidRecord> {
    let Ok(entries) = dir.entries() else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        match dir
            .read(&name)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(record) => records.push(record),
            None => {
                tracing::warn!(file = %name, "unreadable pid record; deleting it");
                let _ = dir.remove_file(&name);
            }
        }
    }
    records
}

/// Whether the process the record names still runs (same pid, same start time).
pub fn still_running(record: &PidRecord) -> bool {
    start_ticks(record.pid).is_some_and(|ticks| ticks == record.start_ticks)
}

/// Stops the group of a record's process: SIGTERM, then SIGKILL if the leader still runs
/// after `stop_timeout`. Returns whether it had to kill.
pub fn stop_group(record: &PidRecord, stop_timeout: Duration) -> bool {
    let group = ProcessGroup::new(record.pid);
    group.signal(Signal::SIGTERM);
    let deadline = Instant::now() + stop_timeout;
    while still_running(record) && !is_zombie(record.pid) {
        if Instant::now() > deadline {
            group.signal(Signal::SIGKILL);
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stopped leader may have left children in its group.
    group.signal(Signal::SIGKILL);
    false
}

/// A zombie has exited; its parent (a previous agent that died) will never reap it, init will.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    #[test]
    fn records_round_trip_and_a_reused_pid_is_not_ours() {
        let temp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(temp.path(), ambient_authority()).unwrap();
        let me = std::process::id();
        let mine = PidRecord {
            id: "i1".into(),
            service: "hello".into(),
            pid: me,
            start_ticks: start_ticks(me).unwrap(),
        };
        write(&dir, &mine).unwrap();
        std::fs::write(temp.path().join("junk.json"), "{").unwrap();
        assert_eq!(read_all(&dir), vec![mine.clone()]);
        assert!(!temp.path().join("junk.json").exists());
        assert!(still_running(&mine));
        let reused = PidRecord {
            start_ticks: mine.start_ticks + 1,
            ..mine.clone()
        };
        assert!(!still_running(&reused), "same pid, another start time");
        remove(&dir, "i1");
        remove(&dir, "i1");
        assert!(read_all(&dir).is_empty());
    }
}
