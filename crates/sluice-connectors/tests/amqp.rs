//! The `amqp` connector against a real RabbitMQ (`SLUICE_TEST_AMQP_URL`): the acceptance kit on
//! both sides, faults (broker unreachable, wrong credentials, missing queue, unroutable messages,
//! a connection closed by the broker mid-stream) and, with `SLUICE_TEST_RESTART_SERVICES=1`, a
//! broker restart (`rabbitmqctl stop_app` / `start_app`) in the middle of a stream.
//!
//! Every test uses its own queues (named after the test, the process and a counter) and deletes
//! them at the end.
#![cfg(feature = "amqp")]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use sluice_connectors::amqp::AmqpPlugin;
use sluice_sdk::acceptance::{
    destination_acceptance, source_acceptance, DestinationFixture, Expected, SourceCapabilities,
    SourceFixture, Written,
};
use sluice_sdk::{Data, Destination, Plugin, Position, Record, Settings, Source};
use tokio::time::{sleep, Instant};

mod support;
use support::{bodies, payload, read_until_seen, settings, unique};

/// The broker's URL, or `None` (with the reason printed) when the tests must skip.
fn amqp_url(test: &str) -> Option<String> {
    support::service_url(
        "SLUICE_TEST_AMQP_URL",
        test,
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

/// Tests take this lock shared; the broker-restart test takes it exclusively, so stopping the
/// broker never breaks the other tests of this file running beside it.
fn broker_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: std::sync::OnceLock<tokio::sync::RwLock<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::RwLock::new(()))
}

/// A direct lapin connection for preparing and inspecting queues.
struct Admin {
    connection: Connection,
    channel: Channel,
    /// Queues to delete at cleanup (shared with the test, which cleans up after the kit consumed
    /// the fixture).
    queues: Arc<Mutex<Vec<String>>>,
    exchanges: Vec<String>,
}

impl Admin {
    async fn connect(url: &str) -> Admin {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Admin {
            connection,
            channel,
            queues: Arc::default(),
            exchanges: Vec::new(),
        }
    }

    /// Declares a durable queue that the broker also deletes after 10 idle minutes, should the
    /// test die before its cleanup.
    async fn queue(&self, prefix: &str) -> String {
        let name = unique(prefix);
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(name.as_str().into(), options, args)
            .await
            .expect("declare queue");
        self.adopt(&name);
        name
    }

    /// Remembers a queue a connector declares, for cleanup.
    fn adopt(&self, queue: &str) {
        if let Ok(mut q) = self.queues.lock() {
            q.push(queue.to_string());
        }
    }

    async fn publish(&self, queue: &str, bodies: &[Bytes]) {
        for body in bodies {
            self.channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
        }
        self.channel
            .wait_for_confirms()
            .await
            .expect("publisher confirms");
    }

