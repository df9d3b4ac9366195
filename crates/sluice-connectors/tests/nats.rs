//! Integration tests of the `nats` connector against a real NATS server with JetStream
//! (`SLUICE_TEST_NATS_URL`, e.g. `nats://127.0.0.1:4222`; skipped with a message when unset).
//!
//! Every test makes its own streams, subjects and consumers with unique names and deletes its
//! streams when it ends. The broker-restart test stops and starts the local `nats-server`, so it
//! runs only when `SLUICE_TEST_RESTART_SERVICES=1`.
#![cfg(feature = "nats")]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use sluice_connectors::nats::NatsPlugin;
use sluice_sdk::acceptance::{
    destination_acceptance, source_acceptance, DestinationFixture, Expected, SourceCapabilities,
    SourceFixture, Written,
};
use sluice_sdk::{ConnectorError, Data, Operation, Plugin, Position, Record, Settings};

mod support;
use support::{open_source, raw_payload, read_n, settings};

/// The server's URL, or `None` (with the reason printed) when `test` must skip; also sets up
/// logging to the test's output.
fn nats_url(test: &str) -> Option<String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    support::service_url("SLUICE_TEST_NATS_URL", test, "nats://127.0.0.1:4222")
}

/// A name no other test run uses: `prefix_<pid>_<nanos>_<counter>`.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn jetstream_context(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    jetstream::new(client)
}

/// Streams made by a test, deleted by [`Streams::delete_all`].
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<Vec<String>>>);

impl Streams {
    /// Makes a stream capturing `subject`; its messages expire after ten minutes in case the
    /// test dies before deleting it.
    async fn create(&self, js: &jetstream::Context, name: &str, subject: &str) {
        // The broker-restart test in this file may have the server down for a moment: retry.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = js
                .create_stream(stream::Config {
                    name: name.to_string(),
                    subjects: vec![subject.to_string()],
                    max_age: Duration::from_secs(600),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("create stream {name}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("create stream {name}: {e}"),
            }
        }
        self.0.lock().expect("lock").push(name.to_string());
    }

    async fn delete_all(&self, js: &jetstream::Context) {
        let names: Vec<String> = std::mem::take(&mut *self.0.lock().expect("lock"));
        for name in names {
            let _ = js.delete_stream(&name).await;
        }
    }
}

async fn publish(js: &jetstream::Context, subject: &str, payload: Bytes) {
    js.publish(subject.to_string(), payload)
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

// ---------------------------------------------------------------------------------------------
// The acceptance kit.

struct SourceFx {
    url: String,
    js: jetstream::Context,
    streams: Streams,
    subject: String,
    produced: usize,
}

#[async_trait]
impl SourceFixture for SourceFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(NatsPlugin)
    }

    async fn settings(&mut self) -> Settings {
        let stream = unique("SLUICE_SRC");
        self.subject = format!("{}.events", stream.to_lowercase());
        self.streams.create(&self.js, &stream, &self.subject).await;
        settings(&[
            ("urls", &self.url),
            ("stream", &stream),
            ("subject", &self.subject),
            ("durable", &unique("durable")),
        ])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let mut expected = Vec::with_capacity(n);
        for _ in 0..n {
            self.produced += 1;
            let body = Bytes::from(format!("message {} with\nnewline and \0", self.produced));
            publish(&self.js, &self.subject, body.clone()).await;
            expected.push(Expected::Payload(body));
        }
        expected
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        let base = [
            ("urls", self.url.as_str()),
            ("stream", "S"),
            ("durable", "d"),
        ];
        let with = support::with_setting(&base);
        vec![
            with("deliverPolicy", "sometimes"),
            with("bufferSize", "0"),
            with("format", "xml"),
            with("ackWait", "0s"),
            with("urls", "nats://a b"),
            with("stream", "has.dots"),
            with("createStream", "true"),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        support::LIVE_AND_RESUMABLE
    }
}

#[tokio::test]
async fn source_passes_the_acceptance_kit() {
    let _broker = support::BROKER.read().await;
    let Some(url) = nats_url("source_passes_the_acceptance_kit") else {
        return;
    };
    let js = jetstream_context(&url).await;
    let streams = Streams::default();
    let fx = SourceFx {
        url,
        js: js.clone(),
        streams: streams.clone(),
        subject: String::new(),
        produced: 0,
    };
    let report = source_acceptance(fx).await;
    streams.delete_all(&js).await;
    for check in [
        "read",
        "snapshot-then-live",
        "resume",
        "acks",
        "stop",
        "cancel",
    ] {
        assert!(report.passed.contains(&check), "{check}: {report:?}");
    }
}

struct DestinationFx {
    url: String,
    js: jetstream::Context,
    streams: Streams,
    stream: String,
    format: &'static str,
}

#[async_trait]
impl DestinationFixture for DestinationFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(NatsPlugin)
    }

    async fn settings(&mut self) -> Settings {
        self.stream = unique("SLUICE_DST");
        let subject = format!("{}.out", self.stream.to_lowercase());
        self.streams.create(&self.js, &self.stream, &subject).await;
        settings(&[
            ("urls", &self.url),
            ("subject", &subject),
            ("format", self.format),
        ])
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        let base = [("urls", self.url.as_str()), ("subject", "x")];
        let with = support::with_setting(&base);
        vec![
            with("subject", "wild.*"),
            with("format", "xml"),
            with("retryAttempts", "-2"),
            with("maxInFlight", "0"),
        ]
    }

    async fn written(&mut self) -> Written {
        Written::Records(stored(&self.js, &self.stream, self.format).await)
    }
}

