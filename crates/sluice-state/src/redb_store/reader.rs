//! Reads from a snapshot: single and bulk gets, key listings, and the live items a query runs
//! over. Each call is one redb read transaction, so it sees one consistent state.

use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableError};

use super::errors::{corrupt, op_error};
use super::record::{self, Record};
use super::tables::ITEMS;
use crate::error::StateError;
use crate::etag;
use crate::keys;
use crate::like::LikePattern;
use crate::store::{Item, KeyPage, Page};
use crate::ttl;

/// The items table of a fresh read transaction (`None` if the file has none yet); the table
/// keeps the transaction's snapshot alive.
struct Snapshot {
    items: Option<ReadOnlyTable<&'static str, &'static [u8]>>,
}

impl Snapshot {
    fn begin(db: &Database, path: &Path) -> Result<Snapshot, StateError> {
        let txn = db
            .begin_read()
            .map_err(|e| op_error(path, "begin a read transaction on", e))?;
        let items = match txn.open_table(ITEMS) {
            Ok(table) => Some(table),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(op_error(path, "open the items table of", e)),
        };
        Ok(Snapshot { items })
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

/// The live item at `key` in `table`.
fn live_item(
    table: &ReadOnlyTable<&'static str, &'static [u8]>,
    path: &Path,
    key: &str,
    now_ms: u64,
) -> Result<Option<Item>, StateError> {
    let Some(guard) = table.get(key).map_err(|e| op_error(path, "read from", e))? else {
        return Ok(None);
    };
    let r = record::decode(guard.value()).map_err(|e| corrupt(path, key, e))?;
    Ok(r.live(now_ms).then(|| item(&r)))
}

/// The live item at `key`.
pub(super) fn get(db: &Database, path: &Path, key: &str) -> Result<Option<Item>, StateError> {
    let snap = Snapshot::begin(db, path)?;
    match &snap.items {
        Some(table) => live_item(table, path, key, now_ms()),
        None => Ok(None),
    }
}

/// The live items at `keys`, one result per key, from one snapshot.
pub(super) fn bulk_get(
    db: &Database,
    path: &Path,
    keys: &[String],
) -> Vec<Result<Option<Item>, StateError>> {
    let snap = match Snapshot::begin(db, path) {
        Ok(snap) => snap,
        Err(e) => {
            return keys
                .iter()
                .map(|_| Err(e.replicate(super::errors::BACKEND)))
                .collect()
        }
    };
    let now = now_ms();
    keys.iter()
        .map(|key| {
            etag::check_key(key)?;
            match &snap.items {
                Some(table) => live_item(table, path, key, now),
                None => Ok(None),
            }
        })
        .collect()
}

/// One page of the live keys matching the LIKE `pattern`, in ascending order: a range scan from
/// the pattern's literal prefix (or the page token, if later) that stops at the first key without
/// that prefix.
pub(super) fn keys(
    db: &Database,
    path: &Path,
    pattern: &str,
    page: &Page,
) -> Result<KeyPage, StateError> {
    let like = LikePattern::new(pattern);
    let prefix = like.literal_prefix();
    let limit = keys::page_limit(page);
    let snap = Snapshot::begin(db, path)?;
    let Some(table) = &snap.items else {
        return Ok(KeyPage::default());
    };
    let after = keys::resume_after(page).filter(|t| *t >= prefix.as_str());
    let range = match after {
        Some(after) => {
            table.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        }
        None => table.range::<&str>(prefix.as_str()..),
    }
    .map_err(|e| op_error(path, "scan", e))?;
    let now = now_ms();
    let mut found = Vec::new();
    for entry in range {
        let (key, raw) = entry.map_err(|e| op_error(path, "scan", e))?;
        let key = key.value();
        if !key.starts_with(&prefix) {
            break;
        }
        if !like.matches(key) {
            continue;
        }
        let r = record::decode(raw.value()).map_err(|e| corrupt(path, key, e))?;
        if r.live(now) {
            found.push(key.to_string());
            if found.len() > limit {
                break;
            }
        }
    }
    Ok(keys::collect_page(found.into_iter(), limit))
}

/// Every live item whose value could be a JSON object (its first non-blank byte is `{`): the
/// ones a query may find.
pub(super) fn object_items(db: &Database, path: &Path) -> Result<Vec<(String, Item)>, StateError> {
    let snap = Snapshot::begin(db, path)?;
    let Some(table) = &snap.items else {
        return Ok(Vec::new());
    };
    let now = now_ms();
    let mut out = Vec::new();
    for entry in table.iter().map_err(|e| op_error(path, "scan", e))? {
        let (key, raw) = entry.map_err(|e| op_error(path, "scan", e))?;
        let key = key.value();
        let r = record::decode(raw.value()).map_err(|e| corrupt(path, key, e))?;
        let object = r
            .value
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        if object && r.live(now) {
            out.push((key.to_string(), item(&r)));
        }
    }
    Ok(out)
}
