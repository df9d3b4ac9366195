//! Bulk get / set / delete: per-item results in request order, not atomic.

use std::collections::HashSet;

use super::scenario::{bad_etag, Scenario, MALFORMED_ETAG};
use crate::store::{Concurrency, DeleteRequest, SetRequest, Store};

/// Bulk set, get and delete of several keys; a missing key in a bulk get is a per-item `None`
/// (the call does not fail), and results come in request order, duplicates included.
pub async fn bulk_set_get_delete(store: &dyn Store) {
    let s = Scenario::new("bulk_set_get_delete", store);
    let keys: Vec<String> = (0..5).map(|i| s.key(&format!("k{i}"))).collect();
    let values: Vec<Vec<u8>> = (0..5).map(|i| format!("value-{i}").into_bytes()).collect();
    let reqs = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| SetRequest::new(k, v.clone()))
        .collect();
    let results = store.set_many(reqs).await;
    s.count("set_many", &results, 5);
    let etags: Vec<String> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| s.ok(&format!("set_many request {i}"), r))
        .collect();

    let missing = s.key("missing");
    let mut asked = keys.clone();
    asked.insert(2, missing.clone());
    asked.push(keys[0].clone());
    let got = store.bulk_get(&asked).await;
    s.count("bulk_get with a missing key", &got, asked.len());
    for (i, (key, result)) in asked.iter().zip(got).enumerate() {
        let what = format!("bulk_get item {i} ({key})");
        if *key == missing {
            s.none(&what, result);
            continue;
        }
        let Some(k) = keys.iter().position(|k| k == key) else {
            s.fail(&format!(
                "{what}: the test asked for a key it did not write"
            ));
        };
        let item = s.value(&what, result, &values[k]);
        s.eq(&format!("{what}: ETag"), &item.etag, &etags[k]);
    }
    s.check(
        store.bulk_get(&[]).await.is_empty(),
        "bulk_get of no keys returned results",
    );

    let results = store
        .delete_many(vec![
            DeleteRequest::new(&keys[0]),
            DeleteRequest::new(&missing),
            DeleteRequest::new(&keys[1]),
            DeleteRequest::new(&keys[3]).with_etag(&etags[3]),
        ])
        .await;
    s.count("delete_many", &results, 4);
    for (i, r) in results.into_iter().enumerate() {
        s.ok(&format!("delete_many request {i}"), r);
    }
    let got = store.bulk_get(&keys).await;
    s.count("bulk_get after delete_many", &got, keys.len());
    for (i, result) in got.into_iter().enumerate() {
        let what = format!("after delete_many, key {i}");
        if [0, 1, 3].contains(&i) {
            s.none(&what, result);
        } else {
            s.value(&what, result, &values[i]);
        }
    }
    s.check(
        store.delete_many(Vec::new()).await.is_empty(),
        "delete_many of nothing returned results",
    );
    s.check(
        store.set_many(Vec::new()).await.is_empty(),
        "set_many of nothing returned results",
    );
}

/// A bulk set with one bad ETag fails exactly that key and leaves it unchanged, while the rest
/// (good ETags, empty ETags, first-writes) are applied; requests for one key apply in order.
pub async fn bulk_set_etags(store: &dyn Store) {
    let s = Scenario::new("bulk_set_etags", store);
    let keys: Vec<String> = (0..6).map(|i| s.key(&format!("k{i}"))).collect();
    let mut etags = Vec::new();
    for key in &keys {
        etags.push(s.ok("seed", store.set(SetRequest::new(key, "old")).await));
    }
    let fresh = s.key("fresh");
    let reqs = vec![
        SetRequest::new(&keys[0], "new0"),
        SetRequest::new(&keys[1], "new1").with_etag(&etags[1]),
        SetRequest::new(&keys[2], "new2").with_etag(bad_etag(&etags[2])),
        SetRequest::new(&keys[3], "new3").with_etag(""),
        SetRequest::new(&keys[4], "new4").with_etag(&etags[4]),
        SetRequest::new(&keys[5], "new5").with_etag(MALFORMED_ETAG),
        SetRequest::new(&fresh, "fresh").with_concurrency(Concurrency::FirstWrite),
    ];
    let results = store.set_many(reqs).await;
    s.count("set_many", &results, 7);
    let mut new_etags = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match i {
            2 => s.mismatch("set_many, bad ETag", &keys[2], result),
            5 => s.invalid("set_many, malformed ETag", &keys[5], result),
            _ => new_etags.push(s.ok(&format!("set_many request {i}"), result)),
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let want = if i == 2 || i == 5 {
            "old".to_string()
        } else {
            format!("new{i}")
        };
        let item = s.value(
            &format!("after set_many, key {i}"),
            store.get(key).await,
            want.as_bytes(),
        );
        if i == 2 || i == 5 {
            s.eq(
                &format!("ETag of the failed key {i}"),
                &item.etag,
                &etags[i],
            );
        }
    }
    s.value("after set_many, fresh", store.get(&fresh).await, b"fresh");
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
    s.count("set_many of a duplicate key", &results, 3);
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
}

/// A bulk delete with one bad (and one malformed) ETag fails exactly those keys and leaves them
/// unchanged, while the others are deleted.
pub async fn bulk_delete_etags(store: &dyn Store) {
    let s = Scenario::new("bulk_delete_etags", store);
    let keys: Vec<String> = (0..5).map(|i| s.key(&format!("k{i}"))).collect();
    let mut etags = Vec::new();
    for key in &keys {
        etags.push(s.ok("seed", store.set(SetRequest::new(key, "v")).await));
    }
    let missing = s.key("missing");
    let results = store
        .delete_many(vec![
            DeleteRequest::new(&keys[0]).with_etag(&etags[0]),
            DeleteRequest::new(&keys[1]).with_etag(bad_etag(&etags[1])),
            DeleteRequest::new(&keys[2]),
            DeleteRequest::new(&keys[3]).with_etag(MALFORMED_ETAG),
            DeleteRequest::new(&keys[4]).with_etag(""),
            DeleteRequest::new(&missing).with_etag(&etags[0]),
        ])
        .await;
    s.count("delete_many", &results, 6);
    for (i, result) in results.into_iter().enumerate() {
        match i {
            1 => s.mismatch("delete_many, bad ETag", &keys[1], result),
            3 => s.invalid("delete_many, malformed ETag", &keys[3], result),
            5 => s.mismatch("delete_many, missing key with an ETag", &missing, result),
            _ => s.ok(&format!("delete_many request {i}"), result),
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let what = format!("after delete_many, key {i}");
        if i == 1 || i == 3 {
            let item = s.value(&what, store.get(key).await, b"v");
            s.eq(&format!("{what}: ETag"), &item.etag, &etags[i]);
        } else {
            s.none(&what, store.get(key).await);
        }
    }
}
