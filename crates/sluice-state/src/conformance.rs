//! The conformance suite every [`Store`] backend must pass: the scenarios of the store contract
//! (spec/state.md) that the current trait covers.
//!
//! This is test-support code: a failed scenario panics with a message naming the scenario and the
//! backend. Each run of a scenario writes under its own random key prefix, so suites may run
//! concurrently against one shared (even persistent) store.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! sluice_state::conformance::run_all(Arc::new(sluice_state::MemoryStore::new())).await;
//! # }
//! ```

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::store::{Concurrency, DeleteRequest, SetRequest, Store};

/// Tasks in [`lost_update`].
pub const LOST_UPDATE_TASKS: u64 = 16;
/// Increments per task in [`lost_update`].
pub const LOST_UPDATE_INCREMENTS: u64 = 100;

/// Runs every scenario against `store`, one after another.
pub async fn run_all(store: Arc<dyn Store>) {
    value_types(store.as_ref()).await;
    missing_key(store.as_ref()).await;
    delete(store.as_ref()).await;
    etag_on_set(store.as_ref()).await;
    etag_on_delete(store.as_ref()).await;
    etags_never_repeat(store.as_ref()).await;
    first_write(store.as_ref()).await;
    empty_key(store.as_ref()).await;
    set_many(store.as_ref()).await;
    lost_update(store).await;
}

/// Runs every scenario, each against a fresh store from `factory` (for backends whose stores are
/// cheap to make, and to keep one scenario's failure from affecting the next).
pub async fn run_all_with<F>(mut factory: F)
where
    F: FnMut() -> Arc<dyn Store>,
{
    value_types(factory().as_ref()).await;
    missing_key(factory().as_ref()).await;
    delete(factory().as_ref()).await;
    etag_on_set(factory().as_ref()).await;
    etag_on_delete(factory().as_ref()).await;
    etags_never_repeat(factory().as_ref()).await;
    first_write(factory().as_ref()).await;
    empty_key(factory().as_ref()).await;
    set_many(factory().as_ref()).await;
    lost_update(factory()).await;
}

/// A struct values are serialized from, as a user's state would be.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    name: String,
    count: i64,
    ratio: f64,
    tags: Vec<String>,
    nested: Option<Box<Sample>>,
}

/// Values of every kind round-trip: raw bytes byte-identical, the rest as JSON.
pub async fn value_types(store: &dyn Store) {
    let s = Scenario::new("value_types", store);
    let sample = Sample {
        name: "ünïcode ✓".into(),
        count: -7,
        ratio: 0.25,
        tags: vec!["a".into(), String::new()],
        nested: Some(Box::new(Sample {
            name: "inner".into(),
            count: i64::MAX,
            ratio: -1.5,
            tags: vec![],
            nested: None,
        })),
    };
    let all_bytes: Vec<u8> = (0..=255u8).rev().collect();
    let large: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("int", s.json(&42_i64)),
        ("negative-int", s.json(&i64::MIN)),
        ("bool-true", s.json(&true)),
        ("bool-false", s.json(&false)),
        ("raw-bytes", vec![0, 255, 1, 128, 0, 0, 0xC3, 0x28, 10, 13]),
        ("all-bytes", all_bytes),
        (
            "json-looking-string",
            br#"{"a":1,"b":[true,null]}"#.to_vec(),
        ),
        ("json-string", s.json(&"a \"quoted\" string")),
        ("plain-string", b"hello world".to_vec()),
        ("empty-json-string", s.json(&"")),
        ("empty-value", Vec::new()),
        ("struct", s.json(&sample)),
        ("large-1MiB", large),
    ];
    for (name, value) in &cases {
        let key = s.key(name);
        let etag = s.ok(
            &format!("set {name}"),
            store.set(SetRequest::new(&key, value.clone())).await,
        );
        s.check(
            !etag.is_empty(),
            &format!("set {name} returned an empty ETag"),
        );
        let item = s.some(&format!("get {name}"), store.get(&key).await);
        s.check(
            item.value.as_ref() == value.as_slice(),
            &format!(
                "{name}: read {} bytes, not the {} written (or they differ)",
                item.value.len(),
                value.len()
            ),
        );
        s.eq(&format!("ETag of {name}"), &item.etag, &etag);
    }
    let item = s.some("get struct", store.get(&s.key("struct")).await);
    let back: Sample = serde_json::from_slice(&item.value)
        .unwrap_or_else(|e| s.fail(&format!("struct does not deserialize: {e}")));
    s.eq("struct round trip", &back, &sample);
    let item = s.some("get int", store.get(&s.key("int")).await);
    let back: i64 = serde_json::from_slice(&item.value)
        .unwrap_or_else(|e| s.fail(&format!("int does not deserialize: {e}")));
    s.eq("int round trip", &back, &42);
}

