//! Reads from a snapshot: single and bulk gets, key listings, and the live items a query runs
//! over. Each call sees one consistent state: the [`Overlay`] of writes the file does not show
//! yet, over one redb read transaction.

use std::ops::Bound;
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use redb::{Database, ReadOnlyTable, ReadTransaction, TableError};

use super::errors::{corrupt, op_error};
use super::overlay::{self, Overlay};
use super::record::{self, Record};
use super::tables::ITEMS;
use crate::error::StateError;
use crate::etag;
use crate::keys;
use crate::like::LikePattern;
use crate::store::{Item, KeyPage, Page};
use crate::ttl;

/// The items table of a read transaction (`None` if the file has none yet).
pub(super) fn items_table(
    txn: &ReadTransaction,
    path: &Path,
) -> Result<Option<ReadOnlyTable<&'static str, &'static [u8]>>, StateError> {
    match txn.open_table(ITEMS) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(op_error(path, "open the items table of", e)),
    }
}

/// The clock reading reads compare deadlines with.
fn now_ms() -> u64 {
    ttl::to_unix_millis(SystemTime::now())
}

/// An item from its record.
fn item(r: &Record<'_>) -> Item {
    Item {
        value: Bytes::copy_from_slice(r.value),
        etag: r.version.to_string(),
        expires_at: r.expires_ms.map(ttl::from_unix_millis),
    }
}

/// The live item a raw record at `key` holds.
fn live_record(
    path: &Path,
    key: &str,
    raw: &[u8],
    now_ms: u64,
) -> Result<Option<Item>, StateError> {
    let r = record::decode(raw).map_err(|e| corrupt(path, key, e))?;
    Ok(r.live(now_ms).then(|| item(&r)))
}

/// The live item at `key` in `table`.
fn live_item(
    table: &ReadOnlyTable<&'static str, &'static [u8]>,
    path: &Path,
    key: &str,
    now_ms: u64,
) -> Result<Option<Item>, StateError> {
    match table.get(key).map_err(|e| op_error(path, "read from", e))? {
        Some(guard) => live_record(path, key, guard.value(), now_ms),
        None => Ok(None),
    }
}

/// The live item at `key`: the overlay's record if it holds one, else the file's.
pub(super) fn get(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
    key: &str,
) -> Result<Option<Item>, StateError> {
    match overlay.get(db, path, key)? {
        Ok(Some(raw)) => live_record(path, key, &raw, now_ms()),
        Ok(None) => Ok(None),
        Err(txn) => match items_table(&txn, path)? {
            Some(table) => live_item(&table, path, key, now_ms()),
            None => Ok(None),
        },
    }
}

/// The live items at `keys`, one result per key, from one consistent state.
pub(super) fn bulk_get(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
    keys: &[String],
) -> Vec<Result<Option<Item>, StateError>> {
    let read = overlay.read(db, path, |layer| {
        keys.iter()
            .map(|k| layer.items.get(k).cloned())
            .collect::<Vec<_>>()
    });
    let table = read.and_then(|(held, txn)| Ok((held, items_table(&txn, path)?)));
    let (held, table) = match table {
        Ok(read) => read,
        Err(e) => {
            return keys
                .iter()
                .map(|_| Err(e.replicate(super::errors::BACKEND)))
                .collect()
        }
    };
    let now = now_ms();
    keys.iter()
        .zip(held)
        .map(|(key, held)| {
            etag::check_key(key)?;
            match (held, &table) {
                (Some(Some(raw)), _) => live_record(path, key, &raw, now),
                (Some(None), _) | (None, None) => Ok(None),
                (None, Some(table)) => live_item(table, path, key, now),
            }
        })
        .collect()
}

