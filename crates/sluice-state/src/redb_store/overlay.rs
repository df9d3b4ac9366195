//! Committed writes that redb's file does not show readers yet.
//!
//! The writer keeps one redb write transaction open across many commits and commits it to the
//! file only now and then (see [`super::pending`]): redb's cost per commit (copying and hashing
//! every touched page) is then paid once for many. Until then, what readers must see of those
//! commits is held here, as the commits' redo records applied to in-memory maps; every read
//! consults the overlay first and redb's snapshot for the rest.
//!
//! A reader takes the overlay and begins its redb read transaction under one read lock, and the
//! writer clears the overlay (under the write lock) only after the file's commit: so the pair a
//! reader gets is always one consistent state — either the overlay still holds a write, or the
//! file the reader sees already has it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;

use bytes::Bytes;
use parking_lot::RwLock;
use redb::{Database, ReadTransaction, ReadableDatabase};

use super::errors::op_error;
use super::tables::{for_each_op, RedoOp};
use crate::error::StateError;

/// Writes not yet visible in the file, behind a lock.
#[derive(Default)]
pub(super) struct Overlay {
    layer: RwLock<Layer>,
}

/// What the commits held in the overlay changed.
#[derive(Default)]
pub(super) struct Layer {
    /// Key → its record (`None`: deleted).
    pub(super) items: BTreeMap<String, Option<Bytes>>,
    /// Counters written.
    meta: HashMap<String, u64>,
    /// Changes added to the history.
    pub(super) changes: BTreeMap<(u64, u32), Bytes>,
    /// History in the file at or below this revision is dropped (0: none).
    pub(super) dropped_through: u64,
}

impl Layer {
    /// A counter the overlay holds.
    pub(super) fn counter(&self, name: &str) -> Option<u64> {
        self.meta.get(name).copied()
    }

    /// The overlay's items from `start` on, in key order, while `keep` holds.
    pub(super) fn items_from(
        &self,
        start: Bound<&str>,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Vec<(String, Option<Bytes>)> {
        self.items
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Applies one change of a redo record.
    fn apply(&mut self, op: RedoOp<'_>) {
        match op {
            RedoOp::PutItem { key, record } => {
                self.items
                    .insert(key.to_string(), Some(Bytes::copy_from_slice(record)));
            }
            RedoOp::DelItem { key } => {
                self.items.insert(key.to_string(), None);
            }
            // Only the writer reads deadlines, from its own transaction.
            RedoOp::PutDeadline { .. } | RedoOp::DelDeadline { .. } => {}
            RedoOp::SetMeta { name, value } => {
                self.meta.insert(name.to_string(), value);
            }
            RedoOp::PutChange {
                revision,
                seq,
                change,
            } => {
                self.changes
                    .insert((revision, seq), Bytes::copy_from_slice(change));
            }
            RedoOp::DropChangesThrough { through } => {
                self.changes = self.changes.split_off(&(through.saturating_add(1), 0));
                self.dropped_through = self.dropped_through.max(through);
            }
        }
    }
}

impl Overlay {
    /// Makes one commit's redo record visible to readers. All or nothing: a malformed record
    /// (which the writer never makes) changes nothing.
    pub(super) fn apply(&self, redo: &[u8], path: &Path) -> Result<(), StateError> {
        let mut ops = Vec::new();
        for_each_op(redo, path, |op| {
            ops.push(op);
            Ok(())
        })?;
        let mut layer = self.layer.write();
        for op in ops {
            layer.apply(op);
        }
        Ok(())
    }

    /// Forgets everything: the file now shows it. The maps are freed after the lock is let go.
    pub(super) fn clear(&self) {
        let old = std::mem::take(&mut *self.layer.write());
        drop(old);
    }

    /// The record the overlay holds for `key`: `Some(None)` if it deleted the key, `None` if
    /// the file's snapshot decides; with that snapshot, begun under the same lock, when needed.
    pub(super) fn get(
        &self,
        db: &Database,
        path: &Path,
        key: &str,
    ) -> Result<Result<Option<Bytes>, ReadTransaction>, StateError> {
        let layer = self.layer.read();
        if let Some(held) = layer.items.get(key) {
            return Ok(Ok(held.clone()));
        }
        begin_read(db, path).map(Err)
    }

    /// Runs `f` over the overlay and returns what it took together with a redb read
    /// transaction begun under the same lock: one consistent state.
    pub(super) fn read<T>(
        &self,
        db: &Database,
        path: &Path,
        f: impl FnOnce(&Layer) -> T,
    ) -> Result<(T, ReadTransaction), StateError> {
        let layer = self.layer.read();
        let taken = f(&layer);
        let txn = begin_read(db, path)?;
        Ok((taken, txn))
    }
}

fn begin_read(db: &Database, path: &Path) -> Result<ReadTransaction, StateError> {
    db.begin_read()
        .map_err(|e| op_error(path, "begin a read transaction on", e))
}

/// Merges the file's entries (in key order) with the overlay's (in key order, `None` for a
/// delete): the overlay's entry wins for a key both hold, and its deletes hide the file's.
pub(super) fn merge<E>(
    file: impl Iterator<Item = Result<(String, Bytes), E>>,
    overlay: Vec<(String, Option<Bytes>)>,
) -> impl Iterator<Item = Result<(String, Bytes), E>> {
    Merge {
        file: file.peekable(),
        overlay: overlay.into_iter().peekable(),
    }
}

struct Merge<F: Iterator, O: Iterator> {
    file: std::iter::Peekable<F>,
    overlay: std::iter::Peekable<O>,
}

impl<E, F, O> Iterator for Merge<F, O>
where
    F: Iterator<Item = Result<(String, Bytes), E>>,
    O: Iterator<Item = (String, Option<Bytes>)>,
{
    type Item = Result<(String, Bytes), E>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.file.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => std::cmp::Ordering::Less,
                (Some(Ok((f, _))), Some((o, _))) => f.as_str().cmp(o.as_str()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => return self.file.next(),
                std::cmp::Ordering::Equal => {
                    self.file.next();
                }
                std::cmp::Ordering::Greater => {}
            }
            if let Some((key, Some(record))) = self.overlay.next() {
                return Some(Ok((key, record)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str)]) -> impl Iterator<Item = Result<(String, Bytes), ()>> {
        entries
            .iter()
            .map(|(k, v)| Ok((k.to_string(), Bytes::from(v.to_string()))))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn merge_prefers_the_overlay_and_hides_its_deletes() {
        let overlay = vec![
            ("a".to_string(), Some(Bytes::from_static(b"A2"))),
            ("b".to_string(), None),
            ("c".to_string(), Some(Bytes::from_static(b"C"))),
            ("z".to_string(), None),
        ];
        let merged: Vec<(String, Bytes)> =
            merge(file(&[("a", "A1"), ("b", "B"), ("d", "D")]), overlay)
                .collect::<Result<_, ()>>()
                .unwrap();
        let got: Vec<(&str, &[u8])> = merged.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        assert_eq!(
            got,
            vec![("a", &b"A2"[..]), ("c", &b"C"[..]), ("d", &b"D"[..])]
        );
    }

    #[test]
    fn merge_passes_file_errors_on() {
        let failing = vec![Err(()), Ok(("b".to_string(), Bytes::new()))].into_iter();
        let merged: Vec<_> = merge(failing, vec![("a".to_string(), None)]).collect();
        assert_eq!(merged.len(), 2);
        assert!(merged[0].is_err());
    }
}
