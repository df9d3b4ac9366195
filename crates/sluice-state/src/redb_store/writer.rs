//! Changes inside one write transaction: conditional writes and deletes, the version counter,
//! sweeping expired items, and recording every change in the history table (at the
//! transaction's revision: the counter after it) under its retention.

use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use redb::{ReadableTable, WriteTransaction};

use super::changes;
use super::errors::{backend_error, corrupt, op_error};
use super::record;
use super::tables::{Tables, COMPACTED_THROUGH, LAST_VERSION, WAL_APPLIED};
use crate::error::StateError;
use crate::etag;
use crate::keys;
use crate::store::{Concurrency, DeleteRequest, SetRequest, TxOperation};
use crate::ttl;
use crate::watch::{Change, Op, Retention};

/// The outcome of one request inside a transaction: the outer error is a backend failure (the
/// transaction must not be committed); the inner one is the request's own rejection (empty key,
/// ETag, first-write), after which the transaction may go on.
pub(super) type Checked<T> = Result<Result<T, StateError>, StateError>;

/// The tables of one write transaction, opened once for all its requests.
pub(super) struct Writer<'t> {
    t: Tables<'t>,
    path: &'t Path,
    retention: Retention,
    /// Changes made so far, recorded by [`Writer::finish`].
    pending: Vec<Change>,
    /// The transaction's clock: every request in it sees the same time.
    now: SystemTime,
    now_ms: u64,
    last_version: u64,
    version_moved: bool,
    changed: bool,
    /// History entries written at `deferred_revision` that are not in the table yet (see
    /// [`Tables::defer`]).
    deferred_puts: u64,
    deferred_revision: u64,
    /// The highest revision this transaction dropped from the history (0: none), still in the
    /// table until the history is applied.
    deferred_drop: u64,
}

/// One revision of the history, as the retention sees it.
struct HeldRevision {
    revision: u64,
    /// Commit time of its first change.
    at_ms: u64,
    changes: u64,
}

/// Groups (revision, commit time) entries in revision order into revisions.
fn group_revisions(
    entries: impl Iterator<Item = Result<(u64, u64), StateError>>,
) -> impl Iterator<Item = Result<HeldRevision, StateError>> {
    let mut entries = entries.peekable();
    std::iter::from_fn(move || {
        let (revision, at_ms) = match entries.next()? {
            Ok(first) => first,
            Err(e) => return Some(Err(e)),
        };
        let mut changes = 1;
        while let Some(Ok((next, _))) = entries.peek() {
            if *next != revision {
                break;
            }
            changes += 1;
            entries.next();
        }
        Some(Ok(HeldRevision {
            revision,
            at_ms,
            changes,
        }))
    })
}

/// What a key held when [`Writer::check_and_read`] checked it.
pub(super) struct Read(Option<(Stored, Bytes)>);

/// What is stored at a key.
struct Stored {
    version: u64,
    expires_ms: Option<u64>,
    live: bool,
}

impl<'t> Writer<'t> {
    /// Opens the tables of `txn` and reads the version counter.
    pub(super) fn open(
        txn: &'t WriteTransaction,
        path: &'t Path,
        retention: Retention,
    ) -> Result<Self, StateError> {
        let mut t = Tables::open(txn, path)?;
        t.defer();
        let last_version = t.counter(LAST_VERSION)?;
        let now = SystemTime::now();
        Ok(Writer {
            t,
            path,
            retention,
            pending: Vec::new(),
            now,
            now_ms: ttl::to_unix_millis(now),
            last_version,
            version_moved: false,
            changed: false,
            deferred_puts: 0,
            deferred_revision: 0,
            deferred_drop: 0,
        })
    }

    /// Records the pending changes at the transaction's revision, applies the retention, and
    /// writes the counters back; returns whether the transaction changed anything (if not, it
    /// need not be committed) and the revision its changes carry, if any.
    pub(super) fn finish(&mut self) -> Result<(bool, Option<u64>), StateError> {
        let revision = self.record_pending()?;
        if self.enforce_retention()? {
            self.changed = true;
        }
        if self.version_moved {
            self.t.set_meta(LAST_VERSION, self.last_version)?;
            self.version_moved = false;
        }
        Ok((self.changed, revision))
    }

