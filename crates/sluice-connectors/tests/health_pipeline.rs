//! Connector health through the engine against a real NATS server: a pipeline whose NATS source
//! loses its server reports itself `Degraded` (naming the source and why), returns to `Running`
//! when the server is back, and loses nothing acknowledged.
//!
//! The test runs its own `nats-server` (JetStream, file store in a temporary directory) on a free
//! port, so stopping it disturbs no other test. It needs `SLUICE_TEST_NATS_URL` set (the marker
//! that NATS tests may run) and the `nats-server` binary (`SLUICE_TEST_NATS_SERVER`, else
//! `/usr/sbin/nats-server` or `nats-server` on the PATH); it is skipped with a message otherwise.
#![cfg(feature = "nats")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use sluice_engine::{
    ConnectorConfig, DlqConfig, Engine, MetricsSnapshot, PipelineConfig, PipelineController,
    PipelineOptions, PipelineState,
};
use sluice_sdk::connector::Result;
use sluice_sdk::{Acks, Destination, Plugin, Record, Settings, Source, Specification};
use sluice_state::MemoryStore;

/// The `nats-server` binary to run, if one is available.
fn nats_server_binary() -> Option<PathBuf> {
    if std::env::var("SLUICE_TEST_NATS_URL").map_or(true, |u| u.is_empty()) {
        eprintln!("skipped: SLUICE_TEST_NATS_URL is not set (NATS tests are off)");
        return None;
    }
    if let Ok(p) = std::env::var("SLUICE_TEST_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let candidates = [PathBuf::from("/usr/sbin/nats-server")];
    if let Some(p) = candidates.into_iter().find(|p| p.exists()) {
        return Some(p);
    }
    let on_path = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return Some(PathBuf::from("nats-server"));
    }
    eprintln!("skipped: no nats-server binary (set SLUICE_TEST_NATS_SERVER)");
    None
}

/// A `nats-server` this test started; stopped (by its process id) when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(binary: &Path, port: u16, store: &Path) -> Server {
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        Server { child }
    }

    /// Graceful stop (SIGTERM, so JetStream flushes its store), then waits for the exit.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server does not listen on 127.0.0.1:{port} after 10 s");
}

/// Payloads a [`Collect`] destination received, shared with the test.
type Received = Arc<Mutex<Vec<Vec<u8>>>>;

/// A destination that keeps every payload it is given (the test's view of what was delivered).
struct Collect {
    received: Received,
    unsettled: usize,
}

#[async_trait]
impl Destination for Collect {
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        let mut r = self.received.lock().unwrap();
        for record in records {
            let body = record.payload.after.as_ref().map(|d| d.to_bytes().to_vec());
            r.push(body.unwrap_or_default());
        }
        self.unsettled += records.len();
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        Ok(Acks {
            count: std::mem::take(&mut self.unsettled),
            nacks: vec![],
        })
    }

    async fn teardown(&mut self) -> Result<()> {
        Ok(())
    }
}

struct CollectPlugin(Received);

impl Plugin for CollectPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "collect".into(),
            summary: "keeps what it is given (test)".into(),
            description: String::new(),
            version: "v0.0.1".into(),
            author: "test".into(),
            source_params: BTreeMap::new(),
            destination_params: BTreeMap::new(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        None
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(Collect {
            received: self.0.clone(),
            unsettled: 0,
        }))
    }
}