/// A get of a missing key is `None`, not an error.
pub async fn missing_key(store: &dyn Store) {
    let s = Scenario::new("missing_key", store);
    let got = s.ok("get missing", store.get(&s.key("never-written")).await);
    s.check(got.is_none(), &format!("a missing key read as {got:?}"));
}

/// Deletes of existing and missing keys.
pub async fn delete(store: &dyn Store) {
    let s = Scenario::new("delete", store);
    let key = s.key("existing");
    s.ok("set", store.set(SetRequest::new(&key, "v")).await);
    s.ok(
        "delete existing",
        store.delete(DeleteRequest::new(&key)).await,
    );
    s.none("get after delete", store.get(&key).await);
    s.ok(
        "delete it again (now missing)",
        store.delete(DeleteRequest::new(&key)).await,
    );
    s.ok(
        "delete a never-written key",
        store.delete(DeleteRequest::new(s.key("never"))).await,
    );
    s.ok(
        "delete a missing key with an empty ETag",
        store
            .delete(DeleteRequest::new(s.key("never")).with_etag(""))
            .await,
    );
    let other = s.key("untouched");
    s.ok(
        "set a neighbour",
        store.set(SetRequest::new(&other, "n")).await,
    );
    s.ok("delete", store.delete(DeleteRequest::new(&key)).await);
    s.some("neighbour survives", store.get(&other).await);
}

/// ETag checks on set: bad → mismatch, malformed → invalid, good → a new, different ETag.
pub async fn etag_on_set(store: &dyn Store) {
    let s = Scenario::new("etag_on_set", store);
    let key = s.key("k");
    let first = s.ok("set", store.set(SetRequest::new(&key, "v1")).await);
    let read = s.some("get", store.get(&key).await);
    s.check(!read.etag.is_empty(), "a read returned an empty ETag");
    s.eq("read ETag", &read.etag, &first);

    let bad = bad_etag(&first);
    let err = store
        .set(SetRequest::new(&key, "v-bad").with_etag(&bad))
        .await;
    s.mismatch("set with a bad ETag", &key, err);
    let err = store
        .set(SetRequest::new(&key, "v-bad").with_etag("not-an-etag!"))
        .await;
    s.invalid("set with a malformed ETag", &key, err);
    s.value("after rejected sets", store.get(&key).await, b"v1");

    let second = s.ok(
        "set with the good ETag",
        store
            .set(SetRequest::new(&key, "v2").with_etag(&first))
            .await,
    );
    s.check(
        second != first && !second.is_empty(),
        &format!("the write with a good ETag returned {second:?} after {first:?}"),
    );
    s.value("after good set", store.get(&key).await, b"v2");
    let err = store
        .set(SetRequest::new(&key, "v3").with_etag(&first))
        .await;
    s.mismatch("set with the now-stale ETag", &key, err);
    let err = store
        .set(SetRequest::new(s.key("missing"), "v").with_etag(&first))
        .await;
    s.mismatch("set of a missing key with an ETag", &s.key("missing"), err);
    s.none(
        "missing key stays missing",
        store.get(&s.key("missing")).await,
    );
    let third = s.ok(
        "set with an empty ETag (counts as none)",
        store.set(SetRequest::new(&key, "v4").with_etag("")).await,
    );
    s.check(third != second, "a last-write set did not change the ETag");
}

