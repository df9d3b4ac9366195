//! Declarative pipelines (issue 4, item 5): `sluice serve` watches a prefix of a store whose keys
//! hold pipeline files (the `sluice run` format) and runs them on the engine.
//!
//! On start the watch's resync starts what is there (and stops what is gone after a later
//! resync); each change then applies live: a new key starts its pipelines, a changed value stops
//! them gracefully and starts the new definition, a delete stops them. A definition that does
//! not parse or check is logged with its key and the problems and runs nothing; the others are
//! untouched. Checkpoints go to Sluice's own state store.
//!
//! # Several replicas
//! Each definition runs on exactly one replica at a time: before starting one, a replica claims
//! its lease `sluice/leases/pipelines/{name}` with a first-write through its watch [`Session`], so
//! the lease is a client-lifetime key — deleted when the replica stops (its session closes) or,
//! if it dies, when its session record expires (`leaseTtl`) and a [`SessionReaper`] (every
//! replica runs one) deletes it. The other replicas watch the leases too: a lease's delete makes
//! them claim it, and one wins. A replica whose session expired (it stalled) stops its pipelines
//! and opens a new session before claiming again. Every `leaseTtl` each replica also re-examines
//! every definition, which retries claims that failed on a transient error.

mod definition;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::Engine;
use sluice_sdk::Registry;
use sluice_state::watch::{
    self, Op, Registration, Session, SessionOptions, SessionReaper, WatchEvent, WatchOptions,
};
use sluice_state::{Concurrency, SetRequest, StateError, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use definition::{decode_value, Definition, Running, STOP_GRACE};

use super::stores::Stores;
use crate::serve_config::PipelinesFile;

/// Key prefix of pipeline leases; the rest of a lease key is the definition's name.
pub const LEASE_PREFIX: &str = "sluice/leases/pipelines/";
/// How long the watch waits for one event to be applied (a graceful stop and a start).
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why declarative pipelines could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeclarativeError {
    /// `pipelines.store` names no store.
    #[error("pipelines.store names {0:?}, which is not a declared store")]
    UnknownStore(String),
    /// The store cannot be watched.
    #[error("pipelines.store {store:?} cannot hold declarative pipelines: {source}")]
    Watch {
        /// The store.
        store: String,
        /// Why.
        #[source]
        source: watch::WatchError,
    },
    /// The replica's session could not be opened.
    #[error("cannot open this replica's session in store {store:?}: {source}")]
    Session {
        /// The store.
        store: String,
        /// Why.
        #[source]
        source: StateError,
    },
}

/// Declarative pipelines, running in the background until [`Declarative::shutdown`].
#[derive(Debug)]
pub struct Declarative {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Declarative {
    /// Opens this replica's session and the watch, then applies definitions in the background.
    pub async fn start(
        settings: &PipelinesFile,
        stores: &Stores,
        registry: Registry,
    ) -> Result<Declarative, DeclarativeError> {
        let name = settings.store.clone();
        let store = stores
            .get(&name)
            .map(|s| Arc::clone(&s.store))
            .ok_or_else(|| DeclarativeError::UnknownStore(name.clone()))?;
        let options = WatchOptions::default().with_done_timeout(APPLY_TIMEOUT);
        let registration = watch::watch_store(
            store.as_ref(),
            "declarative-pipelines",
            vec![settings.prefix.clone(), LEASE_PREFIX.to_string()],
            None,
            options,
        )
        .map_err(|source| DeclarativeError::Watch {
            store: name.clone(),
            source,
        })?;
        let session_options = SessionOptions::with_ttl(settings.lease_ttl);
        let session = Session::open(Arc::clone(&store), session_options.clone())
            .await
            .map_err(|source| DeclarativeError::Session {
                store: name.clone(),
                source,
            })?;
        tracing::info!(
            store = name.as_str(),
            prefix = settings.prefix.as_str(),
            replica = session.id(),
            "declarative pipelines: watching"
        );
        let reaper = SessionReaper::spawn(
            Arc::clone(&store),
            session_options.namespace.clone(),
            (settings.lease_ttl / 3).max(Duration::from_millis(100)),
        );
        let (ended_tx, ended_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let runner = Runner {
            store,
            session_options,
            session,
            engine: Engine::new(registry, stores.own_state()),
            prefix: settings.prefix.clone(),
            lease_ttl: settings.lease_ttl,
            definitions: BTreeMap::new(),
            leases: BTreeMap::new(),
            running: HashMap::new(),
            finished: HashMap::new(),
            rejected: HashMap::new(),
            generation: 0,
            ended_tx,
            _reaper: reaper,
        };
        let task = tokio::spawn(runner.run(registration, ended_rx, stop.clone()));
        Ok(Declarative { stop, task })
    }

    /// Stops every declarative pipeline gracefully and releases this replica's leases (so other
    /// replicas take them over at once).
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the declarative pipelines task ended abnormally");
        }
    }
}

/// The state of one replica's declarative pipelines.
struct Runner {
    store: Arc<dyn Store>,
    session_options: SessionOptions,
    session: Session,
    engine: Engine,
    prefix: String,
    lease_ttl: Duration,
    /// Definition texts by name, as the store holds them.
    definitions: BTreeMap<String, Vec<u8>>,
    /// Lease holders (session ids) by definition name.
    leases: BTreeMap<String, String>,
    running: HashMap<String, Running>,
    /// Definition texts that ran here and ended (or failed to start): not started again until
    /// their value changes.
    finished: HashMap<String, String>,
    /// The last error logged per rejected definition (logged once per distinct error).
    rejected: HashMap<String, String>,
    generation: u64,
    ended_tx: mpsc::Sender<(String, u64)>,
    _reaper: SessionReaper,
}

impl Runner {
    async fn run(
        mut self,
        mut registration: Registration,
        mut ended: mpsc::Receiver<(String, u64)>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.lease_ttl);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = registration.next() => match event {
                    Some(e) => self.apply(e).await,
                    None => {
                        tracing::error!("declarative pipelines: the watch ended; no more changes \
                                         will be applied");
                        break;
                    }
                },
                Some((name, generation)) = ended.recv() => {
                    if self.running.get(&name).is_some_and(|r| r.generation == generation) {
                        // Ended by itself (finite source or failure): keep the lease, so no other
                        // replica runs it again; a new value of the key starts it again.
                        if let Some(r) = self.running.remove(&name) {
                            self.finished.insert(name, r.text);
                        }
                    }
                }
                _ = tick.tick() => self.check_all().await,
            }
        }
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.stop_running(&name).await;
        }
        match self.session.close().await {
            Ok(n) => tracing::info!(
                leases = n,
                "declarative pipelines: stopped, leases released"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "declarative pipelines: could not release leases; \
                                                 they expire with the session")
            }
        }
    }

    /// Applies one watch event and acknowledges it.
    async fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Resync { entries, done, .. } => {
                let mut names: BTreeSet<String> = self.definitions.keys().cloned().collect();
                names.extend(self.leases.keys().cloned());
                names.extend(self.running.keys().cloned());
                self.definitions.clear();
                self.leases.clear();
                for e in entries {
                    if let Some(name) = self.classify(&e.key, Some(e.value.to_vec())) {
                        names.insert(name);
                    }
                }
                for name in names {
                    self.reconcile(&name).await;
                }
                done.ok();
            }
            WatchEvent::Change {
                key,
                op,
                value,
                done,
                ..
            } => {
                let value = match op {
                    Op::Put => value.map(|v| v.to_vec()),
                    Op::Delete => None,
                };
                if let Some(name) = self.classify(&key, value) {
                    self.reconcile(&name).await;
                }
                done.ok();
            }
            WatchEvent::Compacted { .. } => {}
        }
    }

    /// Records a key's new value (`None`: deleted); the definition name it concerns, if any.
    fn classify(&mut self, key: &str, value: Option<Vec<u8>>) -> Option<String> {
        if let Some(name) = key.strip_prefix(LEASE_PREFIX) {
            match value {
                Some(v) => {
                    let holder = String::from_utf8_lossy(&v).into_owned();
                    self.leases.insert(name.to_string(), holder)
                }
                None => self.leases.remove(name),
            };
            return Some(name.to_string());
        }
        if key.starts_with(&self.session_options.namespace) {
            return None;
        }
        let name = key.strip_prefix(&self.prefix)?;
        if name.is_empty() {
            return None;
        }
        match value {
            Some(v) => self.definitions.insert(name.to_string(), v),
            None => self.definitions.remove(name),
        };
        Some(name.to_string())
    }

    /// Every `leaseTtl`: renews the session if it expired, and re-examines every definition.
    async fn check_all(&mut self) {
        if !self.session.is_alive() {
            tracing::error!(
                replica = self.session.id(),
                "declarative pipelines: this replica's session expired; stopping its pipelines \
                 (their leases are gone) and opening a new session"
            );
            let names: Vec<String> = self.running.keys().cloned().collect();
            for name in names {
                self.stop_running(&name).await;
            }
            match Session::open(Arc::clone(&self.store), self.session_options.clone()).await {
                Ok(s) => {
                    let old = std::mem::replace(&mut self.session, s);
                    drop(old);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "declarative pipelines: cannot open a session yet");
                    return;
                }
            }
        }
        let names: Vec<String> = self.definitions.keys().cloned().collect();
        for name in names {
            self.reconcile(&name).await;
        }
    }

    /// Brings definition `name` to what the store says.
    async fn reconcile(&mut self, name: &str) {
        let me = self.session.id().to_string();
        let holder = self.leases.get(name).cloned();
        let mine = holder.as_deref() == Some(me.as_str());
        let Some(value) = self.definitions.get(name).cloned() else {
            self.finished.remove(name);
            self.rejected.remove(name);
            self.stop_running(name).await;
            if mine {
                self.release(name).await;
            }
            return;
        };
        if holder.is_some() && !mine {
            // Another replica runs it.
            self.stop_running(name).await;
            return;
        }
        let key = format!("{}{name}", self.prefix);
        let text = match decode_value(&value) {
            Ok(t) => t,
            Err(e) => {
                self.invalid(name, &key, &e, mine).await;
                return;
            }
        };
        if mine && self.running.get(name).is_some_and(|r| r.text == text) {
            return;
        }
        if mine && !self.running.contains_key(name) && self.ended_here(name, &text) {
            return;
        }
        let def = match Definition::parse(&key, text, &self.engine) {
            Ok(d) => d,
            Err(e) => {
                self.invalid(name, &key, &e, mine).await;
                return;
            }
        };
        if !mine && !self.claim(name).await {
            return;
        }
        self.stop_running(name).await;
        self.generation += 1;
        let ids: Vec<String> = def.configs.iter().map(|c| c.id.clone()).collect();
        let text = def.text.clone();
        match Running::start(
            name,
            self.generation,
            def,
            &self.engine,
            self.ended_tx.clone(),
        )
        .await
        {
            Ok(r) => {
                tracing::info!(
                    definition = name,
                    key = key.as_str(),
                    pipelines = ?ids,
                    replica = me.as_str(),
                    "declarative pipelines started"
                );
                self.running.insert(name.to_string(), r);
                self.finished.remove(name);
                self.rejected.remove(name);
            }
            Err(e) => {
                tracing::error!(definition = name, key = key.as_str(), error = %e,
                    "declarative pipeline could not start");
                // Remember the text so that the periodic check does not retry it in a loop.
                self.finished.insert(name.to_string(), text);
            }
        }
    }

    /// Whether this definition's text already ran here and ended (by itself or failing to
    /// start): it is not started again until its value changes.
    fn ended_here(&self, name: &str, text: &str) -> bool {
        self.finished.get(name).is_some_and(|t| t == text)
    }

    /// A definition that cannot run: logged; what ran under the name stops, its lease goes.
    async fn invalid(&mut self, name: &str, key: &str, error: &str, mine: bool) {
        if self.rejected.get(name).map(String::as_str) != Some(error) {
            tracing::error!(
                definition = name,
                key,
                "declarative pipeline definition rejected:\n{error}"
            );
            self.rejected.insert(name.to_string(), error.to_string());
        }
        self.stop_running(name).await;
        if mine {
            self.release(name).await;
        }
    }

    /// Tries to take the lease of `name`; true if this replica holds it now.
    async fn claim(&mut self, name: &str) -> bool {
        let key = format!("{LEASE_PREFIX}{name}");
        let me = self.session.id().to_string();
        let req =
            SetRequest::new(key.clone(), me.clone()).with_concurrency(Concurrency::FirstWrite);
        match self.session.put(req).await {
            Ok(()) => {
                self.leases.insert(name.to_string(), me);
                true
            }
            Err(StateError::EtagMismatch { .. }) => false,
            Err(StateError::TransactionAborted { source, .. })
                if matches!(*source, StateError::EtagMismatch { .. }) =>
            {
                false
            }
            Err(e) => {
                tracing::warn!(definition = name, error = %e,
                    "cannot claim the pipeline's lease; will retry");
                false
            }
        }
    }

    /// Gives up the lease of `name`.
    async fn release(&mut self, name: &str) {
        let key = format!("{LEASE_PREFIX}{name}");
        if let Err(e) = self.session.delete(&key).await {
            tracing::warn!(definition = name, error = %e, "cannot release the pipeline's lease");
        }
        self.leases.remove(name);
    }

    /// Stops what runs under `name`, if anything, gracefully.
    async fn stop_running(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            let ids: Vec<String> = r.pipeline_ids().into_iter().map(str::to_string).collect();
            r.stop().await;
            tracing::info!(definition = name, pipelines = ?ids, "declarative pipelines stopped");
        }
    }
}
