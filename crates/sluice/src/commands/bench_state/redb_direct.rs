//! The redb comparison: the `redb` crate used directly, doing the same work per operation as
//! Sluice's redb backend (a version counter beside each item, durable commits, writes on the
//! blocking pool, reads inline), in a file of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::measure::Client;
use super::BenchError;

const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_VERSION: &str = "last_version";

/// A redb file driven with the crate's own API.
pub struct RedbDirect {
    db: Arc<Database>,
    path: PathBuf,
}

fn failed(action: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::new(format!("redb (direct): cannot {action}: {e}"))
}

impl RedbDirect {
    /// Creates (or truncates to empty) the file at `path`.
    pub fn create(path: &Path) -> Result<Self, BenchError> {
        let _ = std::fs::remove_file(path);
        let db = Database::create(path).map_err(|e| failed("create the file", e))?;
        Ok(RedbDirect {
            db: Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `keys` in one durable transaction, each with the next version (what a bulk set of
    /// Sluice's redb backend does), on the blocking pool.
    pub async fn set_many(&self, keys: Arc<[String]>, value: &Bytes) -> Result<(), BenchError> {
        let value = value.clone();
        self.write(move |txn| {
            for key in keys.iter() {
                put(txn, key, &value)?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `f` in one durable write transaction on the blocking pool.
    async fn write<F>(&self, f: F) -> Result<(), BenchError>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), BenchError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(|e| failed("begin a write", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| failed("set durability", e))?;
            f(&txn)?;
            txn.commit().map_err(|e| failed("commit", e))
        })
        .await
        .map_err(|e| failed("run a blocking task", e))?
    }
}

/// Reads the stored version of `key` (as an ETag check would), takes the next version from the
/// counter and writes the record: the version's 8 bytes then the value.
fn put(txn: &WriteTransaction, key: &str, value: &[u8]) -> Result<(), BenchError> {
    let mut items = txn
        .open_table(ITEMS)
        .map_err(|e| failed("open the items table", e))?;
    let _stored = items
        .get(key)
        .map_err(|e| failed("read", e))?
        .map(|g| g.value().get(..8).map(<[u8]>::to_vec));
    let mut meta = txn
        .open_table(META)
        .map_err(|e| failed("open the meta table", e))?;
    let last = meta
        .get(LAST_VERSION)
        .map_err(|e| failed("read the counter", e))?
        .map(|g| g.value())
        .unwrap_or(0);
    meta.insert(LAST_VERSION, last + 1)
        .map_err(|e| failed("write the counter", e))?;
    let mut record = Vec::with_capacity(8 + value.len());
    record.extend_from_slice(&(last + 1).to_le_bytes());
    record.extend_from_slice(value);
    items
        .insert(key, record.as_slice())
        .map_err(|e| failed("write", e))?;
    Ok(())
}

impl Client for RedbDirect {
    async fn get(&self, key: &str) -> Result<(), BenchError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| failed("begin a read", e))?;
        let table = txn
            .open_table(ITEMS)
            .map_err(|e| failed("open the items table", e))?;
        let guard = table.get(key).map_err(|e| failed("read", e))?;
        match guard {
            Some(g) => {
                // Copied out, as the store does for its `Item`.
                std::hint::black_box(Bytes::copy_from_slice(
                    g.value().get(8..).unwrap_or_default(),
                ));
                Ok(())
            }
            None => Err(BenchError::new(format!("key {key:?} is missing"))),
        }
    }

    async fn set(&self, key: &str, value: &Bytes) -> Result<(), BenchError> {
        let (key, value) = (key.to_string(), value.clone());
        self.write(move |txn| put(txn, &key, &value)).await
    }

    async fn multi(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        let (keys, value) = (keys.to_vec(), value.clone());
        self.write(move |txn| {
            for key in &keys {
                put(txn, key, &value)?;
            }
            Ok(())
        })
        .await
    }
}