    /// Takes every message left in the queue.
    async fn drain(&self, queue: &str) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push(Bytes::from(m.delivery.data.clone()));
        }
        out
    }

    async fn depth(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .expect("passive declare")
            .message_count()
    }

    async fn cleanup(self) {
        let queues = self.queues.lock().map(|q| q.clone()).unwrap_or_default();
        for q in &queues {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in &self.exchanges {
            let _ = self
                .channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

async fn source(pairs: &[(&str, &str)], position: Option<&Position>) -> Box<dyn Source> {
    support::validated_source(&AmqpPlugin::new(), pairs, position).await
}

async fn destination(pairs: &[(&str, &str)]) -> Box<dyn Destination> {
    support::validated_destination(&AmqpPlugin::new(), pairs).await
}

struct SourceFx {
    url: String,
    admin: Admin,
    queue: String,
    produced: usize,
}

#[async_trait]
impl SourceFixture for SourceFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(AmqpPlugin::new())
    }

    async fn settings(&mut self) -> Settings {
        self.queue = self.admin.queue("acceptance-src").await;
        self.produced = 0;
        settings(&[
            ("url", &self.url),
            ("queueName", &self.queue),
            // The fixture declared the queue with an expiry; the source only checks it exists.
            ("queue.declare", "false"),
            ("prefetchCount", "64"),
        ])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let b = bodies(&self.queue, self.produced..self.produced + n);
        self.produced += n;
        self.admin.publish(&self.queue, &b).await;
        b.into_iter().map(Expected::Payload).collect()
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (
                settings(&[
                    ("url", &self.url),
                    ("queueName", "q"),
                    ("prefetchCount", "0"),
                ]),
                "prefetchCount",
            ),
            (
                settings(&[("url", "http://127.0.0.1/"), ("queueName", "q")]),
                "url",
            ),
            (
                settings(&[("url", &self.url), ("queueName", "q"), ("format", "xml")]),
                "format",
            ),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        support::LIVE_AND_RESUMABLE
    }
}

#[tokio::test]
async fn source_passes_the_acceptance_kit() {
    let _broker = support::BROKER.read().await;
    let Some(url) = amqp_url("source_passes_the_acceptance_kit") else {
        return;
    };
    let _shared = broker_lock().read().await;
    let admin = Admin::connect(&url).await;
    let queues = admin.queues.clone();
    let fx = SourceFx {
        url: url.clone(),
        admin,
        queue: String::new(),
        produced: 0,
    };
    let report = source_acceptance(fx).await;
    let mut cleaner = Admin::connect(&url).await;
    cleaner.queues = queues;
    cleaner.cleanup().await;
    assert!(report.skipped.is_empty(), "{report:?}");
    for check in [
        "read",
        "acks",
        "stop",
        "snapshot-then-live",
        "resume",
        "cancel",
    ] {
        assert!(report.passed.contains(&check), "{check}: {report:?}");
    }
}

struct DestinationFx {
    url: String,
    admin: Admin,
    queue: String,
    format: &'static str,
}

#[async_trait]
impl DestinationFixture for DestinationFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(AmqpPlugin::new())
    }

    async fn settings(&mut self) -> Settings {
        // The destination declares the queue itself (the default `queue.declare: true`).
        self.queue = unique("acceptance-dst");
        self.admin.adopt(&self.queue);
        settings(&[
            ("url", &self.url),
            ("queueName", &self.queue),
            ("format", self.format),
        ])
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (
                settings(&[
                    ("url", &self.url),
                    ("queueName", "q"),
                    ("exchange.type", "x"),
                ]),
                "exchange.type",
            ),
            (
                settings(&[
                    ("url", &self.url),
                    ("queueName", "q"),
                    ("connect.timeout", "0s"),
                ]),
                "connect.timeout",
            ),
        ]
    }

    async fn written(&mut self) -> Written {
        let bodies = self.admin.drain(&self.queue).await;
        Written::Records(support::read_back(bodies, self.format))
    }
}

#[tokio::test]
async fn destination_passes_the_acceptance_kit_raw_and_opencdc() {
    let _broker = support::BROKER.read().await;
    let Some(url) = amqp_url("destination_passes_the_acceptance_kit_raw_and_opencdc") else {
        return;
    };
    let _shared = broker_lock().read().await;
    for format in ["raw", "opencdc"] {
        let admin = Admin::connect(&url).await;
        let queues = admin.queues.clone();
        let fx = DestinationFx {
            url: url.clone(),
            admin,
            queue: String::new(),
            format,
        };
        let report = destination_acceptance(fx).await;
        let mut cleaner = Admin::connect(&url).await;
        cleaner.queues = queues;
        cleaner.cleanup().await;
        assert!(report.skipped.is_empty(), "{format}: {report:?}");
        assert!(report.passed.contains(&"read-back"), "{format}: {report:?}");
    }
}

