//! The tables of the store file, and the one place they are changed: [`Tables`] applies each
//! change to the write transaction and appends it to a redo record, which the write-ahead log
//! (see [`super::wal`]) makes durable and replays after a crash.
//!
//! A commit may leave its item and history writes out of the transaction until its record is in
//! the log ([`Tables::defer`], then [`Tables::apply_deferred`]): the B-tree work then runs while
//! the log's `fdatasync` is under way instead of before it starts. Meanwhile the commit reads its
//! own item writes from a map ([`Tables::item`]); the history is never read by a commit except to
//! size it for the retention, which counts the deferred entries itself.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use redb::{
    AccessGuard, ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};

use super::errors::{backend_error, op_error};
use crate::error::StateError;

/// Key → record (see [`super::record`]).
pub(super) const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
/// (deadline in milliseconds since the Unix epoch, key) of every item with a TTL: exactly the
/// items in [`ITEMS`] whose record holds that deadline, so expired items are found in deadline
/// order without a scan.
pub(super) const DEADLINES: TableDefinition<(u64, &str), ()> = TableDefinition::new("deadlines");
/// Store-wide counters.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The `meta` key holding the last version handed out.
pub(super) const LAST_VERSION: &str = "last_version";
/// (revision, position within the commit) → a change record (see [`super::changes`]): the
/// history watchers read, written in the same transaction as the change itself.
pub(super) const CHANGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("changes");
/// The `meta` key holding the highest revision dropped from [`CHANGES`] (0: none).
pub(super) const COMPACTED_THROUGH: &str = "compacted_through";
/// The `meta` key holding the sequence number of the last log record applied to the file.
pub(super) const WAL_APPLIED: &str = "wal_applied";
/// The `meta` key holding the database's log id, written in every log segment's header.
pub(super) const WAL_LOG_ID: &str = "wal_log_id";

/// Redo operation tags.
const PUT_ITEM: u8 = 1;
const DEL_ITEM: u8 = 2;
const PUT_DEADLINE: u8 = 3;
const DEL_DEADLINE: u8 = 4;
const SET_META: u8 = 5;
const PUT_CHANGE: u8 = 6;
const DROP_CHANGES_THROUGH: u8 = 7;

/// The tables of one write transaction; every change goes through its methods so that the redo
/// record holds exactly what the transaction did.
pub(super) struct Tables<'t> {
    pub(super) items: ItemsTable<'t>,
    pub(super) deadlines: Table<'t, (u64, &'static str), ()>,
    pub(super) meta: Table<'t, &'static str, u64>,
    pub(super) changes: ChangesTable<'t>,
    path: &'t Path,
    redo: Vec<u8>,
    /// Item and history writes go to the redo record only, for [`Tables::apply_deferred`].
    deferred: bool,
    /// Item writes are no longer deferred (see [`Tables::apply_items_now`]).
    deferred_items_off: bool,
    /// The deferred item writes, by key: the record's place in `redo`, `None` for a delete.
    pending_items: HashMap<String, Option<Range<usize>>, foldhash::fast::RandomState>,
}

/// An item's record as a commit sees it: written by the commit itself, or in the table.
pub(super) enum ItemRecord<'a> {
    Pending(&'a [u8]),
    Stored(AccessGuard<'a, &'static [u8]>),
}

impl ItemRecord<'_> {
    /// The record's bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            ItemRecord::Pending(bytes) => bytes,
            ItemRecord::Stored(guard) => guard.value(),
        }
    }
}

impl<'t> Tables<'t> {
    /// Opens every table of `txn`.
    pub(super) fn open(txn: &'t WriteTransaction, path: &'t Path) -> Result<Self, StateError> {
        Ok(Tables {
            items: txn
                .open_table(ITEMS)
                .map_err(|e| op_error(path, "open the items table of", e))?,
            deadlines: txn
                .open_table(DEADLINES)
                .map_err(|e| op_error(path, "open the deadlines table of", e))?,
            meta: txn
                .open_table(META)
                .map_err(|e| op_error(path, "open the meta table of", e))?,
            changes: txn
                .open_table(CHANGES)
                .map_err(|e| op_error(path, "open the changes table of", e))?,
            path,
            redo: Vec::new(),
            deferred: false,
            deferred_items_off: false,
            pending_items: HashMap::default(),
        })
    }

    /// From now on, item and history writes go to the redo record only; the caller applies them
    /// with [`Tables::apply_deferred`] before the transaction is committed or read by anyone
    /// else. Deadlines and counters are still written at once.
    pub(super) fn defer(&mut self) {
        self.deferred = true;
    }

