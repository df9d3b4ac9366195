//! Polling mode (`cdcMode: long_polling`), for servers where logical replication is not allowed:
//! each table is read in the order of a strictly increasing column (`orderingColumn`), new rows
//! only, as `create` records. The position holds the last value read per table.
//!
//! What polling cannot see: updates and deletes, and a row whose ordering value is below one
//! already read when it becomes visible (a transaction that took a sequence value early but
//! committed after a later one). Use logical replication where those matter.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_sdk::{Data, HealthReporter, Operation, Payload};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::rows::{key_of, record, row_map, Cell, Shape};
use super::{setup, Event};
use crate::postgres::backoff::Backoff;
use crate::postgres::catalog::Table;
use crate::postgres::config::{SnapshotMode, SourceConfig};
use crate::postgres::connect::{self, quote_ident};
use crate::postgres::error::{PgError, Side};
use crate::postgres::position::SourcePosition;

/// The shortest pause between polls that found nothing.
const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(10);

/// The background task of a polling source.
pub struct PollingTask {
    /// The settings.
    pub config: SourceConfig,
    /// The tables.
    pub tables: Vec<Table>,
    /// The last ordering value read per table (by collection), when resuming.
    pub cursor: Option<BTreeMap<String, String>>,
    /// Where records go.
    pub out: mpsc::Sender<Event>,
    /// Ends the task.
    pub cancel: CancellationToken,
    /// Degraded while reconnecting.
    pub health: HealthReporter,
}

struct Query {
    shape: Shape,
    ordering_index: usize,
    first: String,
    next: String,
}

impl PollingTask {
    /// Polls until cancelled or a permanent failure (sent as [`Event::Failed`]).
    pub async fn run(mut self) {
        let cancel = self.cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = self.poll_forever() => {}
        }
    }

    async fn poll_forever(&mut self) {
        let queries = match self.queries() {
            Ok(q) => q,
            Err(e) => {
                let _ = self.out.send(Event::Failed(e)).await;
                return;
            }
        };
        let mut reconnect = Backoff::reporting(self.health.clone());
        loop {
            let client = match connect::connect(Side::Source, &self.config.pg).await {
                Ok(c) => c,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "postgres source: polling connection failed; retrying");
                    reconnect
                        .wait_degraded(format!("postgres: polling connection: {e}"))
                        .await;
                    continue;
                }
                Err(e) => {
                    let _ = self.out.send(Event::Failed(e)).await;
                    return;
                }
            };
            match self.poll_with(&client, &queries, &mut reconnect).await {
                Ok(()) => return,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "postgres source: polling failed; reconnecting");
                    reconnect.wait().await;
                }
                Err(e) => {
                    let _ = self.out.send(Event::Failed(e)).await;
                    return;
                }
            }
        }
    }

    fn queries(&self) -> Result<Vec<Query>, PgError> {
        let col = self.config.ordering_column.as_deref().unwrap_or_default();
        self.tables
            .iter()
            .map(|t| {
                let shape = Shape::of_table(t);
                let ordering = t.column(col).ok_or_else(|| {
                    PgError::setting(
                        Side::Source,
                        crate::postgres::config::ORDERING_COLUMN,
                        format!("table {:?} has no column {col:?}", t.collection()),
                    )
                })?;
                let ordering_index = shape
                    .columns
                    .iter()
                    .position(|(n, _)| n == col)
                    .ok_or_else(|| {
                        PgError::setting(
                            Side::Source,
                            crate::postgres::config::ORDERING_COLUMN,
                            format!("column {col:?} of {:?} is generated", t.collection()),
                        )
                    })?;
                let list = t
                    .stored_columns()
                    .enumerate()
                    .map(|(i, c)| format!("{}::text AS c{i}", quote_ident(&c.name)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let oc = quote_ident(col);
                let n = self.config.fetch_size;
                Ok(Query {
                    first: format!(
                        "SELECT {list} FROM {} WHERE {oc} IS NOT NULL ORDER BY {oc} LIMIT {n}",
                        t.qualified()
                    ),
                    next: format!(
                        "SELECT {list} FROM {} WHERE {oc} > $1::text::{} ORDER BY {oc} LIMIT {n}",
                        t.qualified(),
                        ordering.type_name
                    ),
                    shape,
                    ordering_index,
                })
            })
            .collect()
    }

    async fn poll_with(
        &mut self,
        client: &Client,
        queries: &[Query],
        reconnect: &mut Backoff,
    ) -> Result<(), PgError> {
        setup::session_settings(client).await?;
        if self.cursor.is_none() {
            self.cursor = Some(self.initial_cursor(client).await?);
        }
        reconnect.reset();
        let mut idle = FIRST_IDLE_PAUSE;
        loop {
            let mut found = false;
            for q in queries {
                let cursor = self.cursor.get_or_insert_with(BTreeMap::new);
                let last = cursor.get(&q.shape.collection).cloned();
                let doing = format!("polling {}", q.shape.collection);
                let rows = match &last {
                    None => client.query(q.first.as_str(), &[]).await,
                    Some(v) => {
                        let p: [&(dyn ToSql + Sync); 1] = [v];
                        client.query(q.next.as_str(), &p).await
                    }
                }
                .map_err(|e| PgError::db(Side::Source, &doing, &e))?;
                found |= !rows.is_empty();
                for row in &rows {
                    let cells =
                        (0..q.shape.columns.len()).map(|i| match row.get::<_, Option<&str>>(i) {
                            Some(t) => Cell::Text(t),
                            None => Cell::Null,
                        });
                    let after = row_map(&q.shape, cells);
                    let Some(value) = row.get::<_, Option<String>>(q.ordering_index) else {
                        continue;
                    };
                    let cursor = self.cursor.get_or_insert_with(BTreeMap::new);
                    cursor.insert(q.shape.collection.clone(), value);
                    let r = record(
                        SourcePosition::Poll(cursor.clone()).encode(),
                        Operation::Create,
                        &q.shape.collection,
                        key_of(&q.shape, &after),
                        Payload {
                            before: None,
                            after: Some(Data::Structured(after)),
                        },
                        None,
                    );
                    if self.out.send(Event::Record(r)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            if found {
                idle = FIRST_IDLE_PAUSE;
            } else {
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(self.config.polling_period);
            }
        }
    }

    /// Where polling starts without a position: the beginning, or (with `snapshotMode: never`)
    /// after the rows that exist now.
    async fn initial_cursor(&self, client: &Client) -> Result<BTreeMap<String, String>, PgError> {
        let mut cursor = BTreeMap::new();
        if self.config.snapshot_mode == SnapshotMode::Initial {
            return Ok(cursor);
        }
        let col = quote_ident(self.config.ordering_column.as_deref().unwrap_or_default());
        for t in &self.tables {
            let row = client
                .query_one(
                    &format!("SELECT max({col})::text FROM {}", t.qualified()),
                    &[],
                )
                .await
                .map_err(|e| PgError::db(Side::Source, "reading the current maximum", &e))?;
            if let Some(max) = row.get::<_, Option<String>>(0) {
                cursor.insert(t.collection(), max);
            }
        }
        Ok(cursor)
    }
}
