//! Mock connectors that record what the engine does to them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::{
    Acks, ConnectorError, Destination, Nack, Parameter, ParameterType, Plugin, Position, ReadBatch,
    Record, Settings, Source, Specification,
};
use sluice_state::Store;

/// What happened, in order, across every mock.
#[derive(Default)]
pub struct Journal {
    pub events: Mutex<Vec<String>>,
    /// Payloads each destination accepted, by destination `name` setting.
    pub written: Mutex<BTreeMap<String, Vec<u64>>>,
    /// Positions acked to the source.
    pub acked: Mutex<Vec<u64>>,
}

impl Journal {
    pub fn log(&self, e: impl Into<String>) {
        self.events.lock().expect("journal").push(e.into());
    }
    pub fn events(&self) -> Vec<String> {
        self.events.lock().expect("journal").clone()
    }
    pub fn written(&self, name: &str) -> Vec<u64> {
        self.written
            .lock()
            .expect("journal")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
    pub fn acked(&self) -> Vec<u64> {
        self.acked.lock().expect("journal").clone()
    }
}

/// A source of `count` records numbered 1..=count (position = number); with `count` 0 it never ends.
pub struct MockSource {
    journal: Arc<Journal>,
    store: Arc<dyn Store>,
    next: u64,
    count: u64,
    open: bool,
    /// Key where the engine keeps this source's checkpoint, to check it is saved before acks.
    checkpoint_key: String,
}

/// A destination that keeps payload numbers; `nack-every` N nacks every Nth record; `fail-at` errors.
pub struct MockDestination {
    journal: Arc<Journal>,
    name: String,
    nack_every: u64,
    fail_at: u64,
    unsettled: Vec<u64>,
}

fn payload_number(r: &Record) -> u64 {
    match &r.payload.after {
        Some(sluice_sdk::Data::Raw(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

#[async_trait]
impl Source for MockSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.count = settings
            .get("count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        self.checkpoint_key = settings.get("checkpoint-key").cloned().unwrap_or_default();
        self.journal.log("source.configure");
        Ok(())
    }
    async fn on_created(&mut self, _s: &Settings) -> Result<()> {
        self.journal.log("source.on_created");
        Ok(())
    }
    async fn on_updated(&mut self, _b: &Settings, _a: &Settings) -> Result<()> {
        self.journal.log("source.on_updated");
        Ok(())
    }
    async fn on_deleted(&mut self, _s: &Settings) -> Result<()> {
        self.journal.log("source.on_deleted");
        Ok(())
    }
    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        self.next = position.and_then(Position::to_u64).unwrap_or(0) + 1;
        self.open = true;
        self.journal.log(format!(
            "source.open {:?}",
            position.and_then(Position::to_u64)
        ));
        Ok(())
    }
    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        if !self.open {
            return Err(ConnectorError::StreamNotOpen);
        }
        if self.count == 0 {
            // Unbounded: produce slowly so tests can stop it mid-stream.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut records = Vec::new();
        while records.len() < max.min(7) && (self.count == 0 || self.next <= self.count) {
            records.push(Record::new(
                Position::from_u64(self.next),
                self.next.to_string().into_bytes(),
            ));
            self.next += 1;
        }
        Ok(ReadBatch {
            records,
            end_of_stream: self.count != 0 && self.next > self.count,
        })
    }
    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        if !self.checkpoint_key.is_empty() {
            let saved = self
                .store
                .get(&self.checkpoint_key)
                .await
                .ok()
                .flatten()
                .and_then(|i| std::str::from_utf8(&i.value).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            let last = positions.last().and_then(Position::to_u64).unwrap_or(0);
            if saved < last {
                self.journal.log(format!(
                    "VIOLATION: ack {last} before checkpoint (saved {saved})"
                ));
            }
        }
        let mut acked = self.journal.acked.lock().expect("journal");
        acked.extend(positions.iter().filter_map(Position::to_u64));
        Ok(())
    }
    async fn stop(&mut self) -> Result<Option<Position>> {
        self.open = false;
        self.journal.log("source.stop");
        Ok(Some(Position::from_u64(self.next - 1)))
    }
    async fn teardown(&mut self) -> Result<()> {
        self.journal.log("source.teardown");
        Ok(())
    }
}

#[async_trait]
impl Destination for MockDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.name = settings.get("name").cloned().unwrap_or_default();
        self.nack_every = settings
            .get("nack-every")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        self.fail_at = settings
            .get("fail-at")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok(())
    }
    async fn on_created(&mut self, _s: &Settings) -> Result<()> {
        self.journal.log(format!("{}.on_created", self.name));
        Ok(())
    }
    async fn on_deleted(&mut self, s: &Settings) -> Result<()> {
        self.journal.log(format!(
            "{}.on_deleted",
            s.get("name").cloned().unwrap_or_default()
        ));
        Ok(())
    }
    async fn open(&mut self) -> Result<()> {
        Ok(())
    }
    async fn write(&mut self, records: &[Record]) -> Result<()> {
        for r in records {
            let n = payload_number(r);
            if self.fail_at != 0 && n == self.fail_at {
                return Err(ConnectorError::system(format!("cannot write record {n}")));
            }
            self.unsettled.push(n);
        }
        Ok(())
    }
    async fn ack(&mut self) -> Result<Acks> {
        let mut nacks = Vec::new();
        let mut written = self.journal.written.lock().expect("journal");
        let out = written.entry(self.name.clone()).or_default();
        for (i, n) in self.unsettled.iter().enumerate() {
            if self.nack_every != 0 && n.is_multiple_of(self.nack_every) {
                nacks.push(Nack {
                    index: i,
                    reason: format!("record {n} refused"),
                });
            } else {
                out.push(*n);
            }
        }
        let count = self.unsettled.len();
        self.unsettled.clear();
        Ok(Acks { count, nacks })
    }
    async fn teardown(&mut self) -> Result<()> {
        self.journal.log(format!("{}.teardown", self.name));
        Ok(())
    }
}

/// The `mock` plugin: both sides.
pub struct MockPlugin {
    pub journal: Arc<Journal>,
    pub store: Arc<dyn Store>,
}

impl Plugin for MockPlugin {
    fn specification(&self) -> Specification {
        let p = |d: &str| Parameter::new(ParameterType::String, d);
        let mut source_params = BTreeMap::new();
        source_params.insert(
            "count".into(),
            Parameter::new(ParameterType::Int, "records").default_value("0"),
        );
        source_params.insert("checkpoint-key".into(), p("store key to check"));
        let mut destination_params = BTreeMap::new();
        destination_params.insert("name".into(), p("journal name"));
        destination_params.insert(
            "nack-every".into(),
            Parameter::new(ParameterType::Int, "nack every n"),
        );
        destination_params.insert(
            "fail-at".into(),
            Parameter::new(ParameterType::Int, "error at n"),
        );
        Specification {
            name: "mock".into(),
            summary: "test double".into(),
            description: "test double".into(),
            version: "v0.0.1".into(),
            author: "tests".into(),
            source_params,
            destination_params,
        }
    }
    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(MockSource {
            journal: self.journal.clone(),
            store: self.store.clone(),
            next: 1,
            count: 0,
            open: false,
            checkpoint_key: String::new(),
        }))
    }
    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(MockDestination {
            journal: self.journal.clone(),
            name: String::new(),
            nack_every: 0,
            fail_at: 0,
            unsettled: Vec::new(),
        }))
    }
}

