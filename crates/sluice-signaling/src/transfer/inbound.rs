//! Consumer push: what a provider POSTs to the public endpoint becomes the records of an engine
//! source, so the configured destination writes it with the engine's checkpoints and acks.
//!
//! The POST is answered only once every line of its body has been checkpointed (the destination
//! made it durable). Bodies are deduplicated by byte offset: a body whose
//! `Sluice-Last-Position` header is a decimal offset covers `[last - len, last)` of the sender's
//! stream (as the `http` destination's `raw` format sends a `file` dataset); what was already
//! received is skipped, so retries and resends after a restart write nothing twice. The header is
//! used only with `Sluice-Position-Kind: byte-offset` (positions of other sources are not byte
//! offsets); otherwise bodies are appended in arrival order (at-least-once).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_sdk::connector::Result;
use sluice_sdk::{
    ConnectorError, Destination, Parameter, ParameterType, Plugin, Position, ReadBatch, Record,
    Settings, Source, Specification,
};
use tokio::sync::{mpsc, watch};

use super::lines::split_lines;

/// Name of the internal plugin.
pub const INBOUND_PLUGIN: &str = "sluice-dps-inbound";

/// Header saying what the positions in `Sluice-Last-Position` are.
pub const POSITION_KIND_HEADER: &str = "Sluice-Position-Kind";
/// The [`POSITION_KIND_HEADER`] value for byte offsets of the sender's stream.
pub const BYTE_OFFSET: &str = "byte-offset";

/// How long a POST waits for its data to be checkpointed.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a pushed body was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// No pipeline is receiving for the flow (not prepared yet, suspended, or stopping).
    #[error("data flow {0} is not receiving data right now")]
    NotReceiving(String),
    /// The body starts after the end of what was received: data in between is missing.
    #[error("the body starts at byte {got} but {expected} bytes were received so far")]
    Gap {
        /// What was received.
        expected: u64,
        /// Where the body starts.
        got: u64,
    },
    /// The header is not usable.
    #[error("{0}")]
    BadRequest(String),
    /// The data was not made durable in time.
    #[error("data flow {0}: the destination did not make the data durable in time")]
    Timeout(String),
}

/// One POST's lines on their way to the source.
struct Delivery {
    records: Vec<Record>,
}

/// A receiving flow.
struct Inbox {
    tx: mpsc::Sender<Delivery>,
    /// Offset up to which everything is checkpointed.
    committed: watch::Sender<u64>,
    /// Offset up to which everything was handed to the source (held while handing over, so
    /// concurrent POSTs are ordered).
    received: tokio::sync::Mutex<u64>,
}

/// The receiving flows of this process, by flow id.
#[derive(Default)]
pub struct InboundHub {
    inboxes: Mutex<HashMap<String, Arc<Inbox>>>,
    /// Woken whenever a flow starts receiving.
    opened: tokio::sync::Notify,
}

/// How long a push waits for its flow's receiver, which starts just after PREPARED / resume
/// is answered, before it is refused with 503.
const RECEIVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl InboundHub {
    fn get(&self, flow: &str) -> Option<Arc<Inbox>> {
        self.inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(flow)
            .cloned()
    }

    fn insert(&self, flow: &str, inbox: Arc<Inbox>) {
        self.inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flow.to_string(), inbox);
        self.opened.notify_waiters();
    }

    /// The flow's inbox, waiting up to [`RECEIVER_WAIT`] for its receiver to start.
    async fn wait_for(&self, flow: &str) -> Option<Arc<Inbox>> {
        let deadline = tokio::time::Instant::now() + RECEIVER_WAIT;
        loop {
            let opened = self.opened.notified();
            if let Some(inbox) = self.get(flow) {
                return Some(inbox);
            }
            if tokio::time::timeout_at(deadline, opened).await.is_err() {
                return self.get(flow);
            }
        }
    }

    fn remove(&self, flow: &str, inbox: &Arc<Inbox>) {
        let mut map = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(flow).is_some_and(|i| Arc::ptr_eq(i, inbox)) {
            map.remove(flow);
        }
    }

    /// True if a pipeline is receiving for `flow`.
    pub fn is_receiving(&self, flow: &str) -> bool {
        self.get(flow).is_some()
    }

    /// Hands a pushed body to the flow's pipeline and returns once it is durable. `last` is the
    /// sender's `Sluice-Last-Position` header, if any.
    pub async fn deliver(
        &self,
        flow: &str,
        body: Bytes,
        last: Option<&str>,
    ) -> Result<u64, InboundError> {
        let inbox = self
            .wait_for(flow)
            .await
            .ok_or_else(|| InboundError::NotReceiving(flow.to_string()))?;
        let len = body.len() as u64;
        let end = {
            let mut received = inbox.received.lock().await;
            let (start, end) = match last {
                Some(text) => {
                    let end: u64 = text.trim().parse().map_err(|_| {
                        InboundError::BadRequest(format!(
                            "Sluice-Last-Position {text:?} is not a byte offset"
                        ))
                    })?;
                    let start = end.checked_sub(len).ok_or_else(|| {
                        InboundError::BadRequest(format!(
                            "Sluice-Last-Position {end} is smaller than the body ({len} bytes)"
                        ))
                    })?;
                    (start, end)
                }
                None => (*received, *received + len),
            };
            if end > *received {
                if start > *received {
                    return Err(InboundError::Gap {
                        expected: *received,
                        got: start,
                    });
                }
                let fresh = body.slice((*received - start) as usize..);
                let mut records = Vec::new();
                let tail = split_lines(&fresh, *received, &mut records);
                if !tail.is_empty() {
                    records.push(Record::new(Position::from_u64(end), tail));
                }
                inbox
                    .tx
                    .send(Delivery { records })
                    .await
                    .map_err(|_| InboundError::NotReceiving(flow.to_string()))?;
                *received = end;
            }
            end
        };
        let mut committed = inbox.committed.subscribe();
        drop(inbox);
        let waited = tokio::time::timeout(DURABLE_TIMEOUT, committed.wait_for(|c| *c >= end)).await;
        match waited {
            Ok(Ok(_)) => Ok(len),
            Ok(Err(_)) => Err(InboundError::NotReceiving(flow.to_string())),
            Err(_) => Err(InboundError::Timeout(flow.to_string())),
        }
    }
}

