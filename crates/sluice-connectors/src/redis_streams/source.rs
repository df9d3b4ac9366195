//! The Redis Streams source: one consumer of a consumer group.
//!
//! `open` connects (retrying for `connectTimeout`) and makes sure the group exists (`XGROUP CREATE
//! … MKSTREAM` when `createGroup`). Reading then has two phases:
//!
//! 1. **history**: the consumer's own pending entries — delivered to it before and never
//!    acknowledged — are re-read in id order (`XREADGROUP … STREAMS key <cursor>`), those at or
//!    below the resume position acknowledged and skipped, until none is left;
//! 2. **live**: new entries (`XREADGROUP … BLOCK … STREAMS key >`).
//!
//! Entries of the history all have lower ids than any new entry, so records come in id order and
//! the saved position (an entry id) means "everything at or below it is processed": skipping
//! those on resume never drops an unprocessed entry. A read whose reply never arrived — the
//! connection dropped, or the read was cancelled while the command was on its way — may have
//! moved entries into the consumer's pending list without returning them; the next read goes back
//! to the history phase after the last returned id, so they are read again, still in order.
//!
//! `ack` sends one `XACK` per call. An ack that cannot be sent because the connection is down is
//! kept and sent again later: an entry whose ack is lost is re-read from the pending list on the
//! next start and skipped there, as it is at or below the saved position.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Value;
use sluice_sdk::connector::Result;
use sluice_sdk::HealthReporter;
use sluice_sdk::{ConnectorError, Position, ReadBatch, Record, Settings, Source};
use tokio::time::Instant;

use super::config::SourceConfig;
use super::connect::{client, connect};
use super::entry::{parse_read_reply, to_record, EntryId};
use super::error::{is_transient, RedisError};
use super::{PARAM_FORMAT, PARAM_GROUP, PARAM_KEY};
use crate::backoff::retrying;

/// Longest wait for new entries in one `read` (the `BLOCK` time).
pub const READ_WAIT: Duration = Duration::from_millis(100);
/// Most entries asked for per read.
const MAX_COUNT: usize = 10_000;
/// Pause before reading again after a failed read.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait at teardown for keeping acks to go out.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);

const START: EntryId = EntryId { ms: 0, seq: 0 };

/// Reads a Redis stream as a consumer of a consumer group (see the
/// [module documentation](self)).
#[derive(Default)]
pub struct RedisSource {
    config: Option<SourceConfig>,
    state: State,
    last_position: Option<Position>,
    /// Reports connection trouble to the host.
    health: HealthReporter,
}

#[derive(Default)]
enum State {
    #[default]
    Closed,
    Open(Box<Session>),
    /// No more reads; acks still accepted.
    Stopped(Box<Session>),
}

struct Session {
    config: SourceConfig,
    conn: ConnectionManager,
    /// Entries at or below this id were processed before the source opened.
    resume: Option<EntryId>,
    /// `Some(cursor)` while re-reading the consumer's pending entries after `cursor`.
    history: Option<EntryId>,
    /// The id of the last record returned.
    last_returned: Option<EntryId>,
    /// A read command was sent and its reply never processed (a dropped read).
    in_flight: bool,
    /// Ids to acknowledge: skipped entries, and acks that could not be sent yet.
    to_ack: Vec<EntryId>,
    /// When a read last failed.
    failed_at: Option<Instant>,
    /// Degraded while reads fail, healthy after one succeeds.
    health: HealthReporter,
}

