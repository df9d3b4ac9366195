//! Changes inside one write transaction: conditional writes and deletes, the version counter,
//! and sweeping expired items.

use std::path::Path;
use std::time::SystemTime;

use redb::{ReadableTable, Table, WriteTransaction};

use super::errors::{backend_error, corrupt, op_error};
use super::record;
use super::tables::{DEADLINES, ITEMS, LAST_VERSION, META};
use crate::error::StateError;
use crate::etag;
use crate::keys;
use crate::store::{Concurrency, DeleteRequest, SetRequest, TxOperation};
use crate::ttl;

/// The outcome of one request inside a transaction: the outer error is a backend failure (the
/// transaction must not be committed); the inner one is the request's own rejection (empty key,
/// ETag, first-write), after which the transaction may go on.
pub(super) type Checked<T> = Result<Result<T, StateError>, StateError>;

/// The tables of one write transaction, opened once for all its requests.
pub(super) struct Writer<'t> {
    items: Table<'t, &'static str, &'static [u8]>,
    deadlines: Table<'t, (u64, &'static str), ()>,
    meta: Table<'t, &'static str, u64>,
    path: &'t Path,
    /// The transaction's clock: every request in it sees the same time.
    now: SystemTime,
    now_ms: u64,
    last_version: u64,
    version_moved: bool,
    changed: bool,
}

/// What is stored at a key.
struct Stored {
    version: u64,
    expires_ms: Option<u64>,
    live: bool,
}

