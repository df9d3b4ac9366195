//! The embedded default backend on redb: one file in the data directory.
//!
//! Layout: table `items` maps a key to a record (a format tag, the item's version, the value bytes);
//! table `meta` holds the last version handed out. Every write takes the next version from that
//! global counter in the same transaction, so a version (the ETag) is never handed out twice — not
//! after a delete and re-create, not after a reopen — and the counter doubles as the global revision
//! a later watch API needs.
//!
//! Writes run on tokio's blocking pool and commit with [`redb::Durability::Immediate`] (fsync before
//! they return); [`Store::set_many`] commits a whole batch with one fsync.
//!
//! Reads run inline on the calling task. A get is one short redb read transaction served from
//! redb's own page cache (about 1 µs); a `spawn_blocking` round trip per get measured 10–20×
//! slower (release build, 2 cores: 0.5–1 M inline gets/s vs 25–60 k/s through `spawn_blocking`
//! from one task, 100–160 k/s from four — see `examples/redb_throughput.rs`). The cost of
//! the choice: a get that misses the cache reads the file on the worker thread, like any small
//! synchronous file read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, WriteTransaction,
};

use crate::error::StateError;
use crate::etag;
use crate::store::{Concurrency, DeleteRequest, Features, Item, SetRequest, Store};

/// Key → record (see [`record`]).
const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
/// Store-wide counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The `meta` key holding the last version handed out.
const LAST_VERSION: &str = "last_version";
/// The backend name used in errors.
const BACKEND: &str = "redb";

/// A store in one redb file; versions from a persisted global counter are the ETags.
///
/// Cheap to share behind an `Arc`; every method may be called concurrently. redb takes a lock on
/// the file, so a second open of the same file — from this process or another — fails at once
/// with a [`StateError::Backend`] naming the path.
///
/// A write runs to completion on the blocking pool even if its future is dropped, so a cancelled
/// `set` may still be applied (as with any request whose answer is lost).
pub struct RedbStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating missing parent directories and the file.
    ///
    /// Blocking (it may recover the file after a crash): call it at startup or from
    /// `spawn_blocking`. Fails with a [`StateError::Backend`] naming the path when a directory or
    /// the file cannot be created, the file is not a redb database, or the file is already open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                backend_error(format!(
                    "cannot create directory {} for the state store: {e}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::create(&path).map_err(|e| open_error(&path, e))?;
        let store = RedbStore {
            db: Arc::new(db),
            path: Arc::new(path),
        };
        store.create_tables()?;
        Ok(store)
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates both tables so that reads never meet a missing table.
    fn create_tables(&self) -> Result<(), StateError> {
        let txn = begin_write(&self.db, &self.path)?;
        let created = txn
            .open_table(ITEMS)
            .map(drop)
            .and_then(|()| txn.open_table(META).map(drop))
            .map_err(|e| op_error(&self.path, "create tables in", e));
        created?;
        txn.commit()
            .map_err(|e| op_error(&self.path, "commit to", e))
    }

    /// Runs `f` with the database on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Path) -> Result<T, StateError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || f(&db, &path))
            .await
            .map_err(|e| op_error(&self.path, "run a blocking task on", e))?
    }
}

