//! Throughput of the `nats` connector without the engine, each beside a direct `async-nats` loop
//! doing the same work in the same run.
//!
//! ```text
//! SLUICE_TEST_NATS_URL=nats://127.0.0.1:4222 \
//!   cargo run --release -p sluice-connectors --example nats_bench -- [records] [payload-bytes]
//! ```
//!
//! Defaults: 200,000 records of 100 bytes. In a fresh stream (file storage, deleted afterwards):
//!
//! 1. **publish, baseline**: `async-nats` JetStream publishes, every publish acknowledgement
//!    awaited, in windows of 1024;
//! 2. **publish, destination**: `NatsDestination::write` of 1024-record batches, `ack` after each
//!    (every publish acknowledgement awaited, as the engine's settlement requires);
//! 3. **consume, baseline**: a durable pull consumer read with `async-nats`' own pull stream,
//!    every message acknowledged (`+ACK`);
//! 4. **consume, source**: `NatsSource::read(1024)` in a loop, every record acknowledged with
//!    `Source::ack` — what a pipeline into a blackhole does.
//!
//! Each prints records/s; nothing is asserted (a benchmark, not a test).

#[cfg(feature = "nats")]
fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    bench::main()
}

#[cfg(not(feature = "nats"))]
fn main() {
    eprintln!("the nats feature is off; nothing to measure");
}

#[cfg(feature = "nats")]
mod bench {
    use std::time::Instant;

    use async_nats::jetstream::{self, consumer, stream};
    use bytes::Bytes;
    use futures::StreamExt;
    use sluice_connectors::nats::NatsPlugin;
    use sluice_sdk::{Plugin, Position, Record, Settings};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    const BATCH: usize = 1024;

    pub fn main() -> Result<(), BoxError> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let records: usize = args.first().map_or(Ok(200_000), |a| a.parse())?;
        let size: usize = args.get(1).map_or(Ok(100), |a| a.parse())?;
        let url = std::env::var("SLUICE_TEST_NATS_URL")
            .map_err(|_| "set SLUICE_TEST_NATS_URL, e.g. nats://127.0.0.1:4222")?;
        tokio::runtime::Runtime::new()?.block_on(run(&url, records, size))
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn report(what: &str, n: usize, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{what:<34} {n:>9} records in {secs:>6.2} s = {:>9.0} records/s",
            n as f64 / secs
        );
    }

    async fn run(url: &str, records: usize, size: usize) -> Result<(), BoxError> {
        let client = async_nats::connect(url).await?;
        let js = jetstream::new(client.clone());
        let name = format!("SLUICE_BENCH_{}", std::process::id());
        let base = format!("sluice-bench-{}", std::process::id());
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{base}.>")],
            ..Default::default()
        })
        .await?;
        let result = measure(url, &js, &name, &base, records, size).await;
        js.delete_stream(&name).await?;
        result
    }

    async fn measure(
        url: &str,
        js: &jetstream::Context,
        stream_name: &str,
        base: &str,
        records: usize,
        size: usize,
    ) -> Result<(), BoxError> {
        println!("NATS JetStream, {records} records of {size} bytes, batches of {BATCH}");
        let body = Bytes::from(vec![b'x'; size]);

        // 1. Baseline publish.
        let subject = format!("{base}.baseline");
        let started = Instant::now();
        let mut sent = 0;
        while sent < records {
            let n = BATCH.min(records - sent);
            let mut acks = Vec::with_capacity(n);
            for _ in 0..n {
                acks.push(js.publish(subject.clone(), body.clone()).await?);
            }
            for ack in acks {
                ack.await?;
            }
            sent += n;
        }
        report("publish, async-nats baseline", records, started);

        // 2. Destination publish.
        let subject = format!("{base}.destination");
        let mut dst = NatsPlugin.new_destination().ok_or("no destination")?;
        dst.configure(&settings(&[
            ("urls", url),
            ("subject", &subject),
            ("format", "raw"),
        ]))
        .await?;
        dst.open().await?;
        let batch: Vec<Record> = (0..BATCH)
            .map(|i| Record::new(Position::from_u64(i as u64), body.clone()))
            .collect();
        let started = Instant::now();
        let mut written = 0;
        while written < records {
            let n = BATCH.min(records - written);
            dst.write(&batch[..n]).await?;
            let acks = dst.ack().await?;
            if !acks.nacks.is_empty() {
                return Err(format!("nacks: {:?}", acks.nacks.first()).into());
            }
            written += acks.count;
        }
        report("publish, nats destination", records, started);
        dst.teardown().await?;

        // 3. Baseline consume (the baseline subject's messages).
        let stream = js.get_stream(stream_name).await?;
        let baseline = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("baseline".into()),
                filter_subject: format!("{base}.baseline"),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 65536,
                ..Default::default()
            })
            .await?;
        let started = Instant::now();
        let mut messages = baseline
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await?;
        let mut got = 0;
        while got < records {
            let Some(message) = messages.next().await else {
                break;
            };
            message?.ack().await?;
            got += 1;
        }
        report("consume+ack, async-nats baseline", got, started);
        drop(messages);

        // 4. Source consume (the destination subject's messages).
        let mut src = NatsPlugin.new_source().ok_or("no source")?;
        src.configure(&settings(&[
            ("urls", url),
            ("stream", stream_name),
            ("subject", &format!("{base}.destination")),
            ("durable", "source"),
        ]))
        .await?;
        src.open(None).await?;
        let started = Instant::now();
        let mut got = 0;
        while got < records {
            let batch = src.read(BATCH).await?;
            let positions: Vec<Position> =
                batch.records.iter().map(|r| r.position.clone()).collect();
            src.ack(&positions).await?;
            got += positions.len();
        }
        report("read+ack, nats source", got, started);
        src.stop().await?;
        src.teardown().await?;
        Ok(())
    }
}
