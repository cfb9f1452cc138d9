//! One instance's process: started in a process group of its own (so stopping it stops
//! whatever it started too), cwd `/`, stdin closed, stdout and stderr into one pipe whose
//! reader thread appends to `instances/SERVICE/ID.log` (rotated like Portico's own logs) and
//! keeps the last lines in memory for failure reports.
//!
//! A thread per instance, not a task: log writes are blocking file I/O, and the runtime must
//! not wait on a disk. The thread ends when every process of the group has closed the pipe.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cap_std::fs::Dir;
use gateway::rotate::RotatingFile;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Lines of output kept in memory for a failure report.
const TAIL_LINES: usize = 10;
/// Longest line kept in the tail (the file gets everything).
const TAIL_LINE_BYTES: usize = 500;

/// Where an instance's output goes.
#[derive(Clone)]
pub struct LogTarget {
    /// The service's log directory (`instances/SERVICE`).
    pub dir: Arc<Dir>,
    /// `ID.log`.
    pub name: String,
    pub max_bytes: u64,
    pub backups: usize,
}

/// What to run.
pub struct Launch<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
}

/// A started process.
pub struct Running {
    pub child: tokio::process::Child,
    pub group: ProcessGroup,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22): with
    /// the pid, it names this process and no later one that reuses the pid.
    pub start_ticks: u64,
    pub output: Output,
}

/// Starts `launch` in its own process group with its output going to `log`.
pub fn spawn(launch: &Launch<'_>, log: LogTarget) -> std::io::Result<Running> {
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    // Close-on-exec, so instances started meanwhile do not inherit this pipe (its reader
    // would never see the end); the child's stdout and stderr are dup'ed without the flag.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(inherited_env())
        .envs(launch.env.iter().cloned())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer.try_clone()?))
        .stderr(Stdio::from(writer))
        .process_group(0)
        .kill_on_drop(false);
    let spawned = command.spawn();
    // Our copies of the pipe's write end must close, or the reader never sees the end.
    drop(command);
    let child = spawned?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the child exited at once"))?;
    let output = Output::pump(reader, log);
    Ok(Running {
        start_ticks: start_ticks(pid).unwrap_or(0),
        group: ProcessGroup::new(pid),
        child,
        output,
    })
}

/// What an instance inherits from the agent: enough to find programs and a home, nothing
/// that belongs to Portico (its own settings stay out of the instance's environment).
fn inherited_env() -> Vec<(String, String)> {
    ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR"]
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

/// The process group of an instance (its id is the leader's pid).
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: Pid,
    /// Signalled for the last time: the group id may be reused from now on.
    finished: bool,
}

impl ProcessGroup {
    pub fn new(pid: u32) -> ProcessGroup {
        ProcessGroup {
            pgid: Pid::from_raw(pid as i32),
            finished: false,
        }
    }

    /// Sends `signal` to every process of the group (none left is not an error).
    pub fn signal(&self, signal: Signal) {
        if self.finished {
            return;
        }
        if let Err(error) = killpg(self.pgid, signal) {
            if error != nix::errno::Errno::ESRCH {
                tracing::warn!(pgid = %self.pgid, ?signal, %error, "signalling an instance's process group");
            }
        }
    }

    /// The leader has been reaped: kill what it left in the group, then never signal again
    /// (the id may go to an unrelated process).
    pub fn reap(&mut self) {
        self.signal(Signal::SIGKILL);
        self.finished = true;
    }
}

impl Drop for ProcessGroup {
    /// A group dropped while its processes may still run (the agent's task was cancelled):
    /// kill it rather than leave it behind.
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// The output of an instance: the reader thread's tail of lines and its end.
pub struct Output {
    tail: Arc<Mutex<VecDeque<String>>>,
    ended: Option<oneshot::Receiver<()>>,
}

impl Output {
    fn pump(reader: OwnedFd, log: LogTarget) -> Output {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (ended_tx, ended) = oneshot::channel();
        let lines = tail.clone();
        let name = log.name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("log {name}"))
            .spawn(move || {
                copy_output(reader, log, &lines);
                let _ = ended_tx.send(());
            });
        if let Err(error) = spawned {
            tracing::warn!(log = %name, %error, "could not start the instance's log thread");
        }
        Output {
            tail,
            ended: Some(ended),
        }
    }

    /// The last lines of output, after waiting at most `wait` for the output to end (so the
    /// lines a process printed just before it exited are there).
    pub async fn last_lines(&mut self, wait: Duration) -> Vec<String> {
        if let Some(ended) = self.ended.take() {
            let _ = tokio::time::timeout(wait, ended).await;
        }
        lock(&self.tail).iter().cloned().collect()
    }
}

fn copy_output(reader: OwnedFd, log: LogTarget, tail: &Mutex<VecDeque<String>>) {
    let mut file = match RotatingFile::open_in(log.dir, &log.name, log.max_bytes, log.backups) {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!(log = %log.name, %error, "cannot open the instance's log; its output is dropped");
            None
        }
    };
    let mut reader = std::fs::File::from(reader);
    let mut buffer = vec![0u8; 16 * 1024];
    let mut partial = Vec::new();
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buffer[..read];
        if let Some(log_file) = file.as_mut() {
            let written = log_file.write_all(chunk).and_then(|()| log_file.flush());
            if let Err(error) = written {
                tracing::warn!(log = %log.name, %error, "writing the instance's log");
            }
        }
        remember_lines(tail, &mut partial, chunk);
    }
    if !partial.is_empty() {
        push_line(tail, &partial);
    }
}

fn remember_lines(tail: &Mutex<VecDeque<String>>, partial: &mut Vec<u8>, chunk: &[u8]) {
    for piece in chunk.split_inclusive(|&b| b == b'\n') {
        partial.extend_from_slice(piece);
        if piece.ends_with(b"\n") {
            push_line(tail, partial);
            partial.clear();
        }
    }
    if partial.len() > TAIL_LINE_BYTES * 4 {
        push_line(tail, partial);
        partial.clear();
    }
}

fn push_line(tail: &Mutex<VecDeque<String>>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut line: String = text.trim_end().chars().take(TAIL_LINE_BYTES).collect();
    if line.len() < text.trim_end().len() {
        line.push('…');
    }
    let mut tail = lock(tail);
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Pushes and pops only: a poisoned lock still holds whole lines.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The start time of process `pid` in clock ticks since boot, from `/proc/PID/stat`.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything: count fields
    // after the last ')'. starttime is field 22, the 20th after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_whole() {
        let tail = Mutex::new(VecDeque::new());
        let mut partial = Vec::new();
        for n in 0..15 {
            remember_lines(&tail, &mut partial, format!("line {n}\nhalf").as_bytes());
            remember_lines(&tail, &mut partial, b" done\n");
        }
        let lines: Vec<String> = lock(&tail).iter().cloned().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[TAIL_LINES - 1], "half done");
        assert_eq!(lines[TAIL_LINES - 2], "line 14");
    }

    #[test]
    fn start_ticks_tell_this_process_from_a_later_one() {
        let mine = start_ticks(std::process::id()).expect("own stat");
        assert!(mine > 0);
        assert_eq!(start_ticks(std::process::id()), Some(mine));
        assert_eq!(start_ticks(u32::MAX), None);
    }
}
