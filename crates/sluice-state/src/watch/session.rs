//! Client-lifetime keys (etcd's lease) on any [`Store`]: a [`Session`] is a record written with
//! a TTL and renewed by a heartbeat; keys put through the session are listed in an owned-keys
//! index. When the session closes, its keys are deleted at once; when it stops heartbeating (the
//! process died, the network went), its record expires and a [`SessionReaper`] — in any process
//! sharing the store — deletes the keys. Every deletion is an ordinary store delete, so watchers
//! see one delete event per key.
//!
//! Layout under the namespace `N` (default `__sluice/sessions/`): `N live/<id>` is the record
//! (TTL); `N owned/<id>/<key>` marks each owned key (no TTL, so it outlives a dead record until
//! reaped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::error::StateError;
use crate::like;
use crate::store::{DeleteRequest, Page, SetRequest, Store, TxOperation};

/// How a session behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// How long the record lives without a heartbeat.
    pub ttl: Duration,
    /// How often the record is renewed (well under `ttl`).
    pub heartbeat: Duration,
    /// Key prefix of records and owned-keys indexes.
    pub namespace: String,
}

impl SessionOptions {
    /// Default namespace of session records.
    pub const DEFAULT_NAMESPACE: &'static str = "__sluice/sessions/";

    /// A session of `ttl`, heartbeating every third of it.
    pub fn with_ttl(ttl: Duration) -> Self {
        SessionOptions {
            ttl,
            heartbeat: ttl / 3,
            ..Self::default()
        }
    }
}

impl Default for SessionOptions {
    /// 10 s TTL, heartbeat every 3 s.
    fn default() -> Self {
        SessionOptions {
            ttl: Duration::from_secs(10),
            heartbeat: Duration::from_secs(3),
            namespace: Self::DEFAULT_NAMESPACE.to_string(),
        }
    }
}

fn record_key(ns: &str, id: &str) -> String {
    format!("{ns}live/{id}")
}

fn owned_prefix(ns: &str, id: &str) -> String {
    format!("{ns}owned/{id}/")
}

/// A writer's session; keys put through it live as long as it does.
pub struct Session {
    id: String,
    store: Arc<dyn Store>,
    options: SessionOptions,
    alive: Arc<AtomicBool>,
    heartbeat: JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("store", &self.store.name())
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Session {
    /// Opens a session: writes its record with the TTL and starts the heartbeat. Must be called
    /// inside a tokio runtime.
    pub async fn open(store: Arc<dyn Store>, options: SessionOptions) -> Result<Self, StateError> {
        if options.heartbeat.is_zero() || options.heartbeat >= options.ttl {
            return Err(StateError::InvalidRequest(format!(
                "session heartbeat {:?} must be above zero and below its TTL {:?}",
                options.heartbeat, options.ttl
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = record_key(&options.namespace, &id);
        let etag = store
            .set(SetRequest::new(record.clone(), "").with_ttl(options.ttl))
            .await?;
        let alive = Arc::new(AtomicBool::new(true));
        let heartbeat = tokio::spawn(beat(
            Arc::clone(&store),
            record,
            etag,
            options.clone(),
            Arc::clone(&alive),
        ));
        Ok(Session {
            id,
            store,
            options,
            alive,
            heartbeat,
        })
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// False once a heartbeat found the record gone (the session expired; its keys are being
    /// or were reaped) or the session was closed.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn check_alive(&self) -> Result<(), StateError> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(StateError::InvalidRequest(format!(
                "session {} has expired",
                self.id
            )))
        }
    }

    /// Writes `req` as a key of this session (its own TTL, if any, still applies). The index
    /// entry is written first (in the same transaction where the store has them), so a key is
    /// never left unowned.
    pub async fn put(&self, req: SetRequest) -> Result<(), StateError> {
        self.check_alive()?;
        let mark = format!(
            "{}{}",
            owned_prefix(&self.options.namespace, &self.id),
            req.key
        );
        if self.store.features().transactional {
            self.store
                .multi(vec![
                    TxOperation::Upsert(SetRequest::new(mark, "")),
                    TxOperation::Upsert(req),
                ])
                .await
        } else {
            self.store.set(SetRequest::new(mark, "")).await?;
            self.store.set(req).await.map(drop)
        }
    }

    /// Deletes a key of this session and its index entry.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        let mark = format!("{}{key}", owned_prefix(&self.options.namespace, &self.id));
        remove(&*self.store, vec![key.to_string(), mark]).await
    }