/// ETag checks on delete: bad → mismatch (key kept), malformed → invalid, good → deleted.
pub async fn etag_on_delete(store: &dyn Store) {
    let s = Scenario::new("etag_on_delete", store);
    let key = s.key("k");
    let etag = s.ok("set", store.set(SetRequest::new(&key, "v")).await);
    let err = store
        .delete(DeleteRequest::new(&key).with_etag(bad_etag(&etag)))
        .await;
    s.mismatch("delete with a bad ETag", &key, err);
    let err = store
        .delete(DeleteRequest::new(&key).with_etag("garbage?"))
        .await;
    s.invalid("delete with a malformed ETag", &key, err);
    s.value("after rejected deletes", store.get(&key).await, b"v");
    s.ok(
        "delete with the good ETag",
        store
            .delete(DeleteRequest::new(&key).with_etag(&etag))
            .await,
    );
    s.none("after delete", store.get(&key).await);
    let err = store
        .delete(DeleteRequest::new(&key).with_etag(&etag))
        .await;
    s.mismatch("delete of a missing key with an ETag", &key, err);
}

/// Every write of a key yields a new ETag, also across a delete and re-create.
pub async fn etags_never_repeat(store: &dyn Store) {
    let s = Scenario::new("etags_never_repeat", store);
    let key = s.key("k");
    let mut seen = HashSet::new();
    for round in 0..3 {
        for i in 0..10 {
            let etag = s.ok("set", store.set(SetRequest::new(&key, vec![i])).await);
            s.check(
                seen.insert(etag.clone()),
                &format!("ETag {etag:?} repeated (round {round}, write {i})"),
            );
        }
        s.ok("delete", store.delete(DeleteRequest::new(&key)).await);
    }
}

/// First-write concurrency with no ETag, an empty ETag and a good ETag.
pub async fn first_write(store: &dyn Store) {
    let s = Scenario::new("first_write", store);
    let fw = |key: &str, value: &'static str| {
        SetRequest::new(key, value).with_concurrency(Concurrency::FirstWrite)
    };

    let key = s.key("no-etag");
    let etag = s.ok("first write, no ETag", store.set(fw(&key, "first")).await);
    let err = store.set(fw(&key, "second")).await;
    s.mismatch("second first-write, no ETag", &key, err);
    s.value("after second first-write", store.get(&key).await, b"first");

    let key = s.key("empty-etag");
    s.ok(
        "first write, empty ETag",
        store.set(fw(&key, "first").with_etag("")).await,
    );
    let err = store.set(fw(&key, "second").with_etag("")).await;
    s.mismatch("second first-write, empty ETag", &key, err);
    s.value(
        "after second first-write (empty ETag)",
        store.get(&key).await,
        b"first",
    );

    let key = s.key("no-etag");
    let next = s.ok(
        "first-write with the good ETag",
        store.set(fw(&key, "third").with_etag(&etag)).await,
    );
    s.check(next != etag, "a first-write with an ETag kept the ETag");
    let err = store.set(fw(&key, "fourth").with_etag(&etag)).await;
    s.mismatch("first-write with the stale ETag", &key, err);
    s.value("after good first-write", store.get(&key).await, b"third");

    let key = s.key("missing-with-etag");
    let err = store.set(fw(&key, "x").with_etag(&etag)).await;
    s.mismatch("first-write of a missing key with an ETag", &key, err);
}

/// An empty key is rejected by every operation.
pub async fn empty_key(store: &dyn Store) {
    let s = Scenario::new("empty_key", store);
    s.empty_key("get", store.get("").await);
    s.empty_key("set", store.set(SetRequest::new("", "v")).await);
    s.empty_key("delete", store.delete(DeleteRequest::new("")).await);
    let mut results = store
        .set_many(vec![
            SetRequest::new("", "v"),
            SetRequest::new(s.key("ok"), "v"),
        ])
        .await;
    s.check(results.len() == 2, "set_many returned the wrong count");
    let second = results.pop();
    let first = results.pop();
    if let Some(first) = first {
        s.empty_key("set_many, empty key", first);
    }
    if let Some(second) = second {
        s.ok("set_many, key beside an empty one", second);
    }
    s.value("set_many neighbour", store.get(&s.key("ok")).await, b"v");
}

