//! In-memory connectors for testing the kit itself: a "topic" shared between a source, a
//! destination and their fixtures, with switchable flaws the kit must catch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::acceptance::{DestinationFixture, Expected, SourceCapabilities, SourceFixture, Written};
use crate::connector::{Acks, ConnectorError, Destination, ReadBatch, Result, Source};
use crate::record::{Data, Operation, Position, Record};
use crate::registry::Plugin;
use crate::spec::{Config, Parameter, ParameterType, Settings, Specification};

/// How a mock connector behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Correct.
    Correct,
    /// Records that existed at open are snapshots; resuming inside the snapshot restarts it.
    Snapshot,
    /// The stream ends once the topic is read to its end.
    Ends,
    /// Resumes at the record it was given instead of after it.
    RepeatsOnResume,
    /// `stop` returns no position.
    StopForgets,
    /// `read` before `open` returns an empty batch.
    ReadsBeforeOpen,
    /// `read` ignores `max`.
    IgnoresMax,
    /// `read` takes records before an await point, so a dropped read loses them.
    LosesOnDrop,
    /// The specification's version has no `v`.
    BadVersion,
    /// `ack` reports one record more than was written.
    OverAcks,
    /// `write` before `open` succeeds.
    WritesBeforeOpen,
    /// The first record written is silently dropped.
    DropsFirst,
}

pub(crate) type Topic = Arc<Mutex<Vec<Bytes>>>;

fn lock(topic: &Topic) -> MutexGuard<'_, Vec<Bytes>> {
    topic
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The mock plugin.
pub(crate) struct MemPlugin {
    pub topic: Topic,
    pub behaviour: Behaviour,
}

impl Plugin for MemPlugin {
    fn specification(&self) -> Specification {
        let mut params = BTreeMap::new();
        params.insert(
            "topic".to_string(),
            Parameter::new(ParameterType::String, "The topic's name.").required(),
        );
        params.insert(
            "pollInterval".to_string(),
            Parameter::new(
                ParameterType::Duration,
                "How long a read waits for records.",
            )
            .default_value("10ms"),
        );
        Specification {
            name: "memory".into(),
            summary: "An in-memory topic.".into(),
            description: "Reads and writes a shared in-memory list, for testing the kit.".into(),
            version: if self.behaviour == Behaviour::BadVersion {
                "0.1".into()
            } else {
                "v0.1.0".into()
            },
            author: "Sluice".into(),
            source_params: params.clone(),
            destination_params: params,
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(MemSource {
            topic: self.topic.clone(),
            behaviour: self.behaviour,
            poll: Duration::from_millis(10),
            state: State::Closed,
            next: 0,
            snapshot_end: 0,
            last: None,
        }))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(MemDestination {
            topic: self.topic.clone(),
            behaviour: self.behaviour,
            open: false,
            pending: 0,
            first: true,
        }))
    }
}

#[derive(PartialEq)]
enum State {
    Closed,
    Open,
    Stopped,
}

struct MemSource {
    topic: Topic,
    behaviour: Behaviour,
    poll: Duration,
    state: State,
    next: usize,
    snapshot_end: usize,
    last: Option<Position>,
}

impl MemSource {
    fn take(&mut self, max: usize) -> Vec<Record> {
        let topic = lock(&self.topic);
        let end = match self.behaviour {
            Behaviour::IgnoresMax => topic.len(),
            // Small batches, so a lost one shows as a gap at once.
            Behaviour::LosesOnDrop => topic.len().min(self.next + max.min(3)),
            _ => topic.len().min(self.next + max),
        };
        let records: Vec<Record> = (self.next..end)
            .map(|i| {
                let mut r = Record::new(
                    Position::from_u64(i as u64 + 1),
                    Data::Raw(topic[i].clone()),
                );
                if i < self.snapshot_end {
                    r.operation = Operation::Snapshot;
                }
                r
            })
            .collect();
        self.next = end.max(self.next);
        records
    }
}

