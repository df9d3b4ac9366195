//! Watch scenarios, for every backend whose [`Store::change_feed`] returns a feed: ordering and
//! completeness under concurrent writers, resume, a stalled watcher, done timeouts, resync after
//! compaction, overlapping prefixes, prefix changes and closing alone, TTL and session expiry,
//! delete with prefix, and aggregation. A backend without a feed skips them all.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! sluice_state::conformance::watch::run_all(Arc::new(sluice_state::MemoryStore::new())).await;
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::scenario::Scenario;
use crate::memory::MemoryStore;
use crate::store::{DeleteRequest, SetRequest, Store, TxOperation};
use crate::watch::{
    watch, Change, ChangeFeed, ChangesAfter, FeedWatcher, Op, Registration, Session,
    SessionOptions, SessionReaper, WatchEvent, WatchOptions, Watcher, Watchers, Writers,
};

/// Longest wait for any one event before a scenario fails (a hang guard, not a timing
/// assertion).
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Concurrent writers in [`ordered_without_gaps`].
pub const WRITERS: usize = 8;

/// Operations per writer in [`ordered_without_gaps`].
pub const OPS_PER_WRITER: usize = 150;

/// The names of every scenario, in the order [`run_all`] runs them.
pub const SCENARIOS: &[&str] = &[
    "watch_ordered_without_gaps",
    "watch_resume_from_revision",
    "watch_stalled_watcher",
    "watch_done_timeout",
    "watch_resync_after_compaction",
    "watch_overlapping_prefixes",
    "watch_prefix_changes_and_close",
    "watch_delete_with_prefix",
    "watch_ttl_expiry",
    "watch_session_expiry",
    "watch_aggregation",
];

/// Runs every watch scenario against `store`.
pub async fn run_all(store: Arc<dyn Store>) {
    ordered_without_gaps(Arc::clone(&store)).await;
    resume_from_revision(Arc::clone(&store)).await;
    stalled_watcher(Arc::clone(&store)).await;
    done_timeout(Arc::clone(&store)).await;
    resync_after_compaction(Arc::clone(&store)).await;
    overlapping_prefixes(Arc::clone(&store)).await;
    prefix_changes_and_close(Arc::clone(&store)).await;
    delete_with_prefix(Arc::clone(&store)).await;
    ttl_expiry(Arc::clone(&store)).await;
    session_expiry(Arc::clone(&store)).await;
    aggregation(store).await;
}

/// The store's feed, or `None` after announcing the skip.
fn feed_of(sc: &Scenario, store: &dyn Store) -> Option<Arc<dyn ChangeFeed>> {
    let feed = store.change_feed();
    if feed.is_none() {
        sc.skip("the backend has no change feed");
    }
    feed
}

/// The next event, failing on a closed registration or after [`HANG_GUARD`].
async fn next(sc: &Scenario, reg: &mut Registration) -> WatchEvent {
    match tokio::time::timeout(HANG_GUARD, reg.next()).await {
        Ok(Some(e)) => e,
        Ok(None) => sc.fail("the registration closed unexpectedly"),
        Err(_) => sc.fail("no watch event within the hang guard"),
    }
}

/// Expects a resync; acknowledges it and returns its revision and entries.
async fn resync(sc: &Scenario, reg: &mut Registration) -> (u64, BTreeMap<String, Bytes>) {
    match next(sc, reg).await {
        WatchEvent::Resync {
            revision,
            entries,
            done,
        } => {
            done.ok();
            let map = entries.into_iter().map(|kv| (kv.key, kv.value)).collect();
            (revision, map)
        }
        other => sc.fail(&format!("want a resync first, got {other:?}")),
    }
}

/// A change as received, without its done handle.
fn record(revision: u64, key: String, op: Op, value: Option<Bytes>, prev: Option<Bytes>) -> Change {
    Change {
        revision,
        key,
        op,
        value,
        prev_value: prev,
    }
}

