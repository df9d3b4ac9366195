//! Connector health through the engine: a connector that reports itself degraded makes the
//! pipeline `Degraded` (with the connector and reason listed), and recovering makes it `Running`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_engine::{
    ConnectorConfig, DlqConfig, Engine, PipelineConfig, PipelineController, PipelineOptions,
    PipelineState,
};
use sluice_sdk::connector::Result;
use sluice_sdk::{
    Acks, Destination, HealthReporter, Plugin, Position, ReadBatch, Record, Registry, Settings,
    Source, Specification,
};
use sluice_state::MemoryStore;

/// What the test controls and observes.
#[derive(Default)]
struct Control {
    /// While set, the source's "service" is down: reads return nothing and report degraded.
    down: AtomicBool,
    /// Records the destination received.
    written: Mutex<Vec<u64>>,
    /// Highest sequence number acked to the source.
    acked: AtomicU64,
}

/// A source of numbered records whose service can be taken down by the test.
struct FlakySource {
    control: Arc<Control>,
    health: HealthReporter,
    next: u64,
}

#[async_trait]
impl Source for FlakySource {
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self, _position: Option<&Position>) -> Result<()> {
        Ok(())
    }

    async fn read(&mut self, _max: usize) -> Result<ReadBatch> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if self.control.down.load(Ordering::SeqCst) {
            self.health
                .degraded("flaky: connection refused, retrying in 100ms");
            return Ok(ReadBatch::default());
        }
        self.health.healthy();
        self.next += 1;
        let n = self.next.to_string();
        Ok(ReadBatch {
            records: vec![Record::new(Position::new(n.as_bytes()), n.into_bytes())],
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        for p in positions {
            let n: u64 = std::str::from_utf8(p.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            self.control.acked.fetch_max(n, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        Ok((self.next > 0).then(|| Position::new(self.next.to_string().as_bytes())))
    }

    async fn teardown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A destination that remembers what it was given.
struct Sink {
    control: Arc<Control>,
    unsettled: usize,
}

#[async_trait]
impl Destination for Sink {
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        let mut w = self.control.written.lock().unwrap();
        for r in records {
            w.push(
                std::str::from_utf8(r.position.as_bytes())
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
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

struct FlakyPlugin(Arc<Control>);

impl Plugin for FlakyPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "flaky".into(),
            summary: "test".into(),
            description: String::new(),
            version: "v0.0.1".into(),
            author: "test".into(),
            source_params: BTreeMap::new(),
            destination_params: BTreeMap::new(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(FlakySource {
            control: self.0.clone(),
            health: HealthReporter::default(),
            next: 0,
        }))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(Sink {
            control: self.0.clone(),
            unsettled: 0,
        }))
    }
}

fn connector(id: &str) -> ConnectorConfig {
    ConnectorConfig {
        id: id.into(),
        plugin: "flaky".into(),
        settings: Settings::new(),
    }
}

/// Polls the metrics until `pred` holds (panics after 10 s).
async fn until(
    c: &PipelineController,
    what: &str,
    pred: impl Fn(&sluice_engine::MetricsSnapshot) -> bool,
) {
    for _ in 0..1000 {
        if pred(&c.metrics()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} never happened: {:?}", c.metrics());
}

#[tokio::test]
async fn a_degraded_connector_makes_the_pipeline_degraded_until_it_recovers() {
    let control = Arc::new(Control::default());
    let mut registry = Registry::new();
    registry.register(Arc::new(FlakyPlugin(control.clone())));
    let engine = Engine::new(registry, Arc::new(MemoryStore::new()));
    let handle = engine
        .start(PipelineConfig {
            id: "health".into(),
            source: connector("src"),
            destinations: vec![connector("out")],
            processors: vec![],
            dlq: DlqConfig {
                plugin: "flaky".into(),
                ..DlqConfig::default()
            },
            options: PipelineOptions {
                batch_size: 8,
                max_in_flight_batches: 4,
                ack_interval: Duration::from_millis(5),
            },
        })
        .await
        .expect("start");
    let c = handle.controller();

    until(&c, "records flowing", |m| m.acked >= 20).await;
    let m = c.metrics();
    assert_eq!(m.state, PipelineState::Running);
    assert!(m.degraded.is_empty());

    control.down.store(true, Ordering::SeqCst);
    until(&c, "degraded", |m| m.state == PipelineState::Degraded).await;
    let m = c.metrics();
    assert_eq!(
        m.degraded,
        vec![(
            "src".to_string(),
            "flaky: connection refused, retrying in 100ms".to_string()
        )]
    );

    control.down.store(false, Ordering::SeqCst);
    let before = c.metrics().records_in;
    until(&c, "recovered", |m| {
        m.state == PipelineState::Running && m.records_in > before + 20
    })
    .await;
    assert!(c.metrics().degraded.is_empty());

    c.stop();
    let summary = handle.wait().await.expect("clean stop");
    let m = summary.metrics;
    assert_eq!(m.state, PipelineState::Stopped);
    assert_eq!(m.acked, m.records_in, "everything read was acked");
    let written = control.written.lock().unwrap().clone();
    let want: Vec<u64> = (1..=m.records_in).collect();
    assert_eq!(
        written, want,
        "every record reached the destination once, in order"
    );
    assert_eq!(control.acked.load(Ordering::SeqCst), m.records_in);
}
