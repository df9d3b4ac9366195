//! The generator: the acceptance kit, the count across restarts, pacing (on tokio's paused
//! clock, so timing assertions are exact rather than flaky), payload size and format, and a
//! throughput measurement (ignored by default; run it in release mode).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_connectors::generator::{GeneratorPlugin, GeneratorSource, MAX_IDLE};
use sluice_sdk::acceptance::{source_acceptance, Expected, SourceCapabilities, SourceFixture};
use sluice_sdk::spec::validate_settings;
use sluice_sdk::{
    ConnectorError, Data, Operation, Plugin, Position, ProgressUnit, Record, Settings, Source,
};
use tokio::time::Instant;

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The built-in payload of record `seq` at `size` bytes, written out independently of the
/// connector's code.
fn expected_payload(seq: u64, size: usize) -> Bytes {
    let alphabet: String = (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let id = seq.to_string();
    let fill = size - 17 - id.len();
    Bytes::from(format!(r#"{{"id":{id},"data":"{}"}}"#, &alphabet[..fill]))
}

/// Configures a generator as the runtime would: validated against its specification first.
async fn generator(pairs: &[(&str, &str)]) -> GeneratorSource {
    let spec = GeneratorPlugin.specification();
    let resolved =
        validate_settings(&spec.source_params, &settings(pairs)).expect("valid settings");
    let mut g = GeneratorSource::new();
    g.configure(&resolved).await.expect("configure");
    g
}

/// Reads until `n` records arrived or the stream ended.
async fn read_n(src: &mut GeneratorSource, n: usize) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = src.read(n - out.len()).await.expect("read");
        out.extend(batch.records);
        if batch.end_of_stream {
            return (out, true);
        }
    }
    (out, false)
}

struct GeneratorFixture {
    format: &'static str,
    predicted: u64,
}

const SIZE: usize = 48;

#[async_trait]
impl SourceFixture for GeneratorFixture {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(GeneratorPlugin)
    }

    async fn settings(&mut self) -> Settings {
        self.predicted = 0;
        settings(&[("format.type", self.format), ("recordSize", "48")])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        (0..n)
            .map(|_| {
                self.predicted += 1;
                Expected::Payload(expected_payload(self.predicted, SIZE))
            })
            .collect()
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (settings(&[("recordCount", "-5")]), "recordCount"),
            (settings(&[("rate", "-1")]), "rate"),
            (settings(&[("rate", "fast")]), "rate"),
            (settings(&[("format.type", "xml")]), "format.type"),
            (settings(&[("operations", "create,upsert")]), "operations"),
            (settings(&[("recordSize", "0")]), "recordSize"),
            (settings(&[("format.type", "file")]), "format.options.path"),
            (
                settings(&[("burst.sleepTime", "1s"), ("burst.generateTime", "0s")]),
                "burst.generateTime",
            ),
            (settings(&[("count", "10")]), "count"),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            live: true,
            self_producing: true,
            ..SourceCapabilities::default()
        }
    }
}

#[tokio::test]
async fn raw_generator_passes_the_acceptance_kit() {
    let report = source_acceptance(GeneratorFixture {
        format: "raw",
        predicted: 0,
    })
    .await;
    for check in [
        "specification",
        "configure",
        "resume",
        "cancel",
        "snapshot-then-live",
    ] {
        assert!(report.passed.contains(&check), "{check}: {report:?}");
    }
}

#[tokio::test]
async fn structured_generator_passes_the_acceptance_kit() {
    let report = source_acceptance(GeneratorFixture {
        format: "structured",
        predicted: 0,
    })
    .await;
    assert!(report.skipped.is_empty(), "{report:?}");
}

#[tokio::test]
async fn the_count_is_honoured_across_a_resume() {
    let pairs = [("recordCount", "10"), ("recordSize", "32")];
    let mut first = generator(&pairs).await;
    first.open(None).await.expect("open");
    let (head, ended) = read_n(&mut first, 4).await;
    assert!(!ended);
    let last = first.stop().await.expect("stop").expect("a position");
    assert_eq!(last, Position::from_u64(4));
    first.teardown().await.expect("teardown");

    let mut second = generator(&pairs).await;
    second.open(Some(&last)).await.expect("resume");
    let (rest, ended) = read_n(&mut second, 100).await;
    assert!(ended, "a finite generator ends its stream");
    let seqs: Vec<u64> = head
        .iter()
        .chain(&rest)
        .map(|r| r.position.to_u64().expect("numeric position"))
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
    let progress = second.progress().expect("progress");
    assert_eq!((progress.done, progress.total), (10, Some(10)));
    assert_eq!(progress.unit, ProgressUnit::Records);

    let mut third = generator(&pairs).await;
    third
        .open(Some(&Position::from_u64(10)))
        .await
        .expect("resume at the end");
    let batch = third.read(5).await.expect("read");
    assert!(batch.records.is_empty() && batch.end_of_stream);
}

