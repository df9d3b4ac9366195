//! Everything the source checks and prepares before it reads: the server allows logical
//! replication, the tables exist and can be replicated, the publication covers them, the slot
//! exists (created with an exported snapshot when a fresh snapshot is due).

use tokio_postgres::Client;

use crate::postgres::catalog::{self, Table};
use crate::postgres::config::{
    CdcMode, SourceConfig, CDC_MODE, ORDERING_COLUMN, PUBLICATION_NAME, SLOT_NAME, TABLES,
};
use crate::postgres::connect::{quote_ident, quote_literal};
use crate::postgres::error::{PgError, Side};
use crate::postgres::lsn::Lsn;
use crate::postgres::replication::ReplicationConn;

/// How the source follows changes, once the server's settings are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Logical replication.
    Logrepl,
    /// Polling by an increasing column.
    Polling,
}

/// Decides the mode: `auto` means logical replication when the server allows it, else polling
/// when an ordering column is set.
pub async fn resolve_mode(client: &Client, config: &SourceConfig) -> Result<Mode, PgError> {
    if config.cdc_mode == CdcMode::LongPolling {
        return Ok(Mode::Polling);
    }
    let wal_level = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| PgError::db(Side::Source, "reading wal_level", &e))?
        .get::<_, String>(0);
    if wal_level == "logical" {
        return Ok(Mode::Logrepl);
    }
    if config.cdc_mode == CdcMode::Auto && config.ordering_column.is_some() {
        return Ok(Mode::Polling);
    }
    Err(PgError::setting(
        Side::Source,
        CDC_MODE,
        format!(
            "logical replication needs wal_level = logical, but this server has wal_level = \
             {wal_level}: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL, or \
             use cdcMode: long_polling with an {ORDERING_COLUMN}"
        ),
    ))
}

/// Looks up every configured table; a table without key must have `REPLICA IDENTITY FULL` to be
/// replicated (adding it to a publication would otherwise make its UPDATEs and DELETEs fail).
pub async fn tables(
    client: &Client,
    config: &SourceConfig,
    mode: Mode,
) -> Result<Vec<Table>, PgError> {
    let mut out = Vec::with_capacity(config.tables.len());
    for name in &config.tables {
        let t = catalog::lookup(client, Side::Source, TABLES, name).await?;
        if mode == Mode::Logrepl && t.key.is_empty() && t.replica_identity != 'f' {
            return Err(PgError::setting(
                Side::Source,
                TABLES,
                format!(
                    "table {name:?} has no primary key and its replica identity is not FULL: \
                     publishing it would make its UPDATE and DELETE statements fail; add a \
                     primary key or run ALTER TABLE {} REPLICA IDENTITY FULL",
                    t.qualified()
                ),
            ));
        }
        if mode == Mode::Polling {
            let col = config.ordering_column.as_deref().unwrap_or_default();
            if t.column(col).is_none() {
                return Err(PgError::setting(
                    Side::Source,
                    ORDERING_COLUMN,
                    format!("table {name:?} has no column {col:?}"),
                ));
            }
        }
        out.push(t);
    }
    Ok(out)
}

/// Creates the publication for the tables, or adds the tables an existing one lacks.
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[Table],
) -> Result<(), PgError> {
    let fail = |what: &str, e: &tokio_postgres::Error| {
        PgError::setting(
            Side::Source,
            PUBLICATION_NAME,
            format!(
                "{what} publication {name:?}: {}",
                crate::postgres::error::describe(e)
            ),
        )
    };
    let exists = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| PgError::db(Side::Source, "reading pg_publication", &e))?;
    let list = |ts: &[&Table]| {
        ts.iter()
            .map(|t| t.qualified())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match exists {
        None => {
            let all: Vec<&Table> = tables.iter().collect();
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    quote_ident(name),
                    list(&all)
                ))
                .await
                .map_err(|e| fail("cannot create", &e))
        }
        Some(row) if row.get::<_, bool>(0) => Ok(()),
        Some(_) => {
            let published: Vec<u32> = client
                .query(
                    "SELECT prrelid FROM pg_publication_rel r JOIN pg_publication p \
                     ON p.oid = r.prpubid WHERE p.pubname = $1",
                    &[&name],
                )
                .await
                .map_err(|e| PgError::db(Side::Source, "reading pg_publication_rel", &e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let missing: Vec<&Table> = tables
                .iter()
                .filter(|t| !published.contains(&t.oid))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(name),
                    list(&missing)
                ))
                .await
                .map_err(|e| fail("cannot add the tables to", &e))
        }
    }
}

