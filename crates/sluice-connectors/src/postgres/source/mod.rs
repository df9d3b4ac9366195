//! The PostgreSQL source: an initial snapshot of the configured tables, then change data capture
//! through logical replication (pgoutput), or polling by an increasing column.
//!
//! `open` checks and prepares everything (server settings, tables, publication, slot) so that
//! configuration problems surface at once, then starts a background task that produces records
//! into a bounded channel; `read` drains that channel. Acknowledgements advance the replication
//! slot through [`acks::AckTracker`].

pub mod acks;
mod cdc;
mod polling;
mod rows;
mod setup;
mod snapshot;

use std::time::Duration;

use async_trait::async_trait;
use sluice_sdk::{ConnectorError, HealthReporter, Position, ReadBatch, Record, Settings, Source};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::acks::AckTracker;
use self::cdc::{LogreplTask, SnapshotPlan, APPLICATION_NAME};
use self::polling::PollingTask;
use self::setup::{Mode, Slot};
use super::config::{SnapshotMode, SourceConfig};
use super::connect;
use super::error::{PgError, Side};
use super::lsn::Lsn;
use super::position::SourcePosition;
use super::replication::ReplicationConn;

pub use self::cdc::Sent;

/// Records buffered between the background task and `read`.
const CHANNEL_CAPACITY: usize = 8192;
/// The longest a `read` waits for a first record.
const READ_WAIT: Duration = Duration::from_millis(100);
/// How long `teardown` waits for the background task to say goodbye to the server.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

/// What the background task hands to `read`.
// Records are nearly every event: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// A record.
    Record(Record),
    /// The transaction committed at `commit` ended at `end`; all its changes were sent.
    Commit {
        /// The transaction's commit LSN.
        commit: Lsn,
        /// The LSN just past its commit record.
        end: Lsn,
    },
    /// A permanent failure; the task has stopped.
    Failed(PgError),
}

/// The PostgreSQL source connector.
#[derive(Default)]
pub struct PostgresSource {
    config: Option<SourceConfig>,
    running: Option<Running>,
    stopped: bool,
    /// Reports reconnects to the host.
    health: HealthReporter,
}

struct Running {
    events: mpsc::Receiver<Event>,
    acks: AckTracker,
    flush: watch::Sender<Lsn>,
    last: Option<Position>,
    failure: Option<PgError>,
    cancel: CancellationToken,
    _guard: DropGuard,
    task: Option<JoinHandle<()>>,
}

impl PostgresSource {
    /// A new, unconfigured source.
    pub fn new() -> Self {
        Self::default()
    }

    fn config(&self) -> Result<&SourceConfig, ConnectorError> {
        self.config
            .as_ref()
            .ok_or_else(|| PgError::other(Side::Source, "opened before it was configured").into())
    }

