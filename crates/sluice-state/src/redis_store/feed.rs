//! The Redis change feed (see [`crate::watch`], "Backends").
//!
//! Every writing script records its changes as it applies them: the version counter is also the
//! revision (a commit's revision is the counter after it; a commit that only deletes increments
//! it too), and each change is one entry of a stream with the id `<revision>-<n>` and the fields
//! `k` (the Redis key), `o` (`p` put or `d` delete), `t` (server time, ms), `v` and `p` (value and
//! previous value, when there are). Lua runs atomically, so stream ids follow revisions and a
//! reader never sees a revision before a lower one.
//!
//! TTLs stay native (`PEXPIREAT`), and Redis drops an expired key silently; so items with a TTL
//! are also kept in an expiry index (a sorted set) with their value, and a reaper script —
//! run every [`DEFAULT_REAP_INTERVAL`], and by any write touching the key — deletes what is due
//! and records each expiry as a delete carrying the last value.
//!
//! Waiting is a blocking `XREAD` on a connection of its own, publishing to a
//! [`RevisionNotifier`]. A snapshot is one script reading the counter and, with `SCAN`, every
//! item under the prefixes (it holds the server for the scan: O(keyspace), like listings).
//! Compaction trims the stream (`XTRIM MINID`) and keeps `compacted_through` in a key.
//!
//! The feed's keys live in the store's namespace under names starting with [`RESERVED`], which
//! listings skip.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::{AsyncConnectionConfig, Value};
use tokio::task::JoinHandle;

use super::errors::{backend, unexpected};
use super::listing::glob_literal;
use super::{scripts, RedisStore};
use crate::error::StateError;
use crate::watch::{
    normalize_prefixes, spawn_reaper, Change, ChangeFeed, ChangePage, ChangesAfter, ExpirySweep,
    KeyValue, Op, ReaperHandle, Retention, RevisionNotifier, Snapshot, DEFAULT_REAP_INTERVAL,
};

/// The start (after the store's prefix) of the names of the feed's own keys.
pub(crate) const RESERVED: &str = "\u{0}watch:";

/// How long one `XREAD` blocks; also the longest a lost wake-up can delay a waiter.
const BLOCK: Duration = Duration::from_secs(1);

/// Expired items one reaper script deletes at most.
const REAP_BATCH: usize = 1000;

/// The feed's keys.
#[derive(Debug)]
pub(crate) struct AuxKeys {
    /// The change stream.
    pub stream: String,
    /// The expiry index: item key → expiry (ms).
    pub expiry: String,
    /// Item key → value, for items with a TTL.
    pub ttl_values: String,
    /// The revision history is compacted through.
    pub compacted: String,
}

impl AuxKeys {
    pub(crate) fn new(prefix: &str) -> Self {
        let name = |n: &str| format!("{prefix}{RESERVED}{n}");
        AuxKeys {
            stream: name("changes"),
            expiry: name("expiry"),
            ttl_values: name("ttl-values"),
            compacted: name("compacted"),
        }
    }
}

