//! Group commit: concurrent transactions on a durable store share one commit.
//!
//! A durable store pays for every commit with an fsync (redb) or a WAL flush (PostgreSQL), and
//! the embedded store commits one transaction at a time. So that concurrent transitions do not
//! queue behind each other's fsync, they are sent to one committer task, which takes everything
//! waiting (up to [`MAX_BATCH`]) and commits it as one [`Store::multi`]: one fsync for the lot.
//! Every caller is answered only after that commit returned, so an acknowledged transition is as
//! durable as with a commit of its own.
//!
//! On a remote store (PostgreSQL, Redis) a commit is mostly waiting on round trips, so up to
//! [`REMOTE_IN_FLIGHT`] batches are committed at once, each on its own connection; an embedded
//! store has one writer, so one batch at a time.
//!
//! Isolation is kept: a batch holds only transactions on disjoint keys (one that touches a key of
//! an earlier waiting one waits for a later batch, in arrival order), so each transaction's checks
//! (ETag, first-write) see the same state they would alone. When one transaction's check fails,
//! the store aborts the whole batch at that operation: that transaction gets its own abort (its
//! index rebased to its own operations) and the others are committed without it. Any other
//! failure is retried once per transaction, alone, so each gets its own answer.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};

use sluice_state::{Concurrency, StateError, Store, TxOperation};
use tokio::sync::{mpsc, oneshot};

use super::worker::{Worker, QUEUE};
use super::FastSet;

/// Most transactions committed together.
pub const MAX_BATCH: usize = 256;

/// Batches committed at once on a remote store.
pub const REMOTE_IN_FLIGHT: usize = 2;

struct Request {
    ops: Vec<TxOperation>,
    reply: oneshot::Sender<Result<(), StateError>>,
}

/// Commits transactions on `store` in groups (see the module documentation).
pub struct GroupCommit {
    store: Arc<dyn Store>,
    /// The committer, started by the first commit.
    committer: Worker<Request>,
    /// Batches committed at once.
    in_flight: usize,
}

impl GroupCommit {
    /// Group commit on `store`: several batches at once on a remote store, else one.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let in_flight = if store.features().remote {
            REMOTE_IN_FLIGHT
        } else {
            1
        };
        Self::with_in_flight(store, in_flight)
    }

    /// Group commit on `store` with up to `in_flight` batches committed at once.
    pub fn with_in_flight(store: Arc<dyn Store>, in_flight: usize) -> Self {
        GroupCommit {
            store,
            committer: Worker::new("group commit"),
            in_flight: in_flight.max(1),
        }
    }

    /// Commits `ops` as one transaction, possibly together with others; returns once it is
    /// committed, with the error [`Store::multi`] would have returned for `ops` alone.
    pub async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        let store = Arc::clone(&self.store);
        let in_flight = self.in_flight;
        let sent = self
            .committer
            .call(
                |rx| committer(store, rx, in_flight),
                |reply| Request { ops, reply },
            )
            .await;
        match sent {
            Ok(answer) => answer,
            // The committer is gone (its runtime shut down): commit alone.
            Err(request) => self.store.multi(request.ops).await,
        }
    }
}