/// The file's entries of `table` from `start` on, as owned pairs.
fn file_entries<'a>(
    table: &'a ReadOnlyTable<&'static str, &'static [u8]>,
    path: &'a Path,
    start: Bound<&str>,
) -> Result<impl Iterator<Item = Result<(String, Bytes), StateError>> + 'a, StateError> {
    let range = table
        .range::<&str>((start, Bound::Unbounded))
        .map_err(|e| op_error(path, "scan", e))?;
    Ok(range.map(move |entry| {
        let (key, raw) = entry.map_err(|e| op_error(path, "scan", e))?;
        Ok((key.value().to_string(), Bytes::copy_from_slice(raw.value())))
    }))
}

/// The entries of `table` (if the file has it) from `start` on while keys pass `keep`, with the
/// overlay's `held` entries of that range merged over them.
pub(super) fn merged<'a>(
    table: Option<&'a ReadOnlyTable<&'static str, &'static [u8]>>,
    path: &'a Path,
    start: Bound<&str>,
    keep: impl Fn(&str) -> bool + 'a,
    held: Vec<(String, Option<Bytes>)>,
) -> Result<impl Iterator<Item = Result<(String, Bytes), StateError>> + 'a, StateError> {
    let file: Box<dyn Iterator<Item = Result<(String, Bytes), StateError>>> = match table {
        Some(table) => Box::new(file_entries(table, path, start)?),
        None => Box::new(std::iter::empty()),
    };
    let file = file.take_while(move |e| e.as_ref().map_or(true, |(k, _)| keep(k)));
    Ok(overlay::merge(file, held))
}

/// Every entry from `start` on while keys pass `keep`, the overlay's merged over the file's;
/// `visit` is called with each in key order until it returns false.
pub(super) fn scan(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
    start: Bound<&str>,
    keep: impl Fn(&str) -> bool,
    mut visit: impl FnMut(&str, &[u8]) -> Result<bool, StateError>,
) -> Result<(), StateError> {
    let (held, txn) = overlay.read(db, path, |layer| layer.items_from(start, &keep))?;
    let table = items_table(&txn, path)?;
    for entry in merged(table.as_ref(), path, start, keep, held)? {
        let (key, raw) = entry?;
        if !visit(&key, &raw)? {
            break;
        }
    }
    Ok(())
}

/// One page of the live keys matching the LIKE `pattern`, in ascending order: a range scan from
/// the pattern's literal prefix (or the page token, if later) that stops at the first key without
/// that prefix.
pub(super) fn keys(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
    pattern: &str,
    page: &Page,
) -> Result<KeyPage, StateError> {
    let like = LikePattern::new(pattern);
    let prefix = like.literal_prefix();
    let limit = keys::page_limit(page);
    let start = match keys::resume_after(page).filter(|t| *t >= prefix.as_str()) {
        Some(after) => Bound::Excluded(after),
        None => Bound::Included(prefix.as_str()),
    };
    let now = now_ms();
    let mut found = Vec::new();
    scan(
        db,
        path,
        overlay,
        start,
        |k| k.starts_with(&prefix),
        |key, raw| {
            if like.matches(key) {
                let r = record::decode(raw).map_err(|e| corrupt(path, key, e))?;
                if r.live(now) {
                    found.push(key.to_string());
                }
            }
            Ok(found.len() <= limit)
        },
    )?;
    Ok(keys::collect_page(found.into_iter(), limit))
}

/// Every live item whose value could be a JSON object (its first non-blank byte is `{`): the
/// ones a query may find.
pub(super) fn object_items(
    db: &Database,
    path: &Path,
    overlay: &Overlay,
) -> Result<Vec<(String, Item)>, StateError> {
    let now = now_ms();
    let mut out = Vec::new();
    scan(
        db,
        path,
        overlay,
        Bound::Unbounded,
        |_| true,
        |key, raw| {
            let r = record::decode(raw).map_err(|e| corrupt(path, key, e))?;
            let object = r
                .value
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{');
            if object && r.live(now) {
                out.push((key.to_string(), item(&r)));
            }
            Ok(true)
        },
    )?;
    Ok(out)
}