/// Every message of a stream, decoded as `format` (`raw` payloads become raw records).
async fn stored(js: &jetstream::Context, stream: &str, format: &str) -> Vec<Record> {
    let mut s = js.get_stream(stream).await.expect("get stream");
    let last = s.info().await.expect("stream info").state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await.expect("get message");
        out.push(if format == "opencdc" {
            sluice_sdk::opencdc::from_json(&m.payload).expect("OpenCDC body")
        } else {
            Record::new(Position::from_u64(seq), Data::Raw(m.payload.clone()))
        });
    }
    out
}

#[tokio::test]
async fn destination_passes_the_acceptance_kit() {
    let _broker = support::BROKER.read().await;
    let Some(url) = nats_url("destination_passes_the_acceptance_kit") else {
        return;
    };
    let js = jetstream_context(&url).await;
    let streams = Streams::default();
    for format in ["opencdc", "raw"] {
        let fx = DestinationFx {
            url: url.clone(),
            js: js.clone(),
            streams: streams.clone(),
            stream: String::new(),
            format,
        };
        let report = destination_acceptance(fx).await;
        assert!(report.skipped.is_empty(), "{report:?}");
    }
    streams.delete_all(&js).await;
}

// ---------------------------------------------------------------------------------------------
// Behaviour beyond the kit.

#[tokio::test]
async fn opencdc_records_round_trip_through_a_stream() {
    let _broker = support::BROKER.read().await;
    let Some(url) = nats_url("opencdc_records_round_trip_through_a_stream") else {
        return;
    };
    let js = jetstream_context(&url).await;
    let streams = Streams::default();
    let name = unique("SLUICE_RT");
    let subject = format!("{}.cdc", name.to_lowercase());
    streams.create(&js, &name, &subject).await;

    let mut dst = NatsPlugin.new_destination().expect("destination");
    dst.configure(&settings(&[("urls", &url), ("subject", &subject)]))
        .await
        .expect("configure");
    dst.open().await.expect("open");
    let mut originals = Vec::new();
    for (i, op) in [Operation::Snapshot, Operation::Update, Operation::Delete]
        .into_iter()
        .enumerate()
    {
        let mut r = Record::new(
            Position::from_u64(i as u64),
            format!("row {i}").into_bytes(),
        );
        r.operation = op;
        r.key = Some(Data::from(format!("id-{i}").into_bytes()));
        r.metadata
            .insert("opencdc.collection".into(), "public.users".into());
        originals.push(r);
    }
    dst.write(&originals).await.expect("write");
    assert_eq!(dst.ack().await.expect("ack").count, 3);
    dst.teardown().await.expect("teardown");

    let src_settings = settings(&[
        ("urls", &url),
        ("stream", &name),
        ("durable", &unique("rt")),
        ("format", "opencdc"),
    ]);
    let mut src = open_source(&NatsPlugin, &src_settings, None).await;
    let read = read_n(src.as_mut(), 3, Duration::from_secs(10)).await;
    for (got, want) in read.iter().zip(&originals) {
        assert_eq!(got.operation, want.operation);
        assert_eq!(got.key, want.key);
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.metadata["opencdc.collection"], "public.users");
    }
    let positions: Vec<Position> = read.iter().map(|r| r.position.clone()).collect();
    assert_eq!(
        positions,
        vec![
            Position::from_u64(1),
            Position::from_u64(2),
            Position::from_u64(3)
        ]
    );
    src.ack(&positions).await.expect("ack");
    src.teardown().await.expect("teardown");
    streams.delete_all(&js).await;
}