/// Takes what is waiting and commits it in batches, up to `in_flight` batches at once on
/// disjoint keys, until every sender is gone and everything taken is answered.
async fn committer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>, in_flight: usize) {
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut running = FuturesUnordered::new();
    // Keys of the batches being committed: a transaction touching one waits for that batch.
    let mut busy: FastSet<String> = FastSet::default();
    let mut open = true;
    loop {
        while open && waiting.len() < QUEUE {
            match rx.try_recv() {
                Ok(r) => waiting.push_back(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        while running.len() < in_flight && !waiting.is_empty() {
            let batch = take_batch(&mut waiting, &busy);
            if batch.is_empty() {
                break;
            }
            let keys: Vec<String> = batch
                .iter()
                .flat_map(|r| r.ops.iter().map(|op| op.key().to_string()))
                .collect();
            busy.extend(keys.iter().cloned());
            let store = Arc::clone(&store);
            running.push(async move {
                let began = std::time::Instant::now();
                let transactions = batch.len();
                commit(store.as_ref(), batch).await;
                tracing::trace!(
                    transactions,
                    micros = began.elapsed().as_micros() as u64,
                    "group commit"
                );
                keys
            });
        }
        if !open && waiting.is_empty() && running.is_empty() {
            return;
        }
        tokio::select! {
            Some(keys) = running.next(), if !running.is_empty() => {
                for key in keys {
                    busy.remove(&key);
                }
            }
            r = rx.recv(), if open && waiting.len() < QUEUE => match r {
                Some(r) => waiting.push_back(r),
                None => open = false,
            },
        }
    }
}

/// Takes the waiting transactions that can commit together: disjoint keys, none of them `busy`
/// (being committed), arrival order kept for transactions that share a key.
fn take_batch(waiting: &mut VecDeque<Request>, busy: &FastSet<String>) -> Vec<Request> {
    let mut keys: FastSet<String> = FastSet::default();
    let mut batch = Vec::new();
    let mut later = VecDeque::new();
    for r in waiting.drain(..) {
        let free = batch.len() < MAX_BATCH
            && r.ops
                .iter()
                .all(|op| !keys.contains(op.key()) && !busy.contains(op.key()));
        // A deferred transaction's keys block later ones too, so that order is kept per key.
        keys.extend(r.ops.iter().map(|op| op.key().to_string()));
        if free {
            batch.push(r);
        } else {
            later.push_back(r);
        }
    }
    *waiting = later;
    batch
}

/// Commits `batch` as one transaction, splitting off transactions whose checks fail.
async fn commit(store: &dyn Store, mut batch: Vec<Request>) {
    // The transactions are independent (disjoint keys): alike ones go next to each other, so a
    // store can write a run of alike writes as one statement.
    batch.sort_by_cached_key(|r| shape(&r.ops));
    loop {
        if batch.len() == 1 {
            if let Some(r) = batch.pop() {
                let _ = r.reply.send(store.multi(r.ops).await);
            }
            return;
        }
        let combined: Vec<TxOperation> = batch.iter().flat_map(|r| r.ops.iter().cloned()).collect();
        match store.multi(combined).await {
            Ok(()) => {
                for r in batch {
                    let _ = r.reply.send(Ok(()));
                }
                return;
            }
            Err(StateError::TransactionAborted { index, key, source }) => {
                let Some((at, offset)) = owner(&batch, index) else {
                    return alone(store, batch).await;
                };
                let r = batch.remove(at);
                let _ = r.reply.send(Err(StateError::TransactionAborted {
                    index: index - offset,
                    key,
                    source,
                }));
                if batch.is_empty() {
                    return;
                }
            }
            Err(_) => return alone(store, batch).await,
        }
    }
}

/// What kind of writes a transaction makes, in order: first-writes, conditional writes (ETag),
/// plain writes, deletes.
fn shape(ops: &[TxOperation]) -> Vec<u8> {
    ops.iter()
        .map(|op| match op {
            TxOperation::Upsert(req) if req.etag.is_some() => 1,
            TxOperation::Upsert(req) if req.concurrency == Concurrency::FirstWrite => 0,
            TxOperation::Upsert(_) => 2,
            TxOperation::Delete(_) => 3,
        })
        .collect()
}

/// The position in `batch` of the transaction holding operation `index` of the combined
/// transaction, and the index of its first operation there.
fn owner(batch: &[Request], index: usize) -> Option<(usize, usize)> {
    let mut offset = 0;
    for (at, r) in batch.iter().enumerate() {
        if index < offset + r.ops.len() {
            return Some((at, offset));
        }
        offset += r.ops.len();
    }
    None
}

/// Commits every transaction of `batch` on its own, each getting its own answer.
async fn alone(store: &dyn Store, batch: Vec<Request>) {
    for r in batch {
        let _ = r.reply.send(store.multi(r.ops).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_state::{Concurrency, MemoryStore, SetRequest};

    fn first_write(key: &str, value: &str) -> TxOperation {
        TxOperation::Upsert(
            SetRequest::new(key, value.to_string()).with_concurrency(Concurrency::FirstWrite),
        )
    }

    #[tokio::test]
    async fn a_failing_transaction_does_not_sink_its_batch() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .set(SetRequest::new("taken", "x".to_string()))
            .await
            .unwrap();
        let group = Arc::new(GroupCommit::new(Arc::clone(&store)));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let group = Arc::clone(&group);
            tasks.push(tokio::spawn(async move {
                let mut ops = vec![first_write(&format!("k{i}"), "v")];
                if i % 8 == 0 {
                    ops.push(first_write("taken", "y"));
                }
                (i, group.multi(ops).await)
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            let stored = store.get(&format!("k{i}")).await.unwrap();
            if i % 8 == 0 {
                match r {
                    Err(StateError::TransactionAborted { index, key, .. }) => {
                        assert_eq!((index, key.as_str()), (1, "taken"));
                    }
                    other => panic!("transaction {i}: {other:?}"),
                }
                assert!(stored.is_none(), "aborted transaction {i} was applied");
            } else {
                r.unwrap();
                assert!(stored.is_some(), "transaction {i} was not applied");
            }
        }
    }

    #[tokio::test]
    async fn transactions_on_one_key_commit_one_at_a_time() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let group = Arc::new(GroupCommit::new(Arc::clone(&store)));
        let mut tasks = Vec::new();
        for i in 0..32 {
            let group = Arc::clone(&group);
            tasks.push(tokio::spawn(async move {
                group.multi(vec![first_write("one", &i.to_string())]).await
            }));
        }
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                won += 1;
            }
        }
        assert_eq!(won, 1, "exactly one first write of the key wins");
    }

    #[tokio::test]
    async fn batches_in_flight_together_never_share_a_key() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let group = Arc::new(GroupCommit::with_in_flight(Arc::clone(&store), 4));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let group = Arc::clone(&group);
            tasks.push(tokio::spawn(async move {
                // Half the transactions append to one of four shared keys (ETag-free
                // read-modify-write would lose updates if two batches held the same key).
                let key = if i % 2 == 0 {
                    format!("shared-{}", (i / 2) % 4)
                } else {
                    format!("own-{i}")
                };
                group
                    .multi(vec![TxOperation::Upsert(SetRequest::new(
                        key,
                        i.to_string(),
                    ))])
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for i in (1..200).step_by(2) {
            assert!(store.get(&format!("own-{i}")).await.unwrap().is_some());
        }
        // Per key, the last transaction to arrive is the last written.
        for k in 0..4 {
            let last = (0..200)
                .filter(|i| i % 2 == 0 && (i / 2) % 4 == k)
                .max()
                .unwrap();
            let got = store.get(&format!("shared-{k}")).await.unwrap().unwrap();
            assert_eq!(got.value, bytes::Bytes::from(last.to_string()));
        }
    }

    #[test]
    fn batches_keep_disjoint_keys_and_order() {
        let mk = |keys: &[&str]| {
            let (reply, _) = oneshot::channel();
            Request {
                ops: keys.iter().map(|k| first_write(k, "v")).collect(),
                reply,
            }
        };
        let mut waiting: VecDeque<Request> = [
            mk(&["a"]),
            mk(&["b"]),
            mk(&["a", "c"]),
            mk(&["c"]),
            mk(&["d"]),
        ]
        .into();
        let batch = take_batch(&mut waiting, &FastSet::default());
        let keys = |r: &Request| {
            r.ops
                .iter()
                .map(|o| o.key().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            batch.iter().map(keys).collect::<Vec<_>>(),
            vec![vec!["a"], vec!["b"], vec!["d"]]
        );
        assert_eq!(
            waiting.iter().map(keys).collect::<Vec<_>>(),
            vec![
                vec!["a".to_string(), "c".to_string()],
                vec!["c".to_string()]
            ]
        );
    }
}
