//! `StoreError`: what can go wrong below the seam, and whether a retry can help.

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or did not answer in time: retrying later can succeed.
    #[error("{backend} store unavailable: {reason}")]
    Unavailable {
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
    /// Whether the same request can succeed later (the service answers 503 for these).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    pub(crate) fn unavailable(backend: &'static str, reason: impl ToString) -> Self {
        StoreError::Unavailable {
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