/// A bulk set with one bad ETag fails exactly that key, leaves it unchanged, and applies the rest.
pub async fn set_many(store: &dyn Store) {
    let s = Scenario::new("set_many", store);
    let keys: Vec<String> = (0..5).map(|i| s.key(&format!("k{i}"))).collect();
    let mut etags = Vec::new();
    for key in &keys {
        etags.push(s.ok("seed", store.set(SetRequest::new(key, "old")).await));
    }
    let fresh = s.key("fresh");
    let bad = bad_etag(&etags[2]);
    let reqs = vec![
        SetRequest::new(&keys[0], "new0"),
        SetRequest::new(&keys[1], "new1").with_etag(&etags[1]),
        SetRequest::new(&keys[2], "new2").with_etag(&bad),
        SetRequest::new(&keys[3], "new3").with_etag(""),
        SetRequest::new(&keys[4], "new4").with_etag(&etags[4]),
        SetRequest::new(&fresh, "fresh").with_concurrency(Concurrency::FirstWrite),
    ];
    let results = store.set_many(reqs).await;
    s.eq("result count", &results.len(), &6);
    let mut new_etags = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        if i == 2 {
            s.mismatch("set_many, bad ETag", &keys[2], result);
        } else {
            new_etags.push(s.ok(&format!("set_many request {i}"), result));
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let want = if i == 2 {
            "old".to_string()
        } else {
            format!("new{i}")
        };
        s.value(
            &format!("after set_many, key {i}"),
            store.get(key).await,
            want.as_bytes(),
        );
    }
    s.value("after set_many, fresh", store.get(&fresh).await, b"fresh");
    let item = s.some("get the failed key", store.get(&keys[2]).await);
    s.eq("ETag of the failed key", &item.etag, &etags[2]);
    let distinct: HashSet<&String> = new_etags.iter().collect();
    s.check(
        distinct.len() == new_etags.len(),
        &format!("set_many returned repeated ETags {new_etags:?}"),
    );
    s.check(
        !new_etags.iter().any(|e| etags.contains(e)),
        "set_many returned an ETag a key had before",
    );

    let dup = s.key("dup");
    let results = store
        .set_many(vec![
            SetRequest::new(&dup, "a").with_concurrency(Concurrency::FirstWrite),
            SetRequest::new(&dup, "b").with_concurrency(Concurrency::FirstWrite),
            SetRequest::new(&dup, "c"),
        ])
        .await;
    let mut results = results.into_iter();
    if let Some(r) = results.next() {
        s.ok("set_many, first of a duplicate key", r);
    }
    if let Some(r) = results.next() {
        s.mismatch("set_many, second first-write of a duplicate key", &dup, r);
    }
    if let Some(r) = results.next() {
        s.ok("set_many, last write of a duplicate key", r);
    }
    s.value(
        "duplicate key applies in order",
        store.get(&dup).await,
        b"c",
    );
    s.check(
        store.set_many(Vec::new()).await.is_empty(),
        "set_many of nothing returned results",
    );
}

/// No lost updates: concurrent read-modify-write increments with ETag retries add up exactly.
pub async fn lost_update(store: Arc<dyn Store>) {
    let s = Scenario::new("lost_update", store.as_ref());
    let key = Arc::new(s.key("counter"));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..LOST_UPDATE_TASKS {
        let store = Arc::clone(&store);
        let key = Arc::clone(&key);
        tasks.spawn(async move {
            let s = Scenario::new("lost_update", store.as_ref());
            let mut conflicts = 0u64;
            for _ in 0..LOST_UPDATE_INCREMENTS {
                conflicts += increment(&s, store.as_ref(), &key).await;
            }
            conflicts
        });
    }
    let mut conflicts = 0;
    while let Some(joined) = tasks.join_next().await {
        conflicts += joined.unwrap_or_else(|e| s.fail(&format!("an incrementing task died: {e}")));
    }
    let item = s.some("get counter", store.get(&key).await);
    let total = parse_counter(&s, &item.value);
    s.eq(
        &format!("counter after {conflicts} ETag conflicts"),
        &total,
        &(LOST_UPDATE_TASKS * LOST_UPDATE_INCREMENTS),
    );
}

