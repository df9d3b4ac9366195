//! The text of every statement a store runs often, built once per store from its table names.
//!
//! Only the validated, quoted names of [`TableNames`] are interpolated; every value is a
//! parameter. A row is *live* when it has not expired; every read and every condition looks only
//! at live rows, so an expired item is invisible the moment its time passes, whether or not the
//! sweeper has deleted it yet.

use super::ident::TableNames;
use crate::ttl::MAX_EXPIRY_MILLIS;

/// The condition that a row has not expired.
pub(crate) const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

/// Statements of one store. Parameters are listed per statement.
#[derive(Clone, Debug)]
pub(crate) struct Sql {
    /// `$1 key` → `value, version, expires_at` of the live row.
    pub get: String,
    /// `$1 keys text[]` → `key, value, version, expires_at` of the live rows.
    pub bulk_get: String,
    /// Last-write upsert. `$1 key, $2 value, $3 value_json, $4 ttl_ms` → `version`.
    pub upsert: String,
    /// First-write insert: like `upsert`, but replaces only an expired row, so it returns no row
    /// when a live one exists.
    pub insert_absent: String,
    /// Conditional update: `upsert`'s parameters and `$5 version`; returns no row unless the live
    /// row has that version.
    pub update_if: String,
    /// `upsert` of many rows: `$1 keys, $2 values, $3 value_jsons, $4 ttls_ms` (arrays, in
    /// order) → `key, version` of every row.
    pub upsert_many: String,
    /// `insert_absent` of many rows, `upsert_many`'s parameters → `key, version` of the rows
    /// written (a key missing from the answer was refused).
    pub insert_absent_many: String,
    /// `$1 key`: deletes the row, live or expired.
    pub delete: String,
    /// `$1 key, $2 version`: deletes the live row with that version (rows affected: 1 or 0).
    pub delete_if: String,
    /// `$1 key`: deletes the row and returns whether it was live (for transactions that found the
    /// key absent and must notice a concurrent insert).
    pub delete_returning_live: String,
    /// `$1 keys text[]` → `key, version` of the live rows, locked until the transaction ends.
    pub lock_versions: String,
    /// `$1 batch size` → rows deleted: a batch of expired rows nobody is writing.
    pub sweep: String,
}

impl Sql {
    /// Builds every statement for the table `names`.
    pub fn new(names: &TableNames) -> Self {
        let t = &names.table;
        // The sequence name goes into a string literal for nextval's regclass argument; it holds
        // no quote characters (see `ident`).
        let next_version = format!("nextval('{}')", names.sequence);
        // `MAX_EXPIRY_MILLIS` is a constant of the crate, not input. (LEAST ignores NULL, hence
        // the CASE for "no TTL".)
        let expires = format!(
            "CASE WHEN $4::bigint IS NULL THEN NULL ELSE \
             LEAST(now() + $4::bigint * interval '1 millisecond', \
             to_timestamp({MAX_EXPIRY_MILLIS}::numeric / 1000)) END"
        );
        let insert = format!(
            "INSERT INTO {t} AS s (key, value, value_json, version, expires_at, updated_at) \
             VALUES ($1, $2, $3, {next_version}, {expires}, now()) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
             value_json = EXCLUDED.value_json, version = EXCLUDED.version, \
             expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at"
        );
        // The same insert for many rows at once, in array order.
        let expires_many = expires.replace("$4::bigint", "u.ttl");
        let insert_many = format!(
            "INSERT INTO {t} AS s (key, value, value_json, version, expires_at, updated_at) \
             SELECT u.key, u.value, u.value_json, {next_version}, {expires_many}, now() \
             FROM unnest($1::text[], $2::bytea[], $3::jsonb[], $4::bigint[]) \
             WITH ORDINALITY AS u(key, value, value_json, ttl, ord) ORDER BY u.ord \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
             value_json = EXCLUDED.value_json, version = EXCLUDED.version, \
             expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at"
        );
        Sql {
            upsert_many: format!("{insert_many} RETURNING key, version"),
            insert_absent_many: format!(
                "{insert_many} WHERE s.expires_at IS NOT NULL AND s.expires_at <= now() \
                 RETURNING key, version"
            ),
            get: format!("SELECT value, version, expires_at FROM {t} WHERE key = $1 AND {LIVE}"),
            bulk_get: format!(
                "SELECT key, value, version, expires_at FROM {t} WHERE key = ANY($1) AND {LIVE}"
            ),
            upsert: format!("{insert} RETURNING version"),
            insert_absent: format!(
                "{insert} WHERE s.expires_at IS NOT NULL AND s.expires_at <= now() \
                 RETURNING version"
            ),
            update_if: format!(
                "UPDATE {t} SET value = $2, value_json = $3, version = {next_version}, \
                 expires_at = {expires}, updated_at = now() \
                 WHERE key = $1 AND version = $5 AND {LIVE} RETURNING version"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            delete_if: format!("DELETE FROM {t} WHERE key = $1 AND version = $2 AND {LIVE}"),
            delete_returning_live: format!("DELETE FROM {t} WHERE key = $1 RETURNING {LIVE}"),
            lock_versions: format!(
                "SELECT key, version FROM {t} WHERE key = ANY($1) AND {LIVE} ORDER BY key FOR UPDATE"
            ),
            sweep: format!(
                "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE expires_at <= now() \
                 LIMIT $1 FOR UPDATE SKIP LOCKED) AND expires_at <= now()"
            ),
        }
    }
}
