//! Child processes of the runner: started in their own process group with cwd `/`, killed
//! as a group, read with bounded memory.
//!
//! - **Own process group** (`setpgid(0, 0)` at spawn): a timeout or cancel kills the command
//!   and everything it started (`sh -c` pipelines, helpers), not just the first process.
//!   `Group` kills the group with SIGKILL when dropped, so no path (a panic, a dropped
//!   slot on shutdown) leaves children behind while Portico runs.
//! - **cwd `/`**: the data directory may be unreachable by path (Portico switched users).
//! - **Bounded reads**: `LineReader` never holds more than its limit of one line;
//!   [`LogTail`] keeps the last 64 KiB of log text. A command that floods stdout or stderr
//!   costs CPU to drain, never memory.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::process::{Child, Command};

use super::orphans::{ChildRegistry, Registration};
use crate::config::ServiceConfig;
use crate::JobId;

/// The log kept with a job: the last this many bytes of its stderr (spec 3).
pub const LOG_TAIL_BYTES: usize = 64 * 1024;
/// Longest stderr line kept whole; the rest of a longer line is dropped.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// Starts `service`'s command with piped stdio, in its own process group, cwd `/`; the
/// group is recorded in `children` while it runs.
pub(crate) fn spawn(
    service: &ServiceConfig,
    job: Option<JobId>,
    children: Option<&ChildRegistry>,
) -> std::io::Result<(Child, Group)> {
    let (program, args) = service
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("the service has no command"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir("/")
        .env("PORTICO_SERVICE", &service.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(job) = job {
        command.env("PORTICO_JOB_ID", job.to_string());
    }
    let child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| std::io::Error::other("the command exited before it could be watched"))?;
    let group = Group {
        pgid: Pid::from_raw(pid),
        armed: true,
        _registration: children.and_then(|registry| registry.register(pid)),
    };
    Ok((child, group))
}

/// A command's process group; SIGKILLed when dropped, unless [`Group::kill_rest`] ran.
///
/// The group's id is its leader's pid. Once the leader is reaped and the last member is
/// gone, that id can be reused by another process group, so the group is signalled only
/// while the leader is unreaped, or right after (`kill_rest`), never at some later drop.
#[derive(Debug)]
pub(crate) struct Group {
    pgid: Pid,
    armed: bool,
    /// Unregisters the group when the group is dropped (after it was killed or ended).
    _registration: Option<Registration>,
}

impl Group {
    pub(crate) fn signal(&self, signal: Signal) {
        if self.armed {
            // ESRCH: the group is gone already.
            let _ = killpg(self.pgid, signal);
        }
    }

    /// Call right after reaping the leader: SIGKILLs whatever is left in the group (a
    /// background child the command left behind), then never signals again.
    pub(crate) fn kill_rest(&mut self) {
        self.signal(Signal::SIGKILL);
        self.armed = false;
    }

    /// SIGTERM to the group; SIGKILL if `child` has not exited within `grace`. Returns the
    /// child's status; the rest of the group is SIGKILLed in any case.
    pub(crate) async fn terminate(
        &mut self,
        child: &mut Child,
        grace: Duration,
    ) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.signal(Signal::SIGKILL);
                child.wait().await.ok()
            }
        };
        self.kill_rest();
        status
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// What [`LineReader::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// A line (without its newline) is in the buffer.
    Line,
    /// A line longer than the limit: the buffer holds its first `limit` bytes; the rest of
    /// the line was read and dropped.
    TooLong,
    /// End of input (a last line without newline is returned as `Line` first).
    Eof,
}

/// Reads lines holding at most `limit` bytes of each. Cancel-safe: dropped while waiting
/// for input, it loses nothing (the partial line stays here for the next call), so it can
/// sit in a `select!` beside other reads.
#[derive(Debug, Default)]
pub(crate) struct LineReader {
    line: Vec<u8>,
    too_long: bool,
    /// The last call returned a whole line: the next one starts afresh.
    complete: bool,
}

impl LineReader {
    /// The line the last `read` returned (without its newline).
    pub(crate) fn line(&self) -> &[u8] {
        &self.line
    }

