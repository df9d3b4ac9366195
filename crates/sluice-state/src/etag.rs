//! ETag checks shared by the backends that keep a version number per key.

use crate::error::StateError;
use crate::store::Concurrency;

/// Parses a version ETag, rejecting malformed ones.
pub fn parse(key: &str, etag: &str) -> Result<u64, StateError> {
    etag.parse::<u64>().map_err(|_| StateError::EtagInvalid {
        key: key.to_string(),
        etag: etag.to_string(),
    })
}

/// Decides whether a write may proceed given the stored version (if any). An empty ETag counts as none.
pub fn check_write(
    key: &str,
    etag: Option<&str>,
    concurrency: Concurrency,
    stored: Option<u64>,
) -> Result<(), StateError> {
    match etag.filter(|e| !e.is_empty()) {
        Some(e) => {
            let want = parse(key, e)?;
            if stored == Some(want) {
                Ok(())
            } else {
                Err(StateError::EtagMismatch {
                    key: key.to_string(),
                })
            }
        }
        None if concurrency == Concurrency::FirstWrite && stored.is_some() => {
            Err(StateError::EtagMismatch {
                key: key.to_string(),
            })
        }
        None => Ok(()),
    }
}

/// Rejects empty keys.
pub fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() {
        Err(StateError::EmptyKey)
    } else {
        Ok(())
    }
}