    /// Ends the session: stops the heartbeat and deletes every key it owns, its index and its
    /// record; returns how many owned keys there were.
    pub async fn close(self) -> Result<u64, StateError> {
        self.heartbeat.abort();
        self.alive.store(false, Ordering::Release);
        let n = reap_session(&*self.store, &self.options.namespace, &self.id).await?;
        self.store
            .delete(DeleteRequest::new(record_key(
                &self.options.namespace,
                &self.id,
            )))
            .await?;
        Ok(n)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Without a close the keys go when the record expires and a reaper runs.
        self.heartbeat.abort();
    }
}

/// Renews the record every heartbeat, conditionally on its ETag: a mismatch means it expired
/// (and may have been reaped), so the session is dead and must not come back.
async fn beat(
    store: Arc<dyn Store>,
    record: String,
    mut etag: String,
    options: SessionOptions,
    alive: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(options.heartbeat);
    tick.tick().await;
    loop {
        tick.tick().await;
        let req = SetRequest::new(record.clone(), "")
            .with_ttl(options.ttl)
            .with_etag(etag.clone());
        match store.set(req).await {
            Ok(next) => etag = next,
            Err(StateError::EtagMismatch { .. }) => {
                tracing::error!(
                    session = record.as_str(),
                    "session expired before its heartbeat"
                );
                alive.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::warn!(session = record.as_str(), error = %e, "session heartbeat failed")
            }
        }
    }
}

/// Deletes `keys` in one transaction where the store has them, else as a bulk delete.
async fn remove(store: &dyn Store, keys: Vec<String>) -> Result<(), StateError> {
    if store.features().transactional {
        let ops = keys
            .into_iter()
            .map(|k| TxOperation::Delete(DeleteRequest::new(k)))
            .collect();
        store.multi(ops).await
    } else {
        let reqs = keys.into_iter().map(DeleteRequest::new).collect();
        for r in store.delete_many(reqs).await {
            r?;
        }
        Ok(())
    }
}

/// Every key listed under `prefix` (a literal prefix), all pages.
async fn list_under(store: &dyn Store, prefix: &str) -> Result<Vec<String>, StateError> {
    let pattern = format!("{}%", like::escape(prefix));
    let mut out = Vec::new();
    let mut page = Page {
        limit: Some(1000),
        token: None,
    };
    loop {
        let got = store.keys(&pattern, page.clone()).await?;
        out.extend(got.keys);
        match got.next {
            Some(next) => page.token = Some(next),
            None => return Ok(out),
        }
    }
}

/// Deletes every key session `id` owns and their index entries, a page at a time; returns how
/// many keys.
async fn reap_session(store: &dyn Store, ns: &str, id: &str) -> Result<u64, StateError> {
    let prefix = owned_prefix(ns, id);
    let marks = list_under(store, &prefix).await?;
    let mut count = 0u64;
    for chunk in marks.chunks(256) {
        let mut keys = Vec::with_capacity(chunk.len() * 2);
        for mark in chunk {
            if let Some(key) = mark.strip_prefix(&prefix) {
                keys.push(key.to_string());
                count += 1;
            }
            keys.push(mark.clone());
        }
        remove(store, keys).await?;
    }
    Ok(count)
}

/// Deletes the keys of sessions whose record expired. Run one per process (or one anywhere):
/// reaping is idempotent.
#[derive(Debug)]
pub struct SessionReaper {
    task: JoinHandle<()>,
}

impl Drop for SessionReaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SessionReaper {
    /// Sweeps `namespace` of `store` every `every` until dropped. Must be called inside a tokio
    /// runtime.
    pub fn spawn(store: Arc<dyn Store>, namespace: impl Into<String>, every: Duration) -> Self {
        let namespace = namespace.into();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = Self::sweep(&*store, &namespace).await {
                    tracing::warn!(error = %e, "session reaper could not sweep; will retry");
                }
            }
        });
        SessionReaper { task }
    }

    /// One sweep: for every session with owned keys but no live record, deletes its keys;
    /// returns how many keys went.
    pub async fn sweep(store: &dyn Store, namespace: &str) -> Result<u64, StateError> {
        let owned_root = format!("{namespace}owned/");
        let marks = list_under(store, &owned_root).await?;
        let mut ids: Vec<&str> = marks
            .iter()
            .filter_map(|m| m.strip_prefix(&owned_root)?.split('/').next())
            .collect();
        ids.dedup();
        let mut reaped = 0;
        for id in ids {
            if store.get(&record_key(namespace, id)).await?.is_none() {
                let n = reap_session(store, namespace, id).await?;
                tracing::info!(
                    session = id,
                    keys = n,
                    "reaped the keys of an expired session"
                );
                reaped += n;
            }
        }
        Ok(reaped)
    }
}