    /// Applies the item and history writes of `redo` (made with [`Tables::defer`]) to the
    /// transaction, in order; the redo record itself is left as it is.
    pub(super) fn apply_deferred(&mut self, redo: &[u8]) -> Result<(), StateError> {
        let path = self.path;
        let (items, changes) = (&mut self.items, &mut self.changes);
        for_each_op(redo, path, |op| match op {
            RedoOp::PutItem { key, record } => insert_item(items, path, key, record),
            RedoOp::DelItem { key } => remove_item(items, path, key),
            RedoOp::PutChange {
                revision,
                seq,
                change,
            } => insert_change(changes, path, revision, seq, change),
            RedoOp::DropChangesThrough { through } => {
                remove_changes_through(changes, path, through)
            }
            RedoOp::PutDeadline { .. } | RedoOp::DelDeadline { .. } | RedoOp::SetMeta { .. } => {
                Ok(())
            }
        })
    }

    /// Writes the deferred item writes so far to the table at once, and every later one too: for
    /// a scan of the items table.
    pub(super) fn apply_items_now(&mut self) -> Result<(), StateError> {
        if !self.deferred {
            return Ok(());
        }
        for (key, record) in std::mem::take(&mut self.pending_items) {
            match record {
                Some(at) => {
                    let record = self.redo.get(at).ok_or_else(|| lost_write(self.path))?;
                    insert_item(&mut self.items, self.path, &key, record)?;
                }
                None => remove_item(&mut self.items, self.path, &key)?,
            }
        }
        // The item writes of the redo record applied again later land on the same state.
        self.deferred_items_off = true;
        Ok(())
    }

