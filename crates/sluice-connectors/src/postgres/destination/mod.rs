//! The PostgreSQL destination: upserts, inserts and deletes by key, batched, one transaction per
//! acknowledgement.
//!
//! `write` only buffers. `ack` turns the buffered records into row operations (see [`plan`]),
//! groups consecutive operations of the same shape, and runs each group as one set-based
//! statement (`INSERT ... SELECT ... FROM unnest($1::text[], ...) ON CONFLICT ...`, `DELETE ...
//! WHERE (key) IN (SELECT ... FROM unnest(...))`), all in one transaction. Values travel as text
//! and are cast by the server to each column's type.
//!
//! Failures: a record that cannot be mapped (unknown column, no key for a delete, raw payload) is
//! nacked with the reason. If the batch's transaction fails on a row (a constraint, a bad value),
//! it is rolled back and the batch is applied again record by record, each under a savepoint,
//! still in one transaction: the failing records are nacked with the server's message and the
//! others committed. A lost connection is retried (reconnect, backoff) up to five times with the
//! whole batch, which is idempotent for keyed records (a keyless insert may be repeated if the
//! connection died during COMMIT: at-least-once).

pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_sdk::{Acks, ConnectorError, HealthReporter, Nack, Position, Record, Settings};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use self::plan::{Group, Kind, RowOp};
use super::backoff::Backoff;
use super::catalog::{self, Table};
use super::config::{DestinationConfig, TableTarget, KEY, TABLE};
use super::connect::{self, quote_ident};
use super::error::{describe, is_transient, PgError, Side};

/// How many times a batch is attempted when the connection keeps failing.
const ATTEMPTS: u32 = 5;

/// The PostgreSQL destination connector.
#[derive(Default)]
pub struct PostgresDestination {
    config: Option<DestinationConfig>,
    conn: Option<Conn>,
    buffer: Vec<Record>,
    open: bool,
    /// Reports retried batches to the host.
    health: HealthReporter,
}

/// A connection with its prepared statements and table descriptions.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    tables: HashMap<String, Arc<Table>>,
}

/// Why one batch attempt failed.
enum BatchError {
    /// A statement failed on the data: retry record by record.
    Row(String),
    /// The connection failed (transient) or something permanent.
    Fatal(PgError),
}

impl PostgresDestination {
    /// A new, unconfigured destination.
    pub fn new() -> Self {
        Self::default()
    }

    fn config(&self) -> Result<&DestinationConfig, PgError> {
        self.config
            .as_ref()
            .ok_or_else(|| PgError::other(Side::Destination, "opened before it was configured"))
    }
}

async fn open_conn(config: &DestinationConfig) -> Result<Conn, PgError> {
    let client = connect::connect(Side::Destination, &config.pg).await?;
    Ok(Conn {
        client,
        statements: HashMap::new(),
        tables: HashMap::new(),
    })
}