#[tokio::test]
async fn raw_messages_carry_subject_headers_and_msg_id_key() {
    let _broker = support::BROKER.read().await;
    let Some(url) = nats_url("raw_messages_carry_subject_headers_and_msg_id_key") else {
        return;
    };
    let js = jetstream_context(&url).await;
    let streams = Streams::default();
    let name = unique("SLUICE_HDR");
    let prefix = name.to_lowercase();
    streams.create(&js, &name, &format!("{prefix}.>")).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-42");
    headers.insert("trace-id", "t-1");
    js.publish_with_headers(format!("{prefix}.orders.eu"), headers, Bytes::from("body"))
        .await
        .expect("publish")
        .await
        .expect("ack");
    let mut src = open_source(
        &NatsPlugin,
        &settings(&[
            ("urls", &url),
            ("stream", &name),
            ("durable", &unique("hdr")),
        ]),
        None,
    )
    .await;
    let r = read_n(src.as_mut(), 1, Duration::from_secs(10))
        .await
        .remove(0);
    assert_eq!(r.key, Some(Data::from("order-42")));
    assert_eq!(
        r.metadata["opencdc.collection"],
        format!("{prefix}.orders.eu")
    );
    assert_eq!(r.metadata["trace-id"], "t-1");
    assert!(r.metadata.contains_key("opencdc.createdAt"));
    src.ack(&[r.position]).await.expect("ack");
    src.teardown().await.expect("teardown");
    streams.delete_all(&js).await;
}

#[tokio::test]
async fn unacknowledged_records_come_back_and_acknowledged_ones_do_not() {
    let _broker = support::BROKER.read().await;
    let Some(url) = nats_url("unacknowledged_records_come_back_and_acknowledged_ones_do_not")
    else {
        return;
    };
    let js = jetstream_context(&url).await;
    let streams = Streams::default();
    let name = unique("SLUICE_REDO");
    let subject = format!("{}.x", name.to_lowercase());
    streams.create(&js, &name, &subject).await;
    for i in 0..20 {
        publish(&js, &subject, Bytes::from(format!("m{i}"))).await;
    }
    let s = settings(&[
        ("urls", &url),
        ("stream", &name),
        ("durable", &unique("redo")),
        ("bufferSize", "4"),
    ]);
    // First run: read 12, ack 5, then a hard stop (teardown without stop).
    let mut first = open_source(&NatsPlugin, &s, None).await;
    let head = read_n(first.as_mut(), 12, Duration::from_secs(10)).await;
    let acked: Vec<Position> = head[..5].iter().map(|r| r.position.clone()).collect();
    first.ack(&acked).await.expect("ack");
    first.teardown().await.expect("teardown");

    // Second run resumes at the fifth: records 6..20 arrive, each once, none of the first five.
    let mut second = open_source(&NatsPlugin, &s, Some(&acked[4])).await;
    let rest = read_n(second.as_mut(), 15, Duration::from_secs(10)).await;
    let got: BTreeSet<Vec<u8>> = rest.iter().map(raw_payload).collect();
    let want: BTreeSet<Vec<u8>> = (5..20).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(got, want);
    let more = second.read(10).await.expect("read");
    assert!(more.records.is_empty(), "unexpected {:?}", more.records);
    second.teardown().await.expect("teardown");
    streams.delete_all(&js).await;
}

