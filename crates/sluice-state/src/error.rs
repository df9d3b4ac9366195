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
    /// The backend does not support the operation (see [`crate::Features`]).
    #[error("the {backend} store does not support {operation}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// The operation asked for.
        operation: &'static str,
    },
    /// A TTL that is not a whole number of seconds (or -1).
    #[error("invalid TTL {value:?}: expected a whole number of seconds, or -1 for none")]
    InvalidTtl {
        /// The value given.
        value: String,
    },
    /// A value larger than the store accepts.
    #[error("the value of key {key:?} is {size} bytes, over the limit of {limit}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A request that is malformed in another way (an empty prefix, a bad query, a bad page token).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A transaction failed; nothing of it was applied.
    #[error("transaction aborted, nothing applied: operation {index} (key {key:?}): {source}")]
    TransactionAborted {
        /// The failing operation's index.
        index: usize,
        /// Its key.
        key: String,
        /// Why it failed.
        #[source]
        source: Box<StateError>,
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
    /// A copy of this failure, for each of several requests that one call failed together (a
    /// batch, a bulk get); anything but a backend failure becomes one of `backend`, keeping
    /// whether a retry may help.
    pub fn replicate(&self, backend: &'static str) -> StateError {
        match self {
            StateError::Backend {
                backend,
                message,
                transient,
            } => StateError::Backend {
                backend,
                message: message.clone(),
                transient: *transient,
            },
            other => StateError::Backend {
                backend,
                message: other.to_string(),
                transient: other.is_transient(),
            },
        }
    }

    /// The backend does not support an operation.
    pub fn unsupported(backend: &'static str, operation: &'static str) -> Self {
        StateError::Unsupported { backend, operation }
    }

    /// True if retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StateError::Backend {
                transient: true,
                ..
            }
        )
    }

    /// A permanent backend failure.
    pub fn backend(backend: &'static str, message: impl std::fmt::Display) -> Self {
        StateError::Backend {
            backend,
            message: message.to_string(),
            transient: false,
        }
    }
}
