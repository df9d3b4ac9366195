//! A backend on Redis: the store shared by several Sluice processes, with ETag and first-write
//! checks atomic on the server (Lua) and TTLs native to Redis.
//!
//! # Layout
//!
//! Like Dapr's Redis state store, each item is a Redis hash at `<key_prefix><key>` with the fields
//! `data` (the value's bytes, unchanged) and `version` (the ETag, a decimal number), plus `expires`
//! (when its TTL ends, in Unix milliseconds by the server's clock; empty for none). Versions come
//! from one counter per namespace, the string key named exactly `<key_prefix>` (no item can have
//! that name, since item keys are never empty), so ETags never repeat, not even across a delete and
//! re-create. A TTL is also the hash's own expiry (`PEXPIREAT` of the same instant), so an expired
//! item is invisible at once, and Redis reclaims it.
//!
//! The change feed for watchers (a stream of every change, an expiry index) lives beside the
//! items under names starting with `<key_prefix>\0watch:`; see [`feed`].
//!
//! Writes are Lua scripts (see [`scripts`]); a read is one plain `HMGET` of the three fields, so a
//! get costs the server what a direct `HGETALL` does. Bulk calls are one pipeline each (one round
//! trip); `multi` is one script.
//!
//! # Consistency
//!
//! A single Redis node is strongly consistent: every operation is served by the primary, and every
//! write with a check is one Lua script, atomic on the server. Whether an acknowledged write
//! survives a crash depends on the server's configuration: [`Features::durable`] is true only if the
//! server said `appendonly yes` and `appendfsync always` when the store connected.
//!
//! # Cost of listings
//!
//! [`Store::keys`] and [`Store::delete_with_prefix`] walk the keyspace with `SCAN` (never `KEYS`, so
//! the server is not blocked), which costs time in proportion to the whole database, not to the
//! number of keys that match. Keep a store's namespace in a database of modest size, or do not rely
//! on listings for hot paths. Queries are not supported (Redis without RediSearch cannot serve them).

mod codec;
mod errors;
mod feed;
mod listing;
pub mod scripts;

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Arg, Cmd, RedisError, RedisResult, Script, Value};

use crate::error::StateError;
use crate::etag;
use crate::query::{Query, QueryResponse};
use crate::store::{DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store, TxOperation};

use codec::SetArgs;
use errors::{backend, is_no_script, BACKEND};

/// How to connect to Redis and where the store's keys live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// Prepended to every key, so several stores (and other data) can share one Redis database.
    /// Every key that starts with it belongs to the store. Default `sluice:`.
    pub key_prefix: String,
    /// How long one connection attempt may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long one command may wait for its reply before it fails as transient. Default 5 s.
    pub response_timeout: Duration,
    /// How many times the connection manager retries a lost connection (with exponential backoff)
    /// before a call fails as transient. Default 6.
    pub reconnect_attempts: usize,
    /// The `COUNT` hint of each `SCAN` step of listings and delete-with-prefix. Default 1000.
    pub scan_count: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "sluice:".to_string(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            reconnect_attempts: 6,
            scan_count: 1000,
        }
    }
}

