//! Data flows in a state store: atomic check-and-create, optimistic updates, and the side effects
//! (outbox entries, tokens) committed in the same transaction as the flow.
//!
//! On a durable store, concurrent transactions of different flows are committed together
//! ([`group_commit`]): one fsync for many transitions, each acknowledged only once durable. On a
//! remote store, concurrent reads share one round trip ([`group_read`]).

mod decoded;
mod group_commit;
mod group_read;
mod worker;

use std::sync::Arc;

use bytes::Bytes;
use sluice_state::{Concurrency, Page, SetRequest, StateError, Store, TxOperation};

use crate::error::SignalingError;
use crate::flow::DataFlow;
use decoded::Decoded;
use group_commit::GroupCommit;
use group_read::GroupRead;

/// A hash map with a fast seeded hasher, for the maps on the request path (keyed by flow and
/// store keys; SipHash showed in the profiles).
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set with the hasher of [`FastMap`].
type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// Where flows live in a store.
#[derive(Clone)]
pub struct FlowRepository {
    store: Arc<dyn Store>,
    /// Group commit of flow transactions, on durable stores only (a memory store commits in
    /// microseconds: queueing would only add latency).
    group: Option<Arc<GroupCommit>>,
    /// Grouped reads, on remote stores only.
    reads: Option<Arc<GroupRead>>,
    /// Flows recently stored or read, so that reading them back skips the JSON parse.
    decoded: Arc<Decoded>,
}

/// What [`FlowRepository::create`] found.
#[derive(Debug)]
pub enum Created {
    /// The flow is new and stored.
    New,
    /// A flow for the same process already existed (returned with its ETag).
    Existing(Box<DataFlow>, String),
}

const FLOWS: &str = "sluice/flows/";
const PROCESSES: &str = "sluice/processes/";

/// Store key of a flow.
pub fn flow_key(id: &str) -> String {
    format!("{FLOWS}{id}")
}

fn process_key(process_id: &str) -> String {
    format!("{PROCESSES}{process_id}")
}