/// A processor that drops every `filter-every`th record and rejects every `fail-every`th one,
/// and tags the rest with metadata `processed=yes`.
pub struct MockProcessor {
    filter_every: u64,
    fail_every: u64,
}

#[async_trait]
impl sluice_sdk::Processor for MockProcessor {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.filter_every = settings
            .get("filter-every")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        self.fail_every = settings
            .get("fail-every")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok(())
    }
    async fn process(&mut self, records: Vec<Record>) -> Result<Vec<sluice_sdk::Processed>> {
        Ok(records
            .into_iter()
            .map(|mut r| {
                let n = payload_number(&r);
                if self.filter_every != 0 && n.is_multiple_of(self.filter_every) {
                    sluice_sdk::Processed::Filtered
                } else if self.fail_every != 0 && n.is_multiple_of(self.fail_every) {
                    sluice_sdk::Processed::Failed(format!("record {n} rejected"))
                } else {
                    r.metadata.insert("processed".into(), "yes".into());
                    sluice_sdk::Processed::Keep(r)
                }
            })
            .collect())
    }
}

/// The `mockproc` processor plugin.
pub struct MockProcessorPlugin;

impl sluice_sdk::ProcessorPlugin for MockProcessorPlugin {
    fn specification(&self) -> sluice_sdk::ProcessorSpecification {
        let mut parameters = BTreeMap::new();
        parameters.insert(
            "filter-every".into(),
            Parameter::new(ParameterType::Int, "drop every n"),
        );
        parameters.insert(
            "fail-every".into(),
            Parameter::new(ParameterType::Int, "reject every n"),
        );
        sluice_sdk::ProcessorSpecification {
            name: "mockproc".into(),
            summary: "test double".into(),
            description: "test double".into(),
            version: "v0.0.1".into(),
            author: "tests".into(),
            parameters,
        }
    }
    fn new_processor(&self) -> Box<dyn sluice_sdk::Processor> {
        Box::new(MockProcessor {
            filter_every: 0,
            fail_every: 0,
        })
    }
}