/// What a watcher saw until a change of `sentinel`: the changes (acknowledged), and the model
/// state they build on the resyncs. Checks as it goes that every change's previous value is
/// the model's (so events come in commit order) unless `lenient_deletes`, and that revisions
/// never go back.
struct Seen {
    changes: Vec<Change>,
    model: BTreeMap<String, Bytes>,
    compacted: usize,
    resyncs: usize,
}

async fn collect_until(
    sc: &Scenario,
    reg: &mut Registration,
    mut model: BTreeMap<String, Bytes>,
    sentinel: &str,
    lenient_deletes: bool,
) -> Seen {
    let mut seen = Seen {
        changes: Vec::new(),
        model: BTreeMap::new(),
        compacted: 0,
        resyncs: 0,
    };
    let mut last_revision = 0u64;
    loop {
        match next(sc, reg).await {
            WatchEvent::Resync {
                revision,
                entries,
                done,
            } => {
                done.ok();
                seen.resyncs += 1;
                model = entries.into_iter().map(|kv| (kv.key, kv.value)).collect();
                last_revision = revision;
            }
            WatchEvent::Compacted { .. } => seen.compacted += 1,
            WatchEvent::Change {
                key,
                op,
                value,
                prev_value,
                revision,
                done,
            } => {
                done.ok();
                sc.check(
                    revision >= last_revision,
                    &format!("revision went back: {revision} after {last_revision} ({key})"),
                );
                last_revision = revision;
                let before = model.get(&key).cloned();
                if !(lenient_deletes && op == Op::Delete) {
                    sc.eq(
                        &format!("previous value of {key} at revision {revision}"),
                        &prev_value,
                        &before,
                    );
                }
                match op {
                    Op::Put => {
                        let v = value.clone().unwrap_or_default();
                        model.insert(key.clone(), v);
                    }
                    Op::Delete => {
                        model.remove(&key);
                    }
                }
                let done_now = key == sentinel;
                seen.changes
                    .push(record(revision, key, op, value, prev_value));
                if done_now {
                    seen.model = model;
                    return seen;
                }
            }
        }
    }
}

/// Every change under `prefix` after `after`, read page by page from the feed.
async fn history(
    sc: &Scenario,
    feed: &dyn ChangeFeed,
    prefix: &str,
    mut after: u64,
    until: u64,
) -> Vec<Change> {
    let mut out = Vec::new();
    while after < until {
        match sc.ok("read history", feed.changes_after(after, 100).await) {
            ChangesAfter::Changes(page) => {
                if page.changes.is_empty() {
                    break;
                }
                out.extend(
                    page.changes
                        .into_iter()
                        .filter(|c| c.key.starts_with(prefix)),
                );
                after = page.last_revision;
            }
            ChangesAfter::Compacted { oldest } => sc.fail(&format!(
                "history compacted through {oldest} during the scenario"
            )),
        }
    }
    out
}

/// A tiny deterministic generator (xorshift), so the scenario needs no random crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One writer of [`ordered_without_gaps`]: random sets, deletes, transactions, batches and
/// prefix deletes over keys shared with the other writers; returns the values it wrote (each
/// unique) and, per transaction, the values written together.
async fn random_writer(
    store: Arc<dyn Store>,
    prefix: String,
    writer: usize,
    ops: usize,
) -> (Vec<Bytes>, Vec<Vec<Bytes>>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((writer as u64 + 1) * 0x1000_0001));
    let transactional = store.features().transactional;
    let group = format!("{prefix}g||");
    let key = |rng: &mut Rng| {
        let n = rng.below(12);
        if n < 8 {
            format!("{prefix}k{n}")
        } else {
            format!("{group}k{n}")
        }
    };
    let mut written = Vec::new();
    let mut together = Vec::new();
    for i in 0..ops {
        let value = |j: usize| Bytes::from(format!("w{writer}-{i}-{j}"));
        match rng.below(10) {
            0..=3 => {
                if store
                    .set(SetRequest::new(key(&mut rng), value(0)))
                    .await
                    .is_ok()
                {
                    written.push(value(0));
                }
            }
            4 | 5 => {
                let _ = store.delete(DeleteRequest::new(key(&mut rng))).await;
            }
            6 | 7 if transactional => {
                let mut tx = Vec::new();
                let mut vals = Vec::new();
                for j in 0..=rng.below(3) as usize {
                    if rng.below(4) == 0 {
                        tx.push(TxOperation::Delete(DeleteRequest::new(key(&mut rng))));
                    } else {
                        tx.push(TxOperation::Upsert(SetRequest::new(
                            key(&mut rng),
                            value(j),
                        )));
                        vals.push(value(j));
                    }
                }
                if store.multi(tx).await.is_ok() {
                    written.extend(vals.iter().cloned());
                    together.push(vals);
                }
            }
            8 => {
                let reqs = vec![
                    SetRequest::new(key(&mut rng), value(0)),
                    SetRequest::new(key(&mut rng), value(1)),
                ];
                for (j, r) in store.set_many(reqs).await.into_iter().enumerate() {
                    if r.is_ok() {
                        written.push(value(j));
                    }
                }
            }
            _ => {
                let _ = store.delete_with_prefix(&group).await;
            }
        }
    }
    (written, together)
}