/// Writes `records` in one transaction, reconnecting and retrying the whole batch when the
/// connection is lost; returns the nacks.
async fn settle(
    slot: &mut Option<Conn>,
    config: &DestinationConfig,
    records: &[Record],
    health: &HealthReporter,
) -> Result<Vec<Nack>, PgError> {
    let mut backoff = Backoff::reporting(health.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match slot {
            Some(conn) => conn.settle(config, records).await,
            None => match open_conn(config).await {
                Ok(c) => {
                    *slot = Some(c);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(nacks) => {
                backoff.reset();
                return Ok(nacks);
            }
            Err(e) if e.is_transient() => {
                *slot = None;
                if attempt >= ATTEMPTS {
                    return Err(e);
                }
                tracing::warn!(error = %e, "postgres destination: connection lost; retrying the batch");
                backoff
                    .wait_degraded(format!("postgres: connection lost: {e}"))
                    .await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Conn {
    /// Plans and applies `records` in one transaction; returns the nacks.
    async fn settle(
        &mut self,
        config: &DestinationConfig,
        records: &[Record],
    ) -> Result<Vec<Nack>, PgError> {
        let plans = self.plan_all(config, records).await?;
        let mut nacks: Vec<Nack> = plans
            .iter()
            .enumerate()
            .filter_map(|(index, p)| {
                p.as_ref().err().map(|reason| Nack {
                    index,
                    reason: format!("postgres destination: {reason}"),
                })
            })
            .collect();
        let ops: Vec<&RowOp> = plans
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .flatten()
            .collect();
        if ops.is_empty() {
            return Ok(nacks);
        }
        match self.batch(plan::group(ops)).await {
            Ok(()) => Ok(nacks),
            Err(BatchError::Row(reason)) => {
                tracing::debug!(%reason, "postgres destination: batch failed; applying record by record");
                nacks.extend(self.one_by_one(&plans).await?);
                nacks.sort_by_key(|n| n.index);
                Ok(nacks)
            }
            Err(BatchError::Fatal(e)) => Err(e),
        }
    }

    /// The operations of each record, or why it cannot be written.
    async fn plan_all(
        &mut self,
        config: &DestinationConfig,
        records: &[Record],
    ) -> Result<Vec<Result<Vec<RowOp>, String>>, PgError> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let name = match &config.table {
                TableTarget::Fixed(t) => Some(t.as_str()),
                TableTarget::FromMetadata(key) => r.metadata.get(key).map(String::as_str),
            };
            let Some(name) = name.filter(|n| !n.is_empty()) else {
                out.push(Err(format!(
                    "no target table: the record has no metadata {:?} and the `table` setting \
                     names none",
                    match &config.table {
                        TableTarget::FromMetadata(k) => k.as_str(),
                        TableTarget::Fixed(_) => "",
                    }
                )));
                continue;
            };
            let table = match self.table(name).await {
                Ok(t) => t,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    continue;
                }
            };
            out.push(plan::plan(r, &table, &config.key));
        }
        Ok(out)
    }

    /// The table called `name`, from the catalog the first time.
    async fn table(&mut self, name: &str) -> Result<Arc<Table>, PgError> {
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        let t = Arc::new(catalog::lookup(&self.client, Side::Destination, TABLE, name).await?);
        self.tables.insert(name.to_string(), t.clone());
        Ok(t)
    }

    async fn statement(&mut self, sql: String) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&sql).await?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    async fn run(&mut self, g: &Group) -> Result<(), tokio_postgres::Error> {
        let st = self.statement(sql(g)).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            g.values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.client.execute(&st, &params).await.map(|_| ())
    }

    async fn exec(&self, sql: &str) -> Result<(), BatchError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| BatchError::Fatal(PgError::db(Side::Destination, sql, &e)))
    }

    /// Every group in one transaction.
    async fn batch(&mut self, groups: Vec<Group>) -> Result<(), BatchError> {
        self.exec("BEGIN").await?;
        for g in &groups {
            if let Err(e) = self.run(g).await {
                if is_transient(&e) || e.as_db_error().is_none() {
                    return Err(BatchError::Fatal(PgError::db(
                        Side::Destination,
                        "writing a batch",
                        &e,
                    )));
                }
                self.exec("ROLLBACK").await?;
                return Err(BatchError::Row(describe(&e)));
            }
        }
        self.exec("COMMIT").await
    }

    /// Every record under its own savepoint, in one transaction; returns the records that failed.
    async fn one_by_one(
        &mut self,
        plans: &[Result<Vec<RowOp>, String>],
    ) -> Result<Vec<Nack>, PgError> {
        let fatal = |e: BatchError| match e {
            BatchError::Fatal(e) => e,
            BatchError::Row(m) => PgError::other(Side::Destination, m),
        };
        self.exec("BEGIN").await.map_err(fatal)?;
        let mut nacks = Vec::new();
        for (index, p) in plans.iter().enumerate() {
            let Ok(ops) = p else { continue };
            self.exec("SAVEPOINT sluice_record").await.map_err(fatal)?;
            let mut failed = None;
            for g in plan::group(ops) {
                if let Err(e) = self.run(&g).await {
                    if is_transient(&e) || e.as_db_error().is_none() {
                        return Err(PgError::db(Side::Destination, "writing a record", &e));
                    }
                    failed = Some(describe(&e));
                    break;
                }
            }
            match failed {
                Some(reason) => {
                    self.exec("ROLLBACK TO SAVEPOINT sluice_record")
                        .await
                        .map_err(fatal)?;
                    nacks.push(Nack {
                        index,
                        reason: format!("postgres destination: {reason}"),
                    });
                }
                None => self
                    .exec("RELEASE SAVEPOINT sluice_record")
                    .await
                    .map_err(fatal)?,
            }
        }
        self.exec("COMMIT").await.map_err(fatal)?;
        Ok(nacks)
    }
}

