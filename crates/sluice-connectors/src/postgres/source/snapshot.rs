//! The initial snapshot: every row of every configured table, in key order, page by page
//! (keyset pagination, `snapshot.fetchSize` rows per query) inside one repeatable-read
//! transaction, as `snapshot` records.
//!
//! Each record's position names its table and key, so a snapshot interrupted by a restart or a
//! lost connection continues after the last row read, in a new transaction. That later
//! transaction may see rows changed since the first one; those changes are also in the slot
//! (which is not advanced during the snapshot), so at-least-once delivery holds. A table without
//! key has no order to continue in: its snapshot restarts.

use futures::{pin_mut, TryStreamExt};
use sluice_sdk::{Data, Operation, Payload};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::rows::{key_of, record, row_map, Cell, Shape};
use super::Event;
use crate::postgres::catalog::Table;
use crate::postgres::connect::quote_ident;
use crate::postgres::error::{PgError, Side};
use crate::postgres::position::{SnapshotCursor, SourcePosition};

/// Reads the snapshot of `tables` from `cursor` (the last row already delivered, if any) and
/// sends its records; `cursor` follows every record sent, so a caller can retry after a
/// transient failure. Returns `Ok(false)` if the receiver went away.
pub async fn run(
    client: &Client,
    tables: &[Table],
    fetch_size: usize,
    cursor: &mut Option<SnapshotCursor>,
    out: &mpsc::Sender<Event>,
) -> Result<bool, PgError> {
    let start = match cursor {
        None => 0,
        Some(c) => match tables.iter().position(|t| t.collection() == c.table) {
            Some(i) => i,
            // The table is no longer configured: start over, nothing is lost that way.
            None => {
                *cursor = None;
                0
            }
        },
    };
    for table in &tables[start..] {
        let shape = Shape::of_table(table);
        let resume = cursor.take().filter(|c| c.table == shape.collection);
        let alive = if shape.key.is_empty() {
            table_without_key(client, table, &shape, cursor, out).await?
        } else {
            let after = resume.and_then(|c| c.key);
            table_by_key(client, table, &shape, fetch_size, after, cursor, out).await?
        };
        if !alive {
            return Ok(false);
        }
    }
    Ok(true)
}

fn select_list(table: &Table) -> String {
    table
        .stored_columns()
        .enumerate()
        // Aliased, so that ORDER BY names the columns and not these text casts.
        .map(|(i, c)| format!("{}::text AS c{i}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn table_by_key(
    client: &Client,
    table: &Table,
    shape: &Shape,
    fetch_size: usize,
    mut after: Option<Vec<Option<String>>>,
    cursor: &mut Option<SnapshotCursor>,
    out: &mpsc::Sender<Event>,
) -> Result<bool, PgError> {
    let key_cols: Vec<String> = table.key.iter().map(|k| quote_ident(k)).collect();
    let order = key_cols.join(", ");
    let casts: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let ty = table.column(k).map_or("text", |c| c.type_name.as_str());
            format!("${}::text::{ty}", i + 1)
        })
        .collect();
    let first_page = format!(
        "SELECT {} FROM {} ORDER BY {order} LIMIT {fetch_size}",
        select_list(table),
        table.qualified()
    );
    let next_page = format!(
        "SELECT {} FROM {} WHERE ({order}) > ({}) ORDER BY {order} LIMIT {fetch_size}",
        select_list(table),
        table.qualified(),
        casts.join(", ")
    );
    let doing = format!("reading the snapshot of {}", table.collection());
    loop {
        let rows = match &after {
            None => client.query(first_page.as_str(), &[]).await,
            Some(key) => {
                let params: Vec<&(dyn ToSql + Sync)> =
                    key.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                client.query(next_page.as_str(), &params).await
            }
        }
        .map_err(|e| PgError::db(Side::Source, &doing, &e))?;
        let full_page = rows.len() >= fetch_size;
        for row in &rows {
            let key: Vec<Option<String>> = shape
                .key
                .iter()
                .map(|&i| row.get::<_, Option<String>>(i))
                .collect();
            let c = SnapshotCursor {
                table: shape.collection.clone(),
                key: Some(key.clone()),
                row: None,
            };
            if !send_row(shape, row, c.clone(), out).await {
                return Ok(false);
            }
            *cursor = Some(c);
            after = Some(key);
        }
        if !full_page {
            return Ok(true);
        }
    }
}

async fn table_without_key(
    client: &Client,
    table: &Table,
    shape: &Shape,
    cursor: &mut Option<SnapshotCursor>,
    out: &mpsc::Sender<Event>,
) -> Result<bool, PgError> {
    let doing = format!("reading the snapshot of {}", table.collection());
    let sql = format!("SELECT {} FROM {}", select_list(table), table.qualified());
    let params: [&(dyn ToSql + Sync); 0] = [];
    let rows = client
        .query_raw(sql.as_str(), params)
        .await
        .map_err(|e| PgError::db(Side::Source, &doing, &e))?;
    pin_mut!(rows);
    let mut n = 0u64;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| PgError::db(Side::Source, &doing, &e))?
    {
        n += 1;
        let c = SnapshotCursor {
            table: shape.collection.clone(),
            key: None,
            row: Some(n),
        };
        if !send_row(shape, &row, c.clone(), out).await {
            return Ok(false);
        }
        *cursor = Some(c);
    }
    Ok(true)
}

async fn send_row(shape: &Shape, row: &Row, c: SnapshotCursor, out: &mpsc::Sender<Event>) -> bool {
    let cells = (0..shape.columns.len()).map(|i| match row.get::<_, Option<&str>>(i) {
        Some(t) => Cell::Text(t),
        None => Cell::Null,
    });
    let after = row_map(shape, cells);
    let key = key_of(shape, &after);
    let r = record(
        SourcePosition::Snapshot(c).encode(),
        Operation::Snapshot,
        &shape.collection,
        key,
        Payload {
            before: None,
            after: Some(Data::Structured(after)),
        },
        None,
    );
    out.send(Event::Record(r)).await.is_ok()
}
