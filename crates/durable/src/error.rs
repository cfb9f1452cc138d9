//! `Error`, `Health`, and how a redb error is sorted into "the disk is full", "the storage
//! failed" (both break the database until it is reopened) and everything else.

use std::fmt;
use std::sync::Arc;

use nix::errno::Errno;

/// How a database is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Open and serving.
    Healthy,
    /// An I/O error broke the database; it is being reopened. Operations fail meanwhile.
    Unavailable { reason: Arc<str> },
    /// The disk (or a quota) is full; the database is reopened as soon as the disk allows.
    /// Operations fail meanwhile.
    DiskFull { reason: Arc<str> },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// The error every operation fails with while the database has this health.
    pub(crate) fn error(&self) -> Option<Error> {
        match self {
            Health::Healthy => None,
            Health::Unavailable { reason } => Some(Error::Unavailable {
                reason: Arc::clone(reason),
            }),
            Health::DiskFull { reason } => Some(Error::DiskFull {
                reason: Arc::clone(reason),
            }),
        }
    }

    /// `DiskFull` when `disk_full`, else `Unavailable`.
    pub(crate) fn broken(disk_full: bool, reason: String) -> Health {
        let reason = Arc::from(reason);
        if disk_full {
            Health::DiskFull { reason }
        } else {
            Health::Unavailable { reason }
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Unavailable { reason } => write!(f, "unavailable: {reason}"),
            Health::DiskFull { reason } => write!(f, "disk full: {reason}"),
        }
    }
}

/// An operation on a [`crate::Db`] failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The disk (or a quota) is full. Retryable: the database heals once space returns.
    #[error("disk full: {reason}")]
    DiskFull { reason: Arc<str> },
    /// The storage failed, or the database is being reopened after it did. Retryable.
    #[error("unavailable: {reason}")]
    Unavailable { reason: Arc<str> },
    /// Anything else: the data is damaged, a value is too large, the file is open elsewhere.
    /// Retrying the same operation will not help.
    #[error("{reason}")]
    Failed { reason: Arc<str> },
    /// The writer thread is gone (it panicked, or the database was closed).
    #[error("the writer thread of {file} stopped")]
    Stopped { file: Arc<str> },
}

impl Error {
    /// Whether the same operation can succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::DiskFull { .. } | Error::Unavailable { .. })
    }

    /// Whether the disk (or a quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }

    pub(crate) fn failed(reason: String) -> Error {
        Error::Failed {
            reason: Arc::from(reason),
        }
    }
}

/// A redb error, boxed: what [`crate::Schema`] methods and [`crate::Db::read`] closures
/// return. `?` converts every redb error type into it. (`redb::Error` itself is 160 bytes, too
/// large to return through every call on the hot path.)
#[derive(Debug)]
pub struct RedbError(Box<redb::Error>);

impl RedbError {
    /// The redb error.
    pub fn inner(&self) -> &redb::Error {
        &self.0
    }
}

impl fmt::Display for RedbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RedbError {}

impl<E: Into<redb::Error>> From<E> for RedbError {
    fn from(error: E) -> Self {
        RedbError(Box::new(error.into()))
    }
}

/// What a redb error means for the database that returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The storage failed: the database is broken until reopened.
    Io { disk_full: bool },
    /// An earlier I/O error already broke the database.
    PreviousIo,
    /// Not the storage's fault (damaged data, a value too large, a missing table...).
    Other,
}

pub(crate) fn classify(error: &RedbError) -> Failure {
    match error.inner() {
        redb::Error::Io(io) => Failure::Io {
            disk_full: io_is_disk_full(io),
        },
        redb::Error::PreviousIo => Failure::PreviousIo,
        _ => Failure::Other,
    }
}

/// Whether `error`, or anything in its source chain, says the disk or a quota is full
/// (ENOSPC, EDQUOT), looking inside `std::io::Error`s and redb's errors (which carry their
/// `io::Error` without exposing it as a source).
pub fn is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        let full = if let Some(io) = error.downcast_ref::<std::io::Error>() {
            io_is_disk_full(io)
        } else if let Some(redb::Error::Io(io)) = error.downcast_ref::<redb::Error>() {
            io_is_disk_full(io)
        } else if let Some(RedbError(boxed)) = error.downcast_ref::<RedbError>() {
            matches!(&**boxed, redb::Error::Io(io) if io_is_disk_full(io))
        } else if let Some(redb::StorageError::Io(io)) = error.downcast_ref::<redb::StorageError>()
        {
            io_is_disk_full(io)
        } else {
            false
        };
        if full {
            return true;
        }
        current = error.source();
    }
    false
}

fn io_is_disk_full(error: &std::io::Error) -> bool {
    let full_errno = [Errno::ENOSPC as i32, Errno::EDQUOT as i32];
    if error
        .raw_os_error()
        .is_some_and(|code| full_errno.contains(&code))
    {
        return true;
    }
    if matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) {
        return true;
    }
    // An io::Error may wrap another error (io::Error::other(inner)).
    error.get_ref().is_some_and(|inner| is_disk_full(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("saving the batch")]
    struct Outer(#[source] std::io::Error);

    fn os(errno: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno as i32)
    }

    #[test]
    fn enospc_and_edquot_anywhere_in_the_chain_are_disk_full() {
        assert!(is_disk_full(&os(Errno::ENOSPC)));
        assert!(is_disk_full(&os(Errno::EDQUOT)));
        assert!(is_disk_full(&Outer(os(Errno::ENOSPC))));
        assert!(is_disk_full(&std::io::Error::other(Outer(os(
            Errno::EDQUOT
        )))));
        assert!(is_disk_full(&redb::Error::Io(os(Errno::ENOSPC))));
        assert!(is_disk_full(&redb::StorageError::Io(os(Errno::ENOSPC))));
        assert!(is_disk_full(&RedbError::from(os(Errno::ENOSPC))));
    }

    #[test]
    fn other_errors_are_not_disk_full() {
        assert!(!is_disk_full(&os(Errno::EIO)));
        assert!(!is_disk_full(&Outer(os(Errno::EACCES))));
        assert!(!is_disk_full(&redb::Error::PreviousIo));
    }

    #[test]
    fn redb_errors_are_sorted_by_what_they_mean_for_the_database() {
        let full = RedbError::from(os(Errno::ENOSPC));
        let eio = RedbError::from(redb::StorageError::Io(os(Errno::EIO)));
        assert_eq!(classify(&full), Failure::Io { disk_full: true });
        assert_eq!(classify(&eio), Failure::Io { disk_full: false });
        let previous = RedbError::from(redb::StorageError::PreviousIo);
        assert_eq!(classify(&previous), Failure::PreviousIo);
        let too_large = RedbError::from(redb::Error::ValueTooLarge(1));
        assert_eq!(classify(&too_large), Failure::Other);
    }

    #[test]
    fn broken_health_fails_operations_retryably() {
        let full = Health::broken(true, "writing x.redb: no space".into());
        let error = full.error().expect("an error");
        assert!(error.is_retryable() && error.is_disk_full());
        let down = Health::broken(false, "writing x.redb: EIO".into());
        let error = down.error().expect("an error");
        assert!(error.is_retryable() && !error.is_disk_full());
        assert_eq!(error.to_string(), "unavailable: writing x.redb: EIO");
        assert!(Health::Healthy.error().is_none());
    }
}
