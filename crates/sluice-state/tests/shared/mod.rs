//! Checks of the in-process backends (memory and redb) beyond the conformance suite: the
//! details of their TTL handling, transactions, prefix deletes, key paging and queries. Each
//! check takes a fresh, empty store.

#![allow(dead_code)]

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use sluice_state::{
    Concurrency, DeleteRequest, Filter, Page, Query, SetRequest, Sort, StateError, Store,
    TxOperation,
};

/// How long a short-TTL item may stay visible before a check fails (generous: machines stall).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `key` until it is gone; panics after [`DEADLINE`].
pub async fn wait_gone(store: &dyn Store, key: &str) {
    let started = Instant::now();
    while store.get(key).await.expect("get").is_some() {
        assert!(
            started.elapsed() < DEADLINE,
            "{key} still visible after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn upsert(key: &str, value: &str) -> TxOperation {
    TxOperation::Upsert(SetRequest::new(key, value.to_string()))
}

fn delete(key: &str) -> TxOperation {
    TxOperation::Delete(DeleteRequest::new(key))
}

async fn value(store: &dyn Store, key: &str) -> Option<String> {
    store
        .get(key)
        .await
        .expect("get")
        .map(|i| String::from_utf8(i.value.to_vec()).expect("utf-8 value"))
}

/// Every optional feature is advertised.
pub fn advertises_every_feature(store: &dyn Store) {
    let f = store.features();
    assert!(f.etag && f.transactional && f.ttl && f.query && f.delete_with_prefix && f.keys_like);
    assert_eq!(
        f.names(),
        [
            "ETAG",
            "TRANSACTIONAL",
            "TTL",
            "QUERY_API",
            "DELETE_WITH_PREFIX",
            "KEYS_LIKE"
        ]
    );
}

/// An item with a short TTL is visible right after the write, with its deadline, and then
/// vanishes from get, bulk get, key listing and queries; one without a TTL stays.
pub async fn ttl_items_vanish_everywhere(store: &dyn Store) {
    let doc = json!({"kind": "ttl"}).to_string();
    let before = SystemTime::now();
    store
        .set(SetRequest::new("t||short", doc.clone()).with_ttl(Duration::from_secs(1)))
        .await
        .expect("set short");
    store
        .set(SetRequest::new("t||keep", doc.clone()))
        .await
        .expect("set keep");
    let item = store.get("t||short").await.expect("get").expect("visible");
    let at = item.expires_at.expect("a deadline");
    assert!(
        at >= before + Duration::from_secs(1) && at <= SystemTime::now() + Duration::from_secs(2),
        "deadline {at:?} is not about write time + 1 s"
    );
    assert_eq!(
        store
            .get("t||keep")
            .await
            .expect("get")
            .expect("keep")
            .expires_at,
        None
    );

    wait_gone(store, "t||short").await;
    let got = store
        .bulk_get(&["t||short".to_string(), "t||keep".to_string()])
        .await;
    assert!(matches!(got[0], Ok(None)), "{got:?}");
    assert!(matches!(got[1], Ok(Some(_))), "{got:?}");
    let page = store.keys("t||%", Page::default()).await.expect("keys");
    assert_eq!(page.keys, ["t||keep"]);
    let q = Query {
        filter: Some(Filter::Eq("kind".into(), json!("ttl"))),
        ..Default::default()
    };
    let found = store.query(&q).await.expect("query");
    let keys: Vec<&str> = found.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["t||keep"]);
    // Expired counts as missing: deleting it with any ETag is a mismatch; without one, fine.
    let err = store
        .delete(DeleteRequest::new("t||short").with_etag(item.etag.clone()))
        .await;
    assert!(
        matches!(err, Err(StateError::EtagMismatch { .. })),
        "{err:?}"
    );
    store
        .delete(DeleteRequest::new("t||short"))
        .await
        .expect("delete expired");
}

/// A write without a TTL clears one, a write with a new TTL replaces it, and a transaction or
/// bulk write sets it like a single write does.
pub async fn ttl_is_per_write(store: &dyn Store) {
    let hour = Duration::from_secs(3600);
    store
        .set(SetRequest::new("k", "1").with_ttl(hour))
        .await
        .expect("set");
    let first = store.get("k").await.expect("get").expect("k").expires_at;
    store
        .set(SetRequest::new("k", "2").with_ttl(hour * 2))
        .await
        .expect("set");
    let second = store.get("k").await.expect("get").expect("k").expires_at;
    assert!(second > first, "{second:?} should be later than {first:?}");
    store.set(SetRequest::new("k", "3")).await.expect("set");
    assert_eq!(
        store.get("k").await.expect("get").expect("k").expires_at,
        None
    );

    let results = store
        .set_many(vec![
            SetRequest::new("b1", "v").with_ttl(hour),
            SetRequest::new("b2", "v"),
        ])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    store
        .multi(vec![
            TxOperation::Upsert(SetRequest::new("m1", "v").with_ttl(hour)),
            upsert("m2", "v"),
        ])
        .await
        .expect("multi");
    for (key, has_ttl) in [("b1", true), ("b2", false), ("m1", true), ("m2", false)] {
        let item = store.get(key).await.expect("get").expect("exists");
        assert_eq!(item.expires_at.is_some(), has_ttl, "{key}");
    }
}

/// First-write and ETags treat an expired item as missing; re-creating it starts afresh.
pub async fn expired_items_count_as_missing_for_writes(store: &dyn Store) {
    let old = store
        .set(SetRequest::new("fw", "old").with_ttl(Duration::from_secs(1)))
        .await
        .expect("set");
    let err = store
        .set(SetRequest::new("fw", "x").with_concurrency(Concurrency::FirstWrite))
        .await;
    assert!(
        matches!(err, Err(StateError::EtagMismatch { .. })),
        "{err:?}"
    );
    wait_gone(store, "fw").await;
    let err = store
        .set(SetRequest::new("fw", "x").with_etag(old.clone()))
        .await;
    assert!(
        matches!(err, Err(StateError::EtagMismatch { .. })),
        "{err:?}"
    );
    let new = store
        .set(SetRequest::new("fw", "new").with_concurrency(Concurrency::FirstWrite))
        .await
        .expect("first-write of an expired key");
    assert_ne!(new, old);
    let item = store.get("fw").await.expect("get").expect("fw");
    assert_eq!((item.value.as_ref(), item.expires_at), (&b"new"[..], None));
}

/// The spec's example: with key1 present, [delete key1, upsert key2, delete key2, upsert
/// key3=v3] leaves only key3=v3.
pub async fn multi_spec_example(store: &dyn Store) {
    store.set(SetRequest::new("key1", "v1")).await.expect("set");
    store
        .multi(vec![
            delete("key1"),
            upsert("key2", "v2"),
            delete("key2"),
            upsert("key3", "v3"),
        ])
        .await
        .expect("multi");
    assert_eq!(value(store, "key1").await, None);
    assert_eq!(value(store, "key2").await, None);
    assert_eq!(value(store, "key3").await.as_deref(), Some("v3"));
}

/// A transaction whose last check fails applies nothing: values, ETags and TTLs stay, and no
/// key it would have created appears.
pub async fn multi_failure_applies_nothing(store: &dyn Store) {
    let hour = Duration::from_secs(3600);
    let ea = store
        .set(SetRequest::new("a", "a1").with_ttl(hour))
        .await
        .expect("set a");
    let eb = store.set(SetRequest::new("b", "b1")).await.expect("set b");
    let before_a = store.get("a").await.expect("get").expect("a");
    let ops = vec![
        TxOperation::Upsert(SetRequest::new("a", "a2").with_etag(ea.clone())),
        delete("b"),
        TxOperation::Upsert(SetRequest::new("c", "c").with_ttl(hour)),
        upsert("d", "d"),
        TxOperation::Delete(DeleteRequest::new("b").with_etag("999999999")),
    ];
    match store.multi(ops).await {
        Err(StateError::TransactionAborted { index, key, source }) => {
            assert_eq!((index, key.as_str()), (4, "b"));
            assert!(
                matches!(*source, StateError::EtagMismatch { .. }),
                "{source:?}"
            );
        }
        other => panic!("want an aborted transaction, got {other:?}"),
    }
    assert_eq!(store.get("a").await.expect("get"), Some(before_a));
    let b = store.get("b").await.expect("get").expect("b");
    assert_eq!(
        (b.value.as_ref(), b.etag.as_str()),
        (&b"b1"[..], eb.as_str())
    );
    assert_eq!(value(store, "c").await, None);
    assert_eq!(value(store, "d").await, None);
    let page = store.keys("%", Page::default()).await.expect("keys");
    assert_eq!(page.keys, ["a", "b"]);

    // A malformed ETag and an empty key abort it too, naming the operation.
    for (ops, index) in [
        (
            vec![
                upsert("c", "c"),
                TxOperation::Upsert(SetRequest::new("a", "x").with_etag("bad")),
            ],
            1,
        ),
        (vec![upsert("c", "c"), upsert("d", "d"), upsert("", "x")], 2),
    ] {
        match store.multi(ops).await {
            Err(StateError::TransactionAborted { index: i, .. }) => assert_eq!(i, index),
            other => panic!("want an aborted transaction, got {other:?}"),
        }
        assert_eq!(value(store, "c").await, None);
    }
}

/// Every check of a transaction sees the state before it (Dapr): an ETag read before stays good
/// after an earlier upsert or delete of the key in the same transaction, and a first-write of a
/// key that existed fails even after an earlier delete of it.
pub async fn multi_checks_against_the_state_before_it(store: &dyn Store) {
    let ea = store.set(SetRequest::new("a", "a1")).await.expect("set");
    store
        .multi(vec![
            upsert("a", "a2"),
            TxOperation::Upsert(SetRequest::new("a", "a3").with_etag(ea.clone())),
            TxOperation::Delete(DeleteRequest::new("a").with_etag(ea.clone())),
            upsert("a", "a4"),
        ])
        .await
        .expect("every ETag matches the state before the transaction");
    let a = store.get("a").await.expect("get").expect("a");
    assert_eq!(a.value.as_ref(), b"a4");
    let err = store
        .multi(vec![
            delete("a"),
            TxOperation::Upsert(
                SetRequest::new("a", "again").with_concurrency(Concurrency::FirstWrite),
            ),
        ])
        .await;
    assert!(
        matches!(err, Err(StateError::TransactionAborted { index: 1, .. })),
        "{err:?}"
    );
    assert_eq!(store.get("a").await.expect("get"), Some(a));
    // Versions stay unique within a transaction that writes a key twice.
    store
        .multi(vec![upsert("x", "1"), upsert("y", "1"), upsert("x", "2")])
        .await
        .expect("multi");
    let (x, y) = (
        store.get("x").await.expect("get").expect("x"),
        store.get("y").await.expect("get").expect("y"),
    );
    assert_ne!(x.etag, y.etag);
    assert_eq!(x.value.as_ref(), b"2");
}

/// Delete-with-prefix follows Dapr's rule, counts only live items, and refuses an empty prefix.
pub async fn delete_with_prefix_rule(store: &dyn Store) {
    for key in [
        "app||k1",
        "app||k2",
        "app||sub||k3",
        "apple||k4",
        "app|",
        "app||x|y",
    ] {
        store.set(SetRequest::new(key, "v")).await.expect("seed");
    }
    store
        .set(SetRequest::new("app||gone", "v").with_ttl(Duration::from_secs(1)))
        .await
        .expect("seed");
    wait_gone(store, "app||gone").await;
    assert_eq!(store.delete_with_prefix("app||").await.expect("delete"), 3);
    let left = store.keys("%", Page::default()).await.expect("keys").keys;
    // Ascending byte order: 'l' sorts before '|'.
    assert_eq!(left, ["apple||k4", "app|", "app||sub||k3"]);
    assert_eq!(store.delete_with_prefix("app||").await.expect("again"), 0);
    assert_eq!(
        store
            .delete_with_prefix("app||sub||")
            .await
            .expect("nested"),
        1
    );
    assert!(matches!(
        store.delete_with_prefix("").await,
        Err(StateError::InvalidRequest(_))
    ));
    assert_eq!(
        store.keys("%", Page::default()).await.expect("keys").keys,
        ["apple||k4", "app|"]
    );
}

/// Key listing pages: every page at most the limit, ascending, the token continues after the
/// last key even when keys come and go between pages; the default page is 100 keys.
pub async fn keys_paging(store: &dyn Store) {
    let keys: Vec<String> = (0..250).map(|i| format!("p||{i:03}")).collect();
    let results = store
        .set_many(keys.iter().map(|k| SetRequest::new(k, "v")).collect())
        .await;
    assert!(results.iter().all(Result::is_ok));
    store
        .set(SetRequest::new("q||000", "v"))
        .await
        .expect("set");
    store
        .set(SetRequest::new("o||999", "v"))
        .await
        .expect("set");

    let first = store.keys("p||%", Page::default()).await.expect("keys");
    assert_eq!(first.keys, keys[..100].to_vec());
    assert_eq!(first.next.as_deref(), Some("p||099"));

    // Page by 40 while deleting a key already listed and adding one ahead.
    let mut listed = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = store
            .keys(
                "p||%",
                Page {
                    limit: Some(40),
                    token: token.clone(),
                },
            )
            .await
            .expect("keys");
        assert!(page.keys.len() <= 40);
        listed.extend(page.keys);
        pages += 1;
        if pages == 2 {
            store
                .delete(DeleteRequest::new("p||000"))
                .await
                .expect("delete");
            store
                .set(SetRequest::new("p||300", "v"))
                .await
                .expect("set");
        }
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let mut want = keys.clone();
    want.push("p||300".into());
    assert_eq!(listed, want);
    assert_eq!(pages, 7);

    // Patterns narrow the listing; a token before the pattern's prefix starts at the prefix.
    let page = store
        .keys(
            "p||1_0",
            Page {
                limit: Some(3),
                token: Some("a".into()),
            },
        )
        .await
        .expect("keys");
    assert_eq!(page.keys, ["p||100", "p||110", "p||120"]);
    assert_eq!(page.next.as_deref(), Some("p||120"));
    let page = store
        .keys(
            "%||_99",
            Page {
                limit: Some(10),
                token: None,
            },
        )
        .await
        .expect("keys");
    assert_eq!(page.keys, ["o||999", "p||099", "p||199"]);
    let page = store
        .keys(
            "p||1_0",
            Page {
                limit: Some(100),
                token: Some("p||190".into()),
            },
        )
        .await
        .expect("keys");
    assert!(page.keys.is_empty() && page.next.is_none());
    let page = store.keys("q||000", Page::default()).await.expect("keys");
    assert_eq!(page.keys, ["q||000"]);
}

/// Queries: filters on nested paths, sorts with ties by key, pages with tokens; values that are
/// not JSON objects are skipped; a bad token is an invalid request.
pub async fn query_filter_sort_page(store: &dyn Store) {
    let people = [
        (
            "u1",
            json!({"name": "ann", "org": {"team": "a"}, "age": 40}),
        ),
        (
            "u2",
            json!({"name": "bob", "org": {"team": "b"}, "age": 25}),
        ),
        (
            "u3",
            json!({"name": "cid", "org": {"team": "a"}, "age": 31.5}),
        ),
        (
            "u4",
            json!({"name": "dee", "org": {"team": "c"}, "age": 25}),
        ),
        ("u5", json!({"name": "eve", "org": {"team": "a"}})),
    ];
    for (key, doc) in &people {
        store
            .set(SetRequest::new(*key, doc.to_string()))
            .await
            .expect("seed");
    }
    for (key, raw) in [("x1", &b"[1,2]"[..]), ("x2", b"\"a\""), ("x3", b"\xff\xfe")] {
        store
            .set(SetRequest::new(key, raw.to_vec()))
            .await
            .expect("seed");
    }
    let q = Query::from_json(&json!({
        "filter": {"OR": [{"EQ": {"org.team": "a"}}, {"LT": {"age": 30}}]},
        "sort": [{"key": "age", "order": "DESC"}],
        "page": {"limit": 2}
    }))
    .expect("query");
    let mut got = Vec::new();
    let mut q = q;
    loop {
        let page = store.query(&q).await.expect("query");
        assert!(page.results.len() <= 2);
        for r in &page.results {
            let stored = store.get(&r.key).await.expect("get").expect("stored");
            assert_eq!(r.item, stored, "a result carries the stored item");
        }
        got.extend(page.results.into_iter().map(|r| r.key));
        match page.token {
            Some(t) => q.page.token = Some(t),
            None => break,
        }
    }
    // Descending by age: eve has none (first), then 40, 31.5, and the two 25s by key.
    assert_eq!(got, ["u5", "u1", "u3", "u2", "u4"]);

    let all = store.query(&Query::default()).await.expect("query all");
    let keys: Vec<&str> = all.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        ["u1", "u2", "u3", "u4", "u5"],
        "only JSON objects, by key"
    );

    let q = Query {
        filter: Some(Filter::Gte("age".into(), json!(31.5))),
        sort: vec![Sort {
            key: "name".into(),
            descending: false,
        }],
        ..Default::default()
    };
    let found = store.query(&q).await.expect("query");
    let keys: Vec<&str> = found.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["u1", "u3"]);

    let bad = Query {
        page: Page {
            limit: None,
            token: Some("not-a-token".into()),
        },
        ..Default::default()
    };
    assert!(matches!(
        store.query(&bad).await,
        Err(StateError::InvalidRequest(_))
    ));
}