#[async_trait]
impl Source for MemSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let config = Config::new(settings);
        config.required_str("topic")?;
        self.poll = config.duration("pollInterval")?.unwrap_or(self.poll);
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let resume = match position {
            None => 0,
            Some(p) => p.to_u64().ok_or_else(|| ConnectorError::InvalidPosition {
                position: p.clone(),
                reason: "not a record number".into(),
            })? as usize,
        };
        self.next = if self.behaviour == Behaviour::RepeatsOnResume {
            resume.saturating_sub(1)
        } else {
            resume
        };
        if self.behaviour == Behaviour::Snapshot {
            self.snapshot_end = lock(&self.topic).len();
            if self.next < self.snapshot_end {
                self.next = 0;
            }
        }
        self.state = State::Open;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        match self.state {
            State::Closed if self.behaviour == Behaviour::ReadsBeforeOpen => {
                return Ok(ReadBatch::default())
            }
            State::Closed => return Err(ConnectorError::StreamNotOpen),
            State::Stopped => {
                return Ok(ReadBatch {
                    records: Vec::new(),
                    end_of_stream: true,
                })
            }
            State::Open => {}
        }
        let mut records = self.take(max);
        if records.is_empty() {
            tokio::time::sleep(self.poll).await;
            records = self.take(max);
        } else if self.behaviour == Behaviour::LosesOnDrop {
            tokio::task::yield_now().await;
        }
        if let Some(r) = records.last() {
            self.last = Some(r.position.clone());
        }
        let end_of_stream =
            self.behaviour == Behaviour::Ends && self.next >= lock(&self.topic).len();
        Ok(ReadBatch {
            records,
            end_of_stream,
        })
    }

    async fn ack(&mut self, _positions: &[Position]) -> Result<()> {
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        self.state = State::Stopped;
        if self.behaviour == Behaviour::StopForgets {
            return Ok(None);
        }
        Ok(self.last.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.state = State::Closed;
        Ok(())
    }
}

struct MemDestination {
    topic: Topic,
    behaviour: Behaviour,
    open: bool,
    pending: usize,
    first: bool,
}

#[async_trait]
impl Destination for MemDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        Config::new(settings).required_str("topic")?;
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        self.open = true;
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        if !self.open && self.behaviour != Behaviour::WritesBeforeOpen {
            return Err(ConnectorError::StreamNotOpen);
        }
        let mut topic = lock(&self.topic);
        for r in records {
            if std::mem::take(&mut self.first) && self.behaviour == Behaviour::DropsFirst {
                continue;
            }
            topic.push(
                r.payload
                    .after
                    .as_ref()
                    .map(Data::to_bytes)
                    .unwrap_or_default(),
            );
        }
        self.pending += records.len();
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        let extra = usize::from(self.behaviour == Behaviour::OverAcks && self.pending > 0);
        Ok(Acks {
            count: std::mem::take(&mut self.pending) + extra,
            nacks: Vec::new(),
        })
    }

    async fn teardown(&mut self) -> Result<()> {
        self.open = false;
        Ok(())
    }
}

/// A fixture for the mock source.
pub(crate) struct MemSourceFixture {
    pub plugin: Arc<MemPlugin>,
    pub invalid: Vec<(Settings, &'static str)>,
    produced: usize,
}

impl MemSourceFixture {
    pub(crate) fn new(behaviour: Behaviour) -> Self {
        MemSourceFixture {
            plugin: Arc::new(MemPlugin {
                topic: Topic::default(),
                behaviour,
            }),
            invalid: vec![(
                settings(&[("topic", "t"), ("pollInterval", "soon")]),
                "pollInterval",
            )],
            produced: 0,
        }
    }
}

/// Settings from pairs.
pub(crate) fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[async_trait]
impl SourceFixture for MemSourceFixture {
    fn plugin(&self) -> Arc<dyn Plugin> {
        self.plugin.clone()
    }

