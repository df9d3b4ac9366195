//! Optimistic concurrency on single keys: ETags on set and delete, first-write.

use std::collections::HashSet;

use super::scenario::{bad_etag, Scenario, MALFORMED_ETAG};
use crate::store::{Concurrency, DeleteRequest, SetRequest, Store};

/// ETag checks on set: a read returns a non-empty ETag; bad → mismatch, malformed → invalid (both
/// leave the item unchanged); good → a new, different ETag; an empty ETag counts as none.
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
        .set(SetRequest::new(&key, "v-bad").with_etag(MALFORMED_ETAG))
        .await;
    s.invalid("set with a malformed ETag", &key, err);
    let item = s.value("after rejected sets", store.get(&key).await, b"v1");
    s.eq("ETag after rejected sets", &item.etag, &first);

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
    let item = s.value("after good set", store.get(&key).await, b"v2");
    s.eq("ETag read after good set", &item.etag, &second);
    let err = store
        .set(SetRequest::new(&key, "v3").with_etag(&first))
        .await;
    s.mismatch("set with the now-stale ETag", &key, err);
    let missing = s.key("missing");
    let err = store
        .set(SetRequest::new(&missing, "v").with_etag(&first))
        .await;
    s.mismatch("set of a missing key with an ETag", &missing, err);
    s.none("missing key stays missing", store.get(&missing).await);
    let third = s.ok(
        "set with an empty ETag (counts as none)",
        store.set(SetRequest::new(&key, "v4").with_etag("")).await,
    );
    s.check(third != second, "a last-write set did not change the ETag");
    s.value("after last-write set", store.get(&key).await, b"v4");
}

/// ETag checks on delete: bad → mismatch (key kept), malformed → invalid, good → deleted; an ETag
/// on a missing key is a mismatch.
pub async fn etag_on_delete(store: &dyn Store) {
    let s = Scenario::new("etag_on_delete", store);
    let key = s.key("k");
    let etag = s.ok("set", store.set(SetRequest::new(&key, "v")).await);
    let err = store
        .delete(DeleteRequest::new(&key).with_etag(bad_etag(&etag)))
        .await;
    s.mismatch("delete with a bad ETag", &key, err);
    let err = store
        .delete(DeleteRequest::new(&key).with_etag(MALFORMED_ETAG))
        .await;
    s.invalid("delete with a malformed ETag", &key, err);
    let item = s.value("after rejected deletes", store.get(&key).await, b"v");
    s.eq("ETag after rejected deletes", &item.etag, &etag);
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

/// First-write concurrency with no ETag, an empty ETag and an ETag.
pub async fn first_write(store: &dyn Store) {
    let s = Scenario::new("first_write", store);
    let fw = |key: &str, value: &'static str| {
        SetRequest::new(key, value).with_concurrency(Concurrency::FirstWrite)
    };

    let key = s.key("no-etag");
    let etag = s.ok("first write, no ETag", store.set(fw(&key, "first")).await);
    let err = store.set(fw(&key, "second")).await;
    s.mismatch("second first-write, no ETag", &key, err);
    let item = s.value("after second first-write", store.get(&key).await, b"first");
    s.eq("ETag after a rejected first-write", &item.etag, &etag);

    let empty = s.key("empty-etag");
    s.ok(
        "first write, empty ETag",
        store.set(fw(&empty, "first").with_etag("")).await,
    );
    let err = store.set(fw(&empty, "second").with_etag("")).await;
    s.mismatch("second first-write, empty ETag", &empty, err);
    s.value(
        "after second first-write (empty ETag)",
        store.get(&empty).await,
        b"first",
    );

    let next = s.ok(
        "first-write with the good ETag",
        store.set(fw(&key, "third").with_etag(&etag)).await,
    );
    s.check(next != etag, "a first-write with an ETag kept the ETag");
    let err = store.set(fw(&key, "fourth").with_etag(&etag)).await;
    s.mismatch("first-write with the stale ETag", &key, err);
    let err = store
        .set(fw(&key, "fourth").with_etag(MALFORMED_ETAG))
        .await;
    s.invalid("first-write with a malformed ETag", &key, err);
    s.value("after good first-write", store.get(&key).await, b"third");

    let missing = s.key("missing-with-etag");
    let err = store.set(fw(&missing, "x").with_etag(&etag)).await;
    s.mismatch("first-write of a missing key with an ETag", &missing, err);
    s.none("missing key stays missing", store.get(&missing).await);

    s.ok("delete", store.delete(DeleteRequest::new(&key)).await);
    s.ok(
        "first-write after a delete",
        store.set(fw(&key, "reborn")).await,
    );
    s.value(
        "after first-write of a deleted key",
        store.get(&key).await,
        b"reborn",
    );
}
