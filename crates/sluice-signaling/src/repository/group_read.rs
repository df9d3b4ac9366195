//! Group read: concurrent reads of a remote store share one round trip.
//!
//! On a store where every call is a round trip to a server ([`Features::remote`]: PostgreSQL,
//! Redis), each signaling call starts with a read of its flow. Under load those reads are sent to
//! one reader task, which takes everything waiting (up to [`MAX_BATCH`] keys) and asks for it
//! with one [`Store::bulk_get`]: one statement instead of one per call. A read is never served
//! from an older answer: each waits for a `bulk_get` issued after it arrived.
//!
//! [`Features::remote`]: sluice_state::Features::remote

use std::sync::Arc;

use sluice_state::{Item, StateError, Store};
use tokio::sync::{mpsc, oneshot};

use super::worker::Worker;
use super::FastMap;

/// Most keys read together.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Option<Item>, StateError>>;

struct Request {
    key: String,
    reply: Reply,
}

/// Reads keys of `store` in groups (see the module documentation).
pub struct GroupRead {
    store: Arc<dyn Store>,
    /// The reader, started by the first read.
    reader: Worker<Request>,
}

impl GroupRead {
    /// Group reads on `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        GroupRead {
            store,
            reader: Worker::new("group read"),
        }
    }

    /// The item at `key`, read together with other waiting reads.
    pub async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        let store = Arc::clone(&self.store);
        let sent = self
            .reader
            .call(
                |rx| reader(store, rx),
                |reply| Request {
                    key: key.to_string(),
                    reply,
                },
            )
            .await;
        match sent {
            Ok(answer) => answer,
            // The reader is gone (its runtime shut down): read alone.
            Err(request) => self.store.get(&request.key).await,
        }
    }
}

/// Takes what is waiting and reads it with one `bulk_get`, until every sender is gone.
async fn reader(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        if batch.len() == 1 {
            if let Some(r) = batch.pop() {
                let _ = r.reply.send(store.get(&r.key).await);
            }
            continue;
        }
        read(store.as_ref(), &mut batch).await;
    }
}

/// Reads the distinct keys of `batch` at once and answers every request.
async fn read(store: &dyn Store, batch: &mut Vec<Request>) {
    let mut index: FastMap<&str, usize> =
        FastMap::with_capacity_and_hasher(batch.len(), Default::default());
    let mut keys: Vec<String> = Vec::with_capacity(batch.len());
    for r in batch.iter() {
        index.entry(r.key.as_str()).or_insert_with(|| {
            keys.push(r.key.clone());
            keys.len() - 1
        });
    }
    let results = store.bulk_get(&keys).await;
    let positions: Vec<usize> = batch.iter().map(|r| index[r.key.as_str()]).collect();
    drop(index);
    for (r, at) in batch.drain(..).zip(positions) {
        let answer = match results.get(at) {
            Some(Ok(item)) => Ok(item.clone()),
            Some(Err(e)) => Err(e.replicate("group read")),
            None => Err(StateError::Backend {
                backend: "group read",
                message: format!("bulk get answered {} of {} keys", results.len(), keys.len()),
                transient: true,
            }),
        };
        let _ = r.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_state::{MemoryStore, SetRequest};

    #[tokio::test]
    async fn concurrent_reads_each_get_their_own_key() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        for i in 0..50 {
            store
                .set(SetRequest::new(format!("k{i}"), format!("v{i}")))
                .await
                .unwrap();
        }
        let group = Arc::new(GroupRead::new(Arc::clone(&store)));
        let mut tasks = Vec::new();
        // Every key twice (the same key twice in one batch), and keys that are absent.
        for i in 0..120 {
            let group = Arc::clone(&group);
            tasks.push(tokio::spawn(async move {
                let key = format!("k{}", i % 60);
                (i % 60, group.get(&key).await)
            }));
        }
        for t in tasks {
            let (i, got) = t.await.unwrap();
            let got = got.unwrap();
            if i < 50 {
                assert_eq!(got.map(|item| item.value), Some(format!("v{i}").into()));
            } else {
                assert!(got.is_none(), "k{i} was never written");
            }
        }
    }

    #[tokio::test]
    async fn a_read_sees_a_write_acknowledged_before_it() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let group = GroupRead::new(Arc::clone(&store));
        for i in 0..20 {
            store
                .set(SetRequest::new("k", format!("v{i}")))
                .await
                .unwrap();
            let item = group.get("k").await.unwrap().unwrap();
            assert_eq!(item.value, bytes::Bytes::from(format!("v{i}")));
        }
    }
}