#[tokio::test]
async fn a_processed_but_unacknowledged_checkpoint_is_not_delivered_again() {
    let _broker = support::BROKER.read().await;
    // The engine saved position 8, then died before the source acked 1..=8 on the server: the
    // server redelivers them, and resuming at 8 skips them.
    let Some(url) = nats_url("a_processed_but_unacknowledged_checkpoint_is_not_delivered_again")
    else {
        return;
    };
    let js = jetstream_context(&url).await;
    let streams = Streams::default();
    let name = unique("SLUICE_CKPT");
    let subject = format!("{}.x", name.to_lowercase());
    streams.create(&js, &name, &subject).await;
    for i in 0..10 {
        publish(&js, &subject, Bytes::from(format!("m{i}"))).await;
    }
    let s = settings(&[
        ("urls", &url),
        ("stream", &name),
        ("durable", &unique("ckpt")),
    ]);
    let mut first = open_source(&NatsPlugin, &s, None).await;
    let head = read_n(first.as_mut(), 8, Duration::from_secs(10)).await;
    let checkpoint = head[7].position.clone();
    assert_eq!(
        checkpoint,
        Position::from_u64(8),
        "in-order reads have plain positions"
    );
    // Teardown hands the unacknowledged messages back at once, as a crash would after ackWait.
    first.teardown().await.expect("teardown");

    let mut second = open_source(&NatsPlugin, &s, Some(&checkpoint)).await;
    let rest = read_n(second.as_mut(), 2, Duration::from_secs(10)).await;
    assert_eq!(
        rest.iter().map(raw_payload).collect::<Vec<_>>(),
        vec![b"m8".to_vec(), b"m9".to_vec()]
    );
    let more = second.read(10).await.expect("read");
    assert!(more.records.is_empty(), "unexpected {:?}", more.records);
    second.teardown().await.expect("teardown");
    streams.delete_all(&js).await;
}

#[tokio::test]
async fn publishes_no_stream_captures_are_nacked_after_retries() {
    let _broker = support::BROKER.read().await;
    let Some(url) = nats_url("publishes_no_stream_captures_are_nacked_after_retries") else {
        return;
    };
    let mut dst = NatsPlugin.new_destination().expect("destination");
    dst.configure(&settings(&[
        ("urls", &url),
        ("subject", &unique("nobody.listens")),
        ("retryAttempts", "1"),
        ("retryWait", "10ms"),
    ]))
    .await
    .expect("configure");
    dst.open().await.expect("open");
    dst.write(&[Record::new(Position::from_u64(1), "lost?")])
        .await
        .expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!(acks.count, 1);
    assert_eq!(acks.nacks.len(), 1, "{acks:?}");
    assert!(acks.nacks[0].reason.contains("retryAttempts"), "{acks:?}");
    dst.teardown().await.expect("teardown");
}

#[tokio::test]
async fn a_server_that_is_down_at_open_fails_naming_the_setting() {
    let _broker = support::BROKER.read().await;
    // Port 1 on the loopback address: nothing listens there.
    let mut src = NatsPlugin.new_source().expect("source");
    src.configure(&settings(&[
        ("urls", "nats://127.0.0.1:1"),
        ("stream", "S"),
        ("durable", "d"),
        ("connectTimeout", "500ms"),
    ]))
    .await
    .expect("configure");
    let err = src.open(None).await.expect_err("no server");
    let text = err.to_string();
    assert!(text.contains("nats") && text.contains("\"urls\""), "{text}");
    assert!(text.contains("connectTimeout"), "{text}");
    assert!(matches!(
        err,
        ConnectorError::System {
            transient: true,
            ..
        }
    ));
    src.teardown().await.expect("teardown");
}

#[tokio::test]
async fn a_missing_stream_or_consumer_is_an_error_naming_the_setting() {
    let _broker = support::BROKER.read().await;
    let Some(url) = nats_url("a_missing_stream_or_consumer_is_an_error_naming_the_setting") else {
        return;
    };
    let mut src = NatsPlugin.new_source().expect("source");
    src.configure(&settings(&[
        ("urls", &url),
        ("stream", &unique("NO_SUCH_STREAM")),
        ("durable", "d"),
    ]))
    .await
    .expect("configure");
    let err = src.open(None).await.expect_err("missing stream");
    assert!(err.to_string().contains("\"stream\""), "{err}");

    let js = jetstream_context(&url).await;
    let streams = Streams::default();
    let name = unique("SLUICE_NOCONS");
    streams
        .create(&js, &name, &format!("{}.x", name.to_lowercase()))
        .await;
    let mut src = NatsPlugin.new_source().expect("source");
    src.configure(&settings(&[
        ("urls", &url),
        ("stream", &name),
        ("durable", "missing"),
        ("createConsumer", "false"),
    ]))
    .await
    .expect("configure");
    let err = src.open(None).await.expect_err("missing consumer");
    assert!(err.to_string().contains("\"durable\""), "{err}");
    streams.delete_all(&js).await;
}