impl RedisSource {
    /// A new, unconfigured source.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Source for RedisSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let config = SourceConfig::from_settings(settings)?;
        client(&config.connect)?;
        self.config = Some(config);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let config = self.config.clone().ok_or(RedisError::NotConfigured)?;
        let resume = position
            .filter(|p| !p.is_empty())
            .map(|p| {
                EntryId::from_position(p).ok_or_else(|| RedisError::InvalidPosition {
                    position: p.clone(),
                })
            })
            .transpose()?;
        let client = client(&config.connect)?;
        let mut conn = connect(&client, &config.connect, &self.health).await?;
        ensure_group(&mut conn, &config).await?;
        self.last_position = None;
        self.state = State::Open(Box::new(Session {
            config,
            conn,
            resume,
            history: Some(START),
            last_returned: None,
            in_flight: false,
            to_ack: Vec::new(),
            failed_at: None,
            health: self.health.clone(),
        }));
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        let State::Open(session) = &mut self.state else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let records = session.read(max).await?;
        if let Some(last) = records.last() {
            self.last_position = Some(last.position.clone());
        }
        Ok(ReadBatch {
            records,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        let session = match &mut self.state {
            State::Open(s) | State::Stopped(s) => s,
            State::Closed => return Err(ConnectorError::StreamNotOpen),
        };
        for p in positions {
            let id = EntryId::from_position(p).ok_or_else(|| RedisError::InvalidPosition {
                position: p.clone(),
            })?;
            session.to_ack.push(id);
        }
        session.send_acks().await
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        self.state = match std::mem::take(&mut self.state) {
            State::Closed => return Err(ConnectorError::StreamNotOpen),
            State::Open(s) | State::Stopped(s) => State::Stopped(s),
        };
        Ok(self.last_position.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let State::Open(mut s) | State::Stopped(mut s) = std::mem::take(&mut self.state) {
            // Best effort: an ack lost here is made good on the next start.
            let _ = tokio::time::timeout(TEARDOWN_WAIT, s.send_acks()).await;
        }
        Ok(())
    }
}

impl Session {
    async fn read(&mut self, max: usize) -> Result<Vec<Record>> {
        let _ = self.send_acks().await;
        if max == 0 {
            return Ok(Vec::new());
        }
        if let Some(at) = self.failed_at {
            let ready = at + RETRY_BACKOFF;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready.min(Instant::now() + READ_WAIT)).await;
                return Ok(Vec::new());
            }
        }
        if self.in_flight {
            // The last read was dropped with its command on the way: whatever it delivered is
            // in the pending list now.
            self.in_flight = false;
            self.history = Some(self.last_returned.unwrap_or(START));
        }
        let count = max.min(MAX_COUNT);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(count);
        match self.history {
            Some(cursor) => cmd
                .arg("STREAMS")
                .arg(&self.config.connect.key)
                .arg(cursor.to_string()),
            None => cmd
                .arg("BLOCK")
                .arg(READ_WAIT.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.config.connect.key)
                .arg(">"),
        };
        self.in_flight = true;
        let reply: redis::RedisResult<Value> = cmd.query_async(&mut self.conn).await;
        self.in_flight = false;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return self.read_failed(&e).await.map(|()| Vec::new()),
        };
        self.failed_at = None;
        self.health.healthy();
        let entries = parse_read_reply(reply).map_err(|reason| RedisError::Command {
            what: format!(
                "unexpected reply to XREADGROUP on {:?}",
                self.config.connect.key
            ),
            setting: PARAM_KEY,
            reason,
            transient: false,
        })?;
        if self.history.is_some() {
            self.history = entries.last().map(|e| e.id);
        }
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(fields) = entry.fields else {
                tracing::warn!(id = %entry.id, key = %self.config.connect.key, "redis: a pending entry was deleted from the stream before it was processed; skipped");
                self.to_ack.push(entry.id);
                continue;
            };
            if self.resume.is_some_and(|r| entry.id <= r) {
                self.to_ack.push(entry.id);
                continue;
            }
            let record = to_record(
                self.config.format,
                &self.config.field,
                &self.config.connect.key,
                entry.id,
                fields,
            )
            .map_err(|problem| RedisError::Command {
                what: format!(
                    "entry {} of {:?} cannot be read as format {}",
                    entry.id,
                    self.config.connect.key,
                    self.config.format.as_str()
                ),
                setting: PARAM_FORMAT,
                reason: problem,
                transient: false,
            })?;
            self.last_returned = Some(entry.id);
            records.push(record);
        }
        Ok(records)
    }

    /// Handles a failed `XREADGROUP`: a lost connection goes back to the pending list and is
    /// retried; a vanished group (a restarted Redis without persistence) is created again when
    /// allowed; anything else ends the source.
    async fn read_failed(&mut self, e: &redis::RedisError) -> Result<()> {
        self.failed_at = Some(Instant::now());
        self.history = Some(self.last_returned.unwrap_or(START));
        if is_transient(e) {
            tracing::warn!(error = %e, "redis: reading failed; reconnecting and retrying");
            let reason = format!("redis: reading {:?} failed: {e}", self.config.connect.key);
            retrying(&self.health, reason, RETRY_BACKOFF);
            return Ok(());
        }
        if e.code() == Some("NOGROUP") && self.config.create_group {
            tracing::warn!(
                key = %self.config.connect.key,
                group = %self.config.group,
                "redis: the stream or its consumer group disappeared (a restarted server without \
                 persistence?); creating it again"
            );
            return ensure_group(&mut self.conn, &self.config)
                .await
                .map_err(Into::into);
        }
        Err(RedisError::command(
            format!(
                "cannot read {:?} as consumer {:?} of group {:?}",
                self.config.connect.key, self.config.consumer, self.config.group
            ),
            if e.code() == Some("NOGROUP") {
                PARAM_GROUP
            } else {
                PARAM_KEY
            },
            e,
        )
        .into())
    }

    /// Sends `XACK` for the collected ids. Ids that cannot be sent because of the connection
    /// are kept for the next call; other failures are errors.
    async fn send_acks(&mut self) -> Result<()> {
        if self.to_ack.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.config.connect.key).arg(&self.config.group);
        for id in &self.to_ack {
            cmd.arg(id.to_string());
        }
        match cmd.query_async::<i64>(&mut self.conn).await {
            Ok(_) => {
                self.to_ack.clear();
                Ok(())
            }
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, kept = self.to_ack.len(), "redis: XACK failed; it will be sent again");
                Ok(())
            }
            Err(e) => Err(RedisError::command(
                format!(
                    "cannot acknowledge entries of {:?}",
                    self.config.connect.key
                ),
                PARAM_GROUP,
                &e,
            )
            .into()),
        }
    }
}