/// A [`Store`] on a Redis server (see the [module documentation](self) for the layout).
///
/// Cheap to clone: clones share one multiplexed connection, which reconnects by itself after a
/// failure (calls made meanwhile fail with a transient [`StateError::Backend`]).
#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    prefix: String,
    counter_key: String,
    /// The change feed's keys.
    aux: std::sync::Arc<feed::AuxKeys>,
    /// For the feed's own blocking connection.
    client: redis::Client,
    /// The change feed, started by the first [`Store::change_feed`] call.
    feed: std::sync::Arc<feed::FeedSlot>,
    durable: bool,
    scan_count: usize,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.prefix)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://[user:password@]host[:port][/db]`), loads the
    /// scripts and reads whether the server makes writes durable.
    ///
    /// A malformed URL is an [`StateError::InvalidRequest`]; a server that cannot be reached is a
    /// transient [`StateError::Backend`].
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, StateError> {
        let client = redis::Client::open(url)
            .map_err(|e| StateError::InvalidRequest(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.reconnect_attempts);
        let con = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| backend("connect", &e))?;
        let mut store = RedisStore {
            con,
            aux: std::sync::Arc::new(feed::AuxKeys::new(&options.key_prefix)),
            client,
            feed: std::sync::Arc::default(),
            counter_key: options.key_prefix.clone(),
            prefix: options.key_prefix,
            durable: false,
            scan_count: options.scan_count.max(1),
        };
        store.load_scripts().await?;
        store.durable = store.server_is_durable().await;
        Ok(store)
    }

    /// The namespace every key of the store lives under.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of `key`.
    fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// Loads every script into the server's cache (pipelines do not load them by themselves).
    async fn load_scripts(&self) -> Result<(), StateError> {
        let mut con = self.con.clone();
        for script in scripts::all() {
            script
                .load_async(&mut con)
                .await
                .map_err(|e| backend("loading the Lua scripts", &e))?;
        }
        Ok(())
    }

    /// True if the server fsyncs its append-only file before it acknowledges a write. False if it
    /// does not, or will not say (`CONFIG` may be disabled).
    async fn server_is_durable(&self) -> bool {
        let mut con = self.con.clone();
        let mut get = redis::pipe();
        get.cmd("CONFIG").arg("GET").arg("appendonly");
        get.cmd("CONFIG").arg("GET").arg("appendfsync");
        let replies: RedisResult<(Vec<String>, Vec<String>)> = get.query_async(&mut con).await;
        match replies {
            Ok((appendonly, appendfsync)) => {
                appendonly.get(1).map(String::as_str) == Some("yes")
                    && appendfsync.get(1).map(String::as_str) == Some("always")
            }
            Err(_) => false,
        }
    }

    /// Sends one command; an `EVALSHA` of a script the server forgot (flushed cache, restarted
    /// server) is sent again as an `EVAL` with the script's source, which cannot meet that error
    /// and caches the script again.
    async fn call(&self, context: &str, cmd: &Cmd) -> Result<Value, StateError> {
        let mut con = self.con.clone();
        match cmd.query_async::<Value>(&mut con).await {
            Ok(v) => Ok(v),
            Err(e) if is_no_script(&e) => match as_eval(cmd) {
                Some(eval) => {
                    tracing::debug!("redis store: the server forgot a script; sending it again");
                    eval.query_async::<Value>(&mut con)
                        .await
                        .map_err(|e| backend(context, &e))
                }
                None => Err(backend(context, &e)),
            },
            Err(e) => Err(backend(context, &e)),
        }
    }

    /// Sends `cmds` in one pipeline (not a transaction) and returns one reply per command.
    /// Commands that met a forgotten script did not run; they are re-sent, in order, as `EVAL`s
    /// with the scripts' sources (see [`RedisStore::call`]). The outer error is a failure of the
    /// whole round trip: nothing is known about what ran.
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<RedisResult<Value>>, RedisError> {
        let n = cmds.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        let mut replies: Vec<RedisResult<Value>> = pipe.query_async(&mut con).await?;
        check_reply_count(n, replies.len())?;
        let mut forgotten = Vec::new();
        let mut again = redis::pipe();
        again.ignore_errors();
        for (i, cmd) in pipe.cmd_iter().enumerate() {
            if matches!(&replies[i], Err(e) if is_no_script(e)) {
                if let Some(eval) = as_eval(cmd) {
                    forgotten.push(i);
                    again.add_command(eval);
                }
            }
        }
        if forgotten.is_empty() {
            return Ok(replies);
        }
        tracing::debug!(
            commands = forgotten.len(),
            "redis store: the server forgot a script; sending it again"
        );
        let retried: Vec<RedisResult<Value>> = again.query_async(&mut con).await?;
        check_reply_count(forgotten.len(), retried.len())?;
        for (i, reply) in forgotten.into_iter().zip(retried) {
            replies[i] = reply;
        }
        Ok(replies)
    }

    /// `EVALSHA` of `script` with `keys` and room for `args`, to append the arguments to.
    fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        cmd
    }

    /// The read of one item: a plain `HMGET` of its fields (no script: the expiry is a field).
    fn get_cmd(&self, key: &str) -> Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.redis_key(key)).arg(&scripts::FIELDS[..]);
        cmd
    }

    fn set_cmd(&self, req: &SetRequest, args: &SetArgs) -> Cmd {
        let mut cmd = self.evalsha_with_items(&scripts::SET, &[self.redis_key(&req.key)]);
        cmd.arg(req.value.as_ref())
            .arg(&args.etag)
            .arg(args.first_write)
            .arg(&args.ttl);
        cmd
    }

    /// The command deleting `req.key`: the recording delete script without an ETag, else the
    /// checking one. The returned flag says which (they reply differently).
    fn delete_cmd(&self, req: &DeleteRequest) -> Result<(Cmd, bool), StateError> {
        etag::check_key(&req.key)?;
        let etag = codec::etag_arg(&req.key, req.etag.as_deref())?;
        let keys = [self.redis_key(&req.key)];
        if etag.is_empty() {
            Ok((self.evalsha_with_items(&scripts::DELETE, &keys), false))
        } else {
            let mut cmd = self.evalsha_with_items(&scripts::DELETE_IF, &keys);
            cmd.arg(etag);
            Ok((cmd, true))
        }
    }

    /// `EVALSHA` of `script` with the [`scripts::AUX_KEYS`] and then `items` as keys.
    fn evalsha_with_items(&self, script: &Script, items: &[String]) -> Cmd {
        let a = &self.aux;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(items.len() + scripts::AUX_KEYS)
            .arg(&self.counter_key)
            .arg(&a.stream)
            .arg(&a.expiry)
            .arg(&a.ttl_values)
            .arg(&a.compacted);
        for key in items {
            cmd.arg(key);
        }
        cmd
    }
}

