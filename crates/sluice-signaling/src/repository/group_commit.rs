//! Group commit: concurrent transactions on a durable store share one commit.
//!
//! A durable store pays for every commit with an fsync (redb) or a WAL flush (PostgreSQL), and
//! the embedded store commits one transaction at a time. So that concurrent transitions do not
//! queue behind each other's fsync, they are sent to one committer task, which takes everything
//! waiting (up to [`MAX_BATCH`]) and commits it as one [`Store::multi`]: one fsync for the lot.
//! Every caller is answered only after that commit returned, so an acknowledged transition is as
//! durable as with a commit of its own.
//!
//! Isolation is kept: a batch holds only transactions on disjoint keys (one that touches a key of
//! an earlier waiting one waits for a later batch, in arrival order), so each transaction's checks
//! (ETag, first-write) see the same state they would alone. When one transaction's check fails,
//! the store aborts the whole batch at that operation: that transaction gets its own abort (its
//! index rebased to its own operations) and the others are committed without it. Any other
//! failure is retried once per transaction, alone, so each gets its own answer.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use sluice_state::{StateError, Store, TxOperation};
use tokio::sync::{mpsc, oneshot};

/// Most transactions committed together.
pub const MAX_BATCH: usize = 256;

/// Transactions waiting for the committer.
const QUEUE: usize = 1024;

struct Request {
    ops: Vec<TxOperation>,
    reply: oneshot::Sender<Result<(), StateError>>,
}

/// Commits transactions on `store` in groups (see the module documentation).
pub struct GroupCommit {
    store: Arc<dyn Store>,
    /// The committer's queue, started by the first commit (inside a runtime).
    queue: OnceLock<mpsc::Sender<Request>>,
}

impl GroupCommit {
    /// Group commit on `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        GroupCommit {
            store,
            queue: OnceLock::new(),
        }
    }

    /// Commits `ops` as one transaction, possibly together with others; returns once it is
    /// committed, with the error [`Store::multi`] would have returned for `ops` alone.
    pub async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(committer(Arc::clone(&self.store), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = queue.send(Request { ops, reply }).await {
            // The committer is gone (its runtime shut down): commit alone.
            return self.store.multi(request.ops).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(StateError::Backend {
                backend: "group commit",
                message: "the committer stopped before answering; the outcome is unknown".into(),
                transient: true,
            })
        })
    }
}

/// Takes what is waiting, commits it in batches, until every sender is gone.
async fn committer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>) {
    let mut waiting: VecDeque<Request> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(r) => waiting.push_back(r),
                None => return,
            }
        }
        while waiting.len() < QUEUE {
            match rx.try_recv() {
                Ok(r) => waiting.push_back(r),
                Err(_) => break,
            }
        }
        let batch = take_batch(&mut waiting);
        commit(store.as_ref(), batch).await;
    }
}

/// Takes the waiting transactions that can commit together: disjoint keys, arrival order kept
/// for transactions that share a key.
fn take_batch(waiting: &mut VecDeque<Request>) -> Vec<Request> {
    let mut keys: HashSet<String> = HashSet::new();
    let mut batch = Vec::new();
    let mut later = VecDeque::new();
    for r in waiting.drain(..) {
        let free = batch.len() < MAX_BATCH && r.ops.iter().all(|op| !keys.contains(op.key()));
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
        let batch = take_batch(&mut waiting);
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