/// Creates the group (and the stream) if allowed, else checks that both exist.
async fn ensure_group(
    conn: &mut ConnectionManager,
    config: &SourceConfig,
) -> Result<(), RedisError> {
    let key = &config.connect.key;
    if config.create_group {
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(&config.group)
            .arg(config.start_from.group_id())
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        return match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(RedisError::command(
                format!("cannot create consumer group {:?} on {key:?}", config.group),
                PARAM_KEY,
                &e,
            )),
        };
    }
    let groups: redis::RedisResult<Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await;
    let groups = groups
        .map_err(|e| RedisError::command(format!("cannot find stream {key:?}"), PARAM_KEY, &e))?;
    let wanted = config.group.as_bytes();
    let found = match &groups {
        Value::Array(items) => items.iter().any(|g| group_name_is(g, wanted)),
        _ => false,
    };
    if found {
        Ok(())
    } else {
        Err(RedisError::Command {
            what: format!("stream {key:?} has no consumer group {:?}", config.group),
            setting: PARAM_GROUP,
            reason: "set createGroup: true to create it".into(),
            transient: false,
        })
    }
}

/// True if an `XINFO GROUPS` item names the group `wanted`.
fn group_name_is(item: &Value, wanted: &[u8]) -> bool {
    let is_name = |v: &Value| {
        matches!(v, Value::BulkString(b) if b == b"name")
            || matches!(v, Value::SimpleString(s) if s == "name")
    };
    let is_wanted = |v: &Value| {
        matches!(v, Value::BulkString(b) if b == wanted)
            || matches!(v, Value::SimpleString(s) if s.as_bytes() == wanted)
    };
    match item {
        Value::Array(kv) => kv
            .chunks(2)
            .any(|p| p.len() == 2 && is_name(&p[0]) && is_wanted(&p[1])),
        Value::Map(kv) => kv.iter().any(|(k, v)| is_name(k) && is_wanted(v)),
        _ => false,
    }
}