/// 8 writers do random writes on overlapping keys while a watcher watches: its stream equals
/// the committed history (no gap, no duplicate, revision order, each transaction at one
/// revision), every committed write appears exactly once, every previous value chains, and the
/// watcher's state ends equal to the store's.
pub async fn ordered_without_gaps(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_ordered_without_gaps", &*store);
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let prefix = sc.prefix().to_string();
    let mut reg = watch(
        Arc::clone(&feed),
        "ordered",
        vec![prefix.clone()],
        None,
        WatchOptions::default().with_queue(64),
    );
    let (start, initial) = resync(&sc, &mut reg).await;
    sc.check(initial.is_empty(), "the resync of a fresh prefix is empty");
    let sentinel = sc.key("zz-end");
    let driver = {
        let store = Arc::clone(&store);
        let prefix = prefix.clone();
        let sentinel = sentinel.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for w in 0..WRITERS {
                tasks.push(tokio::spawn(random_writer(
                    Arc::clone(&store),
                    prefix.clone(),
                    w,
                    OPS_PER_WRITER,
                )));
            }
            let mut written = Vec::new();
            let mut together = Vec::new();
            for t in tasks {
                if let Ok((w, g)) = t.await {
                    written.extend(w);
                    together.extend(g);
                }
            }
            let done = store.set(SetRequest::new(sentinel, "end")).await;
            (written, together, done.is_ok())
        })
    };
    let seen = collect_until(&sc, &mut reg, initial, &sentinel, false).await;
    let (written, together, sentinel_ok) = match driver.await {
        Ok(r) => r,
        Err(e) => sc.fail(&format!("a writer panicked: {e}")),
    };
    sc.check(sentinel_ok, "the sentinel write succeeded");
    sc.eq("resyncs after the first", &seen.resyncs, &0);

    // Revisions: non-decreasing, and a revision once left never comes back.
    let mut finished = HashSet::new();
    for pair in seen.changes.windows(2) {
        if pair[1].revision != pair[0].revision {
            finished.insert(pair[0].revision);
            sc.check(
                !finished.contains(&pair[1].revision),
                &format!("revision {} delivered in two runs", pair[1].revision),
            );
        }
    }

    // Exactly the committed history, in order.
    let last = seen.changes.last().map_or(start, |c| c.revision);
    let logged = history(&sc, &*feed, &prefix, start, last).await;
    sc.eq(
        "the watched changes vs the feed's history",
        &seen.changes,
        &logged,
    );

    // Every committed write exactly once.
    let mut puts: HashMap<Bytes, usize> = HashMap::new();
    for c in seen.changes.iter().filter(|c| c.op == Op::Put) {
        if let Some(v) = &c.value {
            *puts.entry(v.clone()).or_default() += 1;
        }
    }
    for v in &written {
        sc.eq(
            &format!("put events of value {v:?}"),
            &puts.get(v).copied(),
            &Some(1),
        );
    }
    sc.eq("put events", &puts.len(), &(written.len() + 1));

    // A transaction's writes share one revision.
    let revision_of: HashMap<&Bytes, u64> = seen
        .changes
        .iter()
        .filter_map(|c| c.value.as_ref().map(|v| (v, c.revision)))
        .collect();
    for group in together.iter().filter(|g| !g.is_empty()) {
        let revs: HashSet<Option<&u64>> = group.iter().map(|v| revision_of.get(v)).collect();
        sc.eq("revisions of one transaction", &revs.len(), &1);
    }

    // The watcher's state is the store's.
    let snap = sc.ok(
        "snapshot",
        feed.snapshot(std::slice::from_ref(&prefix)).await,
    );
    let live: BTreeMap<String, Bytes> = snap
        .entries
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    sc.eq("the watcher's state vs the store's", &seen.model, &live);
    for (key, value) in &live {
        let item = sc.some("get", store.get(key).await);
        sc.eq(&format!("value of {key}"), &item.value, value);
    }
    let stats = reg.stats();
    sc.eq(
        "changes counted",
        &stats.changes,
        &(seen.changes.len() as u64),
    );
}