    pub(crate) async fn read<R: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut R,
        limit: usize,
    ) -> std::io::Result<LineRead> {
        if std::mem::take(&mut self.complete) {
            self.line.clear();
            self.too_long = false;
        }
        loop {
            // The only await: fill_buf consumes nothing, so cancelling here loses nothing.
            let available = reader.fill_buf().await?;
            if available.is_empty() {
                self.complete = true;
                return Ok(match (self.too_long, self.line.is_empty()) {
                    (true, _) => LineRead::TooLong,
                    (false, true) => LineRead::Eof,
                    (false, false) => LineRead::Line,
                });
            }
            let (chunk, newline) = match memchr(available) {
                Some(at) => (&available[..at], true),
                None => (available, false),
            };
            let room = limit.saturating_sub(self.line.len());
            if chunk.len() > room {
                self.too_long = true;
            }
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = chunk.len() + usize::from(newline);
            reader.consume(used);
            if newline {
                self.complete = true;
                return Ok(if self.too_long {
                    LineRead::TooLong
                } else {
                    LineRead::Line
                });
            }
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

/// The last [`LOG_TAIL_BYTES`] of a job's log.
#[derive(Debug, Default)]
pub(crate) struct LogTail {
    bytes: VecDeque<u8>,
    /// The last few lines, for a failure's message.
    last_lines: VecDeque<String>,
}

/// Lines of stderr a failure's message quotes.
const MESSAGE_LINES: usize = 5;
/// Longest quoted line.
const MESSAGE_LINE_BYTES: usize = 300;

impl LogTail {
    pub(crate) fn push_line(&mut self, line: &[u8]) {
        self.bytes.extend(line);
        self.bytes.push_back(b'\n');
        let excess = self.bytes.len().saturating_sub(LOG_TAIL_BYTES);
        self.bytes.drain(..excess);
        let text = String::from_utf8_lossy(&line[..line.len().min(MESSAGE_LINE_BYTES)]);
        let text = text.trim_end();
        if !text.is_empty() {
            if self.last_lines.len() == MESSAGE_LINES {
                self.last_lines.pop_front();
            }
            self.last_lines.push_back(text.to_string());
        }
    }

    /// The tail as text (a character cut at the front is replaced).
    pub(crate) fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last lines, joined, for a failure's message ("" when there were none).
    pub(crate) fn last_lines(&self) -> String {
        self.last_lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// "exit status 3" / "killed by signal SIGKILL", for messages.
pub(crate) fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(signal) => format!("killed by signal {}", signal.as_str()),
                Err(_) => format!("killed by signal {signal}"),
            },
            (None, None) => "ended".into(),
        },
        None => "status unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<(LineRead, Vec<u8>)> {
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        let mut lines = LineReader::default();
        loop {
            let read = lines.read(&mut reader, limit).await.unwrap();
            if read == LineRead::Eof {
                return out;
            }
            out.push((read, lines.line().to_vec()));
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_long_ones_cut_without_holding_them() {
        let got = lines(b"ab\n0123456789\n\nlast", 5).await;
        assert_eq!(
            got,
            vec![
                (LineRead::Line, b"ab".to_vec()),
                (LineRead::TooLong, b"01234".to_vec()),
                (LineRead::Line, b"".to_vec()),
                (LineRead::Line, b"last".to_vec()),
            ]
        );
        let got = lines(b"0123456789", 3).await;
        assert_eq!(got, vec![(LineRead::TooLong, b"012".to_vec())]);
    }

    #[test]
    fn the_log_keeps_the_last_64_kib_and_the_last_lines() {
        let mut log = LogTail::default();
        for i in 0..20_000 {
            log.push_line(format!("line {i}").as_bytes());
        }
        let text = log.text();
        assert!(text.len() <= LOG_TAIL_BYTES);
        assert!(text.ends_with("line 19999\n"));
        assert_eq!(log.last_lines().lines().count(), MESSAGE_LINES);
        assert!(log.last_lines().ends_with("line 19999"));
    }
}
