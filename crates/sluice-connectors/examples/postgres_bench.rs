//! Throughput and lag of the `postgres` connector without the engine, each beside a baseline
//! measured in the same run. Needs `SLUICE_TEST_POSTGRES_URL` (and wal_level = logical for `cdc`).
//!
//! ```text
//! cargo run --release -p sluice-connectors --example postgres_bench -- cdc  [rows] [rows per tx] [rate/s]
//! cargo run --release -p sluice-connectors --example postgres_bench -- dest [rows] [batch]
//! ```
//!
//! `cdc` has two phases on a fresh table, slot and publication:
//! 1. *backlog*: `rows` rows are inserted (`rows per tx` per transaction, default 1,000) while
//!    the source is not reading, then the source drains them: records/s of the source alone,
//!    acking every 50 ms as the engine does. Baseline: the server decoding the same WAL
//!    (`pg_logical_slot_peek_binary_changes` over a second slot, counted server-side).
//! 2. *live*: `rows` more rows are inserted at `rate` rows/s (default 50,000) while the source
//!    reads: end-to-end lag from commit (`opencdc.createdAt`) to read (`opencdc.readAt`),
//!    p50/p99/max, and the read rate.
//!
//! `dest` writes `rows` structured records (4 columns) through the destination in `batch`-record
//! writes, acking after each as the engine does, as upserts into an empty table; baseline:
//! `COPY ... FROM STDIN` of the same rows through one client.
//!
//! Everything created is dropped at the end.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use hdrhistogram::Histogram;
use serde_json::json;
use sluice_connectors::postgres::PostgresPlugin;
use sluice_sdk::record::metadata;
use sluice_sdk::{Data, Operation, Payload, Plugin, Position, Record, Settings, Source};
use tokio_postgres::{Client, NoTls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ACK_EVERY: Duration = Duration::from_millis(50);

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| -> Result<u64, BoxError> {
        Ok(match args.get(i) {
            Some(v) => v.parse()?,
            None => default,
        })
    };
    let url = std::env::var("SLUICE_TEST_POSTGRES_URL")
        .map_err(|_| "set SLUICE_TEST_POSTGRES_URL (postgres://postgres@127.0.0.1:5432/test)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("cdc") => {
            runtime.block_on(cdc(&url, num(1, 200_000)?, num(2, 1_000)?, num(3, 50_000)?))
        }
        Some("dest") => runtime.block_on(dest(&url, num(1, 200_000)?, num(2, 1_000)?)),
        _ => Err(
            "usage: postgres_bench cdc [rows] [rows per tx] [rate/s] | dest [rows] [batch]".into(),
        ),
    }
}

async fn client(url: &str) -> Result<Client, BoxError> {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Inserts `count` rows from id `first`, `per_tx` per transaction, paced to `rate` rows/s (0: as
/// fast as possible).
async fn insert(
    db: &Client,
    table: &str,
    first: u64,
    count: u64,
    per_tx: u64,
    rate: u64,
) -> Result<(), BoxError> {
    let start = Instant::now();
    let mut done = 0;
    while done < count {
        let n = per_tx.min(count - done);
        let lo = first + done;
        db.execute(
            &format!(
                "INSERT INTO {table} (id, name, amount) SELECT g, 'customer ' || g, g * 1.25 \
                 FROM generate_series($1::bigint, $2::bigint) g"
            ),
            &[&(lo as i64), &((lo + n - 1) as i64)],
        )
        .await?;
        done += n;
        if rate > 0 {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(())
}

struct Drained {
    records: u64,
    elapsed: Duration,
    lag: Histogram<u64>,
}

/// Reads `count` records, acking every 50 ms; records the commit-to-read lag of each.
async fn drain(src: &mut dyn Source, count: u64) -> Result<Drained, BoxError> {
    let mut lag = Histogram::<u64>::new(3)?;
    let mut got = 0u64;
    let mut pending: Vec<Position> = Vec::new();
    let mut last_ack = Instant::now();
    let mut started: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < count {
        if Instant::now() > deadline {
            return Err(format!("only {got} of {count} records arrived").into());
        }
        let batch = src.read(1000).await?;
        if started.is_none() && !batch.records.is_empty() {
            started = Some(Instant::now());
        }
        for r in &batch.records {
            let created: i128 = r.metadata[metadata::CREATED_AT].parse()?;
            let read: i128 = r.metadata[metadata::READ_AT].parse()?;
            lag.record(u64::try_from((read - created).max(0) / 1000).unwrap_or(u64::MAX))?;
            pending.push(r.position.clone());
        }
        got += batch.records.len() as u64;
        if last_ack.elapsed() >= ACK_EVERY {
            src.ack(&pending).await?;
            pending.clear();
            last_ack = Instant::now();
        }
    }
    src.ack(&pending).await?;
    Ok(Drained {
        records: got,
        elapsed: started.map_or(Duration::ZERO, |s| s.elapsed()),
        lag,
    })
}

async fn cdc(url: &str, rows: u64, per_tx: u64, rate: u64) -> Result<(), BoxError> {
    let db = client(url).await?;
    let tag = std::process::id();
    let table = format!("sl_bench_cdc_{tag}");
    let slot = format!("sl_bench_slot_{tag}");
    let baseline_slot = format!("sl_bench_base_{tag}");
    let publication = format!("sl_bench_pub_{tag}");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, amount numeric(12,2), \
         at timestamptz DEFAULT now())"
    ))
    .await?;
    let outcome = async {
        let s = settings(&[
            ("url", url),
            ("tables", &table),
            ("cdcMode", "logrepl"),
            ("snapshotMode", "never"),
            ("logrepl.slotName", &slot),
            ("logrepl.publicationName", &publication),
        ]);
        let mut src = PostgresPlugin.new_source().ok_or("no source side")?;
        src.configure(&s).await?;
        src.open(None).await?;
        db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&baseline_slot],
        )
        .await?;

        println!("postgres CDC: {rows} rows, {per_tx} per transaction");
        let t = Instant::now();
        insert(&db, &table, 1, rows, per_tx, 0).await?;
        println!(
            "  insert backlog: {:.0} rows/s (the writer, for scale)",
            rows as f64 / t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let decoded: i64 = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
                     'proto_version', '1', 'publication_names', '{publication}')"
                ),
                &[&baseline_slot],
            )
            .await?
            .get(0);
        let base = t.elapsed();
        println!(
            "  baseline, server-side decoding (peek over a second slot): {decoded} messages in \
             {:.3} s = {:.0} messages/s",
            base.as_secs_f64(),
            decoded as f64 / base.as_secs_f64()
        );
        db.execute("SELECT pg_drop_replication_slot($1)", &[&baseline_slot])
            .await?;

        let backlog = drain(src.as_mut(), rows).await?;
        println!(
            "  source, backlog: {} records in {:.3} s = {:.0} records/s",
            backlog.records,
            backlog.elapsed.as_secs_f64(),
            backlog.records as f64 / backlog.elapsed.as_secs_f64()
        );

        let writer = {
            let url = url.to_string();
            let table = table.clone();
            tokio::spawn(async move {
                let w = client(&url).await?;
                let t = Instant::now();
                insert(&w, &table, rows + 1, rows, per_tx, rate).await?;
                Ok::<Duration, BoxError>(t.elapsed())
            })
        };
        let live = drain(src.as_mut(), rows).await?;
        let wrote = writer.await??;
        println!(
            "  writer, live: {rows} rows in {:.3} s = {:.0} rows/s",
            wrote.as_secs_f64(),
            rows as f64 / wrote.as_secs_f64()
        );
        let q = |p: f64| live.lag.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "  source, live at {rate} rows/s: {} records in {:.3} s = {:.0} records/s; lag \
             commit -> read: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            live.records,
            live.elapsed.as_secs_f64(),
            live.records as f64 / live.elapsed.as_secs_f64(),
            q(0.5),
            q(0.99),
            live.lag.max() as f64 / 1000.0
        );
        src.teardown().await?;
        Ok::<(), BoxError>(())
    }
    .await;
    for s in [&slot, &baseline_slot] {
        let _ = db
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[s],
            )
            .await;
    }
    let _ = db
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {publication}; DROP TABLE IF EXISTS {table}"
        ))
        .await;
    outcome
}