    async fn start(&self, position: Option<&Position>) -> Result<Running, PgError> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| PgError::other(Side::Source, "opened before it was configured"))?;
        let resume = position.map(SourcePosition::decode).transpose()?;
        let client = connect::connect(Side::Source, &config.pg).await?;
        let mode = setup::resolve_mode(&client, &config).await?;
        let tables = setup::tables(&client, &config, mode).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (flush_tx, flush_rx) = watch::channel(Lsn(0));
        let cancel = CancellationToken::new();
        let task = match mode {
            Mode::Polling => {
                let cursor = match resume {
                    None => None,
                    Some(SourcePosition::Poll(c)) => Some(c),
                    Some(_) => {
                        return Err(PgError::Position {
                            side: Side::Source,
                            position: position.cloned().unwrap_or_default(),
                            reason: "not a polling position, but cdcMode is long_polling".into(),
                        })
                    }
                };
                tokio::spawn(
                    PollingTask {
                        config,
                        tables,
                        cursor,
                        out: tx,
                        cancel: cancel.clone(),
                        health: self.health.clone(),
                    }
                    .run(),
                )
            }
            Mode::Logrepl => {
                let t = self
                    .prepare_logrepl(
                        &client, config, tables, resume, position, tx, flush_rx, &cancel,
                    )
                    .await?;
                tokio::spawn(t.run())
            }
        };
        Ok(Running {
            events: rx,
            acks: AckTracker::new(),
            flush: flush_tx,
            last: None,
            failure: None,
            _guard: cancel.clone().drop_guard(),
            cancel,
            task: Some(task),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn prepare_logrepl(
        &self,
        client: &tokio_postgres::Client,
        config: SourceConfig,
        tables: Vec<super::catalog::Table>,
        resume: Option<SourcePosition>,
        position: Option<&Position>,
        out: mpsc::Sender<Event>,
        flush: watch::Receiver<Lsn>,
        cancel: &CancellationToken,
    ) -> Result<LogreplTask, PgError> {
        setup::ensure_publication(client, &config.publication_name, &tables).await?;
        let mut repl = ReplicationConn::connect(&config.pg, APPLICATION_NAME).await?;
        let wants_snapshot = config.snapshot_mode == SnapshotMode::Initial;
        let (snapshot_from, sent) = match resume {
            None => (None, None),
            Some(SourcePosition::Snapshot(c)) => (Some(c), None),
            Some(SourcePosition::Cdc { commit, index }) => (
                None,
                Some(Sent {
                    commit,
                    index: Some(index),
                    committed: false,
                }),
            ),
            Some(SourcePosition::Poll(_)) => {
                return Err(PgError::Position {
                    side: Side::Source,
                    position: position.cloned().unwrap_or_default(),
                    reason: "a polling position, but cdcMode is logrepl".into(),
                })
            }
        };
        let fresh_snapshot = wants_snapshot && sent.is_none() && snapshot_from.is_none();
        let slot = setup::ensure_slot(client, &mut repl, &config.slot_name, fresh_snapshot).await?;
        let snapshot = match (&slot, &sent) {
            (_, Some(_)) => None,
            // A fresh slot: the exported snapshot matches its consistent point exactly.
            (Slot::Created { snapshot, lsn }, None) if wants_snapshot => {
                tracing::info!(slot = %config.slot_name, consistent_point = %lsn, "postgres source: created replication slot");
                let c = connect::connect(Side::Source, &config.pg).await?;
                setup::session_settings(&c).await?;
                setup::begin_snapshot(&c, snapshot.as_deref()).await?;
                // A slot created now has nothing from before: restart any older snapshot.
                Some(SnapshotPlan {
                    client: Some(c),
                    cursor: None,
                })
            }
            (Slot::Created { .. }, None) => None,
            // An existing slot: everything since it was created is still in it, so a new
            // snapshot (or the rest of an interrupted one) plus the slot misses nothing.
            // The snapshot transaction starts now, so rows changed after `open` come once,
            // through the slot.
            (Slot::Existing, None) if wants_snapshot => Some(SnapshotPlan {
                client: Some(cdc::snapshot_client(&config).await?),
                cursor: snapshot_from,
            }),
            (Slot::Existing, None) => None,
        };
        if sent.is_some() && matches!(slot, Slot::Created { .. }) {
            return Err(PgError::setting(
                Side::Source,
                super::config::SLOT_NAME,
                format!(
                    "replication slot {:?} did not exist, so changes after position {} may be \
                     lost; the slot was created again: to start over with a new snapshot, \
                     clear the pipeline's saved position",
                    config.slot_name,
                    position.map(ToString::to_string).unwrap_or_default()
                ),
            ));
        }
        Ok(LogreplTask {
            config,
            tables,
            snapshot,
            repl: Some(repl),
            sent,
            out,
            flush,
            cancel: cancel.clone(),
            progress: Default::default(),
            health: self.health.clone(),
        })
    }

    fn running(&mut self) -> Result<&mut Running, ConnectorError> {
        if self.stopped {
            return Err(ConnectorError::StreamNotOpen);
        }
        self.running.as_mut().ok_or(ConnectorError::StreamNotOpen)
    }
}

impl Running {
    /// Takes one event into `out`; false when the event ends the batch (a failure).
    fn take(&mut self, ev: Event, out: &mut Vec<Record>) -> bool {
        match ev {
            Event::Record(r) => {
                if let Ok(SourcePosition::Cdc { commit, index }) =
                    SourcePosition::decode(&r.position)
                {
                    self.acks.read(commit, index);
                }
                self.last = Some(r.position.clone());
                out.push(r);
                true
            }
            Event::Commit { commit, end } => {
                let confirmed = self.acks.committed(commit, end);
                self.flush.send_if_modified(|f| advance(f, confirmed));
                true
            }
            Event::Failed(e) => {
                self.failure = Some(e);
                false
            }
        }
    }
}

fn advance(current: &mut Lsn, to: Lsn) -> bool {
    if to > *current {
        *current = to;
        true
    } else {
        false
    }
}

#[async_trait]
impl Source for PostgresSource {
    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn configure(&mut self, settings: &Settings) -> sluice_sdk::connector::Result<()> {
        self.config = Some(SourceConfig::from_settings(settings)?);
        Ok(())
    }

    async fn on_deleted(&mut self, settings: &Settings) -> sluice_sdk::connector::Result<()> {
        let config = SourceConfig::from_settings(settings)?;
        if !config.auto_cleanup || config.cdc_mode == super::config::CdcMode::LongPolling {
            return Ok(());
        }
        let client = connect::connect(Side::Source, &config.pg).await?;
        setup::cleanup(&client, &config.slot_name, &config.publication_name).await?;
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> sluice_sdk::connector::Result<()> {
        self.config()?;
        if let Some(mut old) = self.running.take() {
            old.cancel.cancel();
            if let Some(task) = old.task.take() {
                let _ = tokio::time::timeout(TEARDOWN_WAIT, task).await;
            }
        }
        self.running = Some(self.start(position).await?);
        self.stopped = false;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> sluice_sdk::connector::Result<ReadBatch> {
        let running = self.running()?;
        if let Some(e) = running.failure.clone() {
            return Err(e.into());
        }
        let max = max.max(1);
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        // Wait (bounded) for a first record; commits alone do not end the wait.
        while out.is_empty() {
            let ev = match tokio::time::timeout_at(deadline, running.events.recv()).await {
                Err(_) => break,
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    if running.failure.is_none() {
                        running.failure = Some(PgError::other(
                            Side::Source,
                            "the background reader stopped unexpectedly",
                        ));
                    }
                    break;
                }
            };
            if !running.take(ev, &mut out) {
                break;
            }
        }
        while out.len() < max && running.failure.is_none() {
            match running.events.try_recv() {
                Ok(ev) => {
                    if !running.take(ev, &mut out) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if out.is_empty() {
            if let Some(e) = running.failure.clone() {
                return Err(e.into());
            }
        }
        Ok(ReadBatch {
            records: out,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> sluice_sdk::connector::Result<()> {
        let Some(running) = self.running.as_mut() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let mut confirmed = None;
        for p in positions {
            if let SourcePosition::Cdc { commit, index } = SourcePosition::decode(p)? {
                confirmed = Some(running.acks.acked(commit, index));
            }
        }
        if let Some(to) = confirmed {
            running.flush.send_if_modified(|f| advance(f, to));
        }
        Ok(())
    }

    async fn stop(&mut self) -> sluice_sdk::connector::Result<Option<Position>> {
        self.stopped = true;
        Ok(self.running.as_ref().and_then(|r| r.last.clone()))
    }

    async fn teardown(&mut self) -> sluice_sdk::connector::Result<()> {
        if let Some(mut running) = self.running.take() {
            running.cancel.cancel();
            if let Some(task) = running.task.take() {
                if tokio::time::timeout(TEARDOWN_WAIT, task).await.is_err() {
                    tracing::warn!("postgres source: the background reader did not stop in time");
                }
            }
        }
        self.stopped = true;
        Ok(())
    }
}
