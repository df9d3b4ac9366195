//! The statements the change feed runs, built once per store from its names. Only validated,
//! quoted names are interpolated; every value is a parameter.

use super::super::ident::TableNames;
use super::super::sql::LIVE;

/// The feed's statements.
#[derive(Clone, Debug)]
pub(crate) struct FeedSql {
    /// → the latest revision drawn (0 before the first).
    pub last_drawn: String,
    /// → the virtual transaction ids holding the feed's lock now.
    pub holders: String,
    /// `$1 text[]` → those of the given virtual transactions still holding it.
    pub still_holding: String,
    /// Takes the feed's lock exclusively until the transaction ends.
    pub lock_exclusive: String,
    /// `$1 prefixes text[]` → `revision, key, value` (key and value NULL when none match):
    /// the live items under the prefixes, in key order, and the latest revision, one snapshot.
    pub snapshot: String,
    /// `$1 after, $2 horizon, $3 limit` → `compacted_through, revision, key, op, value,
    /// prev_value` (the change columns NULL when there is none).
    pub changes_after: String,
    /// → `compacted_through`.
    pub compacted_through: String,
    /// `$1 through` → the new `compacted_through`, after dropping every change up to it.
    pub compact: String,
    /// → the approximate number of changes held (from the change sequence's span).
    pub approx_count: String,
    /// `$1 n` → the revision of the n-th oldest change (NULL if fewer).
    pub nth_oldest: String,
    /// `$1 age_ms` → the newest revision among the oldest changes older than the age, looking
    /// at a bounded number of them (NULL if none).
    pub older_than: String,
}

/// How many of the oldest changes one age-retention pass looks at.
const AGE_SCAN: i64 = 10_000;

impl FeedSql {
    /// Builds every statement for `n`.
    pub fn new(n: &TableNames) -> Self {
        let w = &n.watch;
        let t = &n.table;
        let (class, key) = w.lock;
        let holders_where = format!(
            "locktype = 'advisory' AND classid = {class}::oid AND objid = {key}::oid \
             AND objsubid = 2 AND granted"
        );
        FeedSql {
            last_drawn: format!(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}",
                w.revision_seq
            ),
            holders: format!(
                "SELECT coalesce(array_agg(virtualtransaction), '{{}}') FROM pg_locks \
                 WHERE {holders_where}"
            ),
            still_holding: format!(
                "SELECT coalesce(array_agg(virtualtransaction), '{{}}') FROM pg_locks \
                 WHERE {holders_where} AND virtualtransaction = ANY($1)"
            ),
            lock_exclusive: format!("SELECT pg_advisory_xact_lock({class}, {key})"),
            snapshot: format!(
                "SELECT r.rev, i.key, i.value FROM \
                 (SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS rev FROM {seq}) r \
                 LEFT JOIN LATERAL (SELECT key, value FROM {t} WHERE {LIVE} AND EXISTS \
                 (SELECT 1 FROM unnest($1::text[]) p WHERE starts_with(key, p)) \
                 ORDER BY key) i ON true",
                seq = w.revision_seq,
            ),
            changes_after: format!(
                "WITH cut AS (SELECT coalesce((SELECT revision FROM {c} \
                 WHERE revision > $1 AND revision <= $2 ORDER BY revision, seq \
                 OFFSET $3::bigint - 1 LIMIT 1), $2) AS r) \
                 SELECT m.compacted_through, c.revision, c.key, c.op, c.value, c.prev_value \
                 FROM {meta} m LEFT JOIN LATERAL (SELECT ch.* FROM {c} ch, cut \
                 WHERE ch.revision > $1 AND ch.revision <= cut.r) c ON true \
                 ORDER BY c.revision, c.seq",
                c = w.changes,
                meta = w.meta,
            ),
            compacted_through: format!("SELECT compacted_through FROM {}", w.meta),
            compact: format!(
                "WITH d AS (DELETE FROM {c} WHERE revision <= $1) \
                 UPDATE {meta} SET compacted_through = greatest(compacted_through, $1) \
                 RETURNING compacted_through",
                c = w.changes,
                meta = w.meta,
            ),
            approx_count: format!(
                "SELECT coalesce((SELECT max(seq) FROM (SELECT seq FROM {c} \
                 ORDER BY revision DESC, seq DESC LIMIT 1000) a) - (SELECT min(seq) FROM \
                 (SELECT seq FROM {c} ORDER BY revision, seq LIMIT 1000) b) + 1, 0)",
                c = w.changes
            ),
            nth_oldest: format!(
                "SELECT revision FROM {c} ORDER BY revision, seq OFFSET $1::bigint - 1 LIMIT 1",
                c = w.changes
            ),
            older_than: format!(
                "SELECT max(revision) FROM (SELECT revision, at FROM {c} \
                 ORDER BY revision, seq LIMIT {AGE_SCAN}) o \
                 WHERE at < now() - $1::bigint * interval '1 millisecond'",
                c = w.changes
            ),
        }
    }
}
