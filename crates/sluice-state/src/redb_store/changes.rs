//! The change history in the file: the on-disk form of a change, and reading history and
//! snapshots from one read transaction (so a page or snapshot sees one consistent state).
//!
//! Record: op (`0` put, `1` delete), commit time (little-endian `u64`, milliseconds since the
//! Unix epoch, for age retention), then three length-prefixed (`u32` little-endian) fields —
//! key, value, previous value — each length `u32::MAX` when the field is absent.

use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, TableError};

use super::errors::{backend_error, corrupt, op_error};
use super::record;
use super::tables::{CHANGES, COMPACTED_THROUGH, ITEMS, LAST_VERSION, META};
use crate::error::StateError;
use crate::ttl;
use crate::watch::{normalize_prefixes, Change, ChangePage, ChangesAfter, KeyValue, Op, Snapshot};

/// Marks an absent field.
const ABSENT: u32 = u32::MAX;

/// Encodes one change recorded at `at_ms`.
pub(super) fn encode(change: &Change, at_ms: u64) -> Vec<u8> {
    let size = 1
        + 8
        + 12
        + change.key.len()
        + change.value.as_ref().map_or(0, Bytes::len)
        + change.prev_value.as_ref().map_or(0, Bytes::len);
    let mut out = Vec::with_capacity(size);
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
    out
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

/// The latest revision.
pub(super) fn current_revision(db: &Database, path: &Path) -> Result<u64, StateError> {
    let txn = db
        .begin_read()
        .map_err(|e| op_error(path, "begin a read transaction on", e))?;
    meta(&txn, path, LAST_VERSION)
}

/// Changes after `after`, about `limit`, whole revisions; or `Compacted`.
pub(super) fn changes_after(
    db: &Database,
    path: &Path,
    after: u64,
    limit: usize,
) -> Result<ChangesAfter, StateError> {
    let txn = db
        .begin_read()
        .map_err(|e| op_error(path, "begin a read transaction on", e))?;
    let compacted = meta(&txn, path, COMPACTED_THROUGH)?;
    let last = meta(&txn, path, LAST_VERSION)?;
    if after < compacted || after > last {
        return Ok(ChangesAfter::Compacted { oldest: compacted });
    }
    let table = txn
        .open_table(CHANGES)
        .map_err(|e| op_error(path, "open the changes table of", e))?;
    let start = after.saturating_add(1);
    let range = table
        .range((start, 0)..)
        .map_err(|e| op_error(path, "scan the changes of", e))?;
    let mut changes: Vec<Change> = Vec::new();
    for entry in range {
        let (k, v) = entry.map_err(|e| op_error(path, "scan the changes of", e))?;
        let (revision, _) = k.value();
        if changes.len() >= limit.max(1) && changes.last().is_some_and(|c| c.revision != revision) {
            break;
        }
        let (change, _) = decode(revision, v.value()).map_err(|e| {
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

/// Every live item under `prefixes`, with the revision, from one read transaction.
pub(super) fn snapshot(
    db: &Database,
    path: &Path,
    prefixes: &[String],
) -> Result<Snapshot, StateError> {
    let txn = db
        .begin_read()
        .map_err(|e| op_error(path, "begin a read transaction on", e))?;
    let revision = meta(&txn, path, LAST_VERSION)?;
    let table = match txn.open_table(ITEMS) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => {
            return Ok(Snapshot {
                revision,
                entries: Vec::new(),
            })
        }
        Err(e) => return Err(op_error(path, "open the items table of", e)),
    };
    let now_ms = ttl::to_unix_millis(SystemTime::now());
    let mut entries = Vec::new();
    for prefix in normalize_prefixes(prefixes) {
        let range = table
            .range(prefix.as_str()..)
            .map_err(|e| op_error(path, "scan", e))?;
        for entry in range {
            let (k, v) = entry.map_err(|e| op_error(path, "scan", e))?;
            let key = k.value();
            if !key.starts_with(prefix.as_str()) {
                break;
            }
            let r = record::decode(v.value()).map_err(|e| corrupt(path, key, e))?;
            if r.live(now_ms) {
                entries.push(KeyValue {
                    key: key.to_string(),
                    value: Bytes::copy_from_slice(r.value),
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