    /// The record at `key`: this commit's own write if it made one, else the table's.
    pub(super) fn item(&self, key: &str) -> Result<Option<ItemRecord<'_>>, StateError> {
        if let Some(pending) = self.pending_items.get(key) {
            return match pending {
                Some(at) => self
                    .redo
                    .get(at.clone())
                    .map(|record| Some(ItemRecord::Pending(record)))
                    .ok_or_else(|| lost_write(self.path)),
                None => Ok(None),
            };
        }
        Ok(self
            .items
            .get(key)
            .map_err(|e| op_error(self.path, "read from", e))?
            .map(ItemRecord::Stored))
    }

    /// How many history entries the transaction's table holds (without deferred writes).
    pub(super) fn history_len(&self) -> Result<u64, StateError> {
        self.changes
            .len()
            .map_err(|e| op_error(self.path, "count the changes of", e))
    }

    /// The changes made so far, as a redo record for [`Tables::replay`].
    pub(super) fn take_redo(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.redo)
    }

    /// A counter, 0 if it was never written.
    pub(super) fn counter(&self, name: &str) -> Result<u64, StateError> {
        Ok(self
            .meta
            .get(name)
            .map_err(|e| op_error(self.path, "read the counters of", e))?
            .map_or(0, |g| g.value()))
    }

    pub(super) fn put_item(&mut self, key: &str, record: &[u8]) -> Result<(), StateError> {
        self.put_item_with(key, |out| out.extend_from_slice(record))
    }

    /// Writes the record `encode` appends to its buffer at `key` (encoded straight into the redo
    /// record).
    pub(super) fn put_item_with(
        &mut self,
        key: &str,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), StateError> {
        self.redo.push(PUT_ITEM);
        self.log_bytes(key.as_bytes())?;
        let at = self.log_with(encode)?;
        if self.defers_items() {
            self.pending_items.insert(key.to_string(), Some(at));
        } else {
            insert_item(&mut self.items, self.path, key, &self.redo[at])?;
        }
        Ok(())
    }

    pub(super) fn del_item(&mut self, key: &str) -> Result<(), StateError> {
        if self.defers_items() {
            self.pending_items.insert(key.to_string(), None);
        } else {
            remove_item(&mut self.items, self.path, key)?;
        }
        self.redo.push(DEL_ITEM);
        self.log_bytes(key.as_bytes())?;
        Ok(())
    }

    /// Whether item writes are deferred (see [`Tables::apply_items_now`]).
    fn defers_items(&self) -> bool {
        self.deferred && !self.deferred_items_off
    }

    pub(super) fn put_deadline(&mut self, at: u64, key: &str) -> Result<(), StateError> {
        self.deadlines
            .insert((at, key), ())
            .map_err(|e| op_error(self.path, "write a deadline to", e))?;
        self.redo.push(PUT_DEADLINE);
        self.redo.extend_from_slice(&at.to_le_bytes());
        self.log_bytes(key.as_bytes())?;
        Ok(())
    }

    pub(super) fn del_deadline(&mut self, at: u64, key: &str) -> Result<(), StateError> {
        self.deadlines
            .remove((at, key))
            .map_err(|e| op_error(self.path, "delete a deadline from", e))?;
        self.redo.push(DEL_DEADLINE);
        self.redo.extend_from_slice(&at.to_le_bytes());
        self.log_bytes(key.as_bytes())?;
        Ok(())
    }

    pub(super) fn set_meta(&mut self, name: &str, value: u64) -> Result<(), StateError> {
        self.meta
            .insert(name, value)
            .map_err(|e| op_error(self.path, "write the counters of", e))?;
        self.redo.push(SET_META);
        self.log_bytes(name.as_bytes())?;
        self.redo.extend_from_slice(&value.to_le_bytes());
        Ok(())
    }

    pub(super) fn put_change(
        &mut self,
        revision: u64,
        seq: u32,
        change: &[u8],
    ) -> Result<(), StateError> {
        self.put_change_with(revision, seq, |out| out.extend_from_slice(change))
    }

    /// Writes the history entry `encode` appends to its buffer (encoded straight into the redo
    /// record).
    pub(super) fn put_change_with(
        &mut self,
        revision: u64,
        seq: u32,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), StateError> {
        self.redo.push(PUT_CHANGE);
        self.redo.extend_from_slice(&revision.to_le_bytes());
        self.redo.extend_from_slice(&seq.to_le_bytes());
        let at = self.log_with(encode)?;
        if !self.deferred {
            insert_change(&mut self.changes, self.path, revision, seq, &self.redo[at])?;
        }
        Ok(())
    }

    /// Drops every change with a revision ≤ `through`.
    pub(super) fn drop_changes_through(&mut self, through: u64) -> Result<(), StateError> {
        if !self.deferred {
            remove_changes_through(&mut self.changes, self.path, through)?;
        }
        self.redo.push(DROP_CHANGES_THROUGH);
        self.redo.extend_from_slice(&through.to_le_bytes());
        Ok(())
    }

    /// Appends what `encode` writes to the redo record, with its length first; returns where it
    /// is in the redo record.
    fn log_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<Range<usize>, StateError> {
        let len_at = self.redo.len();
        self.redo.extend_from_slice(&[0; 4]);
        let start = self.redo.len();
        encode(&mut self.redo);
        let written = self.redo.len() - start;
        let len = u32::try_from(written).map_err(|_| {
            self.redo.truncate(len_at);
            backend_error(format!(
                "cannot write {written} bytes to {}: a key or value must be under 4 GiB",
                self.path.display()
            ))
        })?;
        self.redo[len_at..start].copy_from_slice(&len.to_le_bytes());
        Ok(start..self.redo.len())
    }

    /// Appends `bytes` with its length to the redo record.
    fn log_bytes(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.log_with(|out| out.extend_from_slice(bytes)).map(drop)
    }

    /// Applies a redo record made by [`Tables::take_redo`] (and appends it to this one's).
    pub(super) fn replay(&mut self, redo: &[u8]) -> Result<(), StateError> {
        let path = self.path;
        for_each_op(redo, path, |op| match op {
            RedoOp::PutItem { key, record } => self.put_item(key, record),
            RedoOp::DelItem { key } => self.del_item(key),
            RedoOp::PutDeadline { at, key } => self.put_deadline(at, key),
            RedoOp::DelDeadline { at, key } => self.del_deadline(at, key),
            RedoOp::SetMeta { name, value } => self.set_meta(name, value),
            RedoOp::PutChange {
                revision,
                seq,
                change,
            } => self.put_change(revision, seq, change),
            RedoOp::DropChangesThrough { through } => self.drop_changes_through(through),
        })
    }
}

type ChangesTable<'t> = Table<'t, (u64, u32), &'static [u8]>;

/// A deferred item write whose record is not where it was noted (a bug, never input).
fn lost_write(path: &Path) -> StateError {
    backend_error(format!(
        "a pending item write to {} lost its record",
        path.display()
    ))
}

type ItemsTable<'t> = Table<'t, &'static str, &'static [u8]>;

