//! The data a change feed hands out: changes, snapshots, pages of history, and the retention
//! that bounds the history.

use std::time::Duration;

use bytes::Bytes;

/// What a change did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// The key was written (created or overwritten).
    Put,
    /// The key was deleted (explicitly, by prefix, by TTL expiry or by its session ending).
    Delete,
}

impl Op {
    /// `"put"` or `"delete"`, for logs and wire formats.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
}

/// One committed change of one key.
///
/// Every change of one committed write or transaction carries the same `revision`; revisions
/// strictly increase from one commit to the next (they need not be contiguous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The revision of the commit that made the change.
    pub revision: u64,
    /// The key.
    pub key: String,
    /// Put or delete.
    pub op: Op,
    /// The new value (`None` for a delete).
    pub value: Option<Bytes>,
    /// The live value before the change, if there was one.
    pub prev_value: Option<Bytes>,
}

/// One live key and its value in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Bytes,
}

/// Every live key under some prefixes, read consistently at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The revision the snapshot was read at: it reflects every commit up to and including it
    /// and none after.
    pub revision: u64,
    /// The entries, in ascending key order, each key once (even under overlapping prefixes).
    pub entries: Vec<KeyValue>,
}

/// One page of history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangePage {
    /// Changes in revision order (and, within a revision, in the order the commit applied them).
    /// A page always holds whole revisions, so it may exceed the limit asked for to finish the
    /// last one.
    pub changes: Vec<Change>,
    /// The revision to ask after next time: that of the last change in the page, or the `after`
    /// asked with when the page is empty.
    pub last_revision: u64,
}

/// The answer to [`super::ChangeFeed::changes_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangesAfter {
    /// The changes after the revision asked (possibly none yet).
    Changes(ChangePage),
    /// History after the revision asked is no longer complete: changes up to and including
    /// `oldest` were compacted away. `oldest` is the smallest `after` the feed can still serve;
    /// a watcher must resync.
    Compacted {
        /// The smallest revision the feed can still serve changes after.
        oldest: u64,
    },
}

/// How much history a feed keeps. Whole revisions are dropped, oldest first, once either bound
/// is exceeded; a watcher that falls further behind gets [`ChangesAfter::Compacted`] and resyncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Most changes kept (`None`: no bound by count).
    pub max_changes: Option<usize>,
    /// Oldest change kept (`None`: no bound by age).
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Default bound by count: enough for a watcher to be a few seconds behind a busy store.
    pub const DEFAULT_MAX_CHANGES: usize = 100_000;

    /// Keep everything (tests; stores that are compacted by hand).
    pub fn unbounded() -> Self {
        Retention {
            max_changes: None,
            max_age: None,
        }
    }
}

impl Default for Retention {
    /// At most [`Retention::DEFAULT_MAX_CHANGES`] changes and one hour.
    fn default() -> Self {
        Retention {
            max_changes: Some(Self::DEFAULT_MAX_CHANGES),
            max_age: Some(Duration::from_secs(3600)),
        }
    }
}

/// True if `key` falls under any of `prefixes` (the empty prefix matches every key).
pub fn matches_any(prefixes: &[String], key: &str) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

/// `prefixes` without duplicates and without prefixes covered by a shorter one, sorted: reading
/// each of them once gives every key under any of them exactly once.
pub fn normalize_prefixes(prefixes: &[String]) -> Vec<String> {
    let mut sorted: Vec<String> = prefixes.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<String> = Vec::with_capacity(sorted.len());
    for p in sorted {
        // Sorted order puts a prefix right before the strings it covers.
        if out.last().is_some_and(|q| p.starts_with(q.as_str())) {
            continue;
        }
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_drops_covered_prefixes() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize_prefixes(&p(&["a/b/", "a/", "c", "a/", "cd"])),
            p(&["a/", "c"])
        );
        assert_eq!(normalize_prefixes(&p(&["x", ""])), p(&[""]));
        assert!(matches_any(&p(&["a/", "b"]), "bz"));
        assert!(!matches_any(&p(&["a/"]), "b"));
    }
}