/// The statement for a group: its values are bound as one text array per column.
fn sql(g: &Group) -> String {
    let table = g.table.qualified();
    let aliases: Vec<String> = (1..=g.columns.len()).map(|i| format!("c{i}")).collect();
    let arrays: Vec<String> = (1..=g.columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let casts: Vec<String> = g
        .columns
        .iter()
        .zip(&aliases)
        .map(|(c, a)| {
            let ty = g
                .table
                .column(c)
                .map_or("text", |col| col.type_name.as_str());
            format!("u.{a}::{ty}")
        })
        .collect();
    let from = format!("unnest({}) AS u({})", arrays.join(", "), aliases.join(", "));
    let cols: Vec<String> = g.columns.iter().map(|c| quote_ident(c)).collect();
    match g.kind {
        Kind::Delete => format!(
            "DELETE FROM {table} WHERE ({}) IN (SELECT {} FROM {from})",
            cols.join(", "),
            casts.join(", ")
        ),
        Kind::Insert => format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {from}",
            cols.join(", "),
            casts.join(", ")
        ),
        Kind::Upsert => {
            let updates: Vec<String> = g
                .columns
                .iter()
                .filter(|c| !g.key.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                .collect();
            let conflict: Vec<String> = g.key.iter().map(|k| quote_ident(k)).collect();
            let action = if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            format!(
                "INSERT INTO {table} ({}) SELECT {} FROM {from} ON CONFLICT ({}) {action}",
                cols.join(", "),
                casts.join(", "),
                conflict.join(", ")
            )
        }
    }
}

#[async_trait]
impl sluice_sdk::Destination for PostgresDestination {
    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn configure(&mut self, settings: &Settings) -> sluice_sdk::connector::Result<()> {
        self.config = Some(DestinationConfig::from_settings(settings)?);
        Ok(())
    }

    async fn open(&mut self) -> sluice_sdk::connector::Result<()> {
        let config = self.config()?.clone();
        let mut conn = open_conn(&config).await?;
        if let TableTarget::Fixed(name) = &config.table {
            let t = conn.table(name).await?;
            for k in &config.key {
                if t.column(k).is_none() {
                    return Err(PgError::setting(
                        Side::Destination,
                        KEY,
                        format!("table {name:?} has no column {k:?}"),
                    )
                    .into());
                }
            }
        }
        self.conn = Some(conn);
        self.open = true;
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> sluice_sdk::connector::Result<()> {
        if !self.open {
            return Err(ConnectorError::StreamNotOpen);
        }
        self.buffer.extend_from_slice(records);
        Ok(())
    }

    async fn ack(&mut self) -> sluice_sdk::connector::Result<Acks> {
        if self.buffer.is_empty() {
            return Ok(Acks::default());
        }
        let Some(config) = self.config.as_ref() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        // The buffer is settled only once the batch is applied: a failure (or a dropped call)
        // leaves it for the next ack.
        let nacks = settle(&mut self.conn, config, &self.buffer, &self.health).await?;
        let count = self.buffer.len();
        self.buffer.clear();
        Ok(Acks { count, nacks })
    }

    async fn stop(&mut self, _last: Option<&Position>) -> sluice_sdk::connector::Result<()> {
        Ok(())
    }

    async fn teardown(&mut self) -> sluice_sdk::connector::Result<()> {
        self.conn = None;
        self.open = false;
        self.buffer.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::catalog::Column;
    use crate::postgres::value::ColumnKind;

    #[test]
    fn statements_are_set_based() {
        let col = |name: &str, ty: &str| Column {
            name: name.into(),
            type_oid: 0,
            type_name: ty.into(),
            kind: ColumnKind::Scalar,
            generated: false,
        };
        let table = Arc::new(Table {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![col("id", "integer"), col("name", "text")],
            key: vec!["id".into()],
            has_primary_key: true,
            replica_identity: 'd',
            unique_keys: vec![vec!["id".into()]],
        });
        let g = |kind, columns: &[&str]| Group {
            table: table.clone(),
            kind,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            key: vec!["id".into()],
            values: vec![],
        };
        assert_eq!(
            sql(&g(Kind::Upsert, &["id", "name"])),
            "INSERT INTO \"public\".\"t\" (\"id\", \"name\") SELECT u.c1::integer, u.c2::text \
             FROM unnest($1::text[], $2::text[]) AS u(c1, c2) ON CONFLICT (\"id\") DO UPDATE SET \
             \"name\" = EXCLUDED.\"name\""
        );
        assert_eq!(
            sql(&g(Kind::Delete, &["id"])),
            "DELETE FROM \"public\".\"t\" WHERE (\"id\") IN (SELECT u.c1::integer FROM \
             unnest($1::text[]) AS u(c1))"
        );
        assert!(sql(&g(Kind::Upsert, &["id"])).ends_with("DO NOTHING"));
    }
}
