//! Logs: the app log and the access log (events with target `access`), to stderr or to
//! `app.log` and `access.log` in `log.dir`, each rotated by size into `.1` (newest) .. `.N`.
//! Writes go through a background thread so a slow disk does not stall requests; lines are
//! never dropped (the writer applies back-pressure instead). Files rotate like Python's
//! `RotatingFileHandler` (see `rotate`).
//!
//! Access-log lines are formatted by the middleware and written straight to their writer
//! (`access_line`), not through `tracing`: per-request formatting through the subscriber cost
//! more than the rest of the request (bench/gateway). The gateway's workers hand their lines
//! over in batches (at most 32 KiB or 100 ms old, and at shutdown), so lines of different
//! workers may interleave out of time order by up to 100 ms, and a SIGKILL loses at most
//! the last 100 ms of access log.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, OnceLock};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogConfig;
use crate::privilege::Handover;
use crate::rotate::RotatingFile;
use crate::Error;

/// Writes queued for the writer thread before writers wait (access-log writes are batches of
/// up to 32 KiB). The queue's slots are allocated up front.
const QUEUED_WRITES: usize = 8 * 1024;

/// Size of the buffer the writer thread fills before a write system call.
const BATCH_BYTES: usize = 64 * 1024;

static ACCESS_WRITER: OnceLock<Option<NonBlocking>> = OnceLock::new();

/// A worker's access-log lines are handed to the writer thread in batches of this size (or
/// at the worker's next tick): one hand-over, and one wake-up of that thread, per line was
/// ~10% of the CPU under load (bench/gateway).
const ACCESS_BATCH_BYTES: usize = 32 * 1024;

thread_local! {
    /// Lines not yet handed over, on threads that called `batch_access_lines`.
    static PENDING: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// Writes one access-log line (`line` ends with a newline). No-op when the access log is off
/// or logging was not initialised. On a batching thread the line waits in that thread's
/// buffer until it fills or `flush_access_lines` runs.
pub fn access_line(line: &[u8]) {
    let Some(Some(writer)) = ACCESS_WRITER.get() else {
        return;
    };
    let full = PENDING.with_borrow_mut(|pending| match pending {
        Some(buffer) => {
            buffer.extend_from_slice(line);
            (buffer.len() >= ACCESS_BATCH_BYTES).then(|| std::mem::take(buffer))
        }
        None => Some(line.to_vec()),
    });
    if let Some(batch) = full {
        // The non-blocking writer only fails when its thread is gone (at exit).
        let _ = writer.clone().write_all(&batch);
    }
}

/// Makes this thread buffer its access-log lines; it must call `flush_access_lines`
/// periodically (the gateway's workers do every 100 ms) and before it ends.
pub fn batch_access_lines() {
    PENDING.with_borrow_mut(|pending| {
        pending.get_or_insert_with(|| Vec::with_capacity(ACCESS_BATCH_BYTES));
    });
}

/// Hands this thread's buffered access-log lines to the writer.
pub fn flush_access_lines() {
    let Some(Some(writer)) = ACCESS_WRITER.get() else {
        return;
    };
    let batch = PENDING.with_borrow_mut(|pending| match pending {
        Some(buffer) if !buffer.is_empty() => Some(std::mem::take(buffer)),
        _ => None,
    });
    if let Some(batch) = batch {
        let _ = writer.clone().write_all(&batch);
    }
}

/// Whether access-log lines are wanted.
pub fn access_log_enabled() -> bool {
    matches!(ACCESS_WRITER.get(), Some(Some(_)))
}

/// Keeps the log writers alive; dropping it flushes them.
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
    handover: Vec<Handover>,
}

impl LogGuard {
    /// The log directory and the log files, each saying whether this start created it: what
    /// an unprivileged user must own to rotate the logs (see `privilege`).
    pub fn handover(&self) -> &[Handover] {
        &self.handover
    }
}

/// Installs the global subscriber. Call once, early.
pub fn init(config: &LogConfig) -> Result<LogGuard, Error> {
    let (app, access, guards, handover) = writers(config)?;
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
    Ok(LogGuard {
        _guards: guards,
        handover,
    })
}

type Writers = (NonBlocking, NonBlocking, Vec<WorkerGuard>, Vec<Handover>);

fn writers(config: &LogConfig) -> Result<Writers, Error> {
    let builder = || {
        NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(QUEUED_WRITES)
    };
    match &config.dir {
        // One writer for both, so their lines never interleave mid-line on stderr.
        None => {
            let (writer, guard) = builder().finish(batched(io::stderr()));
            Ok((writer.clone(), writer, vec![guard], Vec::new()))
        }
        Some(dir) => {
            let mut handover = vec![Handover {
                path: dir.clone(),
                created: !dir.exists(),
            }];
            fs::create_dir_all(dir).map_err(|error| Error::Io {
                what: format!("creating log.dir {}", dir.display()),
                error,
            })?;
            let handle =
                Dir::open_ambient_dir(dir, ambient_authority()).map_err(|error| Error::Io {
                    what: format!("opening log.dir {}", dir.display()),
                    error,
                })?;
            let handle = Arc::new(handle);
            let mut file = |name: &str| {
                let path = dir.join(name);
                let created = !path.exists();
                let file =
                    RotatingFile::open_in(handle.clone(), name, config.max_bytes, config.backups)
                        .map_err(|error| Error::Io {
                        what: format!("opening log file {}", path.display()),
                        error,
                    })?;
                // A file that existed is appended to through the open descriptor and renamed
                // by rotation (which needs only the directory): its owner need not change.
                if created {
                    handover.push(Handover { path, created });
                }
                Ok::<_, Error>(file)
            };
            let (app, app_guard) = builder().finish(file("app.log")?);
            let (access, access_guard) = builder().finish(file("access.log")?);
            Ok((app, access, vec![app_guard, access_guard], handover))
        }
    }
}

/// The writer thread flushes after each batch of lines, so buffering only merges the lines
/// of one batch into one system call.
fn batched<W: Write>(writer: W) -> BufWriter<W> {
    BufWriter::with_capacity(BATCH_BYTES, writer)
}