/// The internal plugin whose source receives a flow's pushed data.
pub struct InboundPlugin {
    hub: Arc<InboundHub>,
}

impl InboundPlugin {
    /// A plugin feeding from `hub`.
    pub fn new(hub: Arc<InboundHub>) -> Self {
        InboundPlugin { hub }
    }
}

impl Plugin for InboundPlugin {
    fn specification(&self) -> Specification {
        let mut params = BTreeMap::new();
        params.insert(
            "flow".to_string(),
            Parameter::new(ParameterType::String, "The data flow receiving data.").required(),
        );
        Specification {
            name: INBOUND_PLUGIN.into(),
            summary: "Data POSTed to the public endpoint for a consumer push flow (internal)."
                .into(),
            description: "Internal to `sluice serve`: the lines POSTed to \
                /public/flows/{id}/data, positions are byte offsets of the sender's stream."
                .into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: params,
            destination_params: BTreeMap::new(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(InboundSource {
            hub: self.hub.clone(),
            flow: String::new(),
            rx: None,
            inbox: None,
            pending: VecDeque::new(),
            last: None,
        }))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        None
    }
}

/// The source side of a receiving flow. Unbounded: it ends only when stopped.
struct InboundSource {
    hub: Arc<InboundHub>,
    flow: String,
    rx: Option<mpsc::Receiver<Delivery>>,
    inbox: Option<Arc<Inbox>>,
    pending: VecDeque<Record>,
    last: Option<Position>,
}

impl InboundSource {
    fn unregister(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            self.hub.remove(&self.flow, &inbox);
        }
        self.rx = None;
    }
}

#[async_trait]
impl Source for InboundSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.flow = settings
            .get("flow")
            .cloned()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| ConnectorError::system("inbound: no flow"))?;
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let committed = match position {
            None => 0,
            Some(p) => p.to_u64().ok_or_else(|| ConnectorError::InvalidPosition {
                position: p.clone(),
                reason: "not a byte offset".into(),
            })?,
        };
        let (tx, rx) = mpsc::channel(4);
        let inbox = Arc::new(Inbox {
            tx,
            committed: watch::Sender::new(committed),
            received: tokio::sync::Mutex::new(committed),
        });
        self.hub.insert(&self.flow, inbox.clone());
        self.inbox = Some(inbox);
        self.rx = Some(rx);
        self.last = position.cloned();
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        if self.pending.is_empty() {
            let rx = self.rx.as_mut().ok_or(ConnectorError::StreamNotOpen)?;
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                self.pending.extend(d.records);
            }
        }
        let n = max.min(self.pending.len());
        let records: Vec<Record> = self.pending.drain(..n).collect();
        if let Some(r) = records.last() {
            self.last = Some(r.position.clone());
        }
        Ok(ReadBatch {
            records,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        let Some(upto) = positions.last().and_then(Position::to_u64) else {
            return Ok(());
        };
        if let Some(inbox) = &self.inbox {
            inbox.committed.send_if_modified(|c| {
                let moved = upto > *c;
                if moved {
                    *c = upto;
                }
                moved
            });
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        // Stop taking new bodies, but keep the inbox until teardown so acks still resolve POSTs.
        if let Some(inbox) = &self.inbox {
            self.hub.remove(&self.flow, inbox);
        }
        Ok(self.last.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.unregister();
        self.pending.clear();
        Ok(())
    }
}
