//! PostgreSQL CDC → NATS: records/s delivered to JetStream while rows are inserted at full speed,
//! end-to-end lag at a fixed insert rate, and both sides' own ceilings (inserts alone, JetStream
//! publishes alone) in the same run.

use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use bytes::Bytes;
use sluice_sdk::Registry;

use super::inserter::{self, Inserted};
use super::nats_io::{self, Arrivals};
use super::table::{rate, Row};
use super::{
    connector, start, timeout_for, BenchError, Plan, TARGET_P99_LAG, TARGET_RECORDS_PER_SEC,
};

/// The names one capture run uses, unique to it.
struct Names {
    table: String,
    slot: String,
    publication: String,
    stream: String,
    subject: String,
}

impl Names {
    fn new(plan: &Plan, what: &str) -> Self {
        Names {
            table: format!("sluice_bench_{}_{what}", plan.tag),
            slot: format!("sluice_bench_{}_{what}", plan.tag),
            publication: format!("sluice_bench_{}_{what}_pub", plan.tag),
            stream: format!("SLUICE_BENCH_{}_{what}", plan.tag),
            subject: format!("sluice-bench.{}.{what}", plan.tag),
        }
    }
}

/// Runs the scenario and appends its rows.
pub async fn run(plan: &Plan, registry: &Registry, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let js = nats_io::connect(&plan.nats_url).await?;
    let n = plan.records;
    let batch = plan.batch as u64;

    eprintln!(
        "{}: pipeline, {n} rows inserted at full speed",
        super::SCENARIO_PG_NATS
    );
    let (full, arrived) = capture(plan, registry, &js, &Names::new(plan, "full"), n, None).await?;
    let delivered_secs =
        (arrived.last_stored_micros - full.first_micros).max(1) as f64 / 1_000_000.0;
    let sluice = n as f64 / delivered_secs;

    eprintln!(
        "{}: baseline, PostgreSQL inserts alone",
        super::SCENARIO_PG_NATS
    );
    let alone = inserts_alone(plan).await?;
    eprintln!(
        "{}: baseline, JetStream publishes alone",
        super::SCENARIO_PG_NATS
    );
    let body_len = usize::try_from(arrived.bytes / arrived.messages.max(1)).unwrap_or(400);
    let publish_secs = publishes_alone(plan, &js, body_len).await?;
    let published = n as f64 / publish_secs.as_secs_f64().max(1e-9);

    let target = format!("≥ {} records/s", rate(TARGET_RECORDS_PER_SEC));
    let met = Some(sluice >= TARGET_RECORDS_PER_SEC);
    rows.push(Row {
        scenario: "PostgreSQL CDC → NATS, rows inserted at full speed".into(),
        records: n,
        arrived: arrived.distinct,
        sluice: format!(
            "{} records/s (inserts ran at {}/s)",
            rate(sluice),
            rate(full.per_second())
        ),
        baseline: format!(
            "PostgreSQL inserts alone ({} rows per INSERT, 4 connections): {} rows/s",
            batch,
            rate(alone.per_second())
        ),
        target: target.clone(),
        ratio: Some(sluice / alone.per_second()),
        met,
    });
    rows.push(Row {
        scenario: "PostgreSQL CDC → NATS, rows inserted at full speed".into(),
        records: n,
        arrived: arrived.distinct,
        sluice: format!("{} records/s", rate(sluice)),
        baseline: format!(
            "JetStream publishes alone ({body_len}-byte bodies, {} in flight): {} msgs/s",
            nats_io::PUBLISH_WINDOW,
            rate(published)
        ),
        target,
        ratio: Some(sluice / published),
        met,
    });
    rows.push(Row {
        scenario: "PostgreSQL CDC → NATS, lag while inserting at full speed".into(),
        records: n,
        arrived: arrived.distinct,
        sluice: lag_text(&arrived),
        baseline: "—".into(),
        target: "—".into(),
        ratio: None,
        met: None,
    });

    let lag_rate = plan.lag_rate;
    let lag_n = lag_rate.saturating_mul(plan.lag_seconds);
    eprintln!(
        "{}: pipeline, {lag_n} rows inserted at {lag_rate} rows/s",
        super::SCENARIO_PG_NATS
    );
    let (paced, arrived) = capture(
        plan,
        registry,
        &js,
        &Names::new(plan, "lag"),
        lag_n,
        Some(lag_rate),
    )
    .await?;
    let p99 = Duration::from_micros(arrived.lag.value_at_quantile(0.99));
    rows.push(Row {
        scenario: format!(
            "PostgreSQL CDC → NATS, end-to-end lag at {} rows/s",
            rate(lag_rate as f64)
        ),
        records: lag_n,
        arrived: arrived.distinct,
        sluice: lag_text(&arrived),
        baseline: format!("inserts kept {} rows/s", rate(paced.per_second())),
        target: format!("p99 ≤ {} ms", TARGET_P99_LAG.as_millis()),
        ratio: None,
        met: Some(p99 <= TARGET_P99_LAG),
    });
    Ok(())
}

