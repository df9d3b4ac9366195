//! NATS → PostgreSQL: records/s from a pre-filled JetStream stream into a table through the
//! `nats` source and the batching `postgres` destination, beside a direct loop that consumes the
//! stream and upserts batches of the same size with one statement each.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use sluice_sdk::Registry;
use tokio_postgres::Client;

use super::inserter::{self, PAD};
use super::nats_io;
use super::table::{rate, Row};
use super::{connector, start, timeout_for, BenchError, Plan, TARGET_RECORDS_PER_SEC};

/// Runs the scenario and appends its row.
pub async fn run(plan: &Plan, registry: &Registry, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let js = nats_io::connect(&plan.nats_url).await?;
    let stream = format!("SLUICE_BENCH_{}_in", plan.tag);
    let sluice_table = format!("sluice_bench_{}_in_sluice", plan.tag);
    let direct_table = format!("sluice_bench_{}_in_direct", plan.tag);
    let result = measure(plan, registry, &js, &stream, &sluice_table, &direct_table).await;
    let dropped = inserter::drop_all(
        &plan.postgres_url,
        &[&sluice_table, &direct_table],
        None,
        None,
    )
    .await;
    let deleted = nats_io::delete_streams(&js, &[&stream]).await;
    let row = result?;
    dropped?;
    deleted?;
    rows.push(row);
    Ok(())
}

async fn measure(
    plan: &Plan,
    registry: &Registry,
    js: &Context,
    stream: &str,
    sluice_table: &str,
    direct_table: &str,
) -> Result<Row, BenchError> {
    let n = plan.records;
    let subject = format!("sluice-bench.{}.in", plan.tag);
    eprintln!(
        "{}: filling the stream with {n} JSON messages",
        super::SCENARIO_NATS_PG
    );
    nats_io::create_stream(js, stream, &subject).await?;
    let stamp = inserter::now_micros();
    nats_io::publish_all(js, &subject, n, |i| {
        Bytes::from(format!(
            "{{\"id\":{i},\"ts_us\":{stamp},\"payload\":\"{PAD}\"}}"
        ))
    })
    .await?;
    let client = inserter::connect(&plan.postgres_url).await?;
    inserter::create_table(&client, sluice_table).await?;
    inserter::create_table(&client, direct_table).await?;

    eprintln!("{}: pipeline", super::SCENARIO_NATS_PG);
    let source = connector(
        "nats",
        "builtin:nats",
        &[
            ("urls", &plan.nats_url),
            ("stream", stream),
            ("durable", &format!("sluice-bench-{}", plan.tag)),
            ("deliverPolicy", "all"),
            ("format", "raw"),
        ],
    );
    let dest = connector(
        "pg",
        "builtin:postgres",
        &[
            ("url", &plan.postgres_url),
            ("table", sluice_table),
            ("key", "id"),
        ],
    );
    let started = Instant::now();
    let id = format!("bench-nats-pg-{sluice_table}");
    let running = start(&plan.dir, registry, &id, source, dest, plan.batch).await?;
    let waited = running
        .wait_acked(n, timeout_for(n, TARGET_RECORDS_PER_SEC))
        .await;
    let stopped = running.stop().await;
    let sluice_secs = waited?.duration_since(started).as_secs_f64();
    stopped?;
    let sluice_rows = inserter::count(&client, sluice_table).await?;
    if sluice_rows != n {
        return Err(BenchError::new(format!(
            "the pipeline acknowledged every record, but the table holds {sluice_rows} of {n} rows"
        )));
    }

    eprintln!(
        "{}: baseline, direct consume + upsert loop",
        super::SCENARIO_NATS_PG
    );
    let direct_secs = direct_loop(plan, js, stream, &client, direct_table).await?;
    let direct_rows = inserter::count(&client, direct_table).await?;
    if direct_rows != n {
        return Err(BenchError::new(format!(
            "the direct loop left {direct_rows} of {n} rows in its table"
        )));
    }
    let sluice = n as f64 / sluice_secs.max(1e-9);
    let direct = n as f64 / direct_secs.max(1e-9);
    Ok(Row {
        scenario: format!("NATS → PostgreSQL, upserts in batches of {}", plan.batch),
        records: n,
        arrived: sluice_rows,
        sluice: format!("{} records/s", rate(sluice)),
        baseline: format!(
            "direct loop (pull {} messages, one multi-row upsert, ack): {} records/s",
            plan.batch,
            rate(direct)
        ),
        target: format!("≥ {} records/s", rate(TARGET_RECORDS_PER_SEC)),
        ratio: Some(sluice / direct),
        met: Some(sluice >= TARGET_RECORDS_PER_SEC),
    })
}

/// A message of the pre-filled stream.
#[derive(Deserialize)]
struct Message<'a> {
    id: i64,
    ts_us: i64,
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
}

/// Consumes the whole stream through a durable consumer, upserting each batch of up to
/// `plan.batch` ready messages with one statement and then acknowledging it (ack-all on its
/// last message); returns the seconds it took.
async fn direct_loop(
    plan: &Plan,
    js: &Context,
    stream: &str,
    client: &Client,
    table: &str,
) -> Result<f64, BenchError> {
    let n = plan.records;
    let started = Instant::now();
    let statement = client
        .prepare(&format!(
            "{} ON CONFLICT (id) DO UPDATE SET ts_us = EXCLUDED.ts_us, payload = EXCLUDED.payload",
            inserter::insert_sql(table)
        ))
        .await
        .map_err(BenchError::ctx("preparing the upsert"))?;
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = js
        .get_stream(stream)
        .await
        .map_err(BenchError::ctx("looking up the stream"))?
        .create_consumer(pull::Config {
            durable_name: Some(format!("direct-{}", plan.tag)),
            ack_policy: AckPolicy::All,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: 65_536,
            ..pull::Config::default()
        })
        .await
        .map_err(BenchError::ctx("creating the direct consumer"))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(plan.batch)
        .messages()
        .await
        .map_err(BenchError::ctx("consuming"))?;
    let mut chunks = messages.ready_chunks(plan.batch);
    let deadline = Instant::now() + timeout_for(n, TARGET_RECORDS_PER_SEC);
    let mut done = 0u64;
    while done < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk =
            match tokio::time::timeout(left.max(Duration::from_millis(1)), chunks.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Err(BenchError::new("the consumer's messages ended")),
                Err(_) => {
                    return Err(BenchError::new(format!(
                        "the direct loop timed out after {done} of {n} records"
                    )))
                }
            };
        let mut batch = Vec::with_capacity(chunk.len());
        for m in chunk {
            batch.push(m.map_err(BenchError::ctx("reading a message"))?);
        }
        let mut ids = Vec::with_capacity(batch.len());
        let mut stamps = Vec::with_capacity(batch.len());
        let mut pads = Vec::with_capacity(batch.len());
        for m in &batch {
            let row: Message<'_> = serde_json::from_slice(&m.payload)
                .map_err(BenchError::ctx("decoding a message"))?;
            ids.push(row.id);
            stamps.push(row.ts_us);
            pads.push(row.payload.into_owned());
        }
        client
            .execute(&statement, &[&ids, &stamps, &pads])
            .await
            .map_err(BenchError::ctx("upserting a batch"))?;
        if let Some(last) = batch.last() {
            last.ack()
                .await
                .map_err(|e| BenchError::new(format!("acknowledging a batch: {e}")))?;
        }
        done += batch.len() as u64;
    }
    Ok(started.elapsed().as_secs_f64())
}