/// Polls the pipeline's metrics until `pred` holds; panics with the last snapshot after `limit`.
async fn until(
    c: &PipelineController,
    limit: Duration,
    what: &str,
    pred: impl Fn(&MetricsSnapshot) -> bool,
) -> MetricsSnapshot {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = c.metrics();
        if pred(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}; metrics: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_makes_the_pipeline_degraded_then_running_and_loses_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(binary) = nats_server_binary() else {
        return;
    };
    const TOTAL: usize = 1500;
    let store = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = Server::start(&binary, port, store.path());
    wait_for_port(port).await;

    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "HEALTH".into(),
        subjects: vec!["health.x".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");

    // Publishes through the outage, retrying each message until the server stored it.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                let body = Bytes::from(format!("m{i:05}"));
                loop {
                    let sent = match js.publish("health.x", body.clone()).await {
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if sent.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };

    let received: Received = Arc::default();
    let mut registry = sluice_connectors::builtin_registry();
    registry.register(Arc::new(CollectPlugin(received.clone())));
    let engine = Engine::new(registry, Arc::new(MemoryStore::new()));
    let settings: Settings = [
        ("urls", url.as_str()),
        ("stream", "HEALTH"),
        ("durable", "health"),
        ("ackWait", "2s"),
        ("bufferSize", "64"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let handle = engine
        .start(PipelineConfig {
            id: "nats-health".into(),
            source: ConnectorConfig {
                id: "src".into(),
                plugin: "nats".into(),
                settings,
            },
            destinations: vec![ConnectorConfig {
                id: "out".into(),
                plugin: "collect".into(),
                settings: Settings::new(),
            }],
            processors: vec![],
            dlq: DlqConfig::default(),
            options: PipelineOptions {
                batch_size: 100,
                max_in_flight_batches: 4,
                ack_interval: Duration::from_millis(20),
            },
        })
        .await
        .expect("start the pipeline");
    let c = handle.controller();

    let m = until(&c, Duration::from_secs(60), "records flowing", |m| {
        m.acked >= (TOTAL / 4) as u64
    })
    .await;
    assert_eq!(m.state, PipelineState::Running, "{m:?}");
    assert!(m.degraded.is_empty(), "{m:?}");

    // The server goes away: the pipeline reports the source degraded.
    server.stop();
    let m = until(&c, Duration::from_secs(30), "degraded", |m| {
        m.state == PipelineState::Degraded
    })
    .await;
    assert_eq!(m.degraded.len(), 1, "{m:?}");
    let (id, reason) = &m.degraded[0];
    assert_eq!(id, "src");
    assert!(reason.starts_with("nats: "), "{reason}");
    assert!(reason.contains(&url), "{reason}");

    // The server comes back (same store): the pipeline is healthy again and delivers the rest.
    let server = Server::start(&binary, port, store.path());
    wait_for_port(port).await;
    until(&c, Duration::from_secs(60), "recovered", |m| {
        m.state == PipelineState::Running
    })
    .await;
    publisher.await.expect("publisher");
    until(&c, Duration::from_secs(120), "everything acked", |m| {
        m.acked >= TOTAL as u64 && m.lag == 0
    })
    .await;

    c.stop();
    let summary = handle.wait().await.expect("clean stop");
    assert_eq!(summary.metrics.state, PipelineState::Stopped);
    assert!(summary.metrics.degraded.is_empty());
    let got: BTreeSet<Vec<u8>> = received.lock().unwrap().iter().cloned().collect();
    let want: BTreeSet<Vec<u8>> = (0..TOTAL)
        .map(|i| format!("m{i:05}").into_bytes())
        .collect();
    assert_eq!(got, want, "every published message was delivered");
    let _ = js.delete_stream("HEALTH").await;
    drop(server);
}

/// A server that is down at start: `open` keeps retrying with the reporter degraded (naming the
/// connector, the address and the error), and fails once `connectTimeout` has passed.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_down_at_start_reports_degraded_while_open_retries() {
    use sluice_sdk::{Health, HealthReporter};
    if std::env::var("SLUICE_TEST_REDIS_URL").map_or(true, |u| u.is_empty()) {
        eprintln!("skipped: SLUICE_TEST_REDIS_URL is not set (Redis tests are off)");
        return;
    }
    // A port nothing listens on: bound, then released.
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let settings: Settings = [
        ("url", url.as_str()),
        ("redis.key", "sluice-health-down"),
        ("connectTimeout", "3s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut src = sluice_connectors::redis_streams::RedisPlugin
        .new_source()
        .expect("source side");
    src.configure(&settings).await.expect("configure");
    let health = HealthReporter::new("test/src");
    src.set_health(health.clone());
    let open = tokio::spawn(async move { src.open(None).await.map(|()| src) });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let reason = loop {
        if let Health::Degraded(reason) = health.status() {
            break reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported degraded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        reason.starts_with(&format!("redis: 127.0.0.1:{port}: ")),
        "{reason}"
    );
    assert!(reason.contains(", retrying in "), "{reason}");
    let err = open
        .await
        .expect("join")
        .err()
        .expect("open fails once connectTimeout passed");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(health.is_degraded(), "still degraded after giving up");
}
