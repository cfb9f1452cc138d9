//! `mode = "per_job"`: one process per job (spec 3).
//!
//! stdin: the task message as JSON, then closed. stderr: `progress N [meta]` lines become
//! PROGRESS (at most one report per [`PROGRESS_INTERVAL`] unless the percent changes, so a
//! command printing progress in a tight loop costs parsing, not writes); other lines go to
//! the log tail. stdout: up to `max_output` bytes, then JSON or text. The exit decides:
//! 0 = SUCCESS, anything else FAILURE with the last stderr lines. The timeout, a cancel or
//! Portico stopping end the process group (SIGTERM, SIGKILL after `kill_grace`).

use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::time::Instant;

use super::process::{self, describe, LineRead, LineReader, LogTail, MAX_LOG_LINE};
use super::protocol::{parse_progress_line, parse_result};
use super::{Ended, SlotContext};
use crate::runner::{JobSource, Task};
use crate::Outcome;

/// Progress reports of one job at the same percent are sent at most this often.
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// After the command exited, how long its output may still take to arrive (a process that
/// left the group and kept the pipes open is not waited for longer).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How the process ended.
enum End {
    Exited(Option<ExitStatus>),
    TimedOut(Duration),
    Revoked,
    Stopped,
}

pub(crate) async fn run<S: JobSource>(ctx: &SlotContext<S>, task: &Task) -> Ended {
    let (mut child, mut group) = match process::spawn(
        &ctx.service,
        Some(task.job.id),
        ctx.settings.children.as_ref(),
    ) {
        Ok(started) => started,
        Err(error) => {
            let program = ctx.service.command.first().map_or("", String::as_str);
            return Ended::Outcome(
                Outcome::Failure(format!("starting {program:?}: {error}")),
                String::new(),
            );
        }
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Ended::Outcome(
            Outcome::Failure("the command's pipes are missing".into()),
            String::new(),
        );
    };
    let message = serde_json::to_vec(&task.job.message).expect("a JSON value serialises");
    let io = async {
        let feed = async {
            // A command that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(&message).await;
            drop(stdin);
        };
        let (_, output, log) = tokio::join!(
            feed,
            read_output(stdout, ctx.settings.max_output),
            read_stderr(ctx, task, stderr)
        );
        (output, log)
    };
    tokio::pin!(io);
    let status = async move {
        let end = tokio::select! {
            status = child.wait() => End::Exited(status.ok()),
            () = sleep_or_never(ctx.service.timeout) => {
                group.terminate(&mut child, ctx.settings.kill_grace).await;
                End::TimedOut(ctx.service.timeout.unwrap_or_default())
            }
            () = task.stop.cancelled() => {
                group.terminate(&mut child, ctx.settings.kill_grace).await;
                End::Revoked
            }
            () = ctx.kill.cancelled() => {
                group.terminate(&mut child, ctx.settings.kill_grace).await;
                End::Stopped
            }
        };
        (end, group)
    };
    tokio::pin!(status);
    let mut finished_io = None;
    let (end, mut group) = loop {
        tokio::select! {
            io = &mut io, if finished_io.is_none() => finished_io = Some(io),
            end = &mut status => break end,
        }
    };
    // Whatever the command started and left behind in its group goes with it.
    group.kill_rest();
    let (output, log) = match finished_io {
        Some(done) => done,
        None => tokio::time::timeout(OUTPUT_AFTER_EXIT, io)
            .await
            .unwrap_or_else(|_| (Output::default(), LogTail::default())),
    };
    judge(ctx, end, output, log)
}

fn judge<S: JobSource>(ctx: &SlotContext<S>, end: End, output: Output, log: LogTail) -> Ended {
    let last_lines = log.last_lines();
    let with_lines = |what: String| {
        if last_lines.is_empty() {
            what
        } else {
            format!("{what}: {last_lines}")
        }
    };
    let outcome = match end {
        End::Stopped => return Ended::Stopped,
        End::Revoked => Outcome::Failure("revoked".into()),
        End::TimedOut(limit) => Outcome::Failure(with_lines(format!(
            "timed out after {}; the process group was killed",
            humantime::format_duration(limit)
        ))),
        End::Exited(Some(status)) if status.success() => {
            if output.overflowed {
                Outcome::Failure(format!(
                    "the command's output is larger than max_output ({} bytes)",
                    ctx.settings.max_output
                ))
            } else {
                match parse_result(&output.bytes) {
                    Ok(value) => Outcome::Success(value),
                    Err(problem) => Outcome::Failure(problem),
                }
            }
        }
        End::Exited(status) => Outcome::Failure(with_lines(describe(status))),
    };
    Ended::Outcome(outcome, log.text())
}

async fn sleep_or_never(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    overflowed: bool,
}

/// Reads stdout, keeping at most `limit` bytes and draining the rest.
async fn read_output(mut stdout: ChildStdout, limit: usize) -> Output {
    let mut output = Output::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match stdout.read(&mut chunk).await {
            Ok(0) | Err(_) => return output,
            Ok(n) => {
                let room = limit.saturating_sub(output.bytes.len());
                if n > room {
                    output.overflowed = true;
                }
                output.bytes.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// Reads stderr: progress lines are reported, the rest kept in the log tail.
async fn read_stderr<S: JobSource>(
    ctx: &SlotContext<S>,
    task: &Task,
    stderr: ChildStderr,
) -> LogTail {
    let mut reader = BufReader::new(stderr);
    let mut log = LogTail::default();
    let mut lines = LineReader::default();
    let mut last: Option<(u8, Instant)> = None;
    loop {
        match lines.read(&mut reader, MAX_LOG_LINE).await {
            Ok(LineRead::Eof) | Err(_) => return log,
            Ok(LineRead::TooLong) => log.push_line(lines.line()),
            Ok(LineRead::Line) => match parse_progress_line(lines.line()) {
                Some(progress) => {
                    let now = Instant::now();
                    let due = last.is_none_or(|(percent, at)| {
                        percent != progress.percent || now.duration_since(at) >= PROGRESS_INTERVAL
                    });
                    if due {
                        last = Some((progress.percent, now));
                        let meta = ctx.progress_meta(task, progress.percent, progress.meta);
                        report_progress(ctx, task, progress.percent, meta).await;
                    }
                }
                None => log.push_line(lines.line()),
            },
        }
    }
}

pub(crate) async fn report_progress<S: JobSource>(
    ctx: &SlotContext<S>,
    task: &Task,
    percent: u8,
    meta: Value,
) {
    if let Err(error) = ctx.source.progress(task, percent, meta).await {
        tracing::debug!(job = %task.job.id, %error, "a progress report was not stored");
    }
}