/// `cmd`, an `EVALSHA` of one of the store's scripts, as an `EVAL` carrying the script's source;
/// `None` for any other command.
fn as_eval(cmd: &Cmd) -> Option<Cmd> {
    let mut args = cmd.args_iter();
    match args.next() {
        Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"EVALSHA") => {}
        _ => return None,
    }
    let Some(Arg::Simple(sha)) = args.next() else {
        return None;
    };
    let mut eval = redis::cmd("EVAL");
    eval.arg(scripts::source_of(sha)?);
    for arg in args {
        match arg {
            Arg::Simple(bytes) => eval.arg(bytes),
            _ => return None,
        };
    }
    Some(eval)
}

/// An error unless a pipeline returned one reply per command.
fn check_reply_count(want: usize, got: usize) -> RedisResult<()> {
    if want == got {
        Ok(())
    } else {
        Err(RedisError::from((
            redis::ErrorKind::Client,
            "a pipeline returned the wrong number of replies",
            format!("{got} replies to {want} commands"),
        )))
    }
}

/// One reply of a pipeline, or the pipeline's failure, as a [`StateError`].
fn reply(
    context: &str,
    r: &Result<Vec<RedisResult<Value>>, RedisError>,
    i: usize,
) -> Result<Value, StateError> {
    match r {
        Ok(replies) => match replies.get(i) {
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(e)) => Err(backend(context, e)),
            None => Err(StateError::backend(
                BACKEND,
                format!("{context}: reply missing"),
            )),
        },
        Err(e) => Err(backend(context, e)),
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn features(&self) -> Features {
        Features {
            etag: true,
            durable: self.durable,
            transactional: true,
            ttl: true,
            query: false,
            delete_with_prefix: true,
            keys_like: true,
            remote: true,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        etag::check_key(key)?;
        let reply = self.call("get", &self.get_cmd(key)).await?;
        codec::item_reply(reply)
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        let args = SetArgs::new(&req)?;
        let reply = self.call("set", &self.set_cmd(&req, &args)).await?;
        codec::set_reply(&req.key, reply)
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let (cmd, checked) = self.delete_cmd(&req)?;
        let reply = self.call("delete", &cmd).await?;
        if checked {
            codec::delete_reply(&req.key, reply)
        } else {
            match reply {
                Value::Int(_) => Ok(()),
                other => Err(errors::unexpected("delete", other)),
            }
        }
    }

    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        // Requests that fail the local checks are answered without a round trip; the others go in
        // one pipeline, in request order.
        let mut results: Vec<Option<Result<String, StateError>>> = Vec::with_capacity(reqs.len());
        let mut cmds = Vec::new();
        let mut sent = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            match SetArgs::new(req) {
                Ok(args) => {
                    cmds.push(self.set_cmd(req, &args));
                    sent.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let replies = self.pipeline(cmds).await;
        for (j, i) in sent.into_iter().enumerate() {
            let key = &reqs[i].key;
            results[i] =
                Some(reply("set_many", &replies, j).and_then(|v| codec::set_reply(key, v)));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StateError::backend(BACKEND, "set_many: no result"))))
            .collect()
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        let mut results: Vec<Option<Result<Option<Item>, StateError>>> =
            Vec::with_capacity(keys.len());
        let mut cmds = Vec::new();
        let mut sent = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match etag::check_key(key) {
                Ok(()) => {
                    cmds.push(self.get_cmd(key));
                    sent.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let replies = self.pipeline(cmds).await;
        for (j, i) in sent.into_iter().enumerate() {
            results[i] = Some(reply("bulk_get", &replies, j).and_then(codec::item_reply));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StateError::backend(BACKEND, "bulk_get: no result"))))
            .collect()
    }

    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        let mut results: Vec<Option<Result<(), StateError>>> = Vec::with_capacity(reqs.len());
        let mut cmds = Vec::new();
        let mut sent = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            match self.delete_cmd(req) {
                Ok((cmd, checked)) => {
                    cmds.push(cmd);
                    sent.push((i, checked));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let replies = self.pipeline(cmds).await;
        for (j, (i, checked)) in sent.into_iter().enumerate() {
            let key = &reqs[i].key;
            results[i] = Some(reply("delete_many", &replies, j).and_then(|v| {
                if checked {
                    codec::delete_reply(key, v)
                } else {
                    match v {
                        Value::Int(_) => Ok(()),
                        other => Err(errors::unexpected("delete_many", other)),
                    }
                }
            }));
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(StateError::backend(BACKEND, "delete_many: no result")))
            })
            .collect()
    }

    async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        let aborted =
            |index: usize, key: &str, source: StateError| StateError::TransactionAborted {
                index,
                key: key.to_string(),
                source: Box::new(source),
            };
        // Local checks first: a malformed operation aborts the transaction before anything is sent.
        let mut prepared = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let key = op.key();
            let args = match op {
                TxOperation::Upsert(req) => SetArgs::new(req),
                TxOperation::Delete(req) => etag::check_key(key)
                    .and_then(|()| codec::etag_arg(key, req.etag.as_deref()))
                    .map(|etag| SetArgs {
                        etag,
                        first_write: "",
                        ttl: String::new(),
                    }),
            };
            prepared.push(args.map_err(|e| aborted(index, key, e))?);
        }
        let items: Vec<String> = ops.iter().map(|op| self.redis_key(op.key())).collect();
        let mut cmd = self.evalsha_with_items(&scripts::MULTI, &items);
        for (op, args) in ops.iter().zip(&prepared) {
            let (kind, value): (&str, &[u8]) = match op {
                TxOperation::Upsert(req) => ("s", req.value.as_ref()),
                TxOperation::Delete(_) => ("d", b""),
            };
            cmd.arg(kind)
                .arg(&args.etag)
                .arg(args.first_write)
                .arg(value)
                .arg(&args.ttl);
        }
        match self.call("multi", &cmd).await? {
            Value::Int(scripts::TX_APPLIED) => Ok(()),
            Value::Int(failed) => {
                let index = usize::try_from(failed - 1)
                    .ok()
                    .filter(|&i| i < ops.len())
                    .ok_or_else(|| errors::unexpected("multi", failed))?;
                let key = ops[index].key();
                Err(aborted(
                    index,
                    key,
                    StateError::EtagMismatch {
                        key: key.to_string(),
                    },
                ))
            }
            other => Err(errors::unexpected("multi", other)),
        }
    }

    async fn delete_with_prefix(&self, prefix: &str) -> Result<u64, StateError> {
        listing::delete_with_prefix(self, prefix).await
    }

    async fn keys(&self, pattern: &str, page: Page) -> Result<KeyPage, StateError> {
        listing::keys(self, pattern, page).await
    }

    async fn query(&self, _q: &Query) -> Result<QueryResponse, StateError> {
        Err(StateError::unsupported(BACKEND, "queries"))
    }

    /// The change history kept in a Redis stream (see [`feed`]); the first call (inside a tokio
    /// runtime) opens the blocking `XREAD` connection and starts the reaper that turns expired
    /// items into delete events and applies the retention.
    fn change_feed(&self) -> Option<std::sync::Arc<dyn crate::watch::ChangeFeed>> {
        Some(self.feed.get(self))
    }
}

impl RedisStore {
    /// Sets how much change history the store keeps for watchers
    /// ([`crate::watch::Retention::default`] unless set).
    pub fn set_retention(&self, retention: crate::watch::Retention) {
        self.feed.set_retention(retention);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_call_becomes_an_eval_of_its_source() {
        let mut cmd = RedisStore::evalsha(&scripts::SET, &["counter", "item"]);
        cmd.arg(&b"\0value"[..]).arg("7").arg("").arg("");
        let eval = as_eval(&cmd).expect("an EVALSHA of a known script");
        let args: Vec<Vec<u8>> = eval
            .args_iter()
            .map(|a| match a {
                Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let want: Vec<&[u8]> = vec![
            b"EVAL",
            scripts::SET_LUA.as_bytes(),
            b"2",
            b"counter",
            b"item",
            b"\0value",
            b"7",
            b"",
            b"",
        ];
        assert_eq!(args, want);

        let mut del = redis::cmd("DEL");
        del.arg("k");
        assert!(as_eval(&del).is_none());
        let mut unknown = redis::cmd("EVALSHA");
        unknown.arg("0123").arg(0);
        assert!(as_eval(&unknown).is_none());
    }
}