/// One read-modify-write increment, retried on ETag conflicts; returns the conflicts met.
async fn increment(s: &Scenario, store: &dyn Store, key: &str) -> u64 {
    const MAX_ATTEMPTS: u64 = 1_000_000;
    for attempt in 0..MAX_ATTEMPTS {
        let current = s.ok("read counter", store.get(key).await);
        // Let the other tasks run between read and write, so conflicts happen on any runtime.
        tokio::task::yield_now().await;
        let req = match &current {
            Some(item) => SetRequest::new(key, (parse_counter(s, &item.value) + 1).to_string())
                .with_etag(&item.etag),
            None => SetRequest::new(key, "1").with_concurrency(Concurrency::FirstWrite),
        };
        match store.set(req).await {
            Ok(_) => return attempt,
            Err(StateError::EtagMismatch { .. }) => continue,
            Err(e) => s.fail(&format!("increment failed: {e}")),
        }
    }
    s.fail(&format!(
        "no increment succeeded in {MAX_ATTEMPTS} attempts"
    ))
}

fn parse_counter(s: &Scenario, raw: &[u8]) -> u64 {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| s.fail(&format!("counter holds {raw:?}, not a number")))
}

/// A well-formed ETag that differs from `etag` (and is not handed out by version stores soon).
fn bad_etag(etag: &str) -> String {
    match etag.parse::<u64>() {
        Ok(v) => v.wrapping_add(1_000_000_007).to_string(),
        Err(_) => format!("{etag}0"),
    }
}

/// One scenario's run: names it in failures and hands out its unique keys.
struct Scenario {
    name: &'static str,
    backend: &'static str,
    prefix: String,
}

impl Scenario {
    fn new(name: &'static str, store: &dyn Store) -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let random = RandomState::new().hash_one(run);
        Scenario {
            name,
            backend: store.name(),
            prefix: format!("conformance||{name}||{random:016x}-{run}||"),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn fail(&self, message: &str) -> ! {
        panic!(
            "conformance scenario `{}` failed on backend `{}`: {message}",
            self.name, self.backend
        )
    }

    fn check(&self, ok: bool, message: &str) {
        if !ok {
            self.fail(message);
        }
    }

    fn eq<T: PartialEq + Debug>(&self, what: &str, got: &T, want: &T) {
        if got != want {
            self.fail(&format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    fn ok<T>(&self, what: &str, result: Result<T, StateError>) -> T {
        result.unwrap_or_else(|e| self.fail(&format!("{what}: unexpected error: {e}")))
    }

    fn some<T: Debug>(&self, what: &str, result: Result<Option<T>, StateError>) -> T {
        self.ok(what, result)
            .unwrap_or_else(|| self.fail(&format!("{what}: the key is missing")))
    }

    fn none<T: Debug>(&self, what: &str, result: Result<Option<T>, StateError>) {
        if let Some(found) = self.ok(what, result) {
            self.fail(&format!("{what}: expected no item, found {found:?}"));
        }
    }

    fn value(&self, what: &str, result: Result<Option<crate::Item>, StateError>, want: &[u8]) {
        let item = self.some(what, result);
        if item.value.as_ref() != want {
            self.fail(&format!(
                "{what}: value is {:?}, want {:?}",
                item.value,
                Bytes::copy_from_slice(want)
            ));
        }
    }

    fn mismatch<T: Debug>(&self, what: &str, key: &str, result: Result<T, StateError>) {
        match result {
            Err(StateError::EtagMismatch { key: k }) if k == key => {}
            other => self.fail(&format!(
                "{what}: want an ETag mismatch for {key:?}, got {other:?}"
            )),
        }
    }

    fn invalid<T: Debug>(&self, what: &str, key: &str, result: Result<T, StateError>) {
        match result {
            Err(StateError::EtagInvalid { key: k, .. }) if k == key => {}
            other => self.fail(&format!(
                "{what}: want an invalid-ETag error for {key:?}, got {other:?}"
            )),
        }
    }

    fn empty_key<T: Debug>(&self, what: &str, result: Result<T, StateError>) {
        if !matches!(result, Err(StateError::EmptyKey)) {
            self.fail(&format!("{what}: want an empty-key error, got {result:?}"));
        }
    }

    fn json<T: Serialize>(&self, value: &T) -> Vec<u8> {
        serde_json::to_vec(value)
            .unwrap_or_else(|e| self.fail(&format!("cannot serialize a test value: {e}")))
    }
}
