//! `Error`: what can go wrong below the registry seam, and whether a retry can help.

/// A registry operation failed. Each variant prints its cause (none is exposed as `source`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The backend cannot be reached or did not answer in time: retrying later can succeed
    /// (views keep what they had, agents keep their instances).
    #[error("{backend} registry unavailable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    /// The backend answered with an error, or what it holds is damaged: retrying will not
    /// help.
    #[error("{backend} registry failed: {reason}")]
    Failed {
        backend: &'static str,
        reason: String,
    },
    /// The embedded catalog could not be read or written in the data directory.
    #[error("catalog file {path}: {reason}")]
    Catalog { path: String, reason: String },
    /// The registry URL is not one Portico understands.
    #[error("registry {url:?}: {reason}")]
    Url { url: String, reason: String },
}

impl Error {
    /// Whether the same call can succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    pub(crate) fn unavailable(backend: &'static str, reason: impl ToString) -> Self {
        Error::Unavailable {
            backend,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn failed(backend: &'static str, reason: impl ToString) -> Self {
        Error::Failed {
            backend,
            reason: reason.to_string(),
        }
    }
}
