//! The change history in the file: the on-disk form of a change, and reading history and
//! snapshots from one read transaction (so a page or snapshot sees one consistent state).
//!
//! Record: op (`0` put, `1` delete), commit time (little-endian `u64`, milliseconds since the
//! Unix epoch, for age retention), then three length-prefixed (`u32` little-endian) fields —
//! key, value, previous value — each length `u32::MAX` when the field is absent.

use std::ops::Bound;
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use redb::{Database, TableError};

use super::errors::{backend_error, corrupt, op_error};
use super::overlay::Overlay;
use super::tables::{CHANGES, COMPACTED_THROUGH, LAST_VERSION, META};
use super::{reader, record};
use crate::error::StateError;
use crate::ttl;
use crate::watch::{normalize_prefixes, Change, ChangePage, ChangesAfter, KeyValue, Op, Snapshot};

/// Marks an absent field.
const ABSENT: u32 = u32::MAX;

/// The record [`encode_into`] appends, in a buffer of its own.
#[cfg(test)]
pub(super) fn encode(change: &Change, at_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(change));
    encode_into(change, at_ms, &mut out);
    out
}

/// The length of the record of `change`.
fn encoded_len(change: &Change) -> usize {
    1 + 8
        + 12
        + change.key.len()
        + change.value.as_ref().map_or(0, Bytes::len)
        + change.prev_value.as_ref().map_or(0, Bytes::len)
}

/// Appends the record of one change recorded at `at_ms` to `out`.
pub(super) fn encode_into(change: &Change, at_ms: u64, out: &mut Vec<u8>) {
    out.reserve(encoded_len(change));
    out.push(match change.op {
        Op::Put => 0,
        Op::Delete => 1,
    });
    out.extend_from_slice(&at_ms.to_le_bytes());
    let mut field = |f: Option<&[u8]>| match f {
        Some(b) => {
            // Keys and values are far below 4 GiB (redb's own limit on a value).
            let len = u32::try_from(b.len()).unwrap_or(ABSENT - 1);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    };
    field(Some(change.key.as_bytes()));
    field(change.value.as_deref());
    field(change.prev_value.as_deref());
}

/// Why a change record does not decode.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChangeDecodeError {
    /// Shorter than its fields say.
    #[error("change record truncated")]
    Truncated,
    /// An unknown op.
    #[error("unknown change op {0}")]
    UnknownOp(u8),
    /// A key that is not UTF-8 or absent.
    #[error("change record with a bad key")]
    BadKey,
}

/// Decodes a change record at `revision`; also returns its commit time.
pub(super) fn decode(revision: u64, raw: &[u8]) -> Result<(Change, u64), ChangeDecodeError> {
    let (&op, rest) = raw.split_first().ok_or(ChangeDecodeError::Truncated)?;
    let op = match op {
        0 => Op::Put,
        1 => Op::Delete,
        other => return Err(ChangeDecodeError::UnknownOp(other)),
    };
    let (at, mut rest) = rest
        .split_first_chunk::<8>()
        .ok_or(ChangeDecodeError::Truncated)?;
    let mut field = || -> Result<Option<&[u8]>, ChangeDecodeError> {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or(ChangeDecodeError::Truncated)?;
        let len = u32::from_le_bytes(*len);
        if len == ABSENT {
            rest = after;
            return Ok(None);
        }
        let len = len as usize;
        if after.len() < len {
            return Err(ChangeDecodeError::Truncated);
        }
        let (f, after) = after.split_at(len);
        rest = after;
        Ok(Some(f))
    };
    let key = field()?
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or(ChangeDecodeError::BadKey)?
        .to_string();
    let value = field()?.map(Bytes::copy_from_slice);
    let prev_value = field()?.map(Bytes::copy_from_slice);
    Ok((
        Change {
            revision,
            key,
            op,
            value,
            prev_value,
        },
        u64::from_le_bytes(*at),
    ))
}

/// A `meta` counter from a read transaction (0 if absent).
fn meta(txn: &redb::ReadTransaction, path: &Path, name: &str) -> Result<u64, StateError> {
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(op_error(path, "open the meta table of", e)),
    };
    Ok(table
        .get(name)
        .map_err(|e| op_error(path, "read the counters of", e))?
        .map_or(0, |g| g.value()))
}

/// A counter: the overlay's if it holds one, else the file's.
fn counter(
    held: Option<u64>,
    txn: &redb::ReadTransaction,
    path: &Path,
    name: &str,
) -> Result<u64, StateError> {
    match held {
        Some(value) => Ok(value),
        None => meta(txn, path, name),
    }
}

/// The latest revision.
pub(super) fn current_revision(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
) -> Result<u64, StateError> {
    let (held, txn) = overlay.read(db, path, |l| l.counter(LAST_VERSION))?;
    counter(held, &txn, path, LAST_VERSION)
}