/// What the slot looked like when the source opened.
#[derive(Debug)]
pub enum Slot {
    /// It existed already.
    Existing,
    /// It was just created; with `snapshot`, an exported snapshot consistent with `lsn` is
    /// valid until the replication connection runs its next command.
    Created {
        /// The slot's consistent point: changes committed after it are streamed.
        lsn: Lsn,
        /// The exported snapshot's name.
        snapshot: Option<String>,
    },
}

/// Checks the slot (a pgoutput slot of this database, not in use), or creates it, exporting a
/// snapshot when `export` is set.
pub async fn ensure_slot(
    client: &Client,
    repl: &mut ReplicationConn,
    name: &str,
    export: bool,
) -> Result<Slot, PgError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text = current_database(), active_pid \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| PgError::db(Side::Source, "reading pg_replication_slots", &e))?;
    if let Some(row) = row {
        let plugin: Option<String> = row.get(0);
        let same_db: Option<bool> = row.get(1);
        let active: Option<i32> = row.get(2);
        if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
            return Err(PgError::setting(
                Side::Source,
                SLOT_NAME,
                format!(
                    "slot {name:?} exists but is not a pgoutput slot of this database (plugin \
                     {plugin:?}); choose another slot name"
                ),
            ));
        }
        if let Some(pid) = active {
            return Err(PgError::Failed {
                side: Side::Source,
                setting: Some(SLOT_NAME),
                message: format!(
                    "slot {name:?} is in use by server process {pid} (another pipeline or a \
                     previous run still streaming it)"
                ),
                transient: true,
            });
        }
        return Ok(Slot::Existing);
    }
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}",
        quote_ident(name),
        if export {
            "EXPORT_SNAPSHOT"
        } else {
            "NOEXPORT_SNAPSHOT"
        }
    );
    let rows = repl.simple_query_raw(&sql).await?.map_err(|e| {
        PgError::setting(
            Side::Source,
            SLOT_NAME,
            format!("cannot create replication slot {name:?}: {}", e.describe()),
        )
    })?;
    let row = rows
        .first()
        .ok_or_else(|| PgError::other(Side::Source, "CREATE_REPLICATION_SLOT returned no row"))?;
    let lsn = row
        .get(1)
        .cloned()
        .flatten()
        .unwrap_or_default()
        .parse::<Lsn>()
        .map_err(|e| PgError::other(Side::Source, format!("CREATE_REPLICATION_SLOT: {e}")))?;
    let snapshot = row.get(2).cloned().flatten();
    Ok(Slot::Created { lsn, snapshot })
}

/// Drops the slot and the publication (for `on_deleted` with `logrepl.autoCleanup`).
pub async fn cleanup(client: &Client, slot: &str, publication: &str) -> Result<(), PgError> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| {
            PgError::setting(
                Side::Source,
                SLOT_NAME,
                format!(
                    "cannot drop replication slot {slot:?}: {}",
                    crate::postgres::error::describe(&e)
                ),
            )
        })?;
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await
        .map_err(|e| {
            PgError::setting(
                Side::Source,
                PUBLICATION_NAME,
                format!(
                    "cannot drop publication {publication:?}: {}",
                    crate::postgres::error::describe(&e)
                ),
            )
        })
}

/// Starts the snapshot transaction on `client`: repeatable read, read only, on the exported
/// snapshot when there is one, its snapshot taken before this returns.
pub async fn begin_snapshot(client: &Client, exported: Option<&str>) -> Result<(), PgError> {
    let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;");
    if let Some(name) = exported {
        sql.push_str(&format!(
            "SET TRANSACTION SNAPSHOT {};",
            quote_literal(name)
        ));
    }
    // A repeatable-read transaction takes its snapshot at its first query: take it now, so the
    // snapshot is the database as of this call.
    sql.push_str("SELECT pg_current_snapshot();");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| PgError::db(Side::Source, "starting the snapshot transaction", &e))
}

/// Session settings that make values' text the same as in the replication stream.
pub async fn session_settings(client: &Client) -> Result<(), PgError> {
    let sql: String = crate::postgres::replication::SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = {};", quote_literal(v)))
        .collect();
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| PgError::db(Side::Source, "setting up the session", &e))
}
