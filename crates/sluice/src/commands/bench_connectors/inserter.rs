//! Rows into PostgreSQL from a client of its own: the benchmark table's schema, inserts in
//! multi-row batches (at full speed or paced to a rate), counting, and dropping what a run made.
//!
//! Every row carries the wall-clock time (Unix microseconds) at which its INSERT was sent, so
//! that whoever reads it back can compute its end-to-end lag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls, Statement};

use super::BenchError;

/// Connections inserting concurrently at full speed.
const WRITERS: usize = 4;

/// Filler making each row about 100 bytes of text.
pub const PAD: &str = "sluice-benchmark-row-padding-sluice-benchmark-row-padding-sluice-benchmark-row-padding-xxxxxxxxxxxx";

/// Now, in Unix microseconds.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Opens a connection; its driver runs on a task of its own.
pub async fn connect(url: &str) -> Result<Client, BenchError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(BenchError::ctx("connecting to PostgreSQL"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "bench: a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Creates `table` (dropping an old one): `id bigint` key, `ts_us bigint`, `payload text`.
pub async fn create_table(client: &Client, table: &str) -> Result<(), BenchError> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id bigint PRIMARY KEY, ts_us bigint NOT NULL, payload text NOT NULL)"
        ))
        .await
        .map_err(BenchError::ctx("creating the table"))
}

/// Rows in `table`.
pub async fn count(client: &Client, table: &str) -> Result<u64, BenchError> {
    let row = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(BenchError::ctx("counting rows"))?;
    let n: i64 = row.get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The statement inserting one batch from three arrays (ids, timestamps, payloads).
pub fn insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (id, ts_us, payload) \
         SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[])"
    )
}

/// How a run of inserts went.
#[derive(Debug, Clone, Copy)]
pub struct Inserted {
    /// Rows inserted.
    pub rows: u64,
    /// Wall time from the first INSERT sent to the last one committed.
    pub elapsed: Duration,
    /// The Unix microseconds stamped on the first batch.
    pub first_micros: i64,
}

impl Inserted {
    /// Rows per second.
    pub fn per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Inserts rows with ids `0..rows` into `table` in batches of `batch` on [`WRITERS`]
/// connections: at full speed, or with batch `k` sent at `k × batch / rate` seconds after the
/// start when `rate` is given (late batches go at once, on whichever connection is free).
pub async fn insert(
    url: &str,
    table: &str,
    rows: u64,
    batch: u64,
    rate: Option<u64>,
) -> Result<Inserted, BenchError> {
    let mut clients = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        let client = connect(url).await?;
        let statement = client
            .prepare(&insert_sql(table))
            .await
            .map_err(BenchError::ctx("preparing the INSERT"))?;
        clients.push((client, statement));
    }
    let batch = batch.max(1);
    let batches = rows.div_ceil(batch);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let first_micros = now_micros();
    let mut tasks = tokio::task::JoinSet::new();
    for (client, statement) in clients {
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= batches {
                    return Ok::<(), BenchError>(());
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64((k * batch) as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let from = k * batch;
                let to = (from + batch).min(rows);
                insert_batch(&client, &statement, from, to).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(BenchError::ctx("an insert task"))??;
    }
    Ok(Inserted {
        rows,
        elapsed: started.elapsed(),
        first_micros,
    })
}

/// Inserts ids `from..to`, stamped with the time now.
async fn insert_batch(
    client: &Client,
    statement: &Statement,
    from: u64,
    to: u64,
) -> Result<(), BenchError> {
    let ids: Vec<i64> = (from..to)
        .map(|i| i64::try_from(i).unwrap_or(i64::MAX))
        .collect();
    let stamp = now_micros();
    let stamps = vec![stamp; ids.len()];
    let pads = vec![PAD; ids.len()];
    client
        .execute(statement, &[&ids, &stamps, &pads])
        .await
        .map_err(BenchError::ctx("inserting rows"))?;
    Ok(())
}

/// Drops the tables, the publication and the replication slot a run made, waiting (up to 10 s)
/// for the slot to be released by its pipeline. Everything is attempted; the first failure is
/// returned.
pub async fn drop_all(
    url: &str,
    tables: &[&str],
    publication: Option<&str>,
    slot: Option<&str>,
) -> Result<(), BenchError> {
    let client = connect(url).await?;
    let mut first: Option<BenchError> = None;
    if let Some(slot) = slot {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client
                .query(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(BenchError::ctx("looking up the slot"));
            match r {
                Ok(rows) if rows.is_empty() => break,
                Ok(rows) if !rows[0].get::<_, bool>(0) => {
                    if let Err(e) = client
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await
                    {
                        first.get_or_insert(BenchError::new(format!(
                            "dropping the slot {slot}: {e}"
                        )));
                    }
                    break;
                }
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(_) => {
                    first.get_or_insert(BenchError::new(format!(
                        "the slot {slot} is still in use; drop it by hand"
                    )));
                    break;
                }
                Err(e) => {
                    first.get_or_insert(e);
                    break;
                }
            }
        }
    }
    if let Some(publication) = publication {
        if let Err(e) = client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {publication}"))
            .await
        {
            first.get_or_insert(BenchError::new(format!("dropping {publication}: {e}")));
        }
    }
    for table in tables {
        if let Err(e) = client
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
        {
            first.get_or_insert(BenchError::new(format!("dropping {table}: {e}")));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Waits (up to 30 s) until the replication slot `slot` exists and is in use.
pub async fn wait_slot_active(url: &str, slot: &str) -> Result<(), BenchError> {
    let client = connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = client
            .query(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(BenchError::ctx("looking up the slot"))?;
        if rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::new(format!(
                "the pipeline did not start streaming from slot {slot} within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
