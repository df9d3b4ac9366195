//! Throughput of the `amqp` connector beside a direct lapin loop, in the same run (prints only).
//!
//! ```text
//! SLUICE_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f' \
//!   cargo run --release -p sluice-connectors --example amqp_bench -- [records] [batch] [rounds]
//! ```
//!
//! Write: the destination gets `batch` records per `write` followed by an `ack` (publisher
//! confirms awaited), as the engine drives it; the baseline publishes the same 200-byte bodies
//! with lapin on a confirm channel and awaits each batch's confirms. Read: the source is drained
//! with `read(batch)` + `ack`; the baseline consumes with the same prefetch and acks each batch
//! with `multiple`. Every run uses fresh queues and deletes them.

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sluice_connectors::amqp::AmqpPlugin;
use sluice_sdk::{Data, Plugin, Position, Record, Settings};

type BoxError = Box<dyn std::error::Error>;

const BODY: usize = 200;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let records: usize = args.first().map_or(Ok(100_000), |s| s.parse())?;
    let batch: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let rounds: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let url = std::env::var("SLUICE_TEST_AMQP_URL")
        .map_err(|_| "set SLUICE_TEST_AMQP_URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f")?;
    let runtime = tokio::runtime::Runtime::new()?;
    for round in 1..=rounds {
        println!("-- round {round} of {rounds}");
        runtime.block_on(run(&url, records, batch, round))?;
    }
    Ok(())
}

fn body(i: usize) -> Bytes {
    let mut s = format!("{{\"id\":{i},\"data\":\"");
    while s.len() < BODY - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

fn settings(url: &str, queue: &str) -> Settings {
    [("url", url), ("queueName", queue)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn report(what: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what:<38} {n:>8} records in {secs:>6.2}s = {:>9.0} records/s",
        n as f64 / secs
    );
}

async fn run(url: &str, records: usize, batch: usize, round: usize) -> Result<(), BoxError> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let pid = std::process::id();
    let direct_q = format!("sluice-bench-direct-{pid}-{round}");
    let sluice_q = format!("sluice-bench-sluice-{pid}-{round}");
    for q in [&direct_q, &sluice_q] {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(q.as_str().into(), options, FieldTable::default())
            .await?;
    }
    let bodies: Vec<Bytes> = (0..records).map(body).collect();
    println!("{records} persistent messages of {BODY} bytes, batches of {batch}, durable queues");

    // Write: direct lapin publishing with confirms.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    for chunk in bodies.chunks(batch) {
        for b in chunk {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    direct_q.as_str().into(),
                    BasicPublishOptions::default(),
                    b,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            // Awaited all together by wait_for_confirms below.
            drop(confirm);
        }
        channel.wait_for_confirms().await?;
    }
    report("write: lapin publish + confirms", records, started);

    // Write: the destination.
    let mut dst = AmqpPlugin::new()
        .new_destination()
        .ok_or("no destination")?;
    dst.configure(&settings(url, &sluice_q)).await?;
    dst.open().await?;
    let recs: Vec<Record> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Record::new(Position::from_u64(i as u64 + 1), Data::Raw(b.clone())))
        .collect();
    let started = Instant::now();
    for chunk in recs.chunks(batch) {
        dst.write(chunk).await?;
        let acks = dst.ack().await?;
        if !acks.nacks.is_empty() {
            return Err(format!("{} nacks", acks.nacks.len()).into());
        }
    }
    report("write: amqp destination", records, started);
    dst.teardown().await?;

    // Read: direct lapin consumer.
    let consume_channel = conn.create_channel().await?;
    consume_channel
        .basic_qos(2000, BasicQosOptions::default())
        .await?;
    let mut consumer = consume_channel
        .basic_consume(
            direct_q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut n = 0;
    while n < records {
        let delivery = consumer.next().await.ok_or("consumer ended")??;
        n += 1;
        if n % batch == 0 || n == records {
            consume_channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    report("read: lapin consume + ack(multiple)", records, started);

    // Read: the source.
    let mut src = AmqpPlugin::new().new_source().ok_or("no source")?;
    let mut source_settings = settings(url, &sluice_q);
    source_settings.insert("prefetchCount".into(), "2000".into());
    src.configure(&source_settings).await?;
    src.open(None).await?;
    let started = Instant::now();
    let mut n = 0;
    while n < records {
        let read = src.read(batch).await?;
        let positions: Vec<Position> = read.records.iter().map(|r| r.position.clone()).collect();
        n += read.records.len();
        src.ack(&positions).await?;
    }
    report("read: amqp source", records, started);
    src.stop().await?;
    src.teardown().await?;

    for q in [&direct_q, &sluice_q] {
        channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    conn.close(200, "bye".into()).await?;
    Ok(())
}
