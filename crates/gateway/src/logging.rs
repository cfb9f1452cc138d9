//! Logs: the app log and the access log (events with target `access`), to stderr or to
//! `app.log` and `access.log` in `log.dir`, each rotated by size into `.1` (newest) .. `.N`.
//! Writes go through a background thread so a slow disk does not stall requests; lines are
//! never dropped (the writer applies back-pressure instead).

use std::fs;
use std::io;
use std::path::Path;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogConfig;
use crate::Error;

/// Target of access-log events.
pub const ACCESS: &str = "access";

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
        .with_filter(filter_fn(|meta| meta.target() != ACCESS))
        .with_filter(filter);
    let access_enabled = config.access_log;
    let access_layer = tracing_subscriber::fmt::layer()
        .with_writer(access)
        .with_ansi(false)
        .with_target(false)
        .with_level(false)
        .with_filter(filter_fn(move |meta| {
            access_enabled && meta.target() == ACCESS
        }));
    tracing_subscriber::registry()
        .with(app_layer)
        .with(access_layer)
        .try_init()
        .map_err(|e| Error::Logging(e.to_string()))?;
    Ok(LogGuard { _guards: guards })
}

fn writers(config: &LogConfig) -> Result<(NonBlocking, NonBlocking, Vec<WorkerGuard>), Error> {
    let builder = || {
        NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(64 * 1024)
    };
    match &config.dir {
        None => {
            let (app, app_guard) = builder().finish(io::stderr());
            let (access, access_guard) = builder().finish(io::stderr());
            Ok((app, access, vec![app_guard, access_guard]))
        }
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: format!("creating log.dir {}", dir.display()),
                source,
            })?;
            let file =
                |name: &str| rotating_file(&dir.join(name), config.max_bytes, config.backups);
            let (app, app_guard) = builder().finish(file("app.log"));
            let (access, access_guard) = builder().finish(file("access.log"));
            Ok((app, access, vec![app_guard, access_guard]))
        }
    }
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