/// What [`changes_after`] takes from the overlay.
struct HeldHistory {
    compacted: Option<u64>,
    last: Option<u64>,
    dropped_through: u64,
    changes: Vec<((u64, u32), Bytes)>,
}

/// Changes after `after`, about `limit`, whole revisions; or `Compacted`.
pub(super) fn changes_after(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
    after: u64,
    limit: usize,
) -> Result<ChangesAfter, StateError> {
    let start = after.saturating_add(1);
    let (held, txn) = overlay.read(db, path, |l| HeldHistory {
        compacted: l.counter(COMPACTED_THROUGH),
        last: l.counter(LAST_VERSION),
        dropped_through: l.dropped_through,
        changes: l
            .changes
            .range((start, 0)..)
            .map(|(k, v)| (*k, v.clone()))
            .collect(),
    })?;
    let compacted = counter(held.compacted, &txn, path, COMPACTED_THROUGH)?;
    let last = counter(held.last, &txn, path, LAST_VERSION)?;
    if after < compacted || after > last {
        return Ok(ChangesAfter::Compacted { oldest: compacted });
    }
    let table = txn
        .open_table(CHANGES)
        .map_err(|e| op_error(path, "open the changes table of", e))?;
    let range = table
        .range((start.max(held.dropped_through.saturating_add(1)), 0)..)
        .map_err(|e| op_error(path, "scan the changes of", e))?;
    // The overlay's changes come after the file's; the file may already hold them too (it was
    // committed, the overlay not yet emptied), and then they are read from the overlay.
    let first_held = held.changes.first().map(|(k, _)| *k);
    let file = range
        .map(|entry| {
            let (k, v) = entry.map_err(|e| op_error(path, "scan the changes of", e))?;
            Ok((k.value(), Bytes::copy_from_slice(v.value())))
        })
        .take_while(|e: &Result<_, StateError>| {
            e.as_ref()
                .map_or(true, |(k, _)| first_held.is_none_or(|first| *k < first))
        });
    let mut changes: Vec<Change> = Vec::new();
    for entry in file.chain(held.changes.into_iter().map(Ok)) {
        let ((revision, _), raw) = entry?;
        if changes.len() >= limit.max(1) && changes.last().is_some_and(|c| c.revision != revision) {
            break;
        }
        let (change, _) = decode(revision, &raw).map_err(|e| {
            backend_error(format!(
                "{} holds a bad change record at revision {revision}: {e}",
                path.display()
            ))
        })?;
        changes.push(change);
    }
    let last_revision = changes.last().map_or(after, |c| c.revision);
    Ok(ChangesAfter::Changes(ChangePage {
        changes,
        last_revision,
    }))
}

/// Every live item under `prefixes`, with the revision, from one consistent state.
pub(super) fn snapshot(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
    prefixes: &[String],
) -> Result<Snapshot, StateError> {
    let now_ms = ttl::to_unix_millis(SystemTime::now());
    let prefixes = normalize_prefixes(prefixes);
    let (held, txn) = overlay.read(db, path, |l| {
        let items = prefixes
            .iter()
            .map(|p| l.items_from(Bound::Included(p.as_str()), |k| k.starts_with(p.as_str())))
            .collect::<Vec<_>>();
        (l.counter(LAST_VERSION), items)
    })?;
    let (held_revision, held_items) = held;
    let revision = counter(held_revision, &txn, path, LAST_VERSION)?;
    let table = reader::items_table(&txn, path)?;
    let mut entries = Vec::new();
    for (prefix, held) in prefixes.iter().zip(held_items) {
        let start = Bound::Included(prefix.as_str());
        let keep = |k: &str| k.starts_with(prefix.as_str());
        for entry in reader::merged(table.as_ref(), path, start, keep, held)? {
            let (key, raw) = entry?;
            let r = record::decode(&raw).map_err(|e| corrupt(path, &key, e))?;
            if r.live(now_ms) {
                entries.push(KeyValue {
                    value: Bytes::copy_from_slice(r.value),
                    key,
                });
            }
        }
    }
    Ok(Snapshot { revision, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_changes() {
        for (op, value, prev) in [
            (Op::Put, Some(Bytes::from_static(b"v")), None),
            (
                Op::Put,
                Some(Bytes::new()),
                Some(Bytes::from_static(b"\x00old")),
            ),
            (Op::Delete, None, Some(Bytes::from_static(b"gone"))),
            (Op::Delete, None, None),
        ] {
            let c = Change {
                revision: 9,
                key: "k/é".into(),
                op,
                value,
                prev_value: prev,
            };
            let raw = encode(&c, 1234);
            assert_eq!(decode(9, &raw).unwrap(), (c, 1234));
            assert!(decode(9, &raw[..raw.len() - 1]).is_err());
        }
        assert!(matches!(
            decode(1, &[7]),
            Err(ChangeDecodeError::UnknownOp(7))
        ));
    }
}