/// The feed and its reaper, created by the first [`crate::Store::change_feed`] call.
#[derive(Default)]
pub(crate) struct FeedSlot {
    feed: OnceLock<(Arc<RedisFeed>, Option<ReaperHandle>)>,
    retention: Mutex<Option<Retention>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FeedSlot {
    pub(crate) fn get(&self, store: &RedisStore) -> Arc<RedisFeed> {
        let (feed, _) = self.feed.get_or_init(|| {
            let notifier = Arc::new(RevisionNotifier::new(0));
            let reader = tokio::spawn(read_stream(
                store.client.clone(),
                store.aux.stream.clone(),
                store.counter_key.clone(),
                Arc::clone(&notifier),
            ));
            let feed = Arc::new(RedisFeed {
                store: store.clone(),
                notifier,
                retention: Mutex::new(lock(&self.retention).unwrap_or_default()),
                reader,
            });
            let reaper = spawn_reaper(Arc::downgrade(&feed), DEFAULT_REAP_INTERVAL);
            (feed, reaper)
        });
        Arc::clone(feed)
    }

    pub(crate) fn set_retention(&self, retention: Retention) {
        *lock(&self.retention) = Some(retention);
        if let Some((feed, _)) = self.feed.get() {
            *lock(&feed.retention) = retention;
        }
    }
}

/// A store's change feed.
pub(crate) struct RedisFeed {
    store: RedisStore,
    notifier: Arc<RevisionNotifier>,
    retention: Mutex<Retention>,
    reader: JoinHandle<()>,
}

impl Drop for RedisFeed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Follows the stream with blocking `XREAD`s on a connection of its own and publishes each
/// revision seen; reconnects after failures.
async fn read_stream(
    client: redis::Client,
    stream: String,
    counter: String,
    notifier: Arc<RevisionNotifier>,
) {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK * 5));
    loop {
        let mut con = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "redis watch: cannot open the XREAD connection");
                tokio::time::sleep(BLOCK).await;
                continue;
            }
        };
        // Start after the latest commit: what follows is what waiters wait for.
        let start: Result<Option<u64>, _> =
            redis::cmd("GET").arg(&counter).query_async(&mut con).await;
        let mut last_id = match start {
            Ok(rev) => {
                let rev = rev.unwrap_or(0);
                notifier.publish(rev);
                format!("{rev}-{}", u64::MAX)
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis watch: cannot read the revision");
                tokio::time::sleep(BLOCK).await;
                continue;
            }
        };
        loop {
            let reply: Result<Value, _> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&last_id)
                .query_async(&mut con)
                .await;
            match reply {
                Ok(Value::Nil) => {}
                Ok(v) => {
                    if let Some(id) = last_entry_id(&v) {
                        if let Some(rev) = id.split('-').next().and_then(|r| r.parse().ok()) {
                            notifier.publish(rev);
                        }
                        last_id = id;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis watch: XREAD failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(BLOCK / 10).await;
    }
}

/// The id of the last entry of an `XREAD` reply of one stream.
fn last_entry_id(v: &Value) -> Option<String> {
    let streams = as_array(v)?;
    let stream = as_array(streams.first()?)?;
    let entries = as_array(stream.get(1)?)?;
    let last = as_array(entries.last()?)?;
    as_string(last.first()?)
}

fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        // RESP3 maps of stream name → entries.
        Value::Map(_) => None,
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Nil => Some(0),
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

impl RedisFeed {
    /// The stream entries in `reply` (an `XRANGE` reply) as changes.
    fn parse_entries(&self, reply: &Value) -> Result<Vec<(u64, u64, Change)>, StateError> {
        let entries = as_array(reply).ok_or_else(|| unexpected("read the watch history", reply))?;
        let prefix = self.store.prefix.as_bytes();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let bad = || unexpected("read the watch history (entry)", entry);
            let parts = as_array(entry).ok_or_else(bad)?;
            let id = parts.first().and_then(as_string).ok_or_else(bad)?;
            let (rev, seq) = id.split_once('-').ok_or_else(bad)?;
            let rev: u64 = rev.parse().map_err(|_| bad())?;
            let seq: u64 = seq.parse().map_err(|_| bad())?;
            let fields = parts.get(1).and_then(as_array).ok_or_else(bad)?;
            let mut key = None;
            let mut op = None;
            let mut value = None;
            let mut prev = None;
            for pair in fields.chunks(2) {
                let (Some(Value::BulkString(name)), Some(Value::BulkString(v))) =
                    (pair.first(), pair.get(1))
                else {
                    return Err(bad());
                };
                match name.as_slice() {
                    b"k" => key = Some(v.clone()),
                    b"o" => op = Some(v.clone()),
                    b"v" => value = Some(Bytes::from(v.clone())),
                    b"p" => prev = Some(Bytes::from(v.clone())),
                    _ => {}
                }
            }
            let key = key
                .as_deref()
                .and_then(|k| k.strip_prefix(prefix))
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or_else(bad)?
                .to_string();
            let op = match op.as_deref() {
                Some(b"p") => Op::Put,
                Some(b"d") => Op::Delete,
                _ => return Err(bad()),
            };
            out.push((
                rev,
                seq,
                Change {
                    revision: rev,
                    key,
                    op,
                    value,
                    prev_value: prev,
                },
            ));
        }
        Ok(out)
    }

    async fn reap(&self) -> Result<usize, StateError> {
        let cmd = self
            .store
            .evalsha_with_items(&scripts::REAP, &[])
            .arg(REAP_BATCH)
            .to_owned();
        match self.store.call("sweep expired items", &cmd).await? {
            Value::Int(n) => Ok(usize::try_from(n).unwrap_or(0)),
            other => Err(unexpected("sweep expired items", other)),
        }
    }

    /// Applies the retention: whole revisions beyond the count bound or older than the age.
    async fn retain(&self) -> Result<(), StateError> {
        let retention = *lock(&self.retention);
        let mut con = self.store.con.clone();
        let stream = &self.store.aux.stream;
        let what = "apply the watch retention";
        let mut through = 0u64;
        if let Some(max) = retention.max_changes {
            let len: u64 = redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut con)
                .await
                .map_err(|e| backend(what, &e))?;
            let max = max as u64;
            if len > max {
                let reply: Value = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(len - max)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| backend(what, &e))?;
                if let Some((rev, _, _)) = self.parse_entries(&reply)?.last() {
                    through = through.max(*rev);
                }
            }
        }
        if let Some(age) = retention.max_age {
            let reply: Value = redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .map_err(|e| backend(what, &e))?;
            let cutoff = crate::ttl::to_unix_millis(SystemTime::now())
                .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            for entry in as_array(&reply).unwrap_or_default() {
                let Some(parts) = as_array(entry) else {
                    continue;
                };
                let at = parts
                    .get(1)
                    .and_then(as_array)
                    .and_then(|f| {
                        f.chunks(2)
                            .find(|p| matches!(p.first(), Some(Value::BulkString(n)) if n == b"t"))
                            .and_then(|p| p.get(1))
                            .and_then(as_u64)
                    })
                    .unwrap_or(u64::MAX);
                if at >= cutoff {
                    break;
                }
                let id = parts.first().and_then(as_string).unwrap_or_default();
                if let Some(rev) = id.split('-').next().and_then(|r| r.parse::<u64>().ok()) {
                    through = through.max(rev);
                }
            }
        }
        if through > 0 {
            self.compact(through).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ExpirySweep for RedisFeed {
    async fn sweep_expired(self: Arc<Self>) -> Result<usize, StateError> {
        let n = self.reap().await?;
        self.retain().await?;
        Ok(n)
    }
}

#[async_trait]
impl ChangeFeed for RedisFeed {
    fn backend(&self) -> &'static str {
        super::errors::BACKEND
    }

    async fn current_revision(&self) -> Result<u64, StateError> {
        let mut con = self.store.con.clone();
        let v: Value = redis::cmd("GET")
            .arg(&self.store.counter_key)
            .query_async(&mut con)
            .await
            .map_err(|e| backend("read the current revision", &e))?;
        let rev = as_u64(&v).ok_or_else(|| unexpected("read the current revision", v))?;
        self.notifier.publish(rev);
        Ok(rev)
    }

    async fn snapshot(&self, prefixes: &[String]) -> Result<Snapshot, StateError> {
        let store = &self.store;
        let mut cmd = RedisStore::evalsha(&scripts::SNAPSHOT, &[&store.counter_key]);
        cmd.arg(store.scan_count);
        let prefixes = normalize_prefixes(prefixes);
        for p in &prefixes {
            let mut glob = glob_literal(&store.redis_key(p));
            glob.push('*');
            cmd.arg(glob);
        }
        let reply = store.call("read a watch snapshot", &cmd).await?;
        let items = match &reply {
            Value::Array(items) => items,
            other => return Err(unexpected("read a watch snapshot", other)),
        };
        let revision = items.first().and_then(as_u64).unwrap_or(0);
        let mut entries: BTreeMap<String, Bytes> = BTreeMap::new();
        for pair in items.get(1..).unwrap_or_default().chunks(2) {
            let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                (pair.first(), pair.get(1))
            else {
                continue;
            };
            let Some(key) = k
                .strip_prefix(store.prefix.as_bytes())
                .filter(|k| !k.starts_with(RESERVED.as_bytes()))
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                continue;
            };
            if prefixes.iter().any(|p| key.starts_with(p.as_str())) {
                entries.insert(key.to_string(), Bytes::from(v.clone()));
            }
        }
        self.notifier.publish(revision);
        Ok(Snapshot {
            revision,
            entries: entries
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
        })
    }

    async fn changes_after(&self, after: u64, limit: usize) -> Result<ChangesAfter, StateError> {
        let what = "read the watch history";
        let store = &self.store;
        let mut con = store.con.clone();
        let limit = limit.max(1);
        let (compacted, current, first): (Value, Value, Value) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&store.aux.compacted)
            .cmd("GET")
            .arg(&store.counter_key)
            .cmd("XRANGE")
            .arg(&store.aux.stream)
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut con)
            .await
            .map_err(|e| backend(what, &e))?;
        let compacted = as_u64(&compacted).ok_or_else(|| unexpected(what, &compacted))?;
        let current = as_u64(&current).ok_or_else(|| unexpected(what, &current))?;
        if after < compacted || after > current {
            return Ok(ChangesAfter::Compacted { oldest: compacted });
        }
        let mut entries = self.parse_entries(&first)?;
        if entries.len() >= limit {
            if let Some(&(rev, seq, _)) = entries.last() {
                let rest: Value = redis::cmd("XRANGE")
                    .arg(&store.aux.stream)
                    .arg(format!("{rev}-{}", seq.saturating_add(1)))
                    .arg(format!("{rev}-{}", u64::MAX))
                    .query_async(&mut con)
                    .await
                    .map_err(|e| backend(what, &e))?;
                entries.extend(self.parse_entries(&rest)?);
            }
        }
        let changes: Vec<Change> = entries.into_iter().map(|(_, _, c)| c).collect();
        let last_revision = changes.last().map_or(after, |c| c.revision);
        Ok(ChangesAfter::Changes(ChangePage {
            changes,
            last_revision,
        }))
    }

    async fn wait_for_revision(&self, after: u64) -> Result<u64, StateError> {
        match tokio::time::timeout(BLOCK, self.notifier.wait_after(after)).await {
            Ok(latest) => Ok(latest),
            Err(_) => self.current_revision().await,
        }
    }

    async fn compact(&self, through: u64) -> Result<u64, StateError> {
        let a = &self.store.aux;
        let mut cmd = RedisStore::evalsha(
            &scripts::COMPACT,
            &[&self.store.counter_key, &a.stream, &a.compacted],
        );
        cmd.arg(through);
        let v = self.store.call("compact the watch history", &cmd).await?;
        as_u64(&v).ok_or_else(|| unexpected("compact the watch history", v))
    }
}