    async fn settings(&mut self) -> Settings {
        lock(&self.plugin.topic).clear();
        self.produced = 0;
        settings(&[("topic", "t")])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let mut topic = lock(&self.plugin.topic);
        (0..n)
            .map(|_| {
                self.produced += 1;
                let payload = Bytes::from(format!("message {}", self.produced));
                topic.push(payload.clone());
                Expected::Payload(payload)
            })
            .collect()
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        self.invalid.clone()
    }

    fn capabilities(&self) -> SourceCapabilities {
        match self.plugin.behaviour {
            Behaviour::Ends => SourceCapabilities {
                end_of_stream: true,
                ..Default::default()
            },
            Behaviour::Snapshot => SourceCapabilities {
                live: true,
                snapshot: true,
                ..Default::default()
            },
            _ => SourceCapabilities {
                live: true,
                ..Default::default()
            },
        }
    }
}

/// A fixture for the mock destination.
pub(crate) struct MemDestinationFixture {
    pub plugin: Arc<MemPlugin>,
}

impl MemDestinationFixture {
    pub(crate) fn new(behaviour: Behaviour) -> Self {
        MemDestinationFixture {
            plugin: Arc::new(MemPlugin {
                topic: Topic::default(),
                behaviour,
            }),
        }
    }
}

#[async_trait]
impl DestinationFixture for MemDestinationFixture {
    fn plugin(&self) -> Arc<dyn Plugin> {
        self.plugin.clone()
    }

    async fn settings(&mut self) -> Settings {
        lock(&self.plugin.topic).clear();
        settings(&[("topic", "t")])
    }

    async fn written(&mut self) -> Written {
        let topic = lock(&self.plugin.topic);
        Written::Records(
            topic
                .iter()
                .enumerate()
                .map(|(i, b)| Record::new(Position::from_u64(i as u64 + 1), Data::Raw(b.clone())))
                .collect(),
        )
    }
}

/// A self-producing mock source: an endless counter whose payloads are the record numbers.
pub(crate) struct CounterPlugin;

impl Plugin for CounterPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "counter".into(),
            summary: "Counts.".into(),
            description: "Produces records numbered 1, 2, 3, ...".into(),
            version: "v1.0.0".into(),
            author: "Sluice".into(),
            source_params: BTreeMap::new(),
            destination_params: BTreeMap::new(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(CounterSource {
            open: false,
            next: 1,
            last: None,
        }))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        None
    }
}

struct CounterSource {
    open: bool,
    next: u64,
    last: Option<Position>,
}

#[async_trait]
impl Source for CounterSource {
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        self.next = position.and_then(Position::to_u64).map_or(1, |p| p + 1);
        self.open = true;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        if !self.open {
            return Err(ConnectorError::StreamNotOpen);
        }
        let records: Vec<Record> = (self.next..self.next + max as u64)
            .map(|n| {
                Record::new(
                    Position::from_u64(n),
                    Data::from(n.to_string().into_bytes()),
                )
            })
            .collect();
        self.next += max as u64;
        self.last = records
            .last()
            .map(|r| r.position.clone())
            .or(self.last.take());
        Ok(ReadBatch {
            records,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, _positions: &[Position]) -> Result<()> {
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        self.open = false;
        Ok(self.last.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.open = false;
        Ok(())
    }
}

/// The fixture of the counter: predicts payloads `1`, `2`, ... from the start of each check.
#[derive(Default)]
pub(crate) struct CounterFixture {
    predicted: u64,
}

#[async_trait]
impl SourceFixture for CounterFixture {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(CounterPlugin)
    }

    async fn settings(&mut self) -> Settings {
        self.predicted = 0;
        Settings::new()
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        (0..n)
            .map(|_| {
                self.predicted += 1;
                Expected::Payload(Bytes::from(self.predicted.to_string()))
            })
            .collect()
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            live: true,
            self_producing: true,
            ..Default::default()
        }
    }
}