#[tokio::test]
async fn the_last_record_comes_with_the_end_of_the_stream() {
    let mut g = generator(&[("recordCount", "5")]).await;
    g.open(None).await.expect("open");
    let batch = g.read(1024).await.expect("read");
    assert_eq!(batch.records.len(), 5);
    assert!(batch.end_of_stream);
    let again = g.read(1024).await.expect("read");
    assert!(
        again.records.is_empty() && again.end_of_stream,
        "end of stream is sticky"
    );
}

#[tokio::test]
async fn max_is_honoured_and_unlimited_keeps_going() {
    let mut g = generator(&[("recordCount", "0")]).await;
    g.open(None).await.expect("open");
    for _ in 0..3 {
        let batch = g.read(7).await.expect("read");
        assert_eq!(batch.records.len(), 7);
        assert!(!batch.end_of_stream);
    }
    assert_eq!(g.progress().map(|p| (p.done, p.total)), Some((21, None)));
}

#[tokio::test]
async fn a_foreign_position_is_rejected() {
    let mut g = generator(&[]).await;
    let err = g
        .open(Some(&Position::new(b"not-a-number")))
        .await
        .expect_err("invalid position");
    assert!(
        matches!(err, ConnectorError::InvalidPosition { .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_is_respected() {
    let mut g = generator(&[("rate", "100")]).await;
    g.open(None).await.expect("open");
    let start = Instant::now();
    let (records, _) = read_n(&mut g, 300).await;
    assert_eq!(records.len(), 300);
    // The first record is due at once, the 300th 2.99 s later.
    let elapsed = start.elapsed();
    assert!(
        (Duration::from_millis(2_980)..=Duration::from_millis(3_010)).contains(&elapsed),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn read_time_is_conduits_older_way_to_set_the_rate() {
    let mut g = generator(&[("readTime", "20ms")]).await;
    g.open(None).await.expect("open");
    let start = Instant::now();
    read_n(&mut g, 51).await;
    let elapsed = start.elapsed();
    assert!(
        (Duration::from_millis(990)..=Duration::from_millis(1_010)).contains(&elapsed),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_rate_returns_empty_batches_instead_of_blocking() {
    let mut g = generator(&[("rate", "0.5")]).await;
    g.open(None).await.expect("open");
    assert_eq!(g.read(10).await.expect("read").records.len(), 1);
    let start = Instant::now();
    let batch = g.read(10).await.expect("read");
    assert!(batch.records.is_empty() && !batch.end_of_stream);
    assert_eq!(start.elapsed(), MAX_IDLE);
    let (next, _) = read_n(&mut g, 1).await;
    assert_eq!(next[0].position, Position::from_u64(2));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn bursts_generate_then_sleep() {
    let mut g = generator(&[
        ("rate", "100"),
        ("burst.generateTime", "100ms"),
        ("burst.sleepTime", "400ms"),
    ])
    .await;
    g.open(None).await.expect("open");
    let start = Instant::now();
    let mut count = 0;
    while start.elapsed() < Duration::from_secs(1) {
        let batch = g.read(1024).await.expect("read");
        let elapsed = start.elapsed();
        if batch.records.is_empty() || elapsed >= Duration::from_secs(1) {
            continue;
        }
        let at = elapsed.as_millis() % 500;
        assert!(
            at < 100,
            "records arrived {at} ms into a 500 ms burst cycle"
        );
        count += batch.records.len();
    }
    // Ten records in each of the two 100 ms bursts; the 400 ms pauses are not made up.
    assert_eq!(count, 20);
}

#[tokio::test]
async fn payloads_are_exactly_record_size() {
    for size in [1usize, 5, 20, 64, 1000] {
        let size_text = size.to_string();
        let mut g = generator(&[("recordSize", size_text.as_str())]).await;
        g.open(None).await.expect("open");
        let batch = g.read(200).await.expect("read");
        for r in &batch.records {
            let payload = r.payload.after.as_ref().expect("payload").to_bytes();
            assert_eq!(payload.len(), size, "record {} at size {size}", r.position);
        }
    }
    let mut g = generator(&[("recordSize", "64")]).await;
    g.open(None).await.expect("open");
    let batch = g.read(3).await.expect("read");
    let after = batch.records[2].payload.after.as_ref().expect("payload");
    assert_eq!(after.to_bytes(), expected_payload(3, 64));
}

#[tokio::test]
async fn structured_payloads_are_json_objects() {
    let mut g = generator(&[("format.type", "structured"), ("recordSize", "100")]).await;
    g.open(None).await.expect("open");
    let batch = g.read(10).await.expect("read");
    for r in &batch.records {
        let Some(Data::Structured(map)) = &r.payload.after else {
            panic!("not structured: {r:?}");
        };
        assert_eq!(map["id"].as_u64(), r.position.to_u64());
        let json = serde_json::to_vec(map).expect("json");
        assert_eq!(json.len(), 100);
        let parsed: serde_json::Value = serde_json::from_slice(&json).expect("parses");
        assert!(parsed["data"].is_string());
    }
}

#[tokio::test]
async fn conduits_example_settings_validate_and_run() {
    let mut g = generator(&[
        ("rate", "1000"),
        ("recordCount", "3"),
        ("burst.generateTime", "1s"),
        ("burst.sleepTime", "1s"),
        ("format.type", "structured"),
        ("operations", "create,update,delete"),
    ])
    .await;
    g.open(None).await.expect("open");
    let (records, ended) = read_n(&mut g, 3).await;
    assert!(ended);
    let ops: Vec<Operation> = records.iter().map(|r| r.operation).collect();
    assert_eq!(
        ops,
        [Operation::Create, Operation::Update, Operation::Delete]
    );
    assert!(records[2].payload.after.is_none() && records[2].payload.before.is_some());
}

#[tokio::test]
async fn records_carry_no_metadata_unless_asked() {
    let mut plain = generator(&[]).await;
    plain.open(None).await.expect("open");
    assert!(plain
        .read(5)
        .await
        .expect("read")
        .records
        .iter()
        .all(|r| r.metadata.is_empty()));

    let mut stamped = generator(&[("metadata.createdAt", "true")]).await;
    stamped.open(None).await.expect("open");
    let batch = stamped.read(5).await.expect("read");
    for r in &batch.records {
        let at: u128 = r.metadata["opencdc.createdAt"]
            .parse()
            .expect("nanoseconds");
        assert!(at > 0);
    }
}

#[tokio::test]
async fn reading_after_stop_ends_and_after_teardown_fails() {
    let mut g = generator(&[]).await;
    g.open(None).await.expect("open");
    g.read(3).await.expect("read");
    assert_eq!(g.stop().await.expect("stop"), Some(Position::from_u64(3)));
    let after_stop = g.read(3).await.expect("read after stop");
    assert!(after_stop.records.is_empty() && after_stop.end_of_stream);
    g.ack(&[Position::from_u64(3)])
        .await
        .expect("acks after stop are accepted");
    g.teardown().await.expect("teardown");
    assert!(matches!(
        g.read(1).await,
        Err(ConnectorError::StreamNotOpen)
    ));
}

/// Measures the generator alone: `cargo test --release -p sluice-connectors --test generator --
/// --ignored --nocapture throughput`.
#[tokio::test]
#[ignore = "a measurement; run in release mode"]
async fn throughput() {
    const BATCH: usize = 1024;
    const RECORDS: u64 = 20_000_000;
    for (label, pairs) in [
        ("raw, 128 B", vec![]),
        ("raw, 1 KiB", vec![("recordSize", "1024")]),
        ("structured, 128 B", vec![("format.type", "structured")]),
    ] {
        let mut g = generator(&pairs).await;
        g.open(None).await.expect("open");
        let start = std::time::Instant::now();
        let mut total = 0u64;
        let mut bytes = 0usize;
        while total < RECORDS {
            let want = BATCH.min((RECORDS - total) as usize);
            let batch = g.read(want).await.expect("read");
            bytes += batch.records.iter().map(Record::size).sum::<usize>();
            total += batch.records.len() as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "generator {label}: {total} records in {secs:.2} s = {:.0} records/s ({:.1} ns/record, {:.0} MB/s)",
            total as f64 / secs,
            secs * 1e9 / total as f64,
            bytes as f64 / secs / 1e6
        );
        assert_eq!(total, RECORDS);
    }
}
