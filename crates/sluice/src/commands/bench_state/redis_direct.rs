//! The Redis comparison: the `redis` crate (one multiplexed connection manager, as the store
//! uses) sending the commands Sluice's Redis backend sends — `HMGET` of the item's fields for a
//! get, `EVALSHA` of the backend's own write and transaction scripts (published by
//! `sluice_state::redis_store::scripts`) with the same keys and arguments — under a key prefix of
//! its own.

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use sluice_state::redis_store::scripts;
use sluice_state::RedisOptions;

use super::measure::Client;
use super::BenchError;

fn failed(action: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::new(format!("redis (direct): cannot {action}: {e}"))
}

/// A connection and the scripts, under one key prefix.
pub struct RedisDirect {
    con: ConnectionManager,
    prefix: String,
    set: Script,
    multi: Script,
}

impl RedisDirect {
    /// Connects to `url`; every key goes under `prefix` (whose exact name is the version
    /// counter, as in the store).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, BenchError> {
        let client = redis::Client::open(url).map_err(|e| failed("parse the URL", e))?;
        // The store's connection settings, so both sides wait and retry alike.
        let defaults = RedisOptions::default();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(defaults.connect_timeout))
            .set_response_timeout(Some(defaults.response_timeout))
            .set_number_of_retries(defaults.reconnect_attempts);
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| failed("connect", e))?;
        let direct = RedisDirect {
            con,
            prefix: prefix.to_string(),
            set: Script::new(scripts::SET_LUA),
            multi: Script::new(scripts::MULTI_LUA),
        };
        let mut con = direct.con.clone();
        for script in [&direct.set, &direct.multi] {
            script
                .load_async(&mut con)
                .await
                .map_err(|e| failed("load the scripts", e))?;
        }
        Ok(direct)
    }

    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// `EVALSHA` of the transaction script upserting every key (no ETags, no TTL).
    fn multi_cmd(&self, keys: &[String], value: &Bytes) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.multi.get_hash())
            .arg(keys.len() + scripts::AUX_KEYS)
            .arg(&scripts::aux_keys(&self.prefix)[..]);
        for key in keys {
            cmd.arg(self.key(key));
        }
        for _ in keys {
            cmd.arg("s").arg("").arg("").arg(value.as_ref()).arg("");
        }
        cmd
    }

    /// Writes every key (the preload), in transactions of up to 1,000.
    pub async fn load(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        for chunk in keys.chunks(1_000) {
            self.multi(chunk, value).await?;
        }
        Ok(())
    }

    /// Deletes every key under each of `prefixes` (none may hold glob characters).
    pub async fn delete_prefixes(&self, prefixes: &[&str]) -> Result<u64, BenchError> {
        let mut con = self.con.clone();
        let mut deleted = 0;
        for prefix in prefixes {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1_000)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| failed("scan", e))?;
                if !keys.is_empty() {
                    let n: u64 = redis::cmd("DEL")
                        .arg(&keys)
                        .query_async(&mut con)
                        .await
                        .map_err(|e| failed("delete", e))?;
                    deleted += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

impl Client for RedisDirect {
    async fn get(&self, key: &str) -> Result<(), BenchError> {
        let mut con = self.con.clone();
        let reply: Value = redis::cmd("HMGET")
            .arg(self.key(key))
            .arg(&scripts::FIELDS[..])
            .query_async(&mut con)
            .await
            .map_err(|e| failed("get", e))?;
        match reply {
            Value::Array(fields) if matches!(fields.first(), Some(Value::BulkString(_))) => {
                std::hint::black_box(fields);
                Ok(())
            }
            Value::Array(_) => Err(BenchError::new(format!("key {key:?} is missing"))),
            other => Err(failed("get", format!("unexpected reply {other:?}"))),
        }
    }

    async fn set(&self, key: &str, value: &Bytes) -> Result<(), BenchError> {
        let mut con = self.con.clone();
        let version: i64 = redis::cmd("EVALSHA")
            .arg(self.set.get_hash())
            .arg(1 + scripts::AUX_KEYS)
            .arg(&scripts::aux_keys(&self.prefix)[..])
            .arg(self.key(key))
            .arg(value.as_ref())
            .arg("")
            .arg("")
            .arg("")
            .query_async(&mut con)
            .await
            .map_err(|e| failed("set", e))?;
        if version == scripts::CHECK_FAILED {
            return Err(failed("set", "the script refused a last-write set"));
        }
        std::hint::black_box(version.to_string());
        Ok(())
    }

    async fn multi(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        let mut con = self.con.clone();
        let reply: i64 = self
            .multi_cmd(keys, value)
            .query_async(&mut con)
            .await
            .map_err(|e| failed("multi", e))?;
        if reply != scripts::TX_APPLIED {
            return Err(failed("multi", format!("operation {reply} refused")));
        }
        Ok(())
    }
}
