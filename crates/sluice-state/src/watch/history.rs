//! An in-memory change history with retention: what the memory backend keeps under its lock,
//! and a building block for any backend that serves recent history from memory.

use std::collections::VecDeque;
use std::time::Instant;

use super::types::{Change, ChangePage, ChangesAfter, Retention};

/// A change and when it was recorded.
#[derive(Debug)]
struct Recorded {
    change: Change,
    at: Instant,
}

/// Changes in revision order, whole revisions dropped oldest first by [`Retention`] or by
/// [`History::compact_through`].
#[derive(Debug)]
pub struct History {
    changes: VecDeque<Recorded>,
    /// Every revision ≤ this is gone (or was never recorded here).
    compacted_through: u64,
    /// The latest revision appended (or the one the history started at).
    last_revision: u64,
    retention: Retention,
}

impl History {
    /// An empty history that starts after `current_revision`: changes up to it are unknown, so a
    /// request for them answers [`ChangesAfter::Compacted`].
    pub fn new(retention: Retention, current_revision: u64) -> Self {
        History {
            changes: VecDeque::new(),
            compacted_through: current_revision,
            last_revision: current_revision,
            retention,
        }
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Changes the retention (applied at the next append or [`History::expire`]).
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    /// The latest revision appended.
    pub fn last_revision(&self) -> u64 {
        self.last_revision
    }

    /// The smallest `after` still served.
    pub fn oldest(&self) -> u64 {
        self.compacted_through
    }

    /// How many changes are held.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// True if no change is held.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Records the changes of one commit at `revision` (above every earlier one; a lower one is
    /// a caller bug and is dropped with a log line), then enforces the count bound.
    pub fn append(&mut self, revision: u64, changes: impl IntoIterator<Item = Change>) {
        if revision <= self.last_revision {
            tracing::error!(
                revision,
                last = self.last_revision,
                "change history got a revision out of order; dropping it"
            );
            return;
        }
        let at = Instant::now();
        for mut change in changes {
            change.revision = revision;
            self.changes.push_back(Recorded { change, at });
        }
        self.last_revision = revision;
        if let Some(max) = self.retention.max_changes {
            while self.changes.len() > max {
                self.drop_oldest_revision();
            }
        }
        self.expire(at);
    }

    /// Drops the revisions older than the age bound at `now`.
    pub fn expire(&mut self, now: Instant) {
        let Some(age) = self.retention.max_age else {
            return;
        };
        while self
            .changes
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.at) > age)
        {
            self.drop_oldest_revision();
        }
    }

    /// Drops every change with a revision ≤ `through` (clamped to the latest); returns the
    /// smallest `after` now served.
    pub fn compact_through(&mut self, through: u64) -> u64 {
        let through = through.min(self.last_revision);
        while self
            .changes
            .front()
            .is_some_and(|r| r.change.revision <= through)
        {
            self.changes.pop_front();
        }
        self.compacted_through = self.compacted_through.max(through);
        self.compacted_through
    }

    fn drop_oldest_revision(&mut self) {
        if let Some(first) = self.changes.front().map(|r| r.change.revision) {
            self.compact_through(first);
        }
    }

    /// The changes after `after`: about `limit` of them, whole revisions; or
    /// [`ChangesAfter::Compacted`] if some were dropped — or if `after` is beyond the latest
    /// revision (a position from another store's life cannot be served either).
    pub fn changes_after(&self, after: u64, limit: usize) -> ChangesAfter {
        if after < self.compacted_through || after > self.last_revision {
            return ChangesAfter::Compacted {
                oldest: self.compacted_through,
            };
        }
        let start = self.changes.partition_point(|r| r.change.revision <= after);
        let mut changes: Vec<Change> = Vec::with_capacity(limit.min(self.changes.len() - start));
        let mut iter = self.changes.range(start..);
        for r in iter.by_ref().take(limit.max(1)) {
            changes.push(r.change.clone());
        }
        if let Some(last) = changes.last().map(|c| c.revision) {
            for r in iter.take_while(|r| r.change.revision == last) {
                changes.push(r.change.clone());
            }
        }
        let last_revision = changes.last().map_or(after, |c| c.revision);
        ChangesAfter::Changes(ChangePage {
            changes,
            last_revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::types::Op;
    use super::*;

    fn put(key: &str) -> Change {
        Change {
            revision: 0,
            key: key.to_string(),
            op: Op::Put,
            value: Some(bytes::Bytes::from_static(b"v")),
            prev_value: None,
        }
    }

    fn page(h: &History, after: u64, limit: usize) -> Vec<(u64, String)> {
        match h.changes_after(after, limit) {
            ChangesAfter::Changes(p) => {
                p.changes.into_iter().map(|c| (c.revision, c.key)).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pages_hold_whole_revisions() {
        let mut h = History::new(Retention::unbounded(), 0);
        h.append(1, [put("a")]);
        h.append(3, [put("b"), put("c"), put("d")]);
        h.append(4, [put("e")]);
        assert_eq!(page(&h, 0, 2).len(), 4, "finishes revision 3");
        assert_eq!(page(&h, 1, 1).len(), 3);
        assert_eq!(page(&h, 3, 10), vec![(4, "e".to_string())]);
        assert!(page(&h, 4, 10).is_empty());
        assert!(matches!(
            h.changes_after(5, 10),
            ChangesAfter::Compacted { .. }
        ));
    }

    #[test]
    fn retention_drops_whole_revisions_and_reports_compaction() {
        let mut h = History::new(
            Retention {
                max_changes: Some(3),
                max_age: None,
            },
            0,
        );
        h.append(1, [put("a"), put("b")]);
        h.append(2, [put("c"), put("d")]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.oldest(), 1);
        assert_eq!(
            h.changes_after(0, 10),
            ChangesAfter::Compacted { oldest: 1 }
        );
        assert_eq!(page(&h, 1, 10).len(), 2);
        assert_eq!(h.compact_through(99), 2);
        assert!(h.is_empty());
        assert!(page(&h, 2, 10).is_empty());
    }

    #[test]
    fn age_bound_expires_old_revisions() {
        let mut h = History::new(
            Retention {
                max_changes: None,
                max_age: Some(Duration::from_secs(60)),
            },
            7,
        );
        h.append(8, [put("a")]);
        h.expire(Instant::now() + Duration::from_secs(61));
        assert!(h.is_empty());
        assert_eq!(h.oldest(), 8);
    }
}