#[tokio::test]
async fn unreachable_broker_is_retried_then_named() {
    let _broker = support::BROKER.read().await;
    // No broker needed: nothing listens on port 1.
    let mut src = AmqpPlugin::new().new_source().expect("source side");
    src.configure(&settings(&[
        ("url", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("queueName", "q"),
        ("connect.timeout", "700ms"),
    ]))
    .await
    .expect("configure");
    let started = Instant::now();
    let err = src.open(None).await.expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(text.starts_with("amqp:"), "{text}");
    assert!(text.contains("setting `url`"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    // It retried rather than failing at the first refusal.
    assert!(started.elapsed() >= Duration::from_millis(700), "{text}");
    src.teardown().await.expect("teardown");

    let mut dst = AmqpPlugin::new()
        .new_destination()
        .expect("destination side");
    dst.configure(&settings(&[
        ("url", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("queueName", "q"),
        ("connect.timeout", "300ms"),
    ]))
    .await
    .expect("configure");
    let err = dst.open().await.expect_err("nothing listens on port 1");
    assert!(err.to_string().contains("setting `url`"), "{err}");
}

#[tokio::test]
async fn wrong_credentials_fail_at_once_naming_the_setting() {
    let _broker = support::BROKER.read().await;
    let Some(url) = amqp_url("wrong_credentials_fail_at_once_naming_the_setting") else {
        return;
    };
    let _shared = broker_lock().read().await;
    let parsed: lapin::uri::AMQPUri = url.parse().expect("AMQP URI");
    let bad = format!(
        "amqp://sluice-nobody:wrong@{}:{}/%2f",
        parsed.authority.host, parsed.authority.port
    );
    let mut src = AmqpPlugin::new().new_source().expect("source side");
    src.configure(&settings(&[
        ("url", &bad),
        ("queueName", "q"),
        ("connect.timeout", "20s"),
    ]))
    .await
    .expect("configure");
    let started = Instant::now();
    let err = src.open(None).await.expect_err("bad credentials");
    let text = err.to_string();
    assert!(text.contains("refused the login"), "{text}");
    assert!(text.contains("setting `url`"), "{text}");
    assert!(!text.contains("wrong"), "the password leaked: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a refused login must not be retried until connect.timeout"
    );
}

#[tokio::test]
async fn missing_queue_names_the_setting() {
    let _broker = support::BROKER.read().await;
    let Some(url) = amqp_url("missing_queue_names_the_setting") else {
        return;
    };
    let _shared = broker_lock().read().await;
    let queue = unique("missing");
    let mut src = AmqpPlugin::new().new_source().expect("source side");
    src.configure(&settings(&[
        ("url", &url),
        ("queueName", &queue),
        ("queue.declare", "false"),
    ]))
    .await
    .expect("configure");
    let err = src.open(None).await.expect_err("missing queue");
    let text = err.to_string();
    assert!(text.contains("setting `queueName`"), "{text}");
    assert!(text.contains(&queue), "{text}");
}

#[tokio::test]
async fn unroutable_messages_are_nacked_with_the_reason() {
    let _broker = support::BROKER.read().await;
    let Some(url) = amqp_url("unroutable_messages_are_nacked_with_the_reason") else {
        return;
    };
    let _shared = broker_lock().read().await;
    let mut admin = Admin::connect(&url).await;
    let queue = admin.queue("unbound").await;
    let exchange = unique("exchange");
    admin
        .channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    admin.exchanges.push(exchange.clone());
    // The queue exists but is not bound to the exchange: every message is unroutable.
    let mut dst = destination(&[
        ("url", &url),
        ("queueName", &queue),
        ("exchange.name", &exchange),
        ("queue.declare", "false"),
    ])
    .await;
    let records = support::records(3);
    dst.write(&records).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!(acks.count, 3);
    assert_eq!(
        acks.nacks.iter().map(|n| n.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        acks.nacks[0].reason.contains("NO_ROUTE"),
        "{:?}",
        acks.nacks
    );
    // A record without payload.after cannot be published raw: nacked, the others still go out.
    let mut delete = Record::new(Position::from_u64(9), "x");
    delete.payload.after = None;
    let mut dst2 = destination(&[
        ("url", &url),
        ("queueName", &queue),
        ("queue.declare", "false"),
    ])
    .await;
    dst2.write(&[records[0].clone(), delete, records[1].clone()])
        .await
        .expect("write");
    let acks = dst2.ack().await.expect("ack");
    assert_eq!(acks.count, 3);
    assert_eq!(acks.nacks.len(), 1);
    assert_eq!(acks.nacks[0].index, 1);
    dst.teardown().await.expect("teardown");
    dst2.teardown().await.expect("teardown");
    assert_eq!(
        admin.drain(&queue).await,
        vec![Bytes::from("r0"), Bytes::from("r1")]
    );
    admin.cleanup().await;
}

/// Closes every broker connection whose client properties (its connection name) contain `needle`.
fn close_connections(needle: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl list_connections");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(needle)) {
        if let Some(pid) = line.split_whitespace().next() {
            let status = Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "close_connection",
                    pid,
                    "sluice test: connection closed",
                ])
                .status()
                .expect("rabbitmqctl close_connection");
            closed += usize::from(status.success());
        }
    }
    closed
}

fn rabbitmqctl_available() -> bool {
    Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn source_reconnects_after_the_broker_closes_its_connection() {
    let _broker = support::BROKER.read().await;
    let Some(url) = amqp_url("source_reconnects_after_the_broker_closes_its_connection") else {
        return;
    };
    let _shared = broker_lock().read().await;
    if !rabbitmqctl_available() {
        eprintln!("skipping source_reconnects_after_the_broker_closes_its_connection: rabbitmqctl is not available");
        return;
    }
    let admin = Admin::connect(&url).await;
    let queue = admin.queue("reconnect").await;
    let all = bodies("reconnect", 0..40);
    admin.publish(&queue, &all).await;
    let mut src = source(
        &[
            ("url", &url),
            ("queueName", &queue),
            ("queue.declare", "false"),
            ("prefetchCount", "10"),
            ("reconnect.timeout", "30s"),
        ],
        None,
    )
    .await;
    // Read 10, ack the first 5: 6..10 are read but unacked when the connection goes.
    let mut first = Vec::new();
    while first.len() < 10 {
        first.extend(src.read(10 - first.len()).await.expect("read").records);
    }
    let acked: Vec<Position> = first[..5].iter().map(|r| r.position.clone()).collect();
    src.ack(&acked).await.expect("ack");
    // The connection name carries the queue, so only this test's connection is closed.
    let mut closed = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while closed == 0 && Instant::now() < until {
        closed = close_connections(&queue);
        if closed == 0 {
            sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        closed, 1,
        "the source's connection was not found on the broker"
    );
    // Acking the unacked records of the lost connection is accepted (and dropped).
    let stale: Vec<Position> = first[5..].iter().map(|r| r.position.clone()).collect();
    src.ack(&stale)
        .await
        .expect("ack of records read on the lost connection");
    let want: BTreeSet<Bytes> = all[5..].iter().cloned().collect();
    let rest = read_until_seen(src.as_mut(), &want, Duration::from_secs(30)).await;
    let again: Vec<Bytes> = rest.iter().map(payload).collect();
    // Nothing acked came back; the five read-but-unacked ones did.
    for acked in &all[..5] {
        assert!(!again.contains(acked), "an acked message was redelivered");
    }
    for unacked in &all[5..10] {
        assert!(
            again.contains(unacked),
            "an unacked message was not redelivered"
        );
    }
    // Positions keep increasing across the reconnection.
    let positions: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|r| r.position.to_u64().expect("decimal"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let last = src.stop().await.expect("stop");
    assert_eq!(last, rest.last().map(|r| r.position.clone()));
    src.teardown().await.expect("teardown");
    assert_eq!(admin.depth(&queue).await, 0, "everything read was acked");
    admin.cleanup().await;
}

#[tokio::test]
async fn destination_republishes_unconfirmed_messages_after_a_lost_connection() {
    let _broker = support::BROKER.read().await;
    let Some(url) =
        amqp_url("destination_republishes_unconfirmed_messages_after_a_lost_connection")
    else {
        return;
    };
    let _shared = broker_lock().read().await;
    if !rabbitmqctl_available() {
        eprintln!("skipping destination_republishes_unconfirmed_messages_after_a_lost_connection: rabbitmqctl is not available");
        return;
    }
    let admin = Admin::connect(&url).await;
    let queue = admin.queue("republish").await;
    let mut dst = destination(&[
        ("url", &url),
        ("queueName", &queue),
        ("queue.declare", "false"),
    ])
    .await;
    let records: Vec<Record> = (0..200)
        .map(|i| {
            Record::new(
                Position::from_u64(i),
                Data::from(format!("m{i}").into_bytes()),
            )
        })
        .collect();
    dst.write(&records[..100]).await.expect("write");
    // Connections are named after their queue, so only this test's is closed.
    let closed = close_connections(&queue);
    assert_eq!(
        closed, 1,
        "the destination's connection was not found on the broker"
    );
    dst.write(&records[100..])
        .await
        .expect("write after the connection was closed");
    let mut settled = 0;
    let until = Instant::now() + Duration::from_secs(30);
    while settled < 200 {
        assert!(Instant::now() < until, "only {settled} of 200 settled");
        let acks = dst.ack().await.expect("ack");
        assert!(acks.nacks.is_empty(), "{:?}", acks.nacks);
        settled += acks.count;
    }
    dst.teardown().await.expect("teardown");
    let stored: BTreeSet<Bytes> = admin.drain(&queue).await.into_iter().collect();
    for r in &records {
        assert!(stored.contains(&payload(r)), "lost {:?}", payload(r));
    }
    admin.cleanup().await;
}

/// Runs `rabbitmqctl start_app` when dropped unless the test already did, so a failing test never
/// leaves the shared broker stopped.
struct StartAppOnDrop {
    started: bool,
}

impl StartAppOnDrop {
    fn stop_app() -> Self {
        let status = Command::new("rabbitmqctl")
            .args(["-q", "stop_app"])
            .status()
            .expect("rabbitmqctl stop_app");
        assert!(status.success(), "rabbitmqctl stop_app failed");
        StartAppOnDrop { started: false }
    }

    fn start_app(&mut self) {
        let status = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status()
            .expect("rabbitmqctl start_app");
        assert!(status.success(), "rabbitmqctl start_app failed");
        self.started = true;
    }
}

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        if !self.started {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "start_app"])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let _broker = support::BROKER.write().await;
    let Some(url) = amqp_url("broker_restart_mid_stream_loses_nothing") else {
        return;
    };
    if std::env::var("SLUICE_TEST_RESTART_SERVICES").as_deref() != Ok("1") {
        eprintln!("skipping broker_restart_mid_stream_loses_nothing: set SLUICE_TEST_RESTART_SERVICES=1 (it stops and starts the shared RabbitMQ)");
        return;
    }
    if !rabbitmqctl_available() {
        eprintln!("skipping broker_restart_mid_stream_loses_nothing: rabbitmqctl is not available");
        return;
    }
    let _exclusive = broker_lock().write().await;
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let queue = unique("restart");
    let conf = [
        ("url", url.as_str()),
        ("queueName", queue.as_str()),
        ("reconnect.timeout", "2m"),
    ];
    // The destination declares the durable queue and publishes persistent messages.
    let mut dst = destination(&conf).await;
    let records: Vec<Record> = (0..1000)
        .map(|i| {
            Record::new(
                Position::from_u64(i),
                Data::from(format!("restart {i}").into_bytes()),
            )
        })
        .collect();
    dst.write(&records[..500]).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!((acks.count, acks.nacks.len()), (500, 0));

    let mut src_conf = conf.to_vec();
    // Room for the 200 records read before any ack.
    src_conf.push(("prefetchCount", "300"));
    let mut src = source(&src_conf, None).await;
    let mut read_before = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while read_before.len() < 200 {
        assert!(
            Instant::now() < until,
            "only {} of 200 arrived",
            read_before.len()
        );
        read_before.extend(
            src.read(200 - read_before.len())
                .await
                .expect("read")
                .records,
        );
    }
    let acked: Vec<Position> = read_before[..100]
        .iter()
        .map(|r| r.position.clone())
        .collect();
    src.ack(&acked).await.expect("ack");

    eprintln!("restart test: stopping the broker's app");
    let mut guard = StartAppOnDrop::stop_app();
    // While the broker is down the source reads nothing (and fails nothing) and the destination
    // accepts writes it cannot publish yet.
    let empty = src.read(10).await.expect("read while the broker is down");
    assert!(empty.records.len() <= 10);
    let writer = tokio::spawn(async move {
        dst.write(&records[500..])
            .await
            .expect("write during the outage");
        let mut settled = 0;
        while settled < 500 {
            let acks = dst.ack().await.expect("ack after the restart");
            assert!(acks.nacks.is_empty(), "{:?}", acks.nacks);
            settled += acks.count;
        }
        dst.teardown().await.expect("teardown");
        records
    });
    sleep(Duration::from_secs(3)).await;
    eprintln!("restart test: starting the broker's app");
    guard.start_app();
    let records = writer.await.expect("writer");
    eprintln!("restart test: the destination settled everything");
    // Records read before the restart and not acked: their acks are accepted and dropped (the
    // broker redelivers them).
    let stale: Vec<Position> = read_before[100..]
        .iter()
        .map(|r| r.position.clone())
        .collect();
    src.ack(&stale)
        .await
        .expect("ack of records read before the restart");

    let want: BTreeSet<Bytes> = records[100..].iter().map(payload).collect();
    let rest = read_until_seen(src.as_mut(), &want, Duration::from_secs(90)).await;
    let again: BTreeMap<Bytes, usize> = rest.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(payload(r)).or_default() += 1;
        m
    });
    for r in &records[..100] {
        assert!(
            !again.contains_key(&payload(r)),
            "an acked message came back"
        );
    }
    src.stop().await.expect("stop");
    src.teardown().await.expect("teardown");
    let admin = Admin::connect(&url).await;
    assert_eq!(admin.depth(&queue).await, 0, "everything read was acked");
    admin.adopt(&queue);
    admin.cleanup().await;
}
