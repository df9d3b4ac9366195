//! The write transaction the writer keeps open across commits.
//!
//! A commit of the store is complete once its redo record is in the write-ahead log; its
//! changes also go into one redb write transaction that stays open across commits and is
//! committed to the file only every [`super::RedbOptions::flush_commits`] commits or
//! [`FLUSH_BYTES`] of redo
//! (readers see the commits in between through the [`super::overlay`]). redb's per-commit work —
//! copying, hashing and writing every page a commit touched — is then paid once for many: a page
//! touched by many commits in a row is copied once.
//!
//! A failure inside one commit (or of the file's commit) must not take the other commits held
//! with it: the transaction is then rebuilt from the file by replaying the redo records it held.
//! If even that fails the store stops taking writes (its log still has every commit; reopening
//! replays them).

use std::path::Path;

use redb::{Database, Durability, WriteTransaction};

use super::errors::{backend_error, op_error};
use super::tables::Tables;
use crate::error::StateError;

/// Redo bytes held in the open transaction before it is committed to the file.
pub(super) const FLUSH_BYTES: usize = 8 << 20;

/// The open transaction, if any, and what it holds.
pub(super) struct Held {
    /// Commits held before the transaction is committed to the file.
    limit: usize,
    txn: Option<WriteTransaction>,
    /// The redo records of the commits in `txn`.
    redos: Vec<Vec<u8>>,
    bytes: usize,
    /// Why the store takes no more writes, once the transaction could not be rebuilt.
    broken: Option<String>,
}

impl Held {
    /// Nothing held yet; the transaction is committed to the file every `limit` commits.
    pub(super) fn new(limit: usize) -> Self {
        Held {
            limit: limit.max(1),
            txn: None,
            redos: Vec::new(),
            bytes: 0,
            broken: None,
        }
    }

    /// The open transaction; begins one if none is open.
    pub(super) fn txn(
        &mut self,
        db: &Database,
        path: &Path,
    ) -> Result<&WriteTransaction, StateError> {
        if let Some(why) = &self.broken {
            return Err(backend_error(format!(
                "{} takes no more writes until it is reopened: {why}",
                path.display()
            )));
        }
        if self.txn.is_none() {
            self.txn = Some(begin(db, path)?);
        }
        self.txn
            .as_ref()
            .ok_or_else(|| backend_error(format!("no write transaction on {}", path.display())))
    }

    /// Notes that the open transaction now holds the commit of `redo`.
    pub(super) fn hold(&mut self, redo: Vec<u8>) {
        self.bytes += redo.len();
        self.redos.push(redo);
    }

    /// Whether the open transaction holds enough to be committed to the file.
    pub(super) fn due(&self) -> bool {
        self.redos.len() >= self.limit || self.bytes >= FLUSH_BYTES
    }

    /// The commits held and the bytes of their redo records.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.redos.len(), self.bytes)
    }

    /// Whether a transaction is open.
    pub(super) fn is_open(&self) -> bool {
        self.txn.is_some()
    }

    /// Commits the open transaction to the file with `durability`. On failure the transaction
    /// is rebuilt with the commits it held (see [`Held::restore`]) and the error returned.
    pub(super) fn commit(
        &mut self,
        db: &Database,
        path: &Path,
        durability: Durability,
    ) -> Result<(), StateError> {
        let Some(mut txn) = self.txn.take() else {
            return Ok(());
        };
        let committed = txn
            .set_durability(durability)
            .map_err(|e| op_error(path, "set durability on", e))
            .and_then(|()| txn.commit().map_err(|e| op_error(path, "commit to", e)));
        match committed {
            Ok(()) => {
                self.redos.clear();
                self.bytes = 0;
                Ok(())
            }
            Err(failed) => {
                self.restore(db, path);
                Err(failed)
            }
        }
    }

    /// Drops whatever the open transaction holds beyond its held commits (a commit that failed
    /// half-way): begins a new transaction and replays the held redo records into it. If that
    /// fails, the store takes no more writes.
    pub(super) fn restore(&mut self, db: &Database, path: &Path) {
        if let Some(txn) = self.txn.take() {
            if let Err(e) = txn.abort() {
                tracing::warn!(store = %path.display(), error = %e, "cannot abort a write transaction");
            }
        }
        match rebuild(db, path, &self.redos) {
            Ok(txn) => self.txn = Some(txn),
            Err(e) => {
                tracing::error!(store = %path.display(), error = %e, "cannot rebuild the open write transaction; the store takes no more writes until it is reopened");
                self.broken = Some(e.to_string());
            }
        }
    }
}

/// Begins a write transaction that is committed without an fsync unless told otherwise.
fn begin(db: &Database, path: &Path) -> Result<WriteTransaction, StateError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| op_error(path, "begin a write transaction on", e))?;
    txn.set_durability(Durability::None)
        .map_err(|e| op_error(path, "set durability on", e))?;
    Ok(txn)
}

/// A new transaction holding `redos`.
fn rebuild(db: &Database, path: &Path, redos: &[Vec<u8>]) -> Result<WriteTransaction, StateError> {
    let txn = begin(db, path)?;
    {
        let mut tables = Tables::open(&txn, path)?;
        for redo in redos {
            tables.replay(redo)?;
            tables.take_redo();
        }
    }
    Ok(txn)
}
