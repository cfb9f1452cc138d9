//! Logs: the app log and the access log (events with target `access`), to stderr or to
//! `app.log` and `access.log` in `log.dir`, each rotated by size into `.1` (newest) .. `.N`.
//! Writes go through a background thread so a slow disk does not stall requests; lines are
//! never dropped (the writer applies back-pressure instead). That thread writes each batch of
//! lines through a 64 KiB buffer, so a file may pass `max_bytes` by at most one batch before
//! it rotates; lines are never split across files.
//!
//! Access-log lines are formatted by the middleware and written straight to their writer
//! (`access_line`), not through `tracing`: per-request formatting through the subscriber cost
//! more than the rest of the request (bench/gateway).

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogConfig;
use crate::Error;

/// Size of the buffer the writer thread fills before a write system call.
const BATCH_BYTES: usize = 64 * 1024;

static ACCESS_WRITER: OnceLock<Option<NonBlocking>> = OnceLock::new();

/// Writes one access-log line (`line` ends with a newline). No-op when the access log is off
/// or logging was not initialised.
pub fn access_line(line: &[u8]) {
    if let Some(Some(writer)) = ACCESS_WRITER.get() {
        let mut writer = writer.clone();
        // The non-blocking writer only fails when its thread is gone (at exit).
        let _ = writer.write_all(line);
    }
}

/// Whether access-log lines are wanted.
pub fn access_log_enabled() -> bool {
    matches!(ACCESS_WRITER.get(), Some(Some(_)))
}

/// Keeps the log writers alive; dropping it flushes them.
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
}

/// A rotating file: `path`, rotated past `max_bytes` into `path.1` .. `path.backups`.
pub fn rotating_file(path: &Path, max_bytes: u64, backups: usize) -> FileRotate<AppendCount> {
    FileRotate::new(
        path,
        AppendCount::new(backups),
        // Rotates before the write that follows passing the limit, so lines stay whole.
        ContentLimit::BytesSurpassed(usize::try_from(max_bytes).unwrap_or(usize::MAX)),
        Compression::None,
        None,
    )
}

/// Installs the global subscriber. Call once, early.
pub fn init(config: &LogConfig) -> Result<LogGuard, Error> {
    let (app, access, guards) = writers(config)?;
    let filter = EnvFilter::try_new(&config.level)
        .map_err(|e| Error::Logging(format!("log.level {:?}: {e}", config.level)))?;
    let app_layer = tracing_subscriber::fmt::layer()
        .with_writer(app)
        .with_ansi(false)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(app_layer)
        .try_init()
        .map_err(|e| Error::Logging(e.to_string()))?;
    let _ = ACCESS_WRITER.set(config.access_log.then_some(access));
    Ok(LogGuard { _guards: guards })
}

fn writers(config: &LogConfig) -> Result<(NonBlocking, NonBlocking, Vec<WorkerGuard>), Error> {
    let builder = || {
        NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(64 * 1024)
    };
    match &config.dir {
        // One writer for both, so their lines never interleave mid-line on stderr.
        None => {
            let (writer, guard) = builder().finish(batched(io::stderr()));
            Ok((writer.clone(), writer, vec![guard]))
        }
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: format!("creating log.dir {}", dir.display()),
                source,
            })?;
            let file =
                |name: &str| rotating_file(&dir.join(name), config.max_bytes, config.backups);
            let (app, app_guard) = builder().finish(batched(file("app.log")));
            let (access, access_guard) = builder().finish(batched(file("access.log")));
            Ok((app, access, vec![app_guard, access_guard]))
        }
    }
}

/// The writer thread flushes after each batch of lines, so buffering only merges the lines
/// of one batch into one system call.
fn batched<W: Write>(writer: W) -> BufWriter<W> {
    BufWriter::with_capacity(BATCH_BYTES, writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_keeps_at_most_backups_files_of_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut log = rotating_file(&path, 100, 3);
        for i in 0..200 {
            writeln!(log, "line {i:04} of the log").unwrap();
        }
        log.flush().unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["app.log", "app.log.1", "app.log.2", "app.log.3"]);
        for name in &names {
            let text = fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text
                .lines()
                .all(|l| l.starts_with("line ") && l.ends_with("log")));
        }
    }
}
