//! Errors every store backend reports, typed so callers can tell a conflict from a failure.

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The key is empty.
    #[error("the key must not be empty")]
    EmptyKey,
    /// The ETag given does not match the stored item's (or the item does not exist).
    #[error("ETag mismatch for key {key:?}")]
    EtagMismatch {
        /// The key written or deleted.
        key: String,
    },
    /// The ETag given is malformed.
    #[error("invalid ETag {etag:?} for key {key:?}")]
    EtagInvalid {
        /// The key written or deleted.
        key: String,
        /// The malformed ETag.
        etag: String,
    },
    /// The backend failed; `transient` says whether a retry may succeed.
    #[error("{backend} backend: {message}")]
    Backend {
        /// Which backend (`redb`, `postgres`, ...).
        backend: &'static str,
        /// What failed.
        message: String,
        /// True if retrying may help.
        transient: bool,
    },
}

impl StateError {
    /// A permanent backend failure.
    pub fn backend(backend: &'static str, message: impl std::fmt::Display) -> Self {
        StateError::Backend {
            backend,
            message: message.to_string(),
            transient: false,
        }
    }
}
