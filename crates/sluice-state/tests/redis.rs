//! The Redis backend against a real server: the conformance suite, the store contract operation by
//! operation, the layout on the server, and failures (unreachable server, foreign keys, a flushed
//! script cache).
//!
//! Needs `SLUICE_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`); every test prints why it skips
//! when it is unset. Each test works under its own key prefix and deletes everything under it at
//! the end, even when it fails.

#![cfg(feature = "redis")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::Commands;
use sluice_state::conformance::{self, Options};
use sluice_state::{
    Concurrency, DeleteRequest, Page, Query, RedisOptions, RedisStore, SetRequest, StateError,
    Store, TxOperation,
};

const URL_VAR: &str = "SLUICE_TEST_REDIS_URL";

/// A store under a key prefix no other test (or test run) uses, and the guard that deletes every
/// key under that prefix when the test ends.
struct Fixture {
    store: RedisStore,
    url: String,
    _cleanup: Cleanup,
}

impl Fixture {
    /// A direct connection to the server, to look at (or tamper with) what the store wrote.
    fn direct(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_connection()
            .expect("direct redis connection")
    }

    /// The Redis key of `key`.
    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.store.key_prefix())
    }
}

/// Deletes every key under a prefix when dropped (also when the test panics).
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut con) = client.get_connection() else {
            eprintln!("could not clean up keys under {:?}", self.prefix);
            return;
        };
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let keys: Vec<Vec<u8>> = match con.scan_match::<_, Vec<u8>>(&pattern) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(e) => {
                eprintln!("could not scan keys under {:?}: {e}", self.prefix);
                return;
            }
        };
        for batch in keys.chunks(500) {
            if let Err(e) = con.del::<_, ()>(batch) {
                eprintln!("could not delete keys under {:?}: {e}", self.prefix);
            }
        }
    }
}

fn glob_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The server's URL, or `None` after printing why the test skips.
fn url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!(
                "skipping {test}: {URL_VAR} is not set (e.g. {URL_VAR}=redis://127.0.0.1:6379)"
            );
            None
        }
    }
}

/// A key prefix unique to this test in this process and to this process.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "sluice-test:{test}:{}-{nanos}-{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects a store for `test`, or `None` (printed) when no server is configured.
async fn fixture(test: &str) -> Option<Fixture> {
    let url = url(test)?;
    let prefix = unique_prefix(test);
    let cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let store = RedisStore::connect(
        &url,
        RedisOptions {
            key_prefix: prefix,
            ..RedisOptions::default()
        },
    )
    .await
    .expect("connect to the test Redis server");
    Some(Fixture {
        store,
        url,
        _cleanup: cleanup,
    })
}

fn tx_set(key: &str, value: &str) -> TxOperation {
    TxOperation::Upsert(SetRequest::new(key, value.to_string()))
}

