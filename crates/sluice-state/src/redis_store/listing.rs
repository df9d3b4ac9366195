//! Key listing and delete-with-prefix by walking the keyspace with `SCAN`.
//!
//! `SCAN` with a `MATCH` glob lets the server skip non-matching keys, but it still visits every key
//! of the database: a listing costs O(keyspace), however few keys match. `SCAN` may return a key
//! more than once; keys are deduplicated here. Only hashes are considered (`TYPE hash`, Redis 6 or
//! later), which also leaves out the namespace's version counter.

use std::collections::BTreeSet;

use redis::{RedisResult, Value};

use super::errors::{backend, unexpected};
use super::{scripts, RedisStore};
use crate::error::StateError;
use crate::keys;
use crate::like::{self, LikePattern};
use crate::store::{KeyPage, Page};

/// A Redis glob matching exactly `text`.
pub(super) fn glob_literal(text: &str) -> String {
    like::like_to_glob_superset(&like::escape(text))
}

/// Walks every hash key matching a glob (the whole Redis key, prefix included), one `SCAN` step
/// at a time.
struct Scan<'a> {
    store: &'a RedisStore,
    context: &'static str,
    glob: String,
    /// The cursor of the next step; `None` once the walk is over.
    cursor: Option<u64>,
}

impl<'a> Scan<'a> {
    fn new(store: &'a RedisStore, context: &'static str, glob: String) -> Self {
        Scan {
            store,
            context,
            glob,
            cursor: Some(0),
        }
    }

    /// The next step's keys without the store's prefix, or `None` when the walk is over. Keys
    /// that are not UTF-8 cannot be the store's and are skipped.
    async fn next(&mut self) -> Result<Option<Vec<String>>, StateError> {
        let Some(cursor) = self.cursor else {
            return Ok(None);
        };
        let mut con = self.store.con.clone();
        let step: RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&self.glob)
            .arg("COUNT")
            .arg(self.store.scan_count)
            .arg("TYPE")
            .arg("hash")
            .query_async(&mut con)
            .await;
        let (next, raw) = step.map_err(|e| backend(self.context, &e))?;
        self.cursor = (next != 0).then_some(next);
        let prefix = self.store.prefix.as_bytes();
        Ok(Some(
            raw.into_iter()
                .filter_map(|k| {
                    k.strip_prefix(prefix)
                        .filter(|k| !k.starts_with(super::feed::RESERVED.as_bytes()))
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .map(str::to_string)
                })
                .collect(),
        ))
    }
}

/// Deletes every key that starts with `prefix` and has no further `||` after it; returns how many
/// were deleted (a key that expired meanwhile is not counted).
pub(crate) async fn delete_with_prefix(
    store: &RedisStore,
    prefix: &str,
) -> Result<u64, StateError> {
    keys::check_prefix(prefix)?;
    let mut glob = glob_literal(&store.redis_key(prefix));
    glob.push('*');
    let mut scan = Scan::new(store, "delete with prefix", glob);
    // Every key first, then one script: the whole delete is one revision for watchers.
    let mut doomed: BTreeSet<String> = BTreeSet::new();
    while let Some(keys) = scan.next().await? {
        doomed.extend(
            keys.into_iter()
                .filter(|k| keys::under_prefix(prefix, k))
                .map(|k| store.redis_key(&k)),
        );
    }
    if doomed.is_empty() {
        return Ok(0);
    }
    let doomed: Vec<String> = doomed.into_iter().collect();
    let cmd = store.evalsha_with_items(&scripts::DELETE, &doomed);
    match store.call("delete with prefix", &cmd).await? {
        Value::Int(n) => Ok(n.unsigned_abs()),
        other => Err(unexpected("delete with prefix", other)),
    }
}

/// One page of the keys matching the LIKE `pattern`, in ascending order. The page token is the
/// last key of the previous page: the next page holds the keys after it, so keys written or
/// deleted between pages never make a page repeat or skip a key that stayed.
pub(crate) async fn keys(
    store: &RedisStore,
    pattern: &str,
    page: Page,
) -> Result<KeyPage, StateError> {
    let limit = keys::page_limit(&page);
    let after = keys::resume_after(&page);
    let like = LikePattern::new(pattern);
    let mut glob = glob_literal(&store.prefix);
    glob.push_str(&like::like_to_glob_superset(pattern));
    let mut scan = Scan::new(store, "list keys", glob);
    // The `limit + 1` smallest matching keys after the token: one more than the page, to know
    // whether another page follows (memory stays O(limit) whatever the keyspace).
    let mut smallest: BTreeSet<String> = BTreeSet::new();
    while let Some(found) = scan.next().await? {
        for key in found {
            if after.is_some_and(|a| key.as_str() <= a) || !like.matches(&key) {
                continue;
            }
            smallest.insert(key);
            if smallest.len() > limit.saturating_add(1) {
                smallest.pop_last();
            }
        }
    }
    Ok(keys::collect_page(smallest.into_iter(), limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_globs_escape_redis_metacharacters_only() {
        assert_eq!(glob_literal("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(glob_literal("app||ü%_"), "app||ü%_");
    }
}