fn lag_text(a: &Arrivals) -> String {
    let ms = |q: f64| a.lag.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "lag p50 {:.1} ms / p99 {:.1} ms / max {:.1} ms",
        ms(0.5),
        ms(0.99),
        a.lag.max() as f64 / 1000.0
    )
}

/// One capture: a fresh table, slot, publication and stream; the pipeline started; `n` rows
/// inserted (at `rate`, or at full speed); waits until the stream holds them all, stops the
/// pipeline, reads the stream back and removes everything it made.
async fn capture(
    plan: &Plan,
    registry: &Registry,
    js: &Context,
    names: &Names,
    n: u64,
    rate: Option<u64>,
) -> Result<(Inserted, Arrivals), BenchError> {
    let result = capture_inner(plan, registry, js, names, n, rate).await;
    let dropped = inserter::drop_all(
        &plan.postgres_url,
        &[&names.table],
        Some(&names.publication),
        Some(&names.slot),
    )
    .await;
    let deleted = nats_io::delete_streams(js, &[&names.stream]).await;
    let (inserted, arrived) = result?;
    dropped?;
    deleted?;
    if arrived.messages != n || arrived.distinct != n {
        return Err(BenchError::new(format!(
            "{n} rows inserted, but NATS received {} messages holding {} distinct rows",
            arrived.messages, arrived.distinct
        )));
    }
    Ok((inserted, arrived))
}

async fn capture_inner(
    plan: &Plan,
    registry: &Registry,
    js: &Context,
    names: &Names,
    n: u64,
    rate: Option<u64>,
) -> Result<(Inserted, Arrivals), BenchError> {
    let client = inserter::connect(&plan.postgres_url).await?;
    inserter::create_table(&client, &names.table).await?;
    nats_io::create_stream(js, &names.stream, &names.subject).await?;
    let source = connector(
        "pg",
        "builtin:postgres",
        &[
            ("url", &plan.postgres_url),
            ("tables", &names.table),
            ("cdcMode", "logrepl"),
            ("snapshotMode", "never"),
            ("logrepl.slotName", &names.slot),
            ("logrepl.publicationName", &names.publication),
        ],
    );
    let dest = connector(
        "nats",
        "builtin:nats",
        &[("urls", &plan.nats_url), ("subject", &names.subject)],
    );
    let id = format!("bench-pg-nats-{}", names.table);
    let running = start(&plan.dir, registry, &id, source, dest, plan.batch).await?;
    let outcome = async {
        inserter::wait_slot_active(&plan.postgres_url, &names.slot).await?;
        let batch = match rate {
            Some(r) => (r / 100).max(1),
            None => plan.batch as u64,
        };
        let inserted = inserter::insert(&plan.postgres_url, &names.table, n, batch, rate).await?;
        let timeout = timeout_for(n, TARGET_RECORDS_PER_SEC);
        let deadline = Instant::now() + timeout;
        loop {
            let stored = nats_io::stored(js, &names.stream).await?;
            if stored >= n {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::new(format!(
                    "timed out after {timeout:?}: the stream holds {stored} of {n} records"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(inserted)
    }
    .await;
    let stopped = running.stop().await;
    let inserted = outcome?;
    stopped?;
    let arrived = nats_io::read_arrivals(js, &names.stream, n).await?;
    Ok((inserted, arrived))
}

/// The same inserts into a table nobody captures.
async fn inserts_alone(plan: &Plan) -> Result<Inserted, BenchError> {
    let table = format!("sluice_bench_{}_alone", plan.tag);
    let client = inserter::connect(&plan.postgres_url).await?;
    inserter::create_table(&client, &table).await?;
    let result = inserter::insert(
        &plan.postgres_url,
        &table,
        plan.records,
        plan.batch as u64,
        None,
    )
    .await;
    let dropped = inserter::drop_all(&plan.postgres_url, &[&table], None, None).await;
    let inserted = result?;
    dropped?;
    Ok(inserted)
}

/// The same number of messages, of the pipeline's average size, published straight to
/// JetStream.
async fn publishes_alone(
    plan: &Plan,
    js: &Context,
    body_len: usize,
) -> Result<Duration, BenchError> {
    let stream = format!("SLUICE_BENCH_{}_publish", plan.tag);
    let subject = format!("sluice-bench.{}.publish", plan.tag);
    nats_io::create_stream(js, &stream, &subject).await?;
    let body = Bytes::from(vec![b'x'; body_len.max(1)]);
    let result = nats_io::publish_all(js, &subject, plan.records, |_| body.clone()).await;
    let deleted = nats_io::delete_streams(js, &[&stream]).await;
    let elapsed = result?;
    deleted?;
    Ok(elapsed)
}
