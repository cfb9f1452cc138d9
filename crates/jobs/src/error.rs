//! `Error`: what the job core's operations can fail with, and whether trying again can help.
//! The HTTP layer maps these to status codes in one place; the core only says what happened.

use crate::{JobId, LeaseId};

/// A job operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No `[[jobs.service]]` has this name.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// No job has this id.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// The lease is not (or no longer) held: it expired, was finished, or Portico restarted.
    #[error("unknown lease {0}: it expired, ended, or Portico restarted")]
    UnknownLease(LeaseId),
    /// The job records or the queue cannot take writes now (disk full, storage failed,
    /// Redis down). Retryable; `disk_full` says whether space is what is missing.
    #[error("job store unavailable: {reason}")]
    Unavailable { reason: String, disk_full: bool },
    /// The broker (RabbitMQ) cannot be reached. Retryable.
    #[error("broker unreachable: {0}")]
    BrokerUnreachable(String),
    /// The request itself is wrong (a malformed id, a value out of range).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The operation needs something this deployment does not have (remote pull workers
    /// with an AMQP broker, say).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The job store failed in a way retrying will not fix (damaged data, a bug).
    #[error("job store failed: {0}")]
    Failed(String),
    /// Portico is shutting down and takes no new work.
    #[error("jobs are shutting down")]
    Draining,
}

impl Error {
    /// Whether the same operation can succeed later (the HTTP layer adds Retry-After).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::BrokerUnreachable(_) | Error::Draining
        )
    }

    /// Whether a full disk (or quota) is the cause.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            Error::Unavailable {
                disk_full: true,
                ..
            }
        )
    }

    pub(crate) fn unavailable(reason: impl ToString) -> Error {
        Error::Unavailable {
            reason: reason.to_string(),
            disk_full: false,
        }
    }
}

impl From<durable::Error> for Error {
    fn from(error: durable::Error) -> Error {
        if error.is_retryable() {
            Error::Unavailable {
                disk_full: error.is_disk_full(),
                reason: error.to_string(),
            }
        } else {
            Error::Failed(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let full = Error::Unavailable {
            reason: "disk full: writing jobs.redb".into(),
            disk_full: true,
        };
        assert!(full.is_retryable() && full.is_disk_full());
        assert!(Error::BrokerUnreachable("x".into()).is_retryable());
        assert!(!Error::Invalid("x".into()).is_retryable());
        assert!(!Error::Failed("x".into()).is_retryable());
        assert_eq!(
            Error::UnknownService("nope".into()).to_string(),
            "unknown service \"nope\""
        );
    }
}
