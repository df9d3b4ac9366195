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
-- KEYS[1] the version counter (also the revision), KEYS[2] the change stream, KEYS[3] the
-- expiry index (a sorted set: item key by expiry), KEYS[4] the values of items with a TTL (a
-- hash), so that their expiry can be recorded with the value they had, KEYS[5] the revision
-- the stream is compacted through.
local MAX_REVISIONS = 1000000
local changes = {}
local last_version = nil
local now_ms = nil
local function now()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end
local function note(key, op, value, prev)
  changes[#changes + 1] = {key, op, value, prev}
end
-- If the TTL of `key` has passed, records its expiry as a delete (with its last value).
local function settle(key)
  local at = redis.call('ZSCORE', KEYS[3], key)
  if at and tonumber(at) <= now() then
    note(key, 'd', false, redis.call('HGET', KEYS[4], key))
    redis.call('ZREM', KEYS[3], key)
    redis.call('HDEL', KEYS[4], key)
    redis.call('DEL', key)
  end
end
local function untrack(key)
  redis.call('ZREM', KEYS[3], key)
  redis.call('HDEL', KEYS[4], key)
end
-- Appends the script's changes to the stream at one revision: ids `<revision>-<n>`.
local function commit()
  if #changes == 0 then
    return
  end
  local rev = last_version or redis.call('INCR', KEYS[1])
  local t = string.format('%d', now())
  for i, c in ipairs(changes) do
    local fields = {'k', c[1], 'o', c[2], 't', t}
    if c[3] then
      fields[#fields + 1] = 'v'
      fields[#fields + 1] = c[3]
    end
    if c[4] then
      fields[#fields + 1] = 'p'
      fields[#fields + 1] = c[4]
    end
    redis.call('XADD', KEYS[2], string.format('%d-%d', rev, i), unpack(fields))
  end
  -- A bound on the history even when no process runs a feed (whose reaper applies the
  -- configured retention): every 1024 revisions, drop what is over MAX_REVISIONS behind.
  if rev % 1024 == 0 and rev > MAX_REVISIONS then
    local through = rev - MAX_REVISIONS
    if through > tonumber(redis.call('GET', KEYS[5]) or '0') then
      redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', through + 1))
      redis.call('SET', KEYS[5], string.format('%d', through))
    end
  end
end
local function delete_item(key)
  settle(key)
  local prev = redis.call('HGET', key, 'data')
  if not prev then
    return 0
  end
  redis.call('DEL', key)
  untrack(key)
  note(key, 'd', false, prev)
  return 1
end
local function write_item(counter, key, data, ttl)
  settle(key)
  local prev = redis.call('HGET', key, 'data')
  local version = redis.call('INCR', counter)
  last_version = version
  local expires = ''
  if ttl ~= '' then
    local at = now() + tonumber(ttl)
    expires = string.format('%d', math.min(at, 253402300799999))
  end
  redis.call('HSET', key, 'data', data, 'version', string.format('%d', version), 'expires', expires)
  if expires ~= '' then
    redis.call('PEXPIREAT', key, expires)
    redis.call('ZADD', KEYS[3], expires, key)
    redis.call('HSET', KEYS[4], key, data)
  else
    redis.call('PERSIST', key)
    untrack(key)
  end
  note(key, 'p', data, prev)
  return version
end
"
    };
}

/// The number of bookkeeping keys before the item keys of every writing script: the version
/// counter, the change stream, the expiry index, the values of items with a TTL and the
/// revision the stream is compacted through. Every script bounds the stream to the last million
/// revisions by itself; the feed's reaper applies the configured retention.
pub const AUX_KEYS: usize = 5;

/// The [`AUX_KEYS`] of the store under `key_prefix`, in the order the writing scripts take them
/// (for tools that run the scripts themselves).
pub fn aux_keys(key_prefix: &str) -> [String; AUX_KEYS] {
    let feed = super::feed::AuxKeys::new(key_prefix);
    [
        key_prefix.to_string(),
        feed.stream,
        feed.expiry,
        feed.ttl_values,
        feed.compacted,
    ]
}

/// Writes one item if its checks pass; returns the new version, or [`CHECK_FAILED`].
///
/// `KEYS[1..=5]` = the [`AUX_KEYS`], `KEYS[6]` = the item; `ARGV[1]` = the value, `ARGV[2]` =
/// the expected version (`''` for none), `ARGV[3]` = `'1'` for first-write, `ARGV[4]` = the TTL
/// in milliseconds (`''` for none: a write without TTL clears an earlier one).
pub const SET_LUA: &str = concat!(
    write_item_lua!(),
    r"
local current = redis.call('HGET', KEYS[6], 'version')
if ARGV[2] ~= '' then
  if current ~= ARGV[2] then
    return 0
  end
elseif ARGV[3] == '1' and current then
  return 0
end
local version = write_item(KEYS[1], KEYS[6], ARGV[1], ARGV[4])
commit()
return version
"
);

/// [`SET_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static SET: LazyLock<Script> = LazyLock::new(|| Script::new(SET_LUA));

/// Deletes one item if it holds the expected version; returns 1, or [`CHECK_FAILED`] (also when
/// the item does not exist). Deletes without an ETag use [`DELETE_LUA`].
///
/// `KEYS[1..=5]` = the [`AUX_KEYS`], `KEYS[6]` = the item; `ARGV[1]` = the expected version.
pub const DELETE_IF_LUA: &str = concat!(
    write_item_lua!(),
    r"
if redis.call('HGET', KEYS[6], 'version') ~= ARGV[1] then
  return 0
end
delete_item(KEYS[6])
commit()
return 1
"
);

/// Deletes items, all at one revision; returns how many existed. `KEYS[1..=5]` = the
/// [`AUX_KEYS`], then the items.
pub const DELETE_LUA: &str = concat!(
    write_item_lua!(),
    r"
local n = 0
for i = 6, #KEYS do
  n = n + delete_item(KEYS[i])
end
commit()
return n
"
);

/// [`DELETE_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_LUA));

/// Deletes up to `ARGV[1]` items whose TTL has passed, recording each as a delete with its last
/// value, at one revision; returns how many. `KEYS[1..=5]` = the [`AUX_KEYS`].
pub const REAP_LUA: &str = concat!(
    write_item_lua!(),
    r"
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now(), 'LIMIT', 0, tonumber(ARGV[1]))
for _, key in ipairs(due) do
  settle(key)
end
commit()
return #due
"
);

/// [`REAP_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static REAP: LazyLock<Script> = LazyLock::new(|| Script::new(REAP_LUA));

/// Reads the revision and every item matching the globs at once: `KEYS[1]` = the version
/// counter, `ARGV[1]` = the `SCAN` count, then the globs. Returns the revision, then key and
/// value alternately (a key may repeat).
pub const SNAPSHOT_LUA: &str = r"
local out = {redis.call('GET', KEYS[1]) or '0'}
for i = 2, #ARGV do
  local cursor = '0'
  repeat
    local r = redis.call('SCAN', cursor, 'MATCH', ARGV[i], 'COUNT', tonumber(ARGV[1]), 'TYPE', 'hash')
    cursor = r[1]
    for _, key in ipairs(r[2]) do
      local data = redis.call('HGET', key, 'data')
      if data then
        out[#out + 1] = key
        out[#out + 1] = data
      end
    end
  until cursor == '0'
end
return out
";

/// [`SNAPSHOT_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| Script::new(SNAPSHOT_LUA));

/// Drops the history up to revision `ARGV[1]` (clamped to the current one); returns the
/// revision history is now compacted through. `KEYS[1]` = the version counter, `KEYS[2]` = the
/// change stream, `KEYS[3]` = the key holding `compacted_through`.
pub const COMPACT_LUA: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local through = math.min(tonumber(ARGV[1]), current)
local old = tonumber(redis.call('GET', KEYS[3]) or '0')
if through > old then
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', through + 1))
  redis.call('SET', KEYS[3], string.format('%d', through))
  return through
end
return old
";

/// [`COMPACT_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static COMPACT: LazyLock<Script> = LazyLock::new(|| Script::new(COMPACT_LUA));

/// [`DELETE_IF_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static DELETE_IF: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_IF_LUA));

/// Arguments per operation of [`MULTI`].
pub const TX_STRIDE: usize = 5;

/// A transaction: checks every operation against the state before the transaction (an ETag names
/// the version the caller read, even for a key an earlier operation of the transaction writes);
/// only if all pass, applies them all in order. Returns [`TX_APPLIED`], or the 1-based index of
/// the first operation whose check failed, with nothing applied.
///
/// `KEYS[1..=5]` = the [`AUX_KEYS`], `KEYS[i + 5]` = the key of operation `i`; per operation
/// [`TX_STRIDE`] arguments: `'s'` (upsert) or `'d'` (delete), the expected version (`''` for
/// none), `'1'` for first-write, the value, the TTL in milliseconds (`''` for none).
pub const MULTI_LUA: &str = concat!(
    write_item_lua!(),
    r"
local n = #KEYS - 5
-- Everything the writes below touch is read first (the counter, and every key even without a
-- check), so that a key of another type stops the script here, before anything is written.
local counter = redis.call('GET', KEYS[1])
if counter and not string.match(counter, '^%-?%d+$') then
  return redis.error_reply('the version counter ' .. KEYS[1] .. ' does not hold an integer')
end
for i = 1, n do
  local base = (i - 1) * 5
  local etag = ARGV[base + 2]
  local current = redis.call('HGET', KEYS[i + 5], 'version')
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
    write_item(KEYS[1], KEYS[i + 5], ARGV[base + 4], ARGV[base + 5])
  else
    delete_item(KEYS[i + 5])
  end
end
commit()
return 0
"
);

/// [`MULTI_LUA`], with its SHA1 for `EVALSHA`.
pub(crate) static MULTI: LazyLock<Script> = LazyLock::new(|| Script::new(MULTI_LUA));

/// Every script with its source, to load them all when connecting and to find a script's source
/// by its SHA1.
fn all_with_source() -> [(&'static Script, &'static str); 7] {
    [
        (&SET, SET_LUA),
        (&DELETE_IF, DELETE_IF_LUA),
        (&MULTI, MULTI_LUA),
        (&DELETE, DELETE_LUA),
        (&REAP, REAP_LUA),
        (&SNAPSHOT, SNAPSHOT_LUA),
        (&COMPACT, COMPACT_LUA),
    ]
}

/// Every script, to load them all when connecting (so that pipelined `EVALSHA`s find them).
pub(crate) fn all() -> [&'static Script; 7] {
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
        assert_eq!(hashes.len(), 7);
    }

    #[test]
    fn expiries_are_capped_where_the_other_backends_cap_them() {
        let cap = crate::ttl::MAX_EXPIRY_MILLIS.to_string();
        assert!(SET_LUA.contains(&cap));
        assert!(MULTI_LUA.contains(&cap));
    }
}