// ---------------------------------------------------------------------------------------------
// Broker restart (only with SLUICE_TEST_RESTART_SERVICES=1: it disturbs the shared server).

fn restart_allowed() -> bool {
    let allowed = std::env::var("SLUICE_TEST_RESTART_SERVICES").is_ok_and(|v| v == "1");
    if !allowed {
        eprintln!(
            "skipped: set SLUICE_TEST_RESTART_SERVICES=1 to run tests that stop and start the \
             local nats-server"
        );
    }
    allowed
}

fn start_nats_server() {
    let status = std::process::Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/nats-server",
            "--",
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/var/lib/nats-server",
            "-l",
            "/var/log/nats-server.log",
        ])
        .status();
    eprintln!("nats-server start: {status:?}");
}

fn stop_nats_server() {
    let status = std::process::Command::new("start-stop-daemon")
        .args([
            "--stop",
            "--oknodo",
            "--retry",
            "10",
            "--exec",
            "/usr/sbin/nats-server",
        ])
        .status();
    eprintln!("nats-server stop: {status:?}");
}

/// Starts the server again when dropped, whatever happened to the test.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        start_nats_server();
    }
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port} after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let _broker = support::BROKER.write().await;
    let Some(url) = nats_url("broker_restart_mid_stream_loses_nothing") else {
        return;
    };
    if !restart_allowed() {
        return;
    }
    const TOTAL: usize = 3000;
    let js = jetstream_context(&url).await;
    let name = unique("SLUICE_RESTART");
    let subject = format!("{}.x", name.to_lowercase());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .expect("create stream");

    // A publisher that keeps going through the outage, retrying until each message is stored.
    let publisher = {
        let js = js.clone();
        let subject = subject.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                let body = Bytes::from(format!("m{i:05}"));
                loop {
                    let sent = match js.publish(subject.clone(), body.clone()).await {
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match sent {
                        Ok(()) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };

    let s = settings(&[
        ("urls", &url),
        ("stream", &name),
        ("durable", &unique("restart")),
        ("ackWait", "2s"),
        ("bufferSize", "64"),
    ]);
    let mut src = open_source(&NatsPlugin, &s, None).await;
    let mut seen = BTreeSet::new();
    let mut restarted = false;
    let mut resumed = false;
    let mut last_acked: Option<Position> = None;
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < TOTAL {
        assert!(
            tokio::time::Instant::now() < until,
            "only {} of {TOTAL} messages were read within 120 s",
            seen.len()
        );
        let batch = src.read(100).await.expect("read");
        let positions: Vec<Position> = batch.records.iter().map(|r| r.position.clone()).collect();
        for r in &batch.records {
            seen.insert(raw_payload(r));
        }
        if !positions.is_empty() {
            src.ack(&positions).await.expect("ack");
            last_acked = positions.last().cloned();
        }
        if !restarted && seen.len() >= TOTAL / 3 {
            restarted = true;
            let _guard = RestartGuard;
            stop_nats_server();
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The guard starts the server again here.
        }
        if restarted && !resumed && seen.len() >= TOTAL * 2 / 3 {
            // A pipeline restart too: a new source resumes at the last acked position.
            resumed = true;
            src.teardown().await.expect("teardown");
            src = open_source(&NatsPlugin, &s, last_acked.as_ref()).await;
        }
    }
    wait_for_port(4222).await;
    publisher.await.expect("publisher");
    let want: BTreeSet<Vec<u8>> = (0..TOTAL)
        .map(|i| format!("m{i:05}").into_bytes())
        .collect();
    assert_eq!(seen, want, "every published message was read");
    src.teardown().await.expect("teardown");
    let js = jetstream_context(&url).await;
    let _ = js.delete_stream(&name).await;
}