#[async_trait]
impl Store for RedbStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn features(&self) -> Features {
        Features {
            etag: true,
            durable: true,
            ..Features::default()
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        etag::check_key(key)?;
        read_item(&self.db, &self.path, key)
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        etag::check_key(&req.key)?;
        self.blocking(move |db, path| {
            let txn = begin_write(db, path)?;
            match write_one(&txn, path, &req)? {
                Ok(version) => {
                    commit(txn, path)?;
                    Ok(version.to_string())
                }
                Err(rejected) => {
                    abort(txn, path)?;
                    Err(rejected)
                }
            }
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        etag::check_key(&req.key)?;
        self.blocking(move |db, path| {
            let txn = begin_write(db, path)?;
            match delete_one(&txn, path, &req)? {
                Ok(true) => commit(txn, path),
                Ok(false) => abort(txn, path),
                Err(rejected) => {
                    abort(txn, path)?;
                    Err(rejected)
                }
            }
        })
        .await
    }

    /// Applies the whole batch in one write transaction with one durable commit. Keys that fail
    /// their own checks are reported and skipped; a backend failure fails every request, since
    /// nothing of the batch is committed then.
    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        if reqs.is_empty() {
            return Vec::new();
        }
        let count = reqs.len();
        let outcome = self
            .blocking(move |db, path| {
                let txn = begin_write(db, path)?;
                let mut results = Vec::with_capacity(reqs.len());
                let mut applied = false;
                for req in &reqs {
                    let result = match etag::check_key(&req.key) {
                        Ok(()) => write_one(&txn, path, req)?.map(|v| v.to_string()),
                        Err(e) => Err(e),
                    };
                    applied |= result.is_ok();
                    results.push(result);
                }
                if applied {
                    commit(txn, path)?;
                } else {
                    abort(txn, path)?;
                }
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => results,
            Err(failure) => (0..count).map(|_| Err(replicate(&failure))).collect(),
        }
    }
}

/// The item at `key` from a fresh read transaction.
fn read_item(db: &Database, path: &Path, key: &str) -> Result<Option<Item>, StateError> {
    let txn = db
        .begin_read()
        .map_err(|e| op_error(path, "begin a read transaction on", e))?;
    let table = match txn.open_table(ITEMS) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(op_error(path, "open the items table of", e)),
    };
    let Some(guard) = table.get(key).map_err(|e| op_error(path, "read from", e))? else {
        return Ok(None);
    };
    let (version, value) = record::decode(guard.value()).map_err(|e| corrupt(path, key, e))?;
    Ok(Some(Item {
        value: Bytes::copy_from_slice(value),
        etag: version.to_string(),
        expires_at: None,
    }))
}

/// Writes one key inside `txn`. The outer error is a backend failure (the transaction must not be
/// committed); the inner one is this key's own rejection (ETag or first-write).
fn write_one(
    txn: &WriteTransaction,
    path: &Path,
    req: &SetRequest,
) -> Result<Result<u64, StateError>, StateError> {
    let mut items = txn
        .open_table(ITEMS)
        .map_err(|e| op_error(path, "open the items table of", e))?;
    let stored = stored_version(&items, path, &req.key)?;
    if let Err(rejected) = etag::check_write(&req.key, req.etag.as_deref(), req.concurrency, stored)
    {
        return Ok(Err(rejected));
    }
    let version = next_version(txn, path)?;
    items
        .insert(
            req.key.as_str(),
            record::encode(version, &req.value).as_slice(),
        )
        .map_err(|e| op_error(path, "write to", e))?;
    Ok(Ok(version))
}

/// Deletes one key inside `txn`; the inner `Ok` says whether anything was removed. Errors as in
/// [`write_one`].
fn delete_one(
    txn: &WriteTransaction,
    path: &Path,
    req: &DeleteRequest,
) -> Result<Result<bool, StateError>, StateError> {
    let mut items = txn
        .open_table(ITEMS)
        .map_err(|e| op_error(path, "open the items table of", e))?;
    let stored = stored_version(&items, path, &req.key)?;
    if req.etag.as_deref().is_some_and(|e| !e.is_empty()) {
        if let Err(rejected) = etag::check_write(
            &req.key,
            req.etag.as_deref(),
            Concurrency::LastWrite,
            stored,
        ) {
            return Ok(Err(rejected));
        }
    }
    if stored.is_none() {
        return Ok(Ok(false));
    }
    items
        .remove(req.key.as_str())
        .map_err(|e| op_error(path, "delete from", e))?;
    // A delete is a committed change too: it advances the global revision.
    next_version(txn, path)?;
    Ok(Ok(true))
}

/// The version stored for `key`, if the key exists.
fn stored_version(
    items: &redb::Table<'_, &str, &[u8]>,
    path: &Path,
    key: &str,
) -> Result<Option<u64>, StateError> {
    let guard = items.get(key).map_err(|e| op_error(path, "read from", e))?;
    guard
        .map(|g| {
            record::decode(g.value())
                .map(|(version, _)| version)
                .map_err(|e| corrupt(path, key, e))
        })
        .transpose()
}

/// Takes the next version from the persisted global counter.
fn next_version(txn: &WriteTransaction, path: &Path) -> Result<u64, StateError> {
    let mut meta = txn
        .open_table(META)
        .map_err(|e| op_error(path, "open the meta table of", e))?;
    let last = meta
        .get(LAST_VERSION)
        .map_err(|e| op_error(path, "read the version counter of", e))?
        .map(|g| g.value())
        .unwrap_or(0);
    let next = last.checked_add(1).ok_or_else(|| {
        backend_error(format!(
            "the version counter of {} is exhausted",
            path.display()
        ))
    })?;
    meta.insert(LAST_VERSION, next)
        .map_err(|e| op_error(path, "write the version counter of", e))?;
    Ok(next)
}

/// Begins a write transaction that is durable when its commit returns.
fn begin_write(db: &Database, path: &Path) -> Result<WriteTransaction, StateError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| op_error(path, "begin a write transaction on", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| op_error(path, "set durability on", e))?;
    Ok(txn)
}