/// A registration resumed after the last revision it saw gets the changes after it, without a
/// resync, and nothing it saw before.
pub async fn resume_from_revision(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_resume_from_revision", &*store);
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let prefix = sc.prefix().to_string();
    let mut reg = watch(
        Arc::clone(&feed),
        "first",
        vec![prefix.clone()],
        None,
        WatchOptions::default(),
    );
    let (_, model) = resync(&sc, &mut reg).await;
    sc.ok("set a", store.set(SetRequest::new(sc.key("a"), "1")).await);
    sc.ok("set b", store.set(SetRequest::new(sc.key("b"), "1")).await);
    let seen = collect_until(&sc, &mut reg, model, &sc.key("b"), false).await;
    let last_seen = seen.changes.last().map_or(0, |c| c.revision);
    reg.close();
    sc.ok("set c", store.set(SetRequest::new(sc.key("c"), "1")).await);
    sc.ok(
        "delete a",
        store.delete(DeleteRequest::new(sc.key("a"))).await,
    );
    let mut again = watch(
        feed,
        "second",
        vec![prefix],
        Some(last_seen),
        WatchOptions::default(),
    );
    let resumed = collect_until(&sc, &mut again, seen.model, &sc.key("a"), false).await;
    sc.eq("resyncs on resume", &resumed.resyncs, &0);
    let keys: Vec<(&str, Op)> = resumed
        .changes
        .iter()
        .map(|c| (c.key.rsplit("||").next().unwrap_or(""), c.op))
        .collect();
    sc.eq(
        "changes after the resume point",
        &keys,
        &vec![("c", Op::Put), ("a", Op::Delete)],
    );
    sc.check(
        resumed.changes.iter().all(|c| c.revision > last_seen),
        "every resumed change is after the resume point",
    );
}

/// A watcher that neither reads nor completes events holds up neither the writers nor a second
/// watcher; when it reads again it catches up (from history or by a resync) to the same state.
pub async fn stalled_watcher(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_stalled_watcher", &*store);
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let prefix = sc.prefix().to_string();
    let stalled_options = WatchOptions::default()
        .with_queue(4)
        .with_done_timeout(Duration::from_millis(200));
    let mut stalled = watch(
        Arc::clone(&feed),
        "stalled",
        vec![prefix.clone()],
        None,
        stalled_options,
    );
    let mut healthy = watch(
        Arc::clone(&feed),
        "healthy",
        vec![prefix.clone()],
        None,
        WatchOptions::default(),
    );
    let (_, model) = resync(&sc, &mut healthy).await;
    const WRITES: usize = 300;
    let writes = async {
        for i in 0..WRITES {
            let key = sc.key(&format!("k{}", i % 17));
            sc.ok(
                "write",
                store.set(SetRequest::new(key, format!("{i}"))).await,
            );
        }
        sc.ok(
            "sentinel",
            store.set(SetRequest::new(sc.key("zz-end"), "end")).await,
        );
    };
    match tokio::time::timeout(HANG_GUARD, writes).await {
        Ok(()) => {}
        Err(_) => sc.fail("writers were held up by a stalled watcher"),
    }
    let seen = collect_until(&sc, &mut healthy, model, &sc.key("zz-end"), false).await;
    sc.eq(
        "changes to the healthy watcher",
        &seen.changes.len(),
        &(WRITES + 1),
    );
    // The stalled one wakes up and catches up to the same state.
    let caught_up =
        collect_until(&sc, &mut stalled, BTreeMap::new(), &sc.key("zz-end"), false).await;
    sc.eq(
        "the stalled watcher's state after catching up",
        &caught_up.model,
        &seen.model,
    );
}

