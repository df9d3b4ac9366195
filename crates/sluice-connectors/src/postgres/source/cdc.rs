//! The logical replication reader: a background task that takes the snapshot (if one is due),
//! then streams the slot with pgoutput and turns each change into a record, reconnecting with
//! backoff when the connection is lost.
//!
//! The slot is advanced only by status updates carrying the *flush* position, and the source
//! sets that from acknowledged records alone (see [`super::acks`]), so WAL holding unacknowledged
//! changes is never released. After a reconnect the task asks for the stream again from the
//! transaction of the last record it handed out and skips what it already handed out, so
//! nothing is lost or repeated within a run.

use std::collections::HashMap;
use std::time::Duration;

use sluice_sdk::{Data, HealthReporter, Operation, Payload};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::rows::{key_indexes, key_of, record, row_map, Cell, Shape};
use super::{setup, snapshot, Event};
use crate::postgres::backoff::Backoff;
use crate::postgres::catalog::Table;
use crate::postgres::config::SourceConfig;
use crate::postgres::connect;
use crate::postgres::error::{PgError, Side};
use crate::postgres::lsn::{pg_micros_to_unix_nanos, Lsn};
use crate::postgres::pgoutput::{self, Message, OldRow, Value};
use crate::postgres::position::{SnapshotCursor, SourcePosition};
use crate::postgres::replication::{Replication, ReplicationConn};

/// How often the task reports its position to the server even when nothing changes (well inside
/// the server's default 60 s `wal_sender_timeout`).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How long ending the stream may wait for the server to confirm it.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The `application_name` of replication connections.
pub const APPLICATION_NAME: &str = "sluice";

/// The snapshot still to take.
pub struct SnapshotPlan {
    /// A connection already inside the snapshot transaction (on the slot's exported snapshot).
    pub client: Option<Client>,
    /// The last snapshot row delivered before, when resuming.
    pub cursor: Option<SnapshotCursor>,
}

/// The last change handed out: replays up to it are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The transaction's commit LSN.
    pub commit: Lsn,
    /// The last change index handed out in it (none: no change of it yet).
    pub index: Option<u32>,
    /// True once the transaction's commit was handed out.
    pub committed: bool,
}

impl Sent {
    fn covers_change(&self, commit: Lsn, index: u32) -> bool {
        self.commit > commit || (self.commit == commit && self.index >= Some(index))
    }

    fn covers_commit(&self, commit: Lsn) -> bool {
        self.commit > commit || (self.commit == commit && self.committed)
    }
}

/// A table as the stream describes it, with what is needed to build its records.
struct Rel {
    shape: Shape,
}

/// The transaction being decoded.
struct Tx {
    commit: Lsn,
    time: i64,
    next_index: u32,
}

/// The background task of a logical replication source.
pub struct LogreplTask {
    /// The settings.
    pub config: SourceConfig,
    /// The tables (from the catalog).
    pub tables: Vec<Table>,
    /// The snapshot to take first, if any.
    pub snapshot: Option<SnapshotPlan>,
    /// An open replication connection (the one that created the slot), if any.
    pub repl: Option<ReplicationConn>,
    /// Where to resume the stream.
    pub sent: Option<Sent>,
    /// Where records go.
    pub out: mpsc::Sender<Event>,
    /// The acknowledged position the slot may advance to.
    pub flush: watch::Receiver<Lsn>,
    /// Ends the task.
    pub cancel: CancellationToken,
    /// Degraded while reconnecting.
    pub health: HealthReporter,
    /// Where the stream got to (start with the default).
    pub progress: StreamProgress,
}

/// How far the stream got, kept across reconnects.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamProgress {
    /// The end of the last transaction handed out whole.
    last_end: Lsn,
    /// A position the slot may be confirmed to although no record of it was acknowledged (see
    /// [`LogreplTask::is_idle`]).
    idle: Lsn,
}