/// Commits durably.
fn commit(txn: WriteTransaction, path: &Path) -> Result<(), StateError> {
    txn.commit().map_err(|e| op_error(path, "commit to", e))
}

/// Drops a transaction's changes.
fn abort(txn: WriteTransaction, path: &Path) -> Result<(), StateError> {
    txn.abort()
        .map_err(|e| op_error(path, "abort a transaction on", e))
}

/// A copy of a batch-wide failure, to report it for every request of the batch.
fn replicate(failure: &StateError) -> StateError {
    match failure {
        StateError::Backend {
            backend,
            message,
            transient,
        } => StateError::Backend {
            backend,
            message: message.clone(),
            transient: *transient,
        },
        other => backend_error(other.to_string()),
    }
}

/// A permanent backend error with `message`.
fn backend_error(message: String) -> StateError {
    StateError::backend(BACKEND, message)
}

/// A failed operation `action` (a verb phrase ending in a preposition) on the file at `path`.
fn op_error(path: &Path, action: &str, err: impl std::fmt::Display) -> StateError {
    backend_error(format!("cannot {action} {}: {err}", path.display()))
}

/// A record that does not decode.
fn corrupt(path: &Path, key: &str, err: record::DecodeError) -> StateError {
    backend_error(format!(
        "{} holds a bad record for key {key:?}: {err}",
        path.display()
    ))
}

/// Explains why the file at `path` could not be opened.
fn open_error(path: &Path, err: DatabaseError) -> StateError {
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

/// The on-disk record of one item: a format tag, the version (little-endian `u64`), the value.
///
/// The tag leaves room for later formats (a TTL deadline, say) without rewriting old records.
mod record {
    /// The only format so far: tag, version, value.
    const V1: u8 = 1;
    /// Bytes before the value in a [`V1`] record.
    const HEADER: usize = 1 + 8;

    /// Why a record does not decode.
    #[derive(Debug, thiserror::Error)]
    pub(super) enum DecodeError {
        /// Shorter than its header.
        #[error("record of {0} bytes is shorter than its header")]
        Truncated(usize),
        /// An unknown format tag (written by a newer sluice, or corruption).
        #[error("unknown record format {0}")]
        UnknownFormat(u8),
    }

    /// Encodes `value` at `version`.
    pub(super) fn encode(version: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + value.len());
        out.push(V1);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// The version and value of a record.
    pub(super) fn decode(raw: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
        let (&tag, rest) = raw.split_first().ok_or(DecodeError::Truncated(0))?;
        if tag != V1 {
            return Err(DecodeError::UnknownFormat(tag));
        }
        let (version, value) = rest
            .split_first_chunk::<8>()
            .ok_or(DecodeError::Truncated(raw.len()))?;
        Ok((u64::from_le_bytes(*version), value))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_version_and_value() {
            let raw = encode(42, b"\x00\xffvalue");
            let (version, value) = decode(&raw).unwrap();
            assert_eq!(version, 42);
            assert_eq!(value, b"\x00\xffvalue");
        }

        #[test]
        fn round_trips_an_empty_value() {
            let raw = encode(u64::MAX, b"");
            assert_eq!(decode(&raw).unwrap(), (u64::MAX, &b""[..]));
        }

        #[test]
        fn rejects_truncated_and_unknown_records() {
            assert!(matches!(decode(b""), Err(DecodeError::Truncated(0))));
            assert!(matches!(
                decode(&[V1, 1, 2, 3]),
                Err(DecodeError::Truncated(4))
            ));
            assert!(matches!(
                decode(&[9; 12]),
                Err(DecodeError::UnknownFormat(9))
            ));
        }
    }
}