async fn dest(url: &str, rows: u64, batch: u64) -> Result<(), BoxError> {
    let db = client(url).await?;
    let tag = std::process::id();
    let table = format!("sl_bench_dest_{tag}");
    let copy_table = format!("sl_bench_copy_{tag}");
    for t in [&table, &copy_table] {
        db.batch_execute(&format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, name text, amount numeric(12,2), \
             at timestamptz)"
        ))
        .await?;
    }
    let outcome = async {
        println!("postgres destination: {rows} records, {batch} per write and ack");
        let t = Instant::now();
        let sink = db
            .copy_in(&format!(
                "COPY {copy_table} (id, name, amount, at) FROM STDIN"
            ))
            .await?;
        futures::pin_mut!(sink);
        let mut buf = String::with_capacity(1 << 20);
        for i in 1..=rows {
            buf.push_str(&format!(
                "{i}\tcustomer {i}\t{}.25\t2024-01-02 03:04:05+00\n",
                i
            ));
            if buf.len() > (1 << 20) - 256 {
                sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
            }
        }
        sink.send(Bytes::from(buf)).await?;
        sink.finish().await?;
        let base = t.elapsed();
        println!(
            "  baseline, COPY FROM STDIN: {:.0} rows/s",
            rows as f64 / base.as_secs_f64()
        );

        let mut dst = PostgresPlugin
            .new_destination()
            .ok_or("no destination side")?;
        dst.configure(&settings(&[("url", url), ("table", &table)]))
            .await?;
        dst.open().await?;
        let record = |i: u64| Record {
            position: Position::from_u64(i),
            operation: Operation::Create,
            key: Some(Data::Structured(
                json!({"id": i}).as_object().cloned().unwrap_or_default(),
            )),
            payload: Payload {
                before: None,
                after: Some(Data::Structured(
                    json!({"id": i, "name": format!("customer {i}"), "amount": format!("{i}.25"),
                           "at": "2024-01-02 03:04:05+00"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                )),
            },
            ..Record::default()
        };
        let t = Instant::now();
        let mut acked = 0usize;
        let mut i = 1;
        while i <= rows {
            let n = batch.min(rows - i + 1);
            let records: Vec<Record> = (i..i + n).map(record).collect();
            dst.write(&records).await?;
            let acks = dst.ack().await?;
            if !acks.nacks.is_empty() {
                return Err(format!("nacked: {:?}", acks.nacks[0]).into());
            }
            acked += acks.count;
            i += n;
        }
        let took = t.elapsed();
        println!(
            "  destination, upserts: {acked} records in {:.3} s = {:.0} records/s",
            took.as_secs_f64(),
            acked as f64 / took.as_secs_f64()
        );
        let stored: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        if stored as u64 != rows {
            return Err(format!("the table holds {stored} rows, not {rows}").into());
        }
        dst.teardown().await?;
        Ok::<(), BoxError>(())
    }
    .await;
    let _ = db
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {copy_table}"
        ))
        .await;
    outcome
}