impl FlowRepository {
    /// Flows kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let features = store.features();
        let group = features
            .durable
            .then(|| Arc::new(GroupCommit::new(Arc::clone(&store))));
        let reads = features
            .remote
            .then(|| Arc::new(GroupRead::new(Arc::clone(&store))));
        FlowRepository {
            store,
            group,
            reads,
            decoded: Arc::default(),
        }
    }

    /// Reads one key, grouped with concurrent reads on a remote store.
    async fn read(&self, key: &str) -> Result<Option<sluice_state::Item>, StateError> {
        match &self.reads {
            Some(reads) => reads.get(key).await,
            None => self.store.get(key).await,
        }
    }

    /// Commits one transaction of flow writes, grouped with concurrent ones on a durable store.
    async fn commit(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        match &self.group {
            Some(group) => group.multi(ops).await,
            None => self.store.multi(ops).await,
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stores a new flow unless its process already has one — atomically, so two concurrent
    /// creates for one process end with exactly one flow. `extra` commits in the same transaction.
    pub async fn create(
        &self,
        flow: &DataFlow,
        extra: Vec<TxOperation>,
    ) -> Result<Created, SignalingError> {
        let bytes = encode(flow)?;
        let mut ops = vec![
            TxOperation::Upsert(
                SetRequest::new(process_key(&flow.process_id), flow.id.clone())
                    .with_concurrency(Concurrency::FirstWrite),
            ),
            TxOperation::Upsert(
                SetRequest::new(flow_key(&flow.id), bytes.clone())
                    .with_concurrency(Concurrency::FirstWrite),
            ),
        ];
        ops.extend(extra);
        match self.commit(ops).await {
            Ok(()) => {
                self.decoded.put(flow, bytes);
                Ok(Created::New)
            }
            Err(StateError::TransactionAborted {
                index: 0, source, ..
            }) if matches!(*source, StateError::EtagMismatch { .. }) => {
                match self.by_process(&flow.process_id).await? {
                    Some((existing, etag)) => Ok(Created::Existing(Box::new(existing), etag)),
                    None => Err(SignalingError::Internal(format!(
                        "process {} is claimed but its flow is missing",
                        flow.process_id
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The flow with this id and its ETag.
    pub async fn get(&self, id: &str) -> Result<Option<(DataFlow, String)>, SignalingError> {
        self.load(id, false).await
    }

    /// Like [`FlowRepository::get`], for a caller that changes the flow and then stores it
    /// with [`FlowRepository::update`]: the kept copy is handed over instead of cloned (the
    /// update keeps the new one).
    pub async fn get_for_update(
        &self,
        id: &str,
    ) -> Result<Option<(DataFlow, String)>, SignalingError> {
        self.load(id, true).await
    }

    /// Reads a flow, from the kept decoded copy when the stored bytes match it (handed over
    /// if `hand_over`, else cloned and a freshly decoded flow kept).
    async fn load(
        &self,
        id: &str,
        hand_over: bool,
    ) -> Result<Option<(DataFlow, String)>, SignalingError> {
        let Some(item) = self.read(&flow_key(id)).await? else {
            return Ok(None);
        };
        let kept = if hand_over {
            self.decoded.take(id, &item.value)
        } else {
            self.decoded.get(id, &item.value)
        };
        let flow = match kept {
            Some(flow) => flow,
            None => {
                let flow = decode(id, &item.value)?;
                if !hand_over {
                    self.decoded.put(&flow, item.value);
                }
                flow
            }
        };
        Ok(Some((flow, item.etag)))
    }

    /// The flow of a control-plane process.
    pub async fn by_process(
        &self,
        process_id: &str,
    ) -> Result<Option<(DataFlow, String)>, SignalingError> {
        let Some(item) = self.read(&process_key(process_id)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&item.value).to_string();
        self.get(&id).await
    }

    /// Replaces a flow if it still has `etag`; `extra` commits in the same transaction.
    /// A concurrent change is [`SignalingError::Concurrent`]: reload and try again.
    pub async fn update(
        &self,
        flow: &DataFlow,
        etag: &str,
        extra: Vec<TxOperation>,
    ) -> Result<(), SignalingError> {
        let bytes = encode(flow)?;
        let mut ops = vec![TxOperation::Upsert(
            SetRequest::new(flow_key(&flow.id), bytes.clone()).with_etag(etag),
        )];
        ops.extend(extra);
        match self.commit(ops).await {
            Ok(()) => {
                self.decoded.put(flow, bytes);
                Ok(())
            }
            Err(StateError::TransactionAborted {
                index: 0, source, ..
            }) if matches!(*source, StateError::EtagMismatch { .. }) => {
                Err(SignalingError::Concurrent(flow.id.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One page of flow ids, in id order.
    pub async fn list(&self, page: Page) -> Result<(Vec<String>, Option<String>), SignalingError> {
        let p = self.store.keys(&format!("{FLOWS}%"), page).await?;
        let ids = p
            .keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(FLOWS).map(str::to_string))
            .collect();
        Ok((ids, p.next))
    }
}

fn encode(flow: &DataFlow) -> Result<Bytes, SignalingError> {
    thread_local! {
        // Reused across flows: the stored bytes are then one allocation of their exact size
        // (stores keep them, the memory store for as long as the flow lives).
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|out| {
        out.clear();
        let encoded = serde_json::to_writer(&mut *out, flow)
            .map(|()| Bytes::copy_from_slice(out))
            .map_err(|e| SignalingError::Internal(format!("cannot encode flow {}: {e}", flow.id)));
        if out.capacity() > 64 * 1024 {
            *out = Vec::new();
        }
        encoded
    })
}

fn decode(id: &str, bytes: &[u8]) -> Result<DataFlow, SignalingError> {
    serde_json::from_slice(bytes)
        .map_err(|e| SignalingError::Internal(format!("stored flow {id} is corrupt: {e}")))
}