/// An event whose done never comes is reported as a timeout in the registration's counters; a
/// dropped handle is counted as dropped, never as success.
pub async fn done_timeout(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_done_timeout", &*store);
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let options = WatchOptions::default().with_done_timeout(Duration::from_millis(100));
    let mut reg = watch(feed, "late", vec![sc.prefix().to_string()], None, options);
    let _ = resync(&sc, &mut reg).await;
    sc.ok("set", store.set(SetRequest::new(sc.key("a"), "1")).await);
    let held = next(&sc, &mut reg).await;
    sc.check(matches!(held, WatchEvent::Change { .. }), "a change event");
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while reg.stats().done_timeouts < 1 {
        sc.check(
            tokio::time::Instant::now() < deadline,
            "the done timeout was never reported",
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    sc.ok("set", store.set(SetRequest::new(sc.key("b"), "1")).await);
    drop(next(&sc, &mut reg).await);
    while reg.stats().done_dropped < 1 {
        sc.check(
            tokio::time::Instant::now() < deadline,
            "the dropped done was never reported",
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = reg.stats();
    sc.eq("events done", &stats.done_ok, &1);
    sc.eq("done timeouts", &stats.done_timeouts, &1);
}

/// Resuming from a compacted revision gives a compaction notice and a fresh resync of the
/// current state, never a silent gap.
pub async fn resync_after_compaction(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_resync_after_compaction", &*store);
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let prefix = sc.prefix().to_string();
    sc.ok("set a", store.set(SetRequest::new(sc.key("a"), "1")).await);
    let before = sc.ok("revision", feed.current_revision().await);
    for i in 0..10 {
        sc.ok(
            "set",
            store
                .set(SetRequest::new(sc.key(&format!("k{i}")), "v"))
                .await,
        );
    }
    sc.ok(
        "delete a",
        store.delete(DeleteRequest::new(sc.key("a"))).await,
    );
    let now = sc.ok("revision", feed.current_revision().await);
    let oldest = sc.ok("compact", feed.compact(now).await);
    sc.check(oldest >= now, "compaction reaches the revision asked");
    let mut reg = watch(
        Arc::clone(&feed),
        "behind",
        vec![prefix.clone()],
        Some(before),
        WatchOptions::default(),
    );
    match next(&sc, &mut reg).await {
        WatchEvent::Compacted { after, oldest: o } => {
            sc.eq("compacted after", &after, &before);
            sc.check(o >= now, "the notice names the compacted revision");
        }
        other => sc.fail(&format!("want a compaction notice, got {other:?}")),
    }
    let (revision, entries) = resync(&sc, &mut reg).await;
    sc.check(revision >= now, "the resync is at or after the compaction");
    sc.eq("keys in the resync", &entries.len(), &10);
    sc.check(
        !entries.contains_key(&sc.key("a")),
        "the deleted key is gone from the resync",
    );
    // Live changes follow the resync.
    sc.ok("set z", store.set(SetRequest::new(sc.key("z"), "1")).await);
    let seen = collect_until(&sc, &mut reg, entries, &sc.key("z"), false).await;
    sc.eq("changes after the resync", &seen.changes.len(), &1);
}

/// A key under two prefixes of one registration is delivered once, in resyncs and in changes.
pub async fn overlapping_prefixes(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_overlapping_prefixes", &*store);
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    sc.ok("set", store.set(SetRequest::new(sc.key("a/x"), "0")).await);
    let prefixes = vec![sc.key("a/"), sc.prefix().to_string(), sc.key("a/")];
    let mut reg = watch(feed, "overlap", prefixes, None, WatchOptions::default());
    let (_, entries) = resync(&sc, &mut reg).await;
    sc.eq("resync entries", &entries.len(), &1);
    sc.ok("set", store.set(SetRequest::new(sc.key("a/x"), "1")).await);
    sc.ok("set", store.set(SetRequest::new(sc.key("b"), "1")).await);
    let seen = collect_until(&sc, &mut reg, entries, &sc.key("b"), false).await;
    sc.eq("changes", &seen.changes.len(), &2);
}

/// Adding a prefix resyncs to include its keys; removing one stops its changes; closing one
/// registration leaves another on the same feed running.
pub async fn prefix_changes_and_close(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_prefix_changes_and_close", &*store);
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    sc.ok("set", store.set(SetRequest::new(sc.key("b/1"), "b")).await);
    let mut one = watch(
        Arc::clone(&feed),
        "one",
        vec![sc.key("a/")],
        None,
        WatchOptions::default(),
    );
    let mut two = watch(
        Arc::clone(&feed),
        "two",
        vec![sc.key("a/")],
        None,
        WatchOptions::default(),
    );
    let _ = resync(&sc, &mut one).await;
    let (_, model_two) = resync(&sc, &mut two).await;
    sc.ok(
        "add prefix",
        one.add_prefix(sc.key("b/"))
            .map_err(|e| crate::StateError::InvalidRequest(e.to_string())),
    );
    let (_, entries) = resync(&sc, &mut one).await;
    sc.check(
        entries.contains_key(&sc.key("b/1")),
        "the resync after adding a prefix holds its keys",
    );
    sc.check(
        one.add_prefix(sc.key("b/")).is_err(),
        "adding a watched prefix fails",
    );
    one.remove_prefix(&sc.key("b/"))
        .unwrap_or_else(|e| sc.fail(&format!("remove prefix: {e}")));
    sc.ok("set", store.set(SetRequest::new(sc.key("b/2"), "b")).await);
    sc.ok("set", store.set(SetRequest::new(sc.key("a/1"), "a")).await);
    let seen = collect_until(&sc, &mut one, entries, &sc.key("a/1"), false).await;
    sc.check(
        seen.changes.iter().all(|c| !c.key.contains("b/")),
        "no change under a removed prefix",
    );
    one.close();
    sc.ok("set", store.set(SetRequest::new(sc.key("a/2"), "a")).await);
    let seen = collect_until(&sc, &mut two, model_two, &sc.key("a/2"), false).await;
    sc.eq(
        "changes to the registration left open",
        &seen.changes.len(),
        &2,
    );
}

/// Delete with prefix gives one delete event per key, all at one revision.
pub async fn delete_with_prefix(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_delete_with_prefix", &*store);
    if !store.features().delete_with_prefix {
        sc.skip("the backend has no delete with prefix");
        return;
    }
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let group = sc.key("g||");
    for k in ["x", "y", "z"] {
        sc.ok(
            "set",
            store.set(SetRequest::new(format!("{group}{k}"), k)).await,
        );
    }
    let mut reg = watch(
        feed,
        "prefix",
        vec![sc.prefix().to_string()],
        None,
        WatchOptions::default(),
    );
    let (_, model) = resync(&sc, &mut reg).await;
    sc.eq(
        "deleted",
        &sc.ok("delete with prefix", store.delete_with_prefix(&group).await),
        &3,
    );
    sc.ok("set", store.set(SetRequest::new(sc.key("end"), "e")).await);
    let seen = collect_until(&sc, &mut reg, model, &sc.key("end"), false).await;
    let deletes: Vec<&Change> = seen.changes.iter().filter(|c| c.op == Op::Delete).collect();
    sc.eq("delete events", &deletes.len(), &3);
    let revs: HashSet<u64> = deletes.iter().map(|c| c.revision).collect();
    sc.eq("revisions of one prefix delete", &revs.len(), &1);
}

/// An item with a TTL produces a delete event when it expires, without any further write.
pub async fn ttl_expiry(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_ttl_expiry", &*store);
    if !store.features().ttl {
        sc.skip("the backend has no TTL");
        return;
    }
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let mut reg = watch(
        feed,
        "ttl",
        vec![sc.prefix().to_string()],
        None,
        WatchOptions::default(),
    );
    let (_, model) = resync(&sc, &mut reg).await;
    let key = sc.key("short");
    sc.ok(
        "set",
        store
            .set(SetRequest::new(key.clone(), "v").with_ttl(Duration::from_secs(1)))
            .await,
    );
    let seen = collect_until(&sc, &mut reg, model, &key, false).await;
    sc.eq(
        "the put",
        &seen.changes.last().map(|c| c.op),
        &Some(Op::Put),
    );
    let expired = collect_until(&sc, &mut reg, seen.model, &key, true).await;
    let last = expired.changes.last().map(|c| (c.op, c.prev_value.clone()));
    sc.eq(
        "the expiry event",
        &last,
        &Some((Op::Delete, Some(Bytes::from_static(b"v")))),
    );
}

/// Keys put under a session are deleted, with delete events, when the session closes and when
/// it stops heartbeating.
pub async fn session_expiry(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_session_expiry", &*store);
    if !store.features().ttl {
        sc.skip("sessions need TTLs");
        return;
    }
    let Some(feed) = feed_of(&sc, &*store) else {
        return;
    };
    let options = SessionOptions {
        ttl: Duration::from_secs(1),
        heartbeat: Duration::from_millis(300),
        namespace: sc.key("sessions/"),
    };
    let data = sc.key("data/");
    let mut reg = watch(
        feed,
        "sessions",
        vec![data.clone()],
        None,
        WatchOptions::default(),
    );
    let (_, model) = resync(&sc, &mut reg).await;

    let closing = sc.ok(
        "open",
        Session::open(Arc::clone(&store), options.clone()).await,
    );
    sc.ok(
        "put",
        closing
            .put(SetRequest::new(format!("{data}closing"), "c"))
            .await,
    );
    let seen = collect_until(&sc, &mut reg, model, &format!("{data}closing"), false).await;
    sc.eq(
        "keys closed with the session",
        &sc.ok("close", closing.close().await),
        &1,
    );
    let seen = collect_until(&sc, &mut reg, seen.model, &format!("{data}closing"), false).await;
    sc.eq(
        "delete on close",
        &seen.changes.last().map(|c| c.op),
        &Some(Op::Delete),
    );

    let dying = sc.ok(
        "open",
        Session::open(Arc::clone(&store), options.clone()).await,
    );
    sc.ok(
        "put",
        dying
            .put(SetRequest::new(format!("{data}dying"), "d"))
            .await,
    );
    let seen = collect_until(&sc, &mut reg, seen.model, &format!("{data}dying"), false).await;
    // Survives heartbeats for longer than its TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sc.check(
        dying.is_alive(),
        "a heartbeating session stays alive past its TTL",
    );
    let _reaper = SessionReaper::spawn(
        Arc::clone(&store),
        options.namespace.clone(),
        Duration::from_millis(200),
    );
    sc.some(
        "the live session's key",
        store.get(&format!("{data}dying")).await,
    );
    drop(dying); // stops heartbeating, as a crashed writer would
    let seen = collect_until(&sc, &mut reg, seen.model, &format!("{data}dying"), false).await;
    sc.eq(
        "delete on expiry",
        &seen.changes.last().map(|c| c.op),
        &Some(Op::Delete),
    );
}

/// Watchers over several feeds merge into one registration; writers fan a write out to
/// several stores.
pub async fn aggregation(store: Arc<dyn Store>) {
    let sc = Scenario::new("watch_aggregation", &*store);
    if feed_of(&sc, &*store).is_none() {
        return;
    }
    let other: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let members: Vec<Arc<dyn Watcher>> = vec![
        Arc::new(sc.ok_watch(FeedWatcher::of_store(&*store, WatchOptions::default()))),
        Arc::new(sc.ok_watch(FeedWatcher::of_store(&*other, WatchOptions::default()))),
    ];
    let watchers = Watchers::new(members, 64);
    let mut agg = sc.ok_watch(watchers.watch("agg", vec![sc.prefix().to_string()], None));
    let writers = Writers::new(vec![Arc::clone(&store), Arc::clone(&other)]);
    let mut resyncs = 0;
    while resyncs < 2 {
        match tokio::time::timeout(HANG_GUARD, agg.next()).await {
            Ok(Some((_, e @ WatchEvent::Resync { .. }))) => {
                e.ack();
                resyncs += 1;
            }
            other => sc.fail(&format!("want two resyncs, got {other:?}")),
        }
    }
    sc.ok(
        "fan-out set",
        writers.set(SetRequest::new(sc.key("k"), "v")).await,
    );
    let mut sources = HashSet::new();
    while sources.len() < 2 {
        match tokio::time::timeout(HANG_GUARD, agg.next()).await {
            Ok(Some((source, WatchEvent::Change { key, done, .. }))) => {
                done.ok();
                sc.eq("key", &key, &sc.key("k"));
                sc.check(sources.insert(source), "one change per source");
            }
            other => sc.fail(&format!("want a change, got {other:?}")),
        }
    }
    sc.some("written to the other store", other.get(&sc.key("k")).await);
    agg.close();
}

impl Scenario {
    /// The value of a watch call, failing the scenario on an error.
    fn ok_watch<T>(&self, r: Result<T, crate::watch::WatchError>) -> T {
        r.unwrap_or_else(|e| self.fail(&format!("watch: {e}")))
    }
}

/// How many keys the writer process of [`second_process_sees_every_write`] writes.
pub const PEER_WRITES: usize = 500;

/// The writer half of [`second_process_sees_every_write`], run in the other OS process.
pub async fn peer_writes(store: &dyn Store) {
    for i in 0..PEER_WRITES {
        store
            .set(SetRequest::new(format!("peer/{i:05}"), i.to_string()))
            .await
            .expect("set");
    }
}

/// Two OS processes sharing a backend: once this one watches, `spawn_writer` starts the other,
/// which runs [`peer_writes`]; every write arrives here in order, with no gaps.
pub async fn second_process_sees_every_write(
    store: Arc<dyn Store>,
    spawn_writer: impl FnOnce() -> tokio::process::Child,
) {
    let feed = store.change_feed().expect("feed");
    let mut reg = watch(
        feed,
        "peer",
        vec!["peer/".into()],
        None,
        WatchOptions::default(),
    );
    match reg.next().await.expect("resync") {
        WatchEvent::Resync { entries, done, .. } => {
            assert!(entries.is_empty());
            done.ok();
        }
        other => panic!("want a resync first, got {other:?}"),
    }
    let mut child = spawn_writer();
    let mut last_revision = 0;
    for i in 0..PEER_WRITES {
        let event = tokio::time::timeout(Duration::from_secs(60), reg.next())
            .await
            .expect("an event within the hang guard")
            .expect("registration open");
        match event {
            WatchEvent::Change {
                key,
                value,
                revision,
                done,
                ..
            } => {
                done.ok();
                assert_eq!(key, format!("peer/{i:05}"), "in order, no gaps");
                assert_eq!(value.as_deref(), Some(i.to_string().as_bytes()));
                assert!(revision > last_revision, "revisions increase");
                last_revision = revision;
            }
            other => panic!("want change {i}, got {other:?}"),
        }
    }
    let status = child.wait().await.expect("writer exit");
    assert!(status.success(), "the writer process failed: {status}");
}

/// The command that re-runs this test binary as the writer of
/// [`second_process_sees_every_write`]: only its `writer_test` runs, with `env` set.
pub fn peer_writer_command(writer_test: &str, env: (&str, &str)) -> tokio::process::Command {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--exact", writer_test, "--nocapture", "--test-threads", "1"])
        .env(env.0, env.1)
        .kill_on_drop(true);
    cmd
}
