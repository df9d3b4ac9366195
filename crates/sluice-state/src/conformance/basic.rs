//! Single-key scenarios: value types, missing keys, deletes, empty keys, the consistency hint.

use serde::{Deserialize, Serialize};

use super::scenario::Scenario;
use crate::store::{Consistency, DeleteRequest, SetRequest, Store, TxOperation};

/// A struct values are serialized from, as a user's state would be.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    name: String,
    count: i64,
    ratio: f64,
    tags: Vec<String>,
    nested: Option<Box<Sample>>,
}

/// Every backend advertises ETags: they are part of the base contract, not an option.
pub async fn advertises_etags(store: &dyn Store) {
    let s = Scenario::new("advertises_etags", store);
    let features = store.features();
    s.check(
        features.etag,
        &format!("features() does not advertise ETAG: {features:?}"),
    );
    s.check(
        features.names().contains(&"ETAG"),
        "features().names() does not list ETAG",
    );
}

/// Values of every kind round-trip: raw bytes (NUL, invalid UTF-8) byte-identical, the rest as
/// JSON (int, bool, JSON-looking and plain strings, the empty string, structs).
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
        ("nul-only", vec![0]),
        ("all-bytes", all_bytes),
        (
            "json-looking-string",
            br#"{"a":1,"b":[true,null]}"#.to_vec(),
        ),
        ("json-with-spacing", b" { \"a\" : 1 } ".to_vec()),
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
        s.eq(
            &format!("expiry of {name}, written without a TTL"),
            &item.expires_at,
            &None,
        );
    }
    let item = s.some("get struct", store.get(&s.key("struct")).await);
    let back: Sample = serde_json::from_slice(&item.value)
        .unwrap_or_else(|e| s.fail(&format!("struct does not deserialize: {e}")));
    s.eq("struct round trip", &back, &sample);
    let item = s.some("get int", store.get(&s.key("int")).await);
    let back: i64 = serde_json::from_slice(&item.value)
        .unwrap_or_else(|e| s.fail(&format!("int does not deserialize: {e}")));
    s.eq("int round trip", &back, &42);
    let item = s.some("get bool", store.get(&s.key("bool-false")).await);
    let back: bool = serde_json::from_slice(&item.value)
        .unwrap_or_else(|e| s.fail(&format!("bool does not deserialize: {e}")));
    s.eq("bool round trip", &back, &false);
}

/// A get of a missing key is `None`, not an error.
pub async fn missing_key(store: &dyn Store) {
    let s = Scenario::new("missing_key", store);
    let got = s.ok("get missing", store.get(&s.key("never-written")).await);
    s.check(got.is_none(), &format!("a missing key read as {got:?}"));
}

/// Deletes of existing and missing keys; a delete touches only its key.
pub async fn delete(store: &dyn Store) {
    let s = Scenario::new("delete", store);
    let key = s.key("existing");
    s.ok("set", store.set(SetRequest::new(&key, "v")).await);
    let other = s.key("untouched");
    s.ok(
        "set a neighbour",
        store.set(SetRequest::new(&other, "n")).await,
    );
    s.ok(
        "delete existing",
        store.delete(DeleteRequest::new(&key)).await,
    );
    s.none("get after delete", store.get(&key).await);
    s.value("neighbour survives", store.get(&other).await, b"n");
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
    s.ok(
        "re-create a deleted key",
        store.set(SetRequest::new(&key, "again")).await,
    );
    s.value("after re-create", store.get(&key).await, b"again");
}

/// An empty key is rejected by every operation; in a bulk call only that item fails.
pub async fn empty_key(store: &dyn Store) {
    let s = Scenario::new("empty_key", store);
    s.empty_key("get", store.get("").await);
    s.empty_key("set", store.set(SetRequest::new("", "v")).await);
    s.empty_key("delete", store.delete(DeleteRequest::new("")).await);

    let ok_key = s.key("ok");
    let results = store
        .set_many(vec![
            SetRequest::new("", "v"),
            SetRequest::new(&ok_key, "v"),
        ])
        .await;
    s.count("set_many", &results, 2);
    let mut results = results.into_iter();
    if let Some(r) = results.next() {
        s.empty_key("set_many, empty key", r);
    }
    if let Some(r) = results.next() {
        s.ok("set_many, key beside an empty one", r);
    }
    s.value("set_many neighbour", store.get(&ok_key).await, b"v");

    let results = store.bulk_get(&[String::new(), ok_key.clone()]).await;
    s.count("bulk_get", &results, 2);
    let mut results = results.into_iter();
    if let Some(r) = results.next() {
        s.empty_key("bulk_get, empty key", r);
    }
    if let Some(r) = results.next() {
        s.some("bulk_get, key beside an empty one", r);
    }

    let results = store
        .delete_many(vec![DeleteRequest::new(""), DeleteRequest::new(&ok_key)])
        .await;
    s.count("delete_many", &results, 2);
    let mut results = results.into_iter();
    if let Some(r) = results.next() {
        s.empty_key("delete_many, empty key", r);
    }
    if let Some(r) = results.next() {
        s.ok("delete_many, key beside an empty one", r);
    }
    s.none("delete_many neighbour", store.get(&ok_key).await);

    if store.features().transactional {
        let result = store
            .multi(vec![
                TxOperation::Upsert(SetRequest::new(&ok_key, "v")),
                TxOperation::Upsert(SetRequest::new("", "v")),
            ])
            .await;
        match result {
            Err(crate::StateError::EmptyKey) => {}
            other => {
                let cause = s.aborted("multi with an empty key", 1, "", other);
                s.empty_key("cause of the aborted multi", Err::<(), _>(cause));
            }
        }
        s.none(
            "multi with an empty key applied nothing",
            store.get(&ok_key).await,
        );
    }
}

/// The consistency hint is accepted on every write and changes nothing observable.
pub async fn consistency_hint(store: &dyn Store) {
    let s = Scenario::new("consistency_hint", store);
    for (name, consistency) in [
        ("strong", Consistency::Strong),
        ("eventual", Consistency::Eventual),
    ] {
        let key = s.key(name);
        let mut set = SetRequest::new(&key, name);
        set.consistency = consistency;
        let etag = s.ok(&format!("set, {name}"), store.set(set.clone()).await);
        s.value(
            &format!("get, {name}"),
            store.get(&key).await,
            name.as_bytes(),
        );
        let results = store.set_many(vec![set.clone().with_etag(&etag)]).await;
        s.count("set_many", &results, 1);
        for r in results {
            s.ok(&format!("set_many, {name}"), r);
        }
        let mut del = DeleteRequest::new(&key);
        del.consistency = consistency;
        s.ok(&format!("delete, {name}"), store.delete(del.clone()).await);
        s.none(&format!("after delete, {name}"), store.get(&key).await);
        for r in store.delete_many(vec![del.clone()]).await {
            s.ok(&format!("delete_many of a missing key, {name}"), r);
        }
        if store.features().transactional {
            s.ok(
                &format!("multi, {name}"),
                store
                    .multi(vec![
                        TxOperation::Upsert(set.clone()),
                        TxOperation::Delete(del),
                        TxOperation::Upsert(set),
                    ])
                    .await,
            );
            s.value(
                &format!("after multi, {name}"),
                store.get(&key).await,
                name.as_bytes(),
            );
        }
    }
}
