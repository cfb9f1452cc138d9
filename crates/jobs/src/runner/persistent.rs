//! `mode = "persistent"`: one long-lived process per slot, JSON lines in and out (spec 3),
//! the fast path for short jobs (no process start per job).
//!
//! In: `{"id": ..., "message": {...}}` per job. Out: `{"id": ..., "progress": N, "meta":
//! {...}}` any number of times, then `{"id": ..., "result": ...}` or `{"id": ...,
//! "error": "..."}`. stderr lines read while a job runs go to its log tail.
//!
//! What ends the process (it is restarted for the next job):
//! - it dies: the job is retried within `max_attempts` ([`Outcome::Retry`]), and the next
//!   start waits a backoff (100 ms doubling to 10 s; back to 100 ms after a job succeeds), so
//!   a command that crashes at once does not spin;
//! - garbage on stdout (not a JSON line of the protocol, a line for another id, a line
//!   longer than `max_output`): the job fails, the process is killed (its framing cannot be
//!   trusted any more);
//! - the timeout, a cancel, Portico stopping: the process group is killed.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::time::Instant;

use super::per_job::{report_progress, PROGRESS_INTERVAL};
use super::process::{self, describe, Group, LineRead, LineReader, LogTail, MAX_LOG_LINE};
use super::protocol::{parse_persistent_line, PersistentLine};
use super::{Ended, SlotContext};
use crate::runner::{JobSource, Task};
use crate::Outcome;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long the stderr of a process that died may take to reach EOF (a child it left
/// behind may hold the pipe open).
const STDERR_AFTER_DEATH: Duration = Duration::from_millis(500);

/// A slot's process, started when the first job comes and kept between jobs.
#[derive(Default)]
pub(crate) struct Persistent {
    process: Option<Process>,
    backoff: Option<Duration>,
    not_before: Option<Instant>,
}

struct Process {
    child: Child,
    group: Group,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: BufReader<ChildStderr>,
    lines: LineReader,
    err_lines: LineReader,
    stderr_open: bool,
}

/// How one job's exchange ended.
enum Exchange {
    Done(Outcome),
    /// The process must go (and the job ends with this outcome).
    Kill(Outcome),
    /// The process died by itself.
    Died,
    Stopped,
}

impl Persistent {
    pub(crate) async fn run<S: JobSource>(&mut self, ctx: &SlotContext<S>, task: &Task) -> Ended {
        let mut log = LogTail::default();
        if let Err(outcome) = self.ensure_started(ctx).await {
            return Ended::Outcome(outcome, String::new());
        }
        let process = self.process.as_mut().expect("started above");
        let exchange = tokio::select! {
            exchange = exchange(ctx, task, process, &mut log) => exchange,
            () = sleep_or_never(ctx.service.timeout) => Exchange::Kill(Outcome::Failure(format!(
                "timed out after {}; the process group was killed",
                humantime::format_duration(ctx.service.timeout.unwrap_or_default())
            ))),
            () = task.stop.cancelled() => Exchange::Kill(Outcome::Failure("revoked".into())),
            () = ctx.kill.cancelled() => Exchange::Stopped,
        };
        let ended = match exchange {
            Exchange::Done(outcome) => {
                if matches!(outcome, Outcome::Success(_)) {
                    self.backoff = None;
                }
                return Ended::Outcome(outcome, log.text());
            }
            Exchange::Kill(outcome) => Ended::Outcome(outcome, log.text()),
            Exchange::Stopped => Ended::Stopped,
            Exchange::Died => {
                let mut process = self.process.take().expect("running");
                // Its last words on stderr may still be in the pipe.
                let drain = drain_stderr(&mut process, &mut log);
                let _ = tokio::time::timeout(STDERR_AFTER_DEATH, drain).await;
                let status = process.child.wait().await.ok();
                process.group.kill_rest();
                self.back_off();
                let lines = log.last_lines();
                let mut reason = format!("the persistent process ended ({})", describe(status));
                if !lines.is_empty() {
                    reason = format!("{reason}: {lines}");
                }
                return Ended::Outcome(Outcome::Retry(reason), log.text());
            }
        };
        if let Some(mut process) = self.process.take() {
            process
                .group
                .terminate(&mut process.child, ctx.settings.kill_grace)
                .await;
        }
        ended
    }

    /// Starts the process if there is none, after the backoff of the last death.
    async fn ensure_started<S: JobSource>(&mut self, ctx: &SlotContext<S>) -> Result<(), Outcome> {
        if self.process.is_some() {
            return Ok(());
        }
        if let Some(at) = self.not_before.take() {
            tokio::time::sleep_until(at).await;
        }
        match process::spawn(&ctx.service, None, ctx.settings.children.as_ref()) {
            Ok((mut child, group)) => {
                let (Some(stdin), Some(stdout), Some(stderr)) =
                    (child.stdin.take(), child.stdout.take(), child.stderr.take())
                else {
                    return Err(Outcome::Failure("the command's pipes are missing".into()));
                };
                self.process = Some(Process {
                    child,
                    group,
                    stdin,
                    stdout: BufReader::new(stdout),
                    stderr: BufReader::new(stderr),
                    lines: LineReader::default(),
                    err_lines: LineReader::default(),
                    stderr_open: true,
                });
                Ok(())
            }
            Err(error) => {
                self.back_off();
                let program = ctx.service.command.first().map_or("", String::as_str);
                Err(Outcome::Failure(format!("starting {program:?}: {error}")))
            }
        }
    }

    fn back_off(&mut self) {
        let delay = self
            .backoff
            .map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
        self.backoff = Some(delay);
        self.not_before = Some(Instant::now() + delay);
    }
}

/// Sends the job and reads until its result, error, or trouble.
async fn exchange<S: JobSource>(
    ctx: &SlotContext<S>,
    task: &Task,
    process: &mut Process,
    log: &mut LogTail,
) -> Exchange {
    let id = task.job.id.to_string();
    let mut request = serde_json::to_vec(&json!({"id": id, "message": task.job.message}))
        .expect("a JSON value serialises");
    request.push(b'\n');
    if process.stdin.write_all(&request).await.is_err() || process.stdin.flush().await.is_err() {
        return Exchange::Died;
    }
    let mut last_progress: Option<(u8, Instant)> = None;
    loop {
        tokio::select! {
            read = process.lines.read(&mut process.stdout, ctx.settings.max_output) => {
                match read {
                    Ok(LineRead::Line) => {}
                    Ok(LineRead::TooLong) => return Exchange::Kill(Outcome::Failure(format!(
                        "garbage on stdout: a line longer than max_output ({} bytes)",
                        ctx.settings.max_output
                    ))),
                    Ok(LineRead::Eof) | Err(_) => return Exchange::Died,
                }
                if process.lines.line().trim_ascii().is_empty() {
                    continue;
                }
                let line = match parse_persistent_line(process.lines.line()) {
                    Ok(line) => line,
                    Err(problem) => return Exchange::Kill(Outcome::Failure(format!("garbage on stdout: {problem}"))),
                };
                if line.id() != id {
                    return Exchange::Kill(Outcome::Failure(format!(
                        "garbage on stdout: a line for job {:?} while job {id} ran",
                        line.id()
                    )));
                }
                match line {
                    PersistentLine::Result { value, .. } => return Exchange::Done(Outcome::Success(value)),
                    PersistentLine::Error { message, .. } => return Exchange::Done(Outcome::Failure(message)),
                    PersistentLine::Progress { progress, .. } => {
                        let now = Instant::now();
                        let due = last_progress.is_none_or(|(percent, at)| {
                            percent != progress.percent || now.duration_since(at) >= PROGRESS_INTERVAL
                        });
                        if due {
                            last_progress = Some((progress.percent, now));
                            let meta = ctx.progress_meta(task, progress.percent, progress.meta);
                            report_progress(ctx, task, progress.percent, meta).await;
                        }
                    }
                }
            }
            read = process.err_lines.read(&mut process.stderr, MAX_LOG_LINE), if process.stderr_open => {
                match read {
                    Ok(LineRead::Line | LineRead::TooLong) => log.push_line(process.err_lines.line()),
                    Ok(LineRead::Eof) | Err(_) => process.stderr_open = false,
                }
            }
        }
    }
}

/// Reads what is left on a dead process's stderr into the log.
async fn drain_stderr(process: &mut Process, log: &mut LogTail) {
    while process.stderr_open {
        match process
            .err_lines
            .read(&mut process.stderr, MAX_LOG_LINE)
            .await
        {
            Ok(LineRead::Line | LineRead::TooLong) => log.push_line(process.err_lines.line()),
            Ok(LineRead::Eof) | Err(_) => process.stderr_open = false,
        }
    }
}

async fn sleep_or_never(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}