impl LogreplTask {
    /// Runs until cancelled, the source goes away, or a permanent failure (sent as
    /// [`Event::Failed`]).
    pub async fn run(mut self) {
        if let Some(plan) = self.snapshot.take() {
            let cancel = self.cancel.clone();
            let outcome = tokio::select! {
                _ = cancel.cancelled() => Ok(false),
                r = self.snapshot_phase(plan) => r,
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => return self.close().await,
                Err(e) => {
                    let _ = self.out.send(Event::Failed(e)).await;
                    return self.close().await;
                }
            }
        }
        self.stream_phase().await;
    }

    async fn close(&mut self) {
        if let Some(mut conn) = self.repl.take() {
            conn.terminate().await;
        }
    }

    async fn snapshot_phase(&mut self, plan: SnapshotPlan) -> Result<bool, PgError> {
        let mut client = plan.client;
        let mut cursor = plan.cursor;
        let mut backoff = Backoff::reporting(self.health.clone());
        loop {
            let c = match client.take() {
                Some(c) => c,
                None => match snapshot_client(&self.config).await {
                    Ok(c) => c,
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "postgres source: snapshot connection failed; retrying");
                        backoff
                            .wait_degraded(format!("postgres: snapshot connection: {e}"))
                            .await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match snapshot::run(
                &c,
                &self.tables,
                self.config.fetch_size,
                &mut cursor,
                &self.out,
            )
            .await
            {
                Ok(alive) => {
                    backoff.reset();
                    let _ = c.batch_execute("COMMIT").await;
                    return Ok(alive);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "postgres source: snapshot interrupted; resuming after the last row read");
                    backoff
                        .wait_degraded(format!("postgres: snapshot interrupted: {e}"))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn stream_phase(mut self) {
        let mut backoff = Backoff::reporting(self.health.clone());
        loop {
            let conn = match self.repl.take() {
                Some(c) => Ok(c),
                None => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        c = ReplicationConn::connect(&self.config.pg, APPLICATION_NAME) => c,
                    }
                }
            };
            let outcome = match conn {
                Ok(mut conn) => {
                    let r = self.stream(&mut conn, &mut backoff).await;
                    conn.terminate().await;
                    r
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => return,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "postgres source: replication stream lost; reconnecting");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = backoff.wait_degraded(format!("postgres: replication stream lost: {e}")) => {}
                    }
                }
                Err(e) => {
                    let _ = self.out.send(Event::Failed(e)).await;
                    return;
                }
            }
        }
    }

    /// Streams until cancelled (`Ok`) or the connection fails.
    async fn stream(
        &mut self,
        conn: &mut ReplicationConn,
        backoff: &mut Backoff,
    ) -> Result<(), PgError> {
        let start = self.sent.map_or(Lsn(0), |s| s.commit);
        conn.start_logical(&self.config.slot_name, start, &self.config.publication_name)
            .await?;
        backoff.reset();
        let mut decoder = Decoder::new(&self.tables, self.sent);
        let mut received = Lsn(0);
        let mut pending: Option<Event> = None;
        let mut tick = tokio::time::interval(STATUS_INTERVAL);
        tick.reset();
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    let f = self.confirmable();
                    if let Err(e) = conn.finish(received.max(f), f, FINISH_WAIT).await {
                        tracing::debug!(error = %e, "postgres source: ending the stream");
                    }
                    return Ok(());
                }
                changed = self.flush.changed() => {
                    let f = self.confirmable();
                    if changed.is_err() {
                        // The source is gone: nothing more will be acknowledged.
                        let _ = conn.finish(received.max(f), f, FINISH_WAIT).await;
                        return Ok(());
                    }
                    conn.send_status(received.max(f), f).await?;
                }
                _ = tick.tick() => {
                    let f = self.confirmable();
                    conn.send_status(received.max(f), f).await?;
                }
                permit = self.out.reserve(), if pending.is_some() => {
                    let Ok(permit) = permit else { return Ok(()) };
                    if let Some(ev) = pending.take() {
                        if let Event::Commit { end, .. } = &ev {
                            self.progress.last_end = self.progress.last_end.max(*end);
                        }
                        self.sent = decoder.note_sent(&ev).or(self.sent);
                        permit.send(ev);
                    }
                }
                msg = conn.next(), if pending.is_none() => {
                    match msg? {
                        Replication::XLogData { start, data, .. } => {
                            received = received.max(start);
                            pending = decoder.decode(&data)?;
                        }
                        Replication::Keepalive { wal_end, reply } => {
                            let idle = self.is_idle(decoder.in_transaction());
                            if idle && wal_end > self.progress.idle {
                                self.progress.idle = wal_end;
                            }
                            if reply || idle {
                                let f = self.confirmable();
                                conn.send_status(received.max(f).max(wal_end), f).await?;
                            }
                        }
                    }
                }
            }
        }
    }

    /// True when everything handed out was acknowledged and no transaction is half read: then
    /// the server has sent everything that committed before its keepalive's position, and the
    /// slot may be confirmed up to there. That keeps the slot moving (and WAL released) while
    /// the followed tables are quiet but the server is busy with others.
    fn is_idle(&self, in_transaction: bool) -> bool {
        !in_transaction
            && self.sent.is_none_or(|s| s.committed)
            && *self.flush.borrow() >= self.progress.last_end
    }

    /// The position the slot may be confirmed to.
    fn confirmable(&self) -> Lsn {
        (*self.flush.borrow()).max(self.progress.idle)
    }
}

