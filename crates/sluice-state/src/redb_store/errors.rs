//! The redb backend's errors: every one a [`StateError::Backend`] that names the file.

use std::path::Path;

use redb::DatabaseError;

use super::record::DecodeError;
use crate::error::StateError;

/// The backend name used in errors.
pub(super) const BACKEND: &str = "redb";

/// A permanent backend error with `message`.
pub(super) fn backend_error(message: String) -> StateError {
    StateError::backend(BACKEND, message)
}

/// A failed operation `action` (a verb phrase ending in a preposition) on the file at `path`.
pub(super) fn op_error(path: &Path, action: &str, err: impl std::fmt::Display) -> StateError {
    backend_error(format!("cannot {action} {}: {err}", path.display()))
}

/// A record that does not decode.
pub(super) fn corrupt(path: &Path, key: &str, err: DecodeError) -> StateError {
    backend_error(format!(
        "{} holds a bad record for key {key:?}: {err}",
        path.display()
    ))
}

/// Explains why the file at `path` could not be opened.
pub(super) fn open_error(path: &Path, err: DatabaseError) -> StateError {
    let shown = path.display();
    let message = match &err {
        DatabaseError::DatabaseAlreadyOpen => format!(
            "cannot open state store {shown}: it is already open (redb holds a lock on the file); \
             is another sluice using the same data directory?"
        ),
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            format!("cannot open state store {shown}: the file is not a redb database ({io})")
        }
        DatabaseError::Storage(redb::StorageError::Corrupted(why)) => format!(
            "cannot open state store {shown}: the file is not a redb database or is corrupted ({why})"
        ),
        other => format!("cannot open state store {shown}: {other}"),
    };
    backend_error(message)
}