/// Writes one item's record.
fn insert_item(
    items: &mut ItemsTable<'_>,
    path: &Path,
    key: &str,
    record: &[u8],
) -> Result<(), StateError> {
    items
        .insert(key, record)
        .map(drop)
        .map_err(|e| op_error(path, "write to", e))
}

/// Removes one item.
fn remove_item(items: &mut ItemsTable<'_>, path: &Path, key: &str) -> Result<(), StateError> {
    items
        .remove(key)
        .map(drop)
        .map_err(|e| op_error(path, "delete from", e))
}

/// Writes one history entry.
fn insert_change(
    changes: &mut ChangesTable<'_>,
    path: &Path,
    revision: u64,
    seq: u32,
    change: &[u8],
) -> Result<(), StateError> {
    changes
        .insert((revision, seq), change)
        .map(drop)
        .map_err(|e| op_error(path, "write a change to", e))
}

/// Drops every history entry with a revision ≤ `through`.
fn remove_changes_through(
    changes: &mut ChangesTable<'_>,
    path: &Path,
    through: u64,
) -> Result<(), StateError> {
    changes
        .retain_in((0u64, 0u32)..=(through, u32::MAX), |_, _| false)
        .map_err(|e| op_error(path, "compact the changes of", e))
}

/// One change of a redo record.
pub(super) enum RedoOp<'a> {
    PutItem {
        key: &'a str,
        record: &'a [u8],
    },
    DelItem {
        key: &'a str,
    },
    PutDeadline {
        at: u64,
        key: &'a str,
    },
    DelDeadline {
        at: u64,
        key: &'a str,
    },
    SetMeta {
        name: &'a str,
        value: u64,
    },
    PutChange {
        revision: u64,
        seq: u32,
        change: &'a [u8],
    },
    DropChangesThrough {
        through: u64,
    },
}

/// Calls `f` with each change of a redo record made by [`Tables::take_redo`], in order; `path`
/// names the store in the error a malformed record gives.
pub(super) fn for_each_op<'a>(
    mut redo: &'a [u8],
    path: &Path,
    mut f: impl FnMut(RedoOp<'a>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let bad = |what: &str| {
        backend_error(format!(
            "the write-ahead log of {} holds a bad record ({what})",
            path.display()
        ))
    };
    while let Some((&tag, rest)) = redo.split_first() {
        redo = rest;
        let op = match tag {
            PUT_ITEM => RedoOp::PutItem {
                key: take_str(&mut redo).ok_or_else(|| bad("item key"))?,
                record: take_bytes(&mut redo).ok_or_else(|| bad("item record"))?,
            },
            DEL_ITEM => RedoOp::DelItem {
                key: take_str(&mut redo).ok_or_else(|| bad("item key"))?,
            },
            PUT_DEADLINE | DEL_DEADLINE => {
                let at = take_u64(&mut redo).ok_or_else(|| bad("deadline"))?;
                let key = take_str(&mut redo).ok_or_else(|| bad("deadline key"))?;
                if tag == PUT_DEADLINE {
                    RedoOp::PutDeadline { at, key }
                } else {
                    RedoOp::DelDeadline { at, key }
                }
            }
            SET_META => RedoOp::SetMeta {
                name: take_str(&mut redo).ok_or_else(|| bad("counter name"))?,
                value: take_u64(&mut redo).ok_or_else(|| bad("counter"))?,
            },
            PUT_CHANGE => RedoOp::PutChange {
                revision: take_u64(&mut redo).ok_or_else(|| bad("revision"))?,
                seq: take_u32(&mut redo).ok_or_else(|| bad("change position"))?,
                change: take_bytes(&mut redo).ok_or_else(|| bad("change"))?,
            },
            DROP_CHANGES_THROUGH => RedoOp::DropChangesThrough {
                through: take_u64(&mut redo).ok_or_else(|| bad("revision"))?,
            },
            other => return Err(bad(&format!("unknown operation {other}"))),
        };
        f(op)?;
    }
    Ok(())
}

fn take_u32(input: &mut &[u8]) -> Option<u32> {
    let (head, rest) = input.split_first_chunk::<4>()?;
    *input = rest;
    Some(u32::from_le_bytes(*head))
}

fn take_u64(input: &mut &[u8]) -> Option<u64> {
    let (head, rest) = input.split_first_chunk::<8>()?;
    *input = rest;
    Some(u64::from_le_bytes(*head))
}

fn take_bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(input)? as usize;
    let bytes = input.get(..len)?;
    *input = &input[len..];
    Some(bytes)
}

fn take_str<'a>(input: &mut &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(take_bytes(input)?).ok()
}