/// A new connection inside a repeatable-read snapshot transaction (not an exported snapshot:
/// used when resuming an interrupted snapshot).
pub async fn snapshot_client(config: &SourceConfig) -> Result<Client, PgError> {
    let client = connect::connect(Side::Source, &config.pg).await?;
    setup::session_settings(&client).await?;
    setup::begin_snapshot(&client, None).await?;
    Ok(client)
}

/// Turns pgoutput messages into events, skipping what was already handed out.
struct Decoder<'a> {
    tables: &'a [Table],
    rels: HashMap<u32, Option<Rel>>,
    tx: Option<Tx>,
    sent: Option<Sent>,
}

impl<'a> Decoder<'a> {
    fn new(tables: &'a [Table], sent: Option<Sent>) -> Self {
        Decoder {
            tables,
            rels: HashMap::new(),
            tx: None,
            sent,
        }
    }

    /// Remembers `ev` as handed out; returns the new cursor.
    fn note_sent(&mut self, ev: &Event) -> Option<Sent> {
        let next = match ev {
            Event::Record(r) => match SourcePosition::decode(&r.position) {
                Ok(SourcePosition::Cdc { commit, index }) => Some(Sent {
                    commit,
                    index: Some(index),
                    committed: false,
                }),
                _ => None,
            },
            Event::Commit { commit, .. } => Some(Sent {
                commit: *commit,
                index: self
                    .sent
                    .filter(|s| s.commit == *commit)
                    .and_then(|s| s.index),
                committed: true,
            }),
            Event::Failed(_) => None,
        };
        if next.is_some() {
            self.sent = next;
        }
        next
    }