/// Bulk calls report per key: an empty key fails only itself, a bad ETag only its own delete.
pub async fn bulk_calls_report_per_key(store: &dyn Store) {
    let e1 = store.set(SetRequest::new("b1", "1")).await.expect("set");
    store.set(SetRequest::new("b2", "2")).await.expect("set");
    let got = store
        .bulk_get(&["b1".into(), "".into(), "missing".into(), "b2".into()])
        .await;
    assert_eq!(got.len(), 4);
    assert!(matches!(&got[0], Ok(Some(i)) if i.etag == e1), "{got:?}");
    assert!(matches!(got[1], Err(StateError::EmptyKey)), "{got:?}");
    assert!(matches!(got[2], Ok(None)), "{got:?}");
    assert!(
        matches!(&got[3], Ok(Some(i)) if i.value.as_ref() == b"2"),
        "{got:?}"
    );

    let results = store
        .delete_many(vec![
            DeleteRequest::new("b1").with_etag("123456789"),
            DeleteRequest::new("b2"),
            DeleteRequest::new("missing"),
            DeleteRequest::new(""),
        ])
        .await;
    assert!(
        matches!(results[0], Err(StateError::EtagMismatch { .. })),
        "{results:?}"
    );
    assert!(results[1].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[3], Err(StateError::EmptyKey)),
        "{results:?}"
    );
    assert_eq!(value(store, "b1").await.as_deref(), Some("1"));
    assert_eq!(value(store, "b2").await, None);

    let results = store
        .set_many(vec![
            SetRequest::new("s", "1"),
            SetRequest::new("", "x"),
            SetRequest::new("s", "2").with_concurrency(Concurrency::FirstWrite),
            SetRequest::new("s", "3"),
        ])
        .await;
    assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(StateError::EmptyKey)),
        "{results:?}"
    );
    assert!(
        matches!(results[2], Err(StateError::EtagMismatch { .. })),
        "{results:?}"
    );
    assert_eq!(value(store, "s").await.as_deref(), Some("3"));
}