fn tx_delete(key: &str) -> TxOperation {
    TxOperation::Delete(DeleteRequest::new(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let Some(f) = fixture("conformance").await else {
        return;
    };
    // The contract's 16 × 500 lost-update run is its own test below.
    conformance::run_all_with_options(
        Arc::new(f.store.clone()),
        Options {
            lost_update_tasks: 4,
            lost_update_increments: 50,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tasks_of_500_etag_increments_end_at_exactly_8000() {
    let Some(f) = fixture("lost_update").await else {
        return;
    };
    assert_eq!(
        conformance::LOST_UPDATE_TASKS * conformance::LOST_UPDATE_INCREMENTS,
        8_000
    );
    conformance::lost_update(Arc::new(f.store.clone())).await;
}

#[tokio::test]
async fn items_are_hashes_with_data_version_and_expiry() {
    let Some(f) = fixture("layout").await else {
        return;
    };
    let etag = f.store.set(SetRequest::new("app||k", "v1")).await.unwrap();
    let mut con = f.direct();
    let fields: std::collections::HashMap<String, Vec<u8>> =
        con.hgetall(f.redis_key("app||k")).unwrap();
    assert_eq!(fields.len(), 3, "{fields:?}");
    assert_eq!(fields["data"], b"v1");
    assert_eq!(fields["version"], etag.as_bytes());
    assert_eq!(fields["expires"], b"");
    // The version counter is the bare prefix, a plain string key.
    let counter: u64 = con.get(f.store.key_prefix()).unwrap();
    assert_eq!(counter.to_string(), etag);

    // With a TTL, the `expires` field and the key's own expiry are the same instant.
    f.store
        .set(SetRequest::new("app||k", "v2").with_ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    let expires: String = con.hget(f.redis_key("app||k"), "expires").unwrap();
    let pexpiretime: i64 = redis::cmd("PEXPIRETIME")
        .arg(f.redis_key("app||k"))
        .query(&mut con)
        .unwrap();
    assert_eq!(expires, pexpiretime.to_string());
    let item = f.store.get("app||k").await.unwrap().unwrap();
    let at = item
        .expires_at
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    assert_eq!(at.as_millis().to_string(), expires);
}

#[tokio::test]
async fn get_set_delete_and_features() {
    let Some(f) = fixture("basic").await else {
        return;
    };
    let s = &f.store;
    assert_eq!(s.name(), "redis");
    let features = s.features();
    assert!(features.etag && features.transactional && features.ttl);
    assert!(features.delete_with_prefix && features.keys_like);
    assert!(!features.query);
    assert_eq!(
        features.names(),
        vec![
            "ETAG",
            "TRANSACTIONAL",
            "TTL",
            "DELETE_WITH_PREFIX",
            "KEYS_LIKE"
        ]
    );

    assert_eq!(s.get("k").await.unwrap(), None);
    let e1 = s.set(SetRequest::new("k", "one")).await.unwrap();
    let item = s.get("k").await.unwrap().unwrap();
    assert_eq!(item.value.as_ref(), b"one");
    assert_eq!(item.etag, e1);
    assert_eq!(item.expires_at, None);
    let e2 = s.set(SetRequest::new("k", "two")).await.unwrap();
    assert_ne!(e1, e2);
    s.delete(DeleteRequest::new("k")).await.unwrap();
    assert_eq!(s.get("k").await.unwrap(), None);
    s.delete(DeleteRequest::new("k")).await.unwrap();
    assert!(matches!(s.get("").await, Err(StateError::EmptyKey)));
    assert!(matches!(
        s.set(SetRequest::new("", "v")).await,
        Err(StateError::EmptyKey)
    ));
    assert!(matches!(
        s.delete(DeleteRequest::new("")).await,
        Err(StateError::EmptyKey)
    ));
    assert!(matches!(
        s.query(&Query::default()).await,
        Err(StateError::Unsupported {
            backend: "redis",
            ..
        })
    ));
}

#[tokio::test]
async fn raw_bytes_and_awkward_keys_round_trip() {
    let Some(f) = fixture("bytes").await else {
        return;
    };
    let s = &f.store;
    let values: Vec<Vec<u8>> = vec![
        vec![0, 0, 0],
        vec![0xC3, 0x28, 0xFF, 0xFE, 0, b'x'],
        (0..=255u8).collect(),
        Vec::new(),
        "ünïcode ✓".as_bytes().to_vec(),
    ];
    let keys = [
        "plain",
        "with space",
        "glob*?[chars]\\",
        "ünï||cödé",
        "nul\0inside",
        "percent%_under",
    ];
    for key in keys {
        for value in &values {
            let etag = s.set(SetRequest::new(key, value.clone())).await.unwrap();
            let item = s.get(key).await.unwrap().unwrap();
            assert_eq!(item.value.as_ref(), value.as_slice(), "key {key:?}");
            assert_eq!(item.etag, etag);
        }
    }
    let mut pattern = String::new();
    for c in "glob*?[chars]\\".chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    let page = s.keys(&pattern, Page::default()).await.unwrap();
    assert_eq!(page.keys, vec!["glob*?[chars]\\".to_string()]);
    let page = s.keys("%", Page::default()).await.unwrap();
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(page.keys, want);
}

#[tokio::test]
async fn etags_are_checked_on_the_server() {
    let Some(f) = fixture("etags").await else {
        return;
    };
    let s = &f.store;
    let e1 = s.set(SetRequest::new("k", "v1")).await.unwrap();
    let stale = (e1.parse::<u64>().unwrap() + 1_000_000).to_string();
    assert!(matches!(
        s.set(SetRequest::new("k", "x").with_etag(&stale)).await,
        Err(StateError::EtagMismatch { key }) if key == "k"
    ));
    for malformed in ["abc", "-1", "1.5", " 1", "W/\"1\"", "18446744073709551616"] {
        assert!(
            matches!(
                s.set(SetRequest::new("k", "x").with_etag(malformed)).await,
                Err(StateError::EtagInvalid { key, etag }) if key == "k" && etag == malformed
            ),
            "malformed ETag {malformed:?}"
        );
        assert!(matches!(
            s.delete(DeleteRequest::new("k").with_etag(malformed)).await,
            Err(StateError::EtagInvalid { .. })
        ));
    }
    // Leading zeros name the same version.
    let e2 = s
        .set(SetRequest::new("k", "v2").with_etag(format!("00{e1}")))
        .await
        .unwrap();
    assert_eq!(s.get("k").await.unwrap().unwrap().value.as_ref(), b"v2");
    assert!(matches!(
        s.delete(DeleteRequest::new("k").with_etag(&e1)).await,
        Err(StateError::EtagMismatch { .. })
    ));
    s.delete(DeleteRequest::new("k").with_etag(&e2))
        .await
        .unwrap();
    assert_eq!(s.get("k").await.unwrap(), None);
    assert!(matches!(
        s.delete(DeleteRequest::new("k").with_etag(&e2)).await,
        Err(StateError::EtagMismatch { .. })
    ));
    // A re-created key never gets an ETag it had before.
    let mut seen = HashSet::from([e1, e2]);
    for _ in 0..5 {
        let e = s.set(SetRequest::new("k", "again")).await.unwrap();
        assert!(seen.insert(e.clone()), "ETag {e} repeated");
        s.delete(DeleteRequest::new("k")).await.unwrap();
    }
}

#[tokio::test]
async fn first_write_only_creates() {
    let Some(f) = fixture("first_write").await else {
        return;
    };
    let s = &f.store;
    let fw = |v: &'static str| SetRequest::new("k", v).with_concurrency(Concurrency::FirstWrite);
    let e1 = s.set(fw("first")).await.unwrap();
    assert!(matches!(
        s.set(fw("second")).await,
        Err(StateError::EtagMismatch { .. })
    ));
    assert!(matches!(
        s.set(fw("second").with_etag("")).await,
        Err(StateError::EtagMismatch { .. })
    ));
    let e2 = s.set(fw("third").with_etag(&e1)).await.unwrap();
    assert_ne!(e1, e2);
    assert_eq!(s.get("k").await.unwrap().unwrap().value.as_ref(), b"third");
    s.delete(DeleteRequest::new("k")).await.unwrap();
    s.set(fw("after delete")).await.unwrap();
}

#[tokio::test]
async fn ttls_expire_report_their_time_and_are_cleared_by_writes_without_one() {
    let Some(f) = fixture("ttl").await else {
        return;
    };
    let s = &f.store;
    let before = SystemTime::now();
    s.set(SetRequest::new("long", "v").with_ttl(Duration::from_secs(3600)))
        .await
        .unwrap();
    let after = SystemTime::now();
    let at = s.get("long").await.unwrap().unwrap().expires_at.unwrap();
    assert!(at >= before + Duration::from_secs(3599), "{at:?}");
    assert!(at <= after + Duration::from_secs(3601), "{at:?}");
    let mut con = f.direct();
    let pttl: i64 = con.pttl(f.redis_key("long")).unwrap();
    assert!(pttl > 3_590_000 && pttl <= 3_600_000, "PTTL {pttl}");

    // A write without a TTL (what `ttlInSeconds: -1` becomes) clears it.
    s.set(SetRequest::new("long", "v2")).await.unwrap();
    assert_eq!(s.get("long").await.unwrap().unwrap().expires_at, None);
    let pttl: i64 = con.pttl(f.redis_key("long")).unwrap();
    assert_eq!(pttl, -1);

    // Expired items are invisible at once: Redis does not serve an expired key.
    let etag = s
        .set(SetRequest::new("short", "v").with_ttl(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(s.get("short").await.unwrap().is_some());
    let started = Instant::now();
    while s.get("short").await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "an item with a 300 ms TTL is still visible after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = s.bulk_get(&["short".to_string()]).await;
    assert!(matches!(got.as_slice(), [Ok(None)]));
    assert!(matches!(
        s.set(SetRequest::new("short", "x").with_etag(&etag)).await,
        Err(StateError::EtagMismatch { .. })
    ));
    s.set(SetRequest::new("short", "x").with_concurrency(Concurrency::FirstWrite))
        .await
        .unwrap();

    // A transaction's upsert without a TTL clears one too; with a TTL it sets one.
    s.set(SetRequest::new("tx", "v").with_ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    s.multi(vec![tx_set("tx", "v2")]).await.unwrap();
    assert_eq!(s.get("tx").await.unwrap().unwrap().expires_at, None);
    s.multi(vec![TxOperation::Upsert(
        SetRequest::new("tx", "v3").with_ttl(Duration::from_secs(60)),
    )])
    .await
    .unwrap();
    assert!(s.get("tx").await.unwrap().unwrap().expires_at.is_some());
}

#[tokio::test]
async fn bulk_calls_report_per_key_results() {
    let Some(f) = fixture("bulk").await else {
        return;
    };
    let s = &f.store;
    let ea = s.set(SetRequest::new("a", "a0")).await.unwrap();
    let eb = s.set(SetRequest::new("b", "b0")).await.unwrap();
    let results = s
        .set_many(vec![
            SetRequest::new("a", "a1").with_etag(&ea),
            SetRequest::new("b", "b1").with_etag("999999999"),
            SetRequest::new("c", "c1"),
            SetRequest::new("", "empty"),
            SetRequest::new("d", "d1").with_etag("bad etag"),
            SetRequest::new("c", "c2").with_concurrency(Concurrency::FirstWrite),
        ])
        .await;
    assert_eq!(results.len(), 6);
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(StateError::EtagMismatch { key }) if key == "b"));
    assert!(results[2].is_ok());
    assert!(matches!(results[3], Err(StateError::EmptyKey)));
    assert!(matches!(results[4], Err(StateError::EtagInvalid { .. })));
    assert!(matches!(&results[5], Err(StateError::EtagMismatch { key }) if key == "c"));

    let keys: Vec<String> = ["a", "b", "c", "d", "", "missing"]
        .map(String::from)
        .to_vec();
    let got = s.bulk_get(&keys).await;
    assert_eq!(got.len(), 6);
    let value = |i: usize| {
        got[i]
            .as_ref()
            .unwrap()
            .as_ref()
            .map(|item| item.value.clone())
    };
    assert_eq!(value(0).as_deref(), Some(&b"a1"[..]));
    assert_eq!(value(1).as_deref(), Some(&b"b0"[..]));
    assert_eq!(value(2).as_deref(), Some(&b"c1"[..]));
    assert_eq!(value(3), None);
    assert!(matches!(got[4], Err(StateError::EmptyKey)));
    assert_eq!(value(5), None);
    assert!(s.bulk_get(&[]).await.is_empty());

    let results = s
        .delete_many(vec![
            DeleteRequest::new("a").with_etag(&ea),
            DeleteRequest::new("b").with_etag(&eb),
            DeleteRequest::new("c"),
            DeleteRequest::new("missing"),
            DeleteRequest::new("").with_etag("1"),
            DeleteRequest::new("b").with_etag("x"),
        ])
        .await;
    assert_eq!(results.len(), 6);
    assert!(matches!(&results[0], Err(StateError::EtagMismatch { key }) if key == "a"));
    assert!(results[1].is_ok());
    assert!(results[2].is_ok());
    assert!(results[3].is_ok());
    assert!(matches!(results[4], Err(StateError::EmptyKey)));
    assert!(matches!(results[5], Err(StateError::EtagInvalid { .. })));
    assert!(s.get("a").await.unwrap().is_some());
    assert!(s.get("b").await.unwrap().is_none());
    assert!(s.get("c").await.unwrap().is_none());
}

#[tokio::test]
async fn multi_follows_the_spec_example_and_is_all_or_nothing() {
    let Some(f) = fixture("multi").await else {
        return;
    };
    let s = &f.store;
    // The spec's example: key1 exists; [delete key1, upsert key2, delete key2, upsert key3=v3].
    s.set(SetRequest::new("key1", "v1")).await.unwrap();
    s.multi(vec![
        tx_delete("key1"),
        tx_set("key2", "v2"),
        tx_delete("key2"),
        tx_set("key3", "v3"),
    ])
    .await
    .unwrap();
    assert_eq!(s.get("key1").await.unwrap(), None);
    assert_eq!(s.get("key2").await.unwrap(), None);
    assert_eq!(s.get("key3").await.unwrap().unwrap().value.as_ref(), b"v3");
    let page = s.keys("%", Page::default()).await.unwrap();
    assert_eq!(page.keys, vec!["key3".to_string()]);

    // A failing check anywhere applies nothing, and names the operation.
    let e3 = s.get("key3").await.unwrap().unwrap().etag;
    let stale = (e3.parse::<u64>().unwrap() + 1_000_000).to_string();
    let err = s
        .multi(vec![
            tx_set("new", "n"),
            tx_delete("key3"),
            TxOperation::Upsert(SetRequest::new("key3", "x").with_etag(&stale)),
        ])
        .await
        .unwrap_err();
    match err {
        StateError::TransactionAborted { index, key, source } => {
            assert_eq!((index, key.as_str()), (2, "key3"));
            assert!(matches!(*source, StateError::EtagMismatch { .. }));
        }
        other => panic!("want TransactionAborted, got {other:?}"),
    }
    assert_eq!(s.get("new").await.unwrap(), None);
    assert_eq!(s.get("key3").await.unwrap().unwrap().etag, e3);

    // Checks see the state before the transaction: an ETag read before it still holds after an
    // earlier operation of the same transaction rewrote the key.
    s.multi(vec![
        tx_set("key3", "v3b"),
        TxOperation::Upsert(SetRequest::new("key3", "v3c").with_etag(&e3)),
    ])
    .await
    .unwrap();
    let item = s.get("key3").await.unwrap().unwrap();
    assert_eq!(item.value.as_ref(), b"v3c");
    let e3 = item.etag;

    let err = s
        .multi(vec![
            tx_set("new", "n"),
            TxOperation::Upsert(SetRequest::new("key3", "x").with_etag("nope")),
        ])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StateError::TransactionAborted { index: 1, ref key, ref source }
            if key == "key3" && matches!(**source, StateError::EtagInvalid { .. })
    ));
    let err = s
        .multi(vec![tx_set("new", "n"), tx_set("", "x")])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StateError::TransactionAborted { index: 1, ref source, .. }
            if matches!(**source, StateError::EmptyKey)
    ));
    let err = s
        .multi(vec![
            tx_set("new", "n"),
            TxOperation::Upsert(
                SetRequest::new("key3", "again").with_concurrency(Concurrency::FirstWrite),
            ),
        ])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StateError::TransactionAborted { index: 1, ref key, .. } if key == "key3"
    ));
    assert_eq!(s.get("new").await.unwrap(), None);

    // Checks that pass apply everything, with new ETags.
    s.multi(vec![
        TxOperation::Upsert(SetRequest::new("key3", "v3d").with_etag(&e3)),
        TxOperation::Upsert(SetRequest::new("new", "n").with_concurrency(Concurrency::FirstWrite)),
    ])
    .await
    .unwrap();
    let item = s.get("key3").await.unwrap().unwrap();
    assert_eq!(item.value.as_ref(), b"v3d");
    assert_ne!(item.etag, e3);
    assert!(s.get("new").await.unwrap().is_some());
    s.multi(Vec::new()).await.unwrap();
}

#[tokio::test]
async fn delete_with_prefix_follows_daprs_rule() {
    let Some(f) = fixture("prefix").await else {
        return;
    };
    let s = &f.store;
    for key in [
        "app||k1",
        "app||k2",
        "app||sub||k3",
        "apple||k4",
        "app*||k5",
        "other||app||k6",
    ] {
        s.set(SetRequest::new(key, "v")).await.unwrap();
    }
    // Enough keys to need several SCAN steps and DEL batches.
    let many: Vec<SetRequest> = (0..1_200)
        .map(|i| SetRequest::new(format!("bulk||{i:04}"), "v"))
        .collect();
    assert!(s.set_many(many).await.iter().all(Result::is_ok));

    assert_eq!(s.delete_with_prefix("app||").await.unwrap(), 2);
    assert_eq!(s.get("app||k1").await.unwrap(), None);
    assert!(s.get("app||sub||k3").await.unwrap().is_some());
    assert!(s.get("apple||k4").await.unwrap().is_some());
    assert!(s.get("app*||k5").await.unwrap().is_some());
    assert_eq!(s.delete_with_prefix("app||").await.unwrap(), 0);
    assert_eq!(s.delete_with_prefix("app||sub||").await.unwrap(), 1);
    // `*` in a prefix is a literal character, not a glob.
    assert_eq!(s.delete_with_prefix("app*||").await.unwrap(), 1);
    assert_eq!(s.delete_with_prefix("bulk||").await.unwrap(), 1_200);
    assert!(matches!(
        s.delete_with_prefix("").await,
        Err(StateError::InvalidRequest(_))
    ));
    assert!(s.get("other||app||k6").await.unwrap().is_some());
    // The version counter is not an item and survives.
    let e = s.set(SetRequest::new("after", "v")).await.unwrap();
    assert!(e.parse::<u64>().unwrap() > 1_200);
}

#[tokio::test]
async fn keys_pages_through_a_like_pattern() {
    let Some(f) = fixture("keys").await else {
        return;
    };
    let s = &f.store;
    let mut want = Vec::new();
    for i in 0..23 {
        let key = format!("user||{i:02}");
        s.set(SetRequest::new(&key, "v")).await.unwrap();
        want.push(key);
    }
    for key in ["user||é1", "user||x||deep", "usr||00", "user_||00"] {
        s.set(SetRequest::new(key, "v")).await.unwrap();
    }
    s.set(SetRequest::new("user||g1", "v").with_ttl(Duration::from_millis(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let mut listed = Vec::new();
    let mut token = None;
    loop {
        let page = s
            .keys(
                "user||__",
                Page {
                    limit: Some(5),
                    token,
                },
            )
            .await
            .unwrap();
        assert!(page.keys.len() <= 5);
        listed.extend(page.keys);
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    // `_` is one character, also a two-byte one.
    want.push("user||é1".to_string());
    want.sort();
    assert_eq!(listed, want);

    let page = s.keys("user\\_||%", Page::default()).await.unwrap();
    assert_eq!(page.keys, vec!["user_||00".to_string()]);
    let page = s.keys("us%00", Page::default()).await.unwrap();
    assert_eq!(
        page.keys,
        vec![
            "user_||00".to_string(),
            "user||00".to_string(),
            "usr||00".to_string()
        ]
    );
    let page = s.keys("nothing%", Page::default()).await.unwrap();
    assert!(page.keys.is_empty() && page.next.is_none());
}

#[tokio::test]
async fn foreign_keys_in_the_namespace_are_errors_not_panics() {
    let Some(f) = fixture("foreign").await else {
        return;
    };
    let s = &f.store;
    let mut con = f.direct();
    con.set::<_, _, ()>(f.redis_key("string"), "not a hash")
        .unwrap();
    s.set(SetRequest::new("ok", "v")).await.unwrap();
    let err = s.get("string").await.unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Backend {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
    let err = s.set(SetRequest::new("string", "v")).await.unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Backend {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
    // The transaction stops at the foreign key before writing anything.
    let err = s
        .multi(vec![tx_set("ok", "changed"), tx_set("string", "v")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Backend {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.get("ok").await.unwrap().unwrap().value.as_ref(), b"v");
    // Bulk calls fail that key only.
    let got = s.bulk_get(&["ok".to_string(), "string".to_string()]).await;
    assert!(got[0].as_ref().unwrap().is_some());
    assert!(got[1].is_err());
    // Listings see only items.
    let page = s.keys("%", Page::default()).await.unwrap();
    assert_eq!(page.keys, vec!["ok".to_string()]);
    // A clobbered version counter stops a transaction before it writes anything.
    con.set::<_, _, ()>(s.key_prefix(), "not a number").unwrap();
    let err = s
        .multi(vec![tx_delete("ok"), tx_set("fresh", "v")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Backend {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(s.get("ok").await.unwrap().is_some());
    assert!(s.get("fresh").await.unwrap().is_none());
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let Some(f) = fixture("noscript").await else {
        return;
    };
    let s = &f.store;
    let mut con = f.direct();
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut con).unwrap();
    let e = s.set(SetRequest::new("k", "v")).await.unwrap();
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut con).unwrap();
    let results = s
        .set_many(vec![
            SetRequest::new("k", "v2").with_etag(&e),
            SetRequest::new("j", "w"),
        ])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut con).unwrap();
    let got = s.bulk_get(&["k".to_string(), "j".to_string()]).await;
    assert_eq!(
        got[0].as_ref().unwrap().as_ref().unwrap().value.as_ref(),
        b"v2"
    );
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut con).unwrap();
    s.multi(vec![tx_delete("j")]).await.unwrap();
    assert_eq!(s.get("j").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let err = RedisStore::connect(
        &format!("redis://127.0.0.1:{port}"),
        RedisOptions {
            connect_timeout: Duration::from_millis(500),
            reconnect_attempts: 0,
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let err = RedisStore::connect("not a url", RedisOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidRequest(_)), "{err:?}");
}
