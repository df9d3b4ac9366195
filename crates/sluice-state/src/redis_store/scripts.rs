//! The Lua scripts that make every conditional write one atomic step on the Redis server.
//!
//! Each item is a hash with the fields `data` (the value's bytes), `version` (the ETag, a decimal
//! number) and `expires` (when a TTL ends, in milliseconds since the Unix epoch by the server's
//! clock, or empty for none). The key's own expiry is set to that same instant (`PEXPIREAT`), so
//! Redis hides the item from then on, and a read learns the expiry from the same `HMGET` as the
//! value: reads need no script. Versions come from one counter per namespace (`KEYS[1]` of the
//! writing scripts), so an ETag never repeats, not even after a delete and re-create of the key.
//!
//! Expected outcomes (an ETag mismatch, a first-write on an existing key) are reply codes, never
//! script errors: a script error is a real failure (a key of another type in the namespace, a
//! server out of memory) and is reported as a backend error. Every script reads what it will write
//! before it writes anything, so such an error stops it before anything was changed.
//!
//! The sources are public so that tools (and the benchmark that compares the store with the bare
//! Redis client) can run exactly what the store runs.

use std::sync::LazyLock;

use redis::Script;

/// What the set and delete scripts return when the ETag or first-write check fails.
pub const CHECK_FAILED: i64 = 0;

/// What the transaction script returns when every operation was applied.
pub const TX_APPLIED: i64 = 0;

/// The hash fields of an item, in the order reads ask for them.
pub const FIELDS: [&str; 3] = ["data", "version", "expires"];

/// The Lua function both writing scripts use: writes item `key` with the next version of
/// `counter` and a TTL of `ttl` milliseconds (`''` for none, which clears an earlier TTL); returns
/// the version. The expiry is capped at the end of year 9999, like the other backends'
/// (`crate::ttl::MAX_EXPIRY_MILLIS`).
macro_rules! write_item_lua {
    () => {
        r"
local function write_item(counter, key, data, ttl)
  local version = redis.call('INCR', counter)
  local expires = ''
  if ttl ~= '' then
    local now = redis.call('TIME')
    local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ttl)
    expires = string.format('%d', math.min(at, 253402300799999))
  end
  redis.call('HSET', key, 'data', data, 'version', string.format('%d', version), 'expires', expires)
  if expires ~= '' then
    redis.call('PEXPIREAT', key, expires)
  else
    redis.call('PERSIST', key)
  end
  return version
end
"
    };
}

/// Writes one item if its checks pass; returns the new version, or [`CHECK_FAILED`].
///
/// `KEYS[1]` = the version counter, `KEYS[2]` = the item; `ARGV[1]` = the value, `ARGV[2]` = the
/// expected version (`''` for none), `ARGV[3]` = `'1'` for first-write, `ARGV[4]` = the TTL in
/// milliseconds (`''` for none: a write without TTL clears an earlier one).
pub const SET_LUA: &str = concat!(
    write_item_lua!(),
    r"
local current = redis.call('HGET', KEYS[2], 'version')
if ARGV[2] ~= '' then
  if current ~= ARGV[2] then
    return 0
  end
elseif ARGV[3] == '1' and current then
  return 0
end
return write_item(KEYS[1], KEYS[2], ARGV[1], ARGV[4])
"
);

/// [`SET_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static SET: LazyLock<Script> = LazyLock::new(|| Script::new(SET_LUA));

/// Deletes one item if it holds the expected version; returns 1, or [`CHECK_FAILED`] (also when
/// the item does not exist). Deletes without an ETag are a plain `DEL`.
///
/// `KEYS[1]` = the item; `ARGV[1]` = the expected version.
pub const DELETE_IF_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
";

/// [`DELETE_IF_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static DELETE_IF: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_IF_LUA));

/// Arguments per operation of [`MULTI`].
pub const TX_STRIDE: usize = 5;

/// A transaction: checks every operation against the state before the transaction (an ETag names
/// the version the caller read, even for a key an earlier operation of the transaction writes);
/// only if all pass, applies them all in order. Returns [`TX_APPLIED`], or the 1-based index of
/// the first operation whose check failed, with nothing applied.
///
/// `KEYS[1]` = the version counter, `KEYS[i + 1]` = the key of operation `i`; per operation
/// [`TX_STRIDE`] arguments: `'s'` (upsert) or `'d'` (delete), the expected version (`''` for
/// none), `'1'` for first-write, the value, the TTL in milliseconds (`''` for none).
pub const MULTI_LUA: &str = concat!(
    write_item_lua!(),
    r"
local n = #KEYS - 1
-- Everything the writes below touch is read first (the counter, and every key even without a
-- check), so that a key of another type stops the script here, before anything is written.
local counter = redis.call('GET', KEYS[1])
if counter and not string.match(counter, '^%-?%d+$') then
  return redis.error_reply('the version counter ' .. KEYS[1] .. ' does not hold an integer')
end
for i = 1, n do
  local base = (i - 1) * 5
  local etag = ARGV[base + 2]
  local current = redis.call('HGET', KEYS[i + 1], 'version')
  if etag ~= '' then
    if current ~= etag then
      return i
    end
  elseif ARGV[base + 3] == '1' and current then
    return i
  end
end
for i = 1, n do
  local base = (i - 1) * 5
  if ARGV[base + 1] == 's' then
    write_item(KEYS[1], KEYS[i + 1], ARGV[base + 4], ARGV[base + 5])
  else
    redis.call('DEL', KEYS[i + 1])
  end
end
return 0
"
);

/// [`MULTI_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static MULTI: LazyLock<Script> = LazyLock::new(|| Script::new(MULTI_LUA));

/// Every script with its source, to load them all when connecting and to find a script's source
/// by its SHA1.
fn all_with_source() -> [(&'static Script, &'static str); 3] {
    [
        (&SET, SET_LUA),
        (&DELETE_IF, DELETE_IF_LUA),
        (&MULTI, MULTI_LUA),
    ]
}

/// Every script, to load them all when connecting (so that pipelined `EVALSHA`s find them).
pub(crate) fn all() -> [&'static Script; 3] {
    all_with_source().map(|(script, _)| script)
}

/// The source of the store's script whose SHA1 (in hex) is `sha`.
pub(crate) fn source_of(sha: &[u8]) -> Option<&'static str> {
    all_with_source()
        .into_iter()
        .find(|(script, _)| script.get_hash().as_bytes() == sha)
        .map(|(_, source)| source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_found_by_their_sha1() {
        assert_eq!(source_of(SET.get_hash().as_bytes()), Some(SET_LUA));
        assert_eq!(source_of(MULTI.get_hash().as_bytes()), Some(MULTI_LUA));
        assert_eq!(source_of(b"0000"), None);
        let hashes: std::collections::HashSet<&str> = all().iter().map(|s| s.get_hash()).collect();
        assert_eq!(hashes.len(), 3);
    }

    #[test]
    fn expiries_are_capped_where_the_other_backends_cap_them() {
        let cap = crate::ttl::MAX_EXPIRY_MILLIS.to_string();
        assert!(SET_LUA.contains(&cap));
        assert!(MULTI_LUA.contains(&cap));
    }
}