    /// True between a transaction's begin and commit.
    fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    fn decode(&mut self, data: &bytes::Bytes) -> Result<Option<Event>, PgError> {
        let msg =
            pgoutput::decode(data).map_err(|e| PgError::other(Side::Source, e.to_string()))?;
        Ok(match msg {
            Message::Begin {
                final_lsn,
                commit_time,
                ..
            } => {
                self.tx = Some(Tx {
                    commit: final_lsn,
                    time: commit_time,
                    next_index: 0,
                });
                None
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.tx = None;
                if self.sent.is_some_and(|s| s.covers_commit(commit_lsn)) {
                    None
                } else {
                    Some(Event::Commit {
                        commit: commit_lsn,
                        end: end_lsn,
                    })
                }
            }
            Message::Relation(rel) => {
                let table = self.tables.iter().find(|t| t.oid == rel.id).or_else(|| {
                    self.tables
                        .iter()
                        .find(|t| t.schema == rel.namespace && t.name == rel.name)
                });
                let entry = table.map(|t| {
                    let columns: Vec<(String, u32)> = rel
                        .columns
                        .iter()
                        .map(|c| (c.name.clone(), c.type_oid))
                        .collect();
                    Rel {
                        shape: Shape {
                            collection: t.collection(),
                            key: key_indexes(&columns, &t.key),
                            columns,
                        },
                    }
                });
                self.rels.insert(rel.id, entry);
                None
            }
            Message::Insert { relation, new } => {
                self.change(relation, Operation::Create, None, Some(new))?
            }
            Message::Update { relation, old, new } => {
                self.change(relation, Operation::Update, old, Some(new))?
            }
            Message::Delete { relation, old } => {
                self.change(relation, Operation::Delete, Some(old), None)?
            }
            Message::Truncate { relations } => {
                if relations
                    .iter()
                    .any(|r| matches!(self.rels.get(r), Some(Some(_))))
                {
                    tracing::warn!(
                        "postgres source: a TRUNCATE of a followed table is not turned into records"
                    );
                }
                None
            }
            Message::Other(_) => None,
        })
    }

    fn change(
        &mut self,
        relation: u32,
        operation: Operation,
        old: Option<OldRow>,
        new: Option<Vec<Value>>,
    ) -> Result<Option<Event>, PgError> {
        let Some(Some(rel)) = self.rels.get(&relation) else {
            return Ok(None);
        };
        let Some(tx) = self.tx.as_mut() else {
            return Err(PgError::other(
                Side::Source,
                "a change arrived outside a transaction",
            ));
        };
        let index = tx.next_index;
        tx.next_index += 1;
        if self.sent.is_some_and(|s| s.covers_change(tx.commit, index)) {
            return Ok(None);
        }
        let shape = &rel.shape;
        let before = match &old {
            Some(OldRow::Full(values)) => Some(row_map(shape, cells(values)?.into_iter())),
            Some(OldRow::Key(values)) => {
                let mut c = cells(values)?;
                for (i, cell) in c.iter_mut().enumerate() {
                    if !shape.key.contains(&i) {
                        *cell = Cell::Skip;
                    }
                }
                Some(row_map(shape, c.into_iter()))
            }
            None => None,
        };
        let after = match &new {
            Some(values) => Some(row_map(shape, cells(values)?.into_iter())),
            None => None,
        };
        let key = after
            .as_ref()
            .or(before.as_ref())
            .and_then(|row| key_of(shape, row));
        let position = SourcePosition::Cdc {
            commit: tx.commit,
            index,
        }
        .encode();
        Ok(Some(Event::Record(record(
            position,
            operation,
            &shape.collection,
            key,
            Payload {
                before: before.map(Data::Structured),
                after: after.map(Data::Structured),
            },
            Some(pg_micros_to_unix_nanos(tx.time)),
        ))))
    }
}

fn cells(values: &[Value]) -> Result<Vec<Cell<'_>>, PgError> {
    values
        .iter()
        .map(|v| match v {
            Value::Null => Ok(Cell::Null),
            Value::Unchanged => Ok(Cell::Skip),
            Value::Text(b) => std::str::from_utf8(b).map(Cell::Text).map_err(|_| {
                PgError::other(Side::Source, "the server sent a value that is not UTF-8")
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sent_cursor_covers_what_was_handed_out() {
        let s = Sent {
            commit: Lsn(100),
            index: Some(2),
            committed: false,
        };
        assert!(s.covers_change(Lsn(50), 9));
        assert!(s.covers_change(Lsn(100), 2));
        assert!(!s.covers_change(Lsn(100), 3));
        assert!(!s.covers_change(Lsn(200), 0));
        assert!(s.covers_commit(Lsn(50)));
        assert!(!s.covers_commit(Lsn(100)));
        let done = Sent {
            committed: true,
            ..s
        };
        assert!(done.covers_commit(Lsn(100)));
    }
}
