//! `StoreError`: what can go wrong below the seam, and whether a retry can help.

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached, did not answer in time, or its disk failed and it is
    /// reopening itself: retrying later can succeed.
    #[error("{backend} store unavailable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    /// The backend's disk (or quota) is full: retrying can succeed once space is freed (the
    /// store heals by itself).
    #[error("{backend} store has no disk space: {reason}")]
    DiskFull {
        backend: &'static str,
        reason: String,
    },
    /// The backend answered with an error, or the data is damaged: retrying will not help.
    #[error("{backend} store failed: {reason}")]
    Failed {
        backend: &'static str,
        reason: String,
    },
}

impl StoreError {
    /// Whether the same request can succeed later (the service answers 503 or 507 for these).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::DiskFull { .. }
        )
    }

    /// Whether the store's disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }

    pub(crate) fn unavailable(backend: &'static str, reason: impl ToString) -> Self {
        StoreError::Unavailable {
            backend,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn disk_full(backend: &'static str, reason: impl ToString) -> Self {
        StoreError::DiskFull {
            backend,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn failed(backend: &'static str, reason: impl ToString) -> Self {
        StoreError::Failed {
            backend,
            reason: reason.to_string(),
        }
    }
}
