//! Creates and migrates a store's table.
//!
//! Applied migrations are recorded in `<table>_migrations`. Every `connect` runs [`migrate`]: in
//! one transaction holding an advisory lock derived from the table's name, it applies the
//! migrations not yet recorded, so any number of processes may start at once against a fresh
//! database — the first creates everything, the others wait for the lock and find nothing to do.
//! DDL is transactional in PostgreSQL: a migration that fails leaves no trace.

use deadpool_postgres::Object;

use super::errors::Target;
use super::ident::TableNames;
use crate::error::StateError;

/// The first key of the advisory lock taken while migrating ("SLCE"); the second is a hash of the
/// table's name.
const LOCK_CLASS: i32 = 0x534c_4345;

/// One step of the schema's history.
struct Migration {
    /// Recorded once applied; migrations apply in increasing order.
    version: i32,
    /// What it does, recorded beside the version.
    description: &'static str,
    /// Its statements, for the given table names.
    sql: fn(&TableNames) -> String,
}

/// Every migration, oldest first. Append only: a released migration never changes.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "items table and version sequence",
        sql: |n| {
            format!(
                "CREATE SEQUENCE IF NOT EXISTS {seq} AS bigint NO CYCLE; \
                 CREATE TABLE IF NOT EXISTS {t} ( \
                     key text COLLATE \"C\" PRIMARY KEY, \
                     value bytea NOT NULL, \
                     value_json jsonb, \
                     version bigint NOT NULL, \
                     expires_at timestamptz, \
                     updated_at timestamptz NOT NULL DEFAULT now() \
                 );",
                seq = n.sequence,
                t = n.table
            )
        },
    },
    Migration {
        version: 2,
        description: "index on expires_at for the sweeper",
        sql: |n| {
            format!(
                "CREATE INDEX IF NOT EXISTS {idx} ON {t} (expires_at) WHERE expires_at IS NOT NULL;",
                idx = n.expires_index,
                t = n.table
            )
        },
    },
    Migration {
        version: 3,
        description: "change feed: revision sequence, changes table and recording trigger",
        sql: super::feed::schema::migration,
    },
];

/// The newest schema version this build knows.
pub(crate) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the table to [`latest_version`]; returns the migrations applied (none if it was
/// current). Fails if the table was migrated by a newer Sluice.
pub(crate) async fn migrate(
    client: &mut Object,
    names: &TableNames,
    target: &Target,
) -> Result<Vec<i32>, StateError> {
    let pg = |what: &str, e: tokio_postgres::Error| target.pg(what, &e);
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg("begin the migration", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &names.display],
    )
    .await
    .map_err(|e| pg("take the migration lock", e))?;
    if let Some(schema) = &names.schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(|e| pg("create the schema", e))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, description text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now())",
        names.migrations
    ))
    .await
    .map_err(|e| pg("create the migrations table", e))?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {}", names.migrations),
            &[],
        )
        .await
        .map_err(|e| pg("read the schema version", e))?
        .try_get(0)
        .map_err(|e| pg("read the schema version", e))?;
    if current > latest_version() {
        return Err(target.permanent(
            "migrate",
            format!(
                "the table is at schema version {current}, newer than this build knows ({}); \
                 upgrade Sluice",
                latest_version()
            ),
        ));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let what = format!("apply migration {} ({})", m.version, m.description);
        tx.batch_execute(&(m.sql)(names))
            .await
            .map_err(|e| pg(&what, e))?;
        tx.execute(
            &format!(
                "INSERT INTO {} (version, description) VALUES ($1, $2)",
                names.migrations
            ),
            &[&m.version, &m.description],
        )
        .await
        .map_err(|e| pg(&what, e))?;
        applied.push(m.version);
    }
    tx.commit()
        .await
        .map_err(|e| pg("commit the migration", e))?;
    if !applied.is_empty() {
        tracing::info!(table = %names.display, ?applied, "migrated the postgres state table");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_strictly_increasing_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(versions.first(), Some(&1));
        assert_eq!(latest_version(), *versions.last().unwrap_or(&0));
    }

    #[test]
    fn migrations_use_only_the_quoted_names() {
        let names = TableNames::new("t", Some("s")).expect("valid");
        let all: String = MIGRATIONS.iter().map(|m| (m.sql)(&names)).collect();
        assert!(all.contains("\"s\".\"t\""));
        assert!(all.contains("\"s\".\"t_version_seq\""));
        assert!(all.contains("\"t_expires_at_idx\""));
    }
}