    /// Notes that the transaction carries log record `lsn`; returns the redo record of
    /// everything it changed (see [`Tables::take_redo`]).
    pub(super) fn seal(&mut self, lsn: u64) -> Result<Vec<u8>, StateError> {
        self.t.set_meta(WAL_APPLIED, lsn)?;
        Ok(self.t.take_redo())
    }

    /// Applies the item and history writes this commit deferred (see [`Tables::defer`]), once
    /// `redo`, its sealed redo record, is in the log.
    pub(super) fn apply_deferred(&mut self, redo: &[u8]) -> Result<(), StateError> {
        self.t.apply_deferred(redo)
    }

    /// Writes the pending changes to the history at the current counter; returns it.
    fn record_pending(&mut self) -> Result<Option<u64>, StateError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        if !self.version_moved {
            self.next_version()?;
        }
        let revision = self.last_version;
        for (seq, change) in std::mem::take(&mut self.pending).iter().enumerate() {
            let seq = u32::try_from(seq).map_err(|_| {
                backend_error(format!(
                    "a transaction on {} made over 4 billion changes",
                    self.path.display()
                ))
            })?;
            self.t.put_change_with(revision, seq, |out| {
                changes::encode_into(change, self.now_ms, out);
            })?;
            self.deferred_puts += 1;
        }
        self.deferred_revision = revision;
        self.changed = true;
        Ok(Some(revision))
    }

    /// Drops the oldest revisions beyond the retention; returns whether it dropped any.
    pub(super) fn enforce_retention(&mut self) -> Result<bool, StateError> {
        match self.retention_boundary()? {
            Some(through) => {
                self.compact_through(through)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The highest revision the retention drops, if any: whole revisions, oldest first, while
    /// more changes than the count bound are held, then while the oldest change is older than
    /// the age bound.
    fn retention_boundary(&self) -> Result<Option<u64>, StateError> {
        let Retention {
            max_changes,
            max_age,
        } = self.retention;
        if max_changes.is_none() && max_age.is_none() {
            return Ok(None);
        }
        let mut held = self.history_held()?;
        let mut revisions = self.history_revisions()?;
        let mut through = None;
        if let Some(max) = max_changes {
            while held > max as u64 {
                let Some(revision) = revisions.next().transpose()? else {
                    break;
                };
                held -= revision.changes;
                through = Some(revision.revision);
            }
        }
        if let Some(age) = max_age {
            let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            let cutoff = self.now_ms.saturating_sub(age_ms);
            while let Some(revision) = revisions.next().transpose()? {
                if revision.at_ms >= cutoff {
                    break;
                }
                through = Some(revision.revision);
            }
        }
        Ok(through)
    }

    /// How many changes the history holds, this transaction's included.
    fn history_held(&self) -> Result<u64, StateError> {
        let mut in_table = self.t.history_len()?;
        if self.deferred_drop > 0 {
            // Entries a deferred drop removes are still in the table.
            for entry in self.table_history(..=(self.deferred_drop, u32::MAX))? {
                entry?;
                in_table = in_table.saturating_sub(1);
            }
        }
        Ok(in_table + self.deferred_put_count())
    }

    /// This transaction's history entries not yet in the table (they all carry its revision).
    fn deferred_put_count(&self) -> u64 {
        if self.deferred_revision > self.deferred_drop {
            self.deferred_puts
        } else {
            0
        }
    }

    /// The history's (revision, commit time) entries in the table within `range`.
    fn table_history(
        &self,
        range: impl std::ops::RangeBounds<(u64, u32)>,
    ) -> Result<impl Iterator<Item = Result<(u64, u64), StateError>> + '_, StateError> {
        let path = self.path;
        let iter = self
            .t
            .changes
            .range(range)
            .map_err(|e| op_error(path, "read the changes of", e))?;
        Ok(iter.map(move |entry| {
            let (key, value) = entry.map_err(|e| op_error(path, "read the changes of", e))?;
            let at = value
                .value()
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes);
            Ok((key.value().0, at))
        }))
    }

    /// The revisions the history holds, oldest first, with their change counts: the table's
    /// (less a deferred drop), then this transaction's own.
    fn history_revisions(
        &self,
    ) -> Result<impl Iterator<Item = Result<HeldRevision, StateError>> + '_, StateError> {
        let from = (self.deferred_drop.saturating_add(1), 0);
        let entries = self.table_history(from..)?.chain(
            (0..self.deferred_put_count()).map(|_| Ok((self.deferred_revision, self.now_ms))),
        );
        Ok(group_revisions(entries))
    }

    /// Drops every change with a revision ≤ `through` (clamped to the counter); returns the
    /// smallest revision a reader can now ask changes after.
    pub(super) fn compact_through(&mut self, through: u64) -> Result<u64, StateError> {
        let through = through.min(self.last_version);
        self.t.drop_changes_through(through)?;
        self.deferred_drop = self.deferred_drop.max(through);
        let before = self.t.counter(COMPACTED_THROUGH)?;
        let now = before.max(through);
        if now != before {
            self.t.set_meta(COMPACTED_THROUGH, now)?;
            self.changed = true;
        }
        Ok(now)
    }

    /// Notes one change (recorded at [`Writer::finish`]).
    fn record(&mut self, key: &str, op: Op, value: Option<Bytes>, prev_value: Option<Bytes>) {
        self.pending.push(Change {
            revision: 0,
            key: key.to_string(),
            op,
            value,
            prev_value,
        });
    }

    /// What is stored at `key` and its value, expired or not (one read).
    fn stored_with_value(&self, key: &str) -> Result<Option<(Stored, Bytes)>, StateError> {
        self.t
            .item(key)?
            .map(|g| {
                record::decode(g.bytes())
                    .map(|r| {
                        let stored = Stored {
                            version: r.version,
                            expires_ms: r.expires_ms,
                            live: r.live(self.now_ms),
                        };
                        (stored, Bytes::copy_from_slice(r.value))
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
        self.t.del_item(key)?;
        if let Some(at) = stored.expires_ms {
            self.t.del_deadline(at, key)?;
        }
        self.changed = true;
        Ok(())
    }

    /// Writes one key without checks; returns the new version.
    fn write(&mut self, req: &SetRequest) -> Result<u64, StateError> {
        let read = self.stored_with_value(&req.key)?;
        self.write_over(req, read)
    }

    /// Writes one key without checks over `read`, what the key holds; returns the new version.
    fn write_over(
        &mut self,
        req: &SetRequest,
        read: Option<(Stored, Bytes)>,
    ) -> Result<u64, StateError> {
        let key = req.key.as_str();
        let (old, old_value) = match read {
            Some((stored, value)) => (Some(stored), Some(value)),
            None => (None, None),
        };
        let old_deadline = old.as_ref().and_then(|s| s.expires_ms);
        let version = self.next_version()?;
        let expires_ms = req.ttl.map(|t| ttl::expiry_millis(self.now, t));
        self.t.put_item_with(key, |out| {
            record::encode_into(version, expires_ms, &req.value, out);
        })?;
        if old_deadline != expires_ms {
            if let Some(at) = old_deadline {
                self.t.del_deadline(at, key)?;
            }
            if let Some(at) = expires_ms {
                self.t.put_deadline(at, key)?;
            }
        }
        let prev_value = match (old.map(|s| s.live), old_value) {
            (Some(true), prev) => prev,
            (Some(false), expired) => {
                // The expired item's delete comes first: that is its expiry event.
                self.record(key, Op::Delete, None, expired);
                None
            }
            _ => None,
        };
        self.record(key, Op::Put, Some(req.value.clone()), prev_value);
        self.changed = true;
        Ok(version)
    }

    /// Deletes one key without checks; returns whether a live item was removed (an expired one
    /// is removed too, but does not count).
    fn erase(&mut self, key: &str) -> Result<bool, StateError> {
        let read = self.stored_with_value(key)?;
        self.erase_over(key, read)
    }

    /// Deletes one key without checks over `read`, what the key holds (see [`Writer::erase`]).
    fn erase_over(&mut self, key: &str, read: Option<(Stored, Bytes)>) -> Result<bool, StateError> {
        let Some((stored, prev)) = read else {
            return Ok(false);
        };
        self.remove(key, &stored)?;
        // A delete is a committed change too (an expired item's delete is its expiry event):
        // it advances the global revision.
        self.next_version()?;
        self.record(key, Op::Delete, None, Some(prev));
        Ok(stored.live)
    }

    /// Writes one key if its checks pass against the live state; returns the new version.
    pub(super) fn set(&mut self, req: &SetRequest) -> Checked<u64> {
        match self.check_set_read(req)? {
            Ok(read) => Ok(Ok(self.write_over(req, read.0)?)),
            Err(rejected) => Ok(Err(rejected)),
        }
    }

    /// Deletes one key if its ETag check passes against the live state; the inner `Ok` says
    /// whether a live item was removed.
    pub(super) fn delete(&mut self, req: &DeleteRequest) -> Checked<bool> {
        match self.check_delete_read(req)? {
            Ok(read) => Ok(Ok(self.erase_over(&req.key, read.0)?)),
            Err(rejected) => Ok(Err(rejected)),
        }
    }

    /// Applies one operation of a transaction without checks (see [`Writer::check_and_read`]).
    pub(super) fn apply(&mut self, op: &TxOperation) -> Result<(), StateError> {
        match op {
            TxOperation::Upsert(req) => self.write(req).map(drop),
            TxOperation::Delete(req) => self.erase(&req.key).map(drop),
        }
    }

    /// Checks one operation of a transaction against the live state (key, ETag, first-write),
    /// keeping what it read for [`Writer::apply_read`]: one read of the key for both. The read
    /// stays good only while no other operation writes the key.
    pub(super) fn check_and_read(&self, op: &TxOperation) -> Checked<Read> {
        match op {
            TxOperation::Upsert(req) => self.check_set_read(req),
            TxOperation::Delete(req) => self.check_delete_read(req),
        }
    }

    /// Checks one write: key, ETag, first-write.
    fn check_set_read(&self, req: &SetRequest) -> Checked<Read> {
        self.read_and_check(&req.key, |live| {
            etag::check_write(&req.key, req.etag.as_deref(), req.concurrency, live)
        })
    }

    /// Checks one delete: key, and the ETag if it has one.
    fn check_delete_read(&self, req: &DeleteRequest) -> Checked<Read> {
        self.read_and_check(&req.key, |live| {
            if req.etag.as_deref().is_none_or(str::is_empty) {
                return Ok(());
            }
            etag::check_write(&req.key, req.etag.as_deref(), Concurrency::LastWrite, live)
        })
    }

    /// Reads `key` and passes its live version to `verdict`; the read if it passes.
    fn read_and_check(
        &self,
        key: &str,
        verdict: impl FnOnce(Option<u64>) -> Result<(), StateError>,
    ) -> Checked<Read> {
        if let Err(rejected) = etag::check_key(key) {
            return Ok(Err(rejected));
        }
        let read = self.stored_with_value(key)?;
        let live = Self::live_version(read.as_ref().map(|(stored, _)| stored));
        Ok(verdict(live).map(|()| Read(read)))
    }

    /// Applies one operation without checks over what [`Writer::check_and_read`] read.
    pub(super) fn apply_read(&mut self, op: &TxOperation, read: Read) -> Result<(), StateError> {
        match op {
            TxOperation::Upsert(req) => self.write_over(req, read.0).map(drop),
            TxOperation::Delete(req) => self.erase_over(&req.key, read.0).map(drop),
        }
    }

    /// Deletes every key under `prefix` by the delete-with-prefix rule; returns how many live
    /// items went (expired ones go too, uncounted).
    pub(super) fn delete_prefix(&mut self, prefix: &str) -> Result<u64, StateError> {
        // The scan reads the table: it must hold this commit's own writes.
        self.t.apply_items_now()?;
        let doomed: Vec<String> = {
            let mut doomed = Vec::new();
            let range = self
                .t
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
                .t
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
            self.t.del_deadline(*at, key)?;
            // The index is exact, but a record is checked before it goes: only an item that
            // still holds this deadline is expired.
            if let Some((_, prev)) = self
                .stored_with_value(key)?
                .filter(|(s, _)| s.expires_ms == Some(*at))
            {
                self.t.del_item(key)?;
                self.next_version()?;
                self.record(key, Op::Delete, None, Some(prev));
            }
            self.changed = true;
        }
        Ok(due.len())
    }
}