impl<'t> Writer<'t> {
    /// Opens the tables of `txn` and reads the version counter.
    pub(super) fn open(txn: &'t WriteTransaction, path: &'t Path) -> Result<Self, StateError> {
        let items = txn
            .open_table(ITEMS)
            .map_err(|e| op_error(path, "open the items table of", e))?;
        let deadlines = txn
            .open_table(DEADLINES)
            .map_err(|e| op_error(path, "open the deadlines table of", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| op_error(path, "open the meta table of", e))?;
        let last_version = meta
            .get(LAST_VERSION)
            .map_err(|e| op_error(path, "read the version counter of", e))?
            .map(|g| g.value())
            .unwrap_or(0);
        let now = SystemTime::now();
        Ok(Writer {
            items,
            deadlines,
            meta,
            path,
            now,
            now_ms: ttl::to_unix_millis(now),
            last_version,
            version_moved: false,
            changed: false,
        })
    }

    /// Writes the version counter back; returns whether the transaction changed anything (if
    /// not, it need not be committed).
    pub(super) fn finish(mut self) -> Result<bool, StateError> {
        if self.version_moved {
            self.meta
                .insert(LAST_VERSION, self.last_version)
                .map_err(|e| op_error(self.path, "write the version counter of", e))?;
        }
        Ok(self.changed)
    }

    /// What is stored at `key`, expired or not.
    fn stored(&self, key: &str) -> Result<Option<Stored>, StateError> {
        let guard = self
            .items
            .get(key)
            .map_err(|e| op_error(self.path, "read from", e))?;
        guard
            .map(|g| {
                record::decode(g.value())
                    .map(|r| Stored {
                        version: r.version,
                        expires_ms: r.expires_ms,
                        live: r.live(self.now_ms),
                    })
                    .map_err(|e| corrupt(self.path, key, e))
            })
            .transpose()
    }

    /// The version of the live item at `key`, if there is one.
    fn live_version(stored: Option<&Stored>) -> Option<u64> {
        stored.filter(|s| s.live).map(|s| s.version)
    }

    /// Takes the next version from the counter.
    fn next_version(&mut self) -> Result<u64, StateError> {
        let next = self.last_version.checked_add(1).ok_or_else(|| {
            backend_error(format!(
                "the version counter of {} is exhausted",
                self.path.display()
            ))
        })?;
        self.last_version = next;
        self.version_moved = true;
        Ok(next)
    }

    /// Removes the item at `key` and its deadline entry.
    fn remove(&mut self, key: &str, stored: &Stored) -> Result<(), StateError> {
        self.items
            .remove(key)
            .map_err(|e| op_error(self.path, "delete from", e))?;
        if let Some(at) = stored.expires_ms {
            self.deadlines
                .remove((at, key))
                .map_err(|e| op_error(self.path, "delete a deadline from", e))?;
        }
        self.changed = true;
        Ok(())
    }

    /// Checks one write against the live state: key, ETag, first-write.
    fn check_set(&self, req: &SetRequest) -> Checked<()> {
        if let Err(rejected) = etag::check_key(&req.key) {
            return Ok(Err(rejected));
        }
        let live = Self::live_version(self.stored(&req.key)?.as_ref());
        Ok(etag::check_write(
            &req.key,
            req.etag.as_deref(),
            req.concurrency,
            live,
        ))
    }

    /// Checks one delete against the live state: key, and the ETag if it has one.
    fn check_delete(&self, req: &DeleteRequest) -> Checked<()> {
        if let Err(rejected) = etag::check_key(&req.key) {
            return Ok(Err(rejected));
        }
        if req.etag.as_deref().is_none_or(str::is_empty) {
            return Ok(Ok(()));
        }
        let live = Self::live_version(self.stored(&req.key)?.as_ref());
        Ok(etag::check_write(
            &req.key,
            req.etag.as_deref(),
            Concurrency::LastWrite,
            live,
        ))
    }

    /// Checks one operation of a transaction against the live state.
    pub(super) fn check(&self, op: &TxOperation) -> Checked<()> {
        match op {
            TxOperation::Upsert(req) => self.check_set(req),
            TxOperation::Delete(req) => self.check_delete(req),
        }
    }

    /// Writes one key without checks; returns the new version.
    fn write(&mut self, req: &SetRequest) -> Result<u64, StateError> {
        let key = req.key.as_str();
        let old_deadline = self.stored(key)?.and_then(|s| s.expires_ms);
        let version = self.next_version()?;
        let expires_ms = req.ttl.map(|t| ttl::expiry_millis(self.now, t));
        self.items
            .insert(
                key,
                record::encode(version, expires_ms, &req.value).as_slice(),
            )
            .map_err(|e| op_error(self.path, "write to", e))?;
        if old_deadline != expires_ms {
            if let Some(at) = old_deadline {
                self.deadlines
                    .remove((at, key))
                    .map_err(|e| op_error(self.path, "delete a deadline from", e))?;
            }
            if let Some(at) = expires_ms {
                self.deadlines
                    .insert((at, key), ())
                    .map_err(|e| op_error(self.path, "write a deadline to", e))?;
            }
        }
        self.changed = true;
        Ok(version)
    }

    /// Deletes one key without checks; returns whether a live item was removed (an expired one
    /// is removed too, but does not count).
    fn erase(&mut self, key: &str) -> Result<bool, StateError> {
        let Some(stored) = self.stored(key)? else {
            return Ok(false);
        };
        self.remove(key, &stored)?;
        if stored.live {
            // A delete is a committed change too: it advances the global revision.
            self.next_version()?;
        }
        Ok(stored.live)
    }

    /// Writes one key if its checks pass against the live state; returns the new version.
    pub(super) fn set(&mut self, req: &SetRequest) -> Checked<u64> {
        if let Err(rejected) = self.check_set(req)? {
            return Ok(Err(rejected));
        }
        Ok(Ok(self.write(req)?))
    }

    /// Deletes one key if its ETag check passes against the live state; the inner `Ok` says
    /// whether a live item was removed.
    pub(super) fn delete(&mut self, req: &DeleteRequest) -> Checked<bool> {
        if let Err(rejected) = self.check_delete(req)? {
            return Ok(Err(rejected));
        }
        Ok(Ok(self.erase(&req.key)?))
    }

    /// Applies one operation of a transaction without checks (see [`Writer::check`]).
    pub(super) fn apply(&mut self, op: &TxOperation) -> Result<(), StateError> {
        match op {
            TxOperation::Upsert(req) => self.write(req).map(drop),
            TxOperation::Delete(req) => self.erase(&req.key).map(drop),
        }
    }

    /// Deletes every key under `prefix` by the delete-with-prefix rule; returns how many live
    /// items went (expired ones go too, uncounted).
    pub(super) fn delete_prefix(&mut self, prefix: &str) -> Result<u64, StateError> {
        let doomed: Vec<String> = {
            let mut doomed = Vec::new();
            let range = self
                .items
                .range(prefix..)
                .map_err(|e| op_error(self.path, "scan", e))?;
            for entry in range {
                let (key, _) = entry.map_err(|e| op_error(self.path, "scan", e))?;
                let key = key.value();
                if !key.starts_with(prefix) {
                    break;
                }
                if keys::under_prefix(prefix, key) {
                    doomed.push(key.to_string());
                }
            }
            doomed
        };
        let mut deleted = 0;
        for key in doomed {
            if self.erase(&key)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Removes up to `max` items whose deadline has passed, oldest first; returns how many.
    pub(super) fn sweep(&mut self, max: usize) -> Result<usize, StateError> {
        let due: Vec<(u64, String)> = {
            let mut due = Vec::new();
            let range = self
                .deadlines
                .range((0, "")..(self.now_ms.saturating_add(1), ""))
                .map_err(|e| op_error(self.path, "scan the deadlines of", e))?;
            for entry in range.take(max) {
                let (key, _) =
                    entry.map_err(|e| op_error(self.path, "scan the deadlines of", e))?;
                let (at, key) = key.value();
                due.push((at, key.to_string()));
            }
            due
        };
        for (at, key) in &due {
            self.deadlines
                .remove((*at, key.as_str()))
                .map_err(|e| op_error(self.path, "delete a deadline from", e))?;
            // The index is exact, but a record is checked before it goes: only an item that
            // still holds this deadline is expired.
            if self.stored(key)?.is_some_and(|s| s.expires_ms == Some(*at)) {
                self.items
                    .remove(key.as_str())
                    .map_err(|e| op_error(self.path, "delete from", e))?;
            }
            self.changed = true;
        }
        Ok(due.len())
    }
}
