//! Validated SQL identifiers and the names of the objects a store owns.
//!
//! Names from configuration are the only text Sluice puts into SQL other than its own; they are
//! checked against a conservative rule (ASCII letters, digits and `_`, not starting with a digit)
//! and then always double-quoted, so they can neither inject SQL nor change case.

use crate::error::StateError;

/// The longest table name accepted: PostgreSQL truncates identifiers at 63 bytes, and the longest
/// name derived from the table's adds 15 bytes (`_expires_at_idx`).
pub const MAX_TABLE_NAME_LEN: usize = 63 - 15;
/// The longest schema name accepted (PostgreSQL's limit).
const MAX_SCHEMA_NAME_LEN: usize = 63;

/// Checks `name` (a table or schema name, `what` says which) against the identifier rule.
fn validate(what: &str, name: &str, max_len: usize) -> Result<(), StateError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || !rest_ok {
        return Err(StateError::InvalidRequest(format!(
            "invalid PostgreSQL {what} name {name:?}: use ASCII letters, digits and `_`, not \
             starting with a digit"
        )));
    }
    if name.len() > max_len {
        return Err(StateError::InvalidRequest(format!(
            "invalid PostgreSQL {what} name {name:?}: longer than {max_len} bytes"
        )));
    }
    Ok(())
}

/// The quoted, schema-qualified names of everything one store owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableNames {
    /// The items table, e.g. `"public"."sluice_state"` or `"sluice_state"`.
    pub table: String,
    /// The sequence versions (ETags) are drawn from.
    pub sequence: String,
    /// The table recording applied migrations.
    pub migrations: String,
    /// The index on `expires_at` (unqualified: an index lives in its table's schema).
    pub expires_index: String,
    /// The schema to create, quoted, if one was configured.
    pub schema: Option<String>,
    /// The unquoted qualified table name, for messages and the migration lock.
    pub display: String,
    /// The names of the change feed's objects (see [`super::feed`]).
    pub watch: WatchNames,
}

/// The quoted names of what the change feed owns, and the keys it signals and locks with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WatchNames {
    /// The change history table.
    pub changes: String,
    /// The sequence revisions are drawn from.
    pub revision_seq: String,
    /// The sequence ordering the changes within a revision.
    pub change_seq: String,
    /// The one-row table holding `compacted_through`.
    pub meta: String,
    /// The row trigger function recording changes.
    pub trigger_fn: String,
    /// The trigger (unqualified: a trigger lives on its table).
    pub trigger: String,
    /// The `LISTEN` / `pg_notify` channel (unquoted; ASCII, at most 30 bytes).
    pub channel: String,
    /// The transaction-local setting holding the transaction's revision.
    pub setting: String,
    /// The advisory lock every writing transaction holds shared while it draws its revision
    /// and commits, and a snapshot takes exclusively: (class, key), both positive.
    pub lock: (i32, i32),
}

/// The first key of the change feed's advisory lock ("SLWC").
const WATCH_LOCK_CLASS: i32 = 0x534c_5743;

/// FNV-1a, 64 bits: a stable hash of a table's name for the names that cannot hold it whole.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl WatchNames {
    fn new(table: &str, display: &str, qualify: impl Fn(&str) -> String) -> Self {
        let hash = fnv1a(display);
        WatchNames {
            changes: qualify(&format!("{table}_changes")),
            revision_seq: qualify(&format!("{table}_revision_seq")),
            change_seq: qualify(&format!("{table}_change_seq")),
            meta: qualify(&format!("{table}_watch")),
            trigger_fn: qualify(&format!("{table}_record")),
            trigger: format!("\"{table}_record\""),
            channel: format!("sluice_watch_{hash:016x}"),
            setting: format!("sluice.rev_{hash:016x}"),
            lock: (WATCH_LOCK_CLASS, (hash & 0x7fff_ffff) as i32),
        }
    }
}

impl TableNames {
    /// Validates `table` and `schema` and derives every name from them.
    pub fn new(table: &str, schema: Option<&str>) -> Result<Self, StateError> {
        validate("table", table, MAX_TABLE_NAME_LEN)?;
        if let Some(schema) = schema {
            validate("schema", schema, MAX_SCHEMA_NAME_LEN)?;
        }
        let qualify = |name: &str| match schema {
            Some(schema) => format!("\"{schema}\".\"{name}\""),
            None => format!("\"{name}\""),
        };
        let display = match schema {
            Some(schema) => format!("{schema}.{table}"),
            None => table.to_string(),
        };
        Ok(TableNames {
            watch: WatchNames::new(table, &display, qualify),
            table: qualify(table),
            sequence: qualify(&format!("{table}_version_seq")),
            migrations: qualify(&format!("{table}_migrations")),
            expires_index: format!("\"{table}_expires_at_idx\""),
            schema: schema.map(|s| format!("\"{s}\"")),
            display,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers_and_quotes_them() {
        let names = TableNames::new("sluice_state", None).expect("valid");
        assert_eq!(names.table, "\"sluice_state\"");
        assert_eq!(names.sequence, "\"sluice_state_version_seq\"");
        let names = TableNames::new("T1", Some("_app")).expect("valid");
        assert_eq!(names.table, "\"_app\".\"T1\"");
        assert_eq!(names.migrations, "\"_app\".\"T1_migrations\"");
        assert_eq!(names.expires_index, "\"T1_expires_at_idx\"");
        assert_eq!(names.display, "_app.T1");
    }

    #[test]
    fn rejects_anything_that_could_escape_the_quotes() {
        for bad in [
            "",
            "1table",
            "a-b",
            "a b",
            "a\"b",
            "t; DROP TABLE x",
            "tä",
            "a.b",
            &"x".repeat(MAX_TABLE_NAME_LEN + 1),
        ] {
            let err = TableNames::new(bad, None).expect_err(bad);
            assert!(matches!(err, StateError::InvalidRequest(_)), "{bad}: {err}");
        }
        assert!(TableNames::new(&"x".repeat(MAX_TABLE_NAME_LEN), None).is_ok());
        assert!(TableNames::new("ok", Some("bad\"schema")).is_err());
    }
}
