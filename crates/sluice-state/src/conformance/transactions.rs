//! `multi` transactions: all ETags checked first, then every operation in order, all or nothing.

use super::scenario::{bad_etag, Scenario, MALFORMED_ETAG};
use crate::error::StateError;
use crate::store::{Concurrency, DeleteRequest, SetRequest, Store, TxOperation};

/// True if the store advertises transactions; otherwise announces the skip and checks that
/// `multi` answers `Unsupported` without applying anything.
async fn transactional(s: &Scenario, store: &dyn Store) -> bool {
    if store.features().transactional {
        return true;
    }
    s.skip("the backend does not advertise TRANSACTIONAL");
    let key = s.key("unsupported");
    s.unsupported(
        "multi",
        store
            .multi(vec![TxOperation::Upsert(SetRequest::new(&key, "v"))])
            .await,
    );
    s.none(
        "an unsupported multi applied nothing",
        store.get(&key).await,
    );
    false
}

/// A transaction that must abort: what it shows, the failing operation's index, the operations,
/// and a test of the cause.
type FailingCase<'a> = (&'a str, usize, Vec<TxOperation>, fn(&StateError) -> bool);

fn upsert(key: &str, value: impl Into<bytes::Bytes>) -> TxOperation {
    TxOperation::Upsert(SetRequest::new(key, value))
}

fn delete(key: &str) -> TxOperation {
    TxOperation::Delete(DeleteRequest::new(key))
}

/// Transactions in groups: each group upserts its own keys and deletes the previous group's
/// (the later groups with the ETags read back), so after each only the current group is there.
pub async fn transaction_groups(store: &dyn Store) {
    let s = Scenario::new("transaction_groups", store);
    if !transactional(&s, store).await {
        return;
    }
    const GROUPS: usize = 4;
    const PER_GROUP: usize = 3;
    let key = |g: usize, i: usize| s.key(&format!("g{g}-k{i}"));
    let value = |g: usize, i: usize| format!("g{g}-v{i}");
    for g in 0..GROUPS {
        let mut ops = Vec::new();
        for i in 0..PER_GROUP {
            ops.push(upsert(&key(g, i), value(g, i)));
        }
        if g > 0 {
            for i in 0..PER_GROUP {
                let prev = key(g - 1, i);
                let mut del = DeleteRequest::new(&prev);
                if g % 2 == 0 {
                    let item = s.some("read the previous group", store.get(&prev).await);
                    del = del.with_etag(item.etag);
                }
                ops.push(TxOperation::Delete(del));
            }
        }
        s.ok(&format!("multi of group {g}"), store.multi(ops).await);
        for i in 0..PER_GROUP {
            s.value(
                &format!("group {g}, key {i}"),
                store.get(&key(g, i)).await,
                value(g, i).as_bytes(),
            );
            if g > 0 {
                s.none(
                    &format!("group {}, key {i}, deleted by group {g}", g - 1),
                    store.get(&key(g - 1, i)).await,
                );
            }
        }
    }
    s.ok("an empty multi", store.multi(Vec::new()).await);
}

/// Operations apply in list order: with key1 present, [delete key1, upsert key2, delete key2,
/// upsert key3=v3] leaves only key3=v3.
pub async fn transaction_order(store: &dyn Store) {
    let s = Scenario::new("transaction_order", store);
    if !transactional(&s, store).await {
        return;
    }
    let (k1, k2, k3) = (s.key("key1"), s.key("key2"), s.key("key3"));
    s.ok("pre-state", store.set(SetRequest::new(&k1, "v1")).await);
    s.ok(
        "multi",
        store
            .multi(vec![
                delete(&k1),
                upsert(&k2, "v2"),
                delete(&k2),
                upsert(&k3, "v3"),
            ])
            .await,
    );
    s.none("key1", store.get(&k1).await);
    s.none("key2", store.get(&k2).await);
    s.value("key3", store.get(&k3).await, b"v3");

    let k4 = s.key("key4");
    s.ok(
        "multi writing one key twice",
        store
            .multi(vec![upsert(&k4, "first"), upsert(&k4, "second")])
            .await,
    );
    s.value("the later write wins", store.get(&k4).await, b"second");
}

/// A transaction whose ETag or first-write check fails anywhere applies nothing and names the
/// failing operation; one whose checks all pass applies everything and hands out new ETags.
pub async fn transaction_all_or_nothing(store: &dyn Store) {
    let s = Scenario::new("transaction_all_or_nothing", store);
    if !transactional(&s, store).await {
        return;
    }
    let (a, b, c, d) = (s.key("a"), s.key("b"), s.key("c"), s.key("d"));
    let ea = s.ok("seed a", store.set(SetRequest::new(&a, "a1")).await);
    let eb = s.ok("seed b", store.set(SetRequest::new(&b, "b1")).await);

    let failing: Vec<FailingCase> = vec![
        (
            "a bad ETag on a delete",
            2,
            vec![
                TxOperation::Upsert(SetRequest::new(&a, "a2").with_etag(&ea)),
                upsert(&c, "c"),
                TxOperation::Delete(DeleteRequest::new(&b).with_etag(bad_etag(&eb))),
                upsert(&d, "d"),
            ],
            |e| matches!(e, StateError::EtagMismatch { .. }),
        ),
        (
            "a bad ETag on the last upsert",
            3,
            vec![
                delete(&a),
                upsert(&c, "c"),
                upsert(&d, "d"),
                TxOperation::Upsert(SetRequest::new(&b, "b2").with_etag(bad_etag(&eb))),
            ],
            |e| matches!(e, StateError::EtagMismatch { .. }),
        ),
        (
            "a malformed ETag",
            1,
            vec![
                upsert(&c, "c"),
                TxOperation::Upsert(SetRequest::new(&a, "a2").with_etag(MALFORMED_ETAG)),
                delete(&b),
            ],
            |e| matches!(e, StateError::EtagInvalid { .. }),
        ),
        (
            "a first-write of an existing key",
            2,
            vec![
                delete(&b),
                upsert(&c, "c"),
                TxOperation::Upsert(
                    SetRequest::new(&a, "a2").with_concurrency(Concurrency::FirstWrite),
                ),
            ],
            |e| matches!(e, StateError::EtagMismatch { .. }),
        ),
        (
            "an ETag on a missing key",
            0,
            vec![
                TxOperation::Upsert(SetRequest::new(&d, "d").with_etag(&ea)),
                delete(&a),
            ],
            |e| matches!(e, StateError::EtagMismatch { .. }),
        ),
    ];
    for (what, index, ops, is_cause) in failing {
        let failing_key = ops
            .get(index)
            .map(|op| op.key().to_string())
            .unwrap_or_else(|| s.fail("the test names an operation it does not have"));
        let cause = s.aborted(
            &format!("multi with {what}"),
            index,
            &failing_key,
            store.multi(ops).await,
        );
        s.check(
            is_cause(&cause),
            &format!("multi with {what}: wrong cause {cause:?}"),
        );
        let item = s.value(
            &format!("a after multi with {what}"),
            store.get(&a).await,
            b"a1",
        );
        s.eq("ETag of a", &item.etag, &ea);
        let item = s.value(
            &format!("b after multi with {what}"),
            store.get(&b).await,
            b"b1",
        );
        s.eq("ETag of b", &item.etag, &eb);
        s.none(&format!("c after multi with {what}"), store.get(&c).await);
        s.none(&format!("d after multi with {what}"), store.get(&d).await);
    }

    s.ok(
        "multi whose checks all pass",
        store
            .multi(vec![
                TxOperation::Upsert(SetRequest::new(&a, "a2").with_etag(&ea)),
                TxOperation::Delete(DeleteRequest::new(&b).with_etag(&eb)),
                TxOperation::Upsert(
                    SetRequest::new(&c, "c").with_concurrency(Concurrency::FirstWrite),
                ),
                TxOperation::Upsert(SetRequest::new(&d, "d").with_etag("")),
            ])
            .await,
    );
    let item = s.value("a after the good multi", store.get(&a).await, b"a2");
    s.check(
        item.etag != ea && !item.etag.is_empty(),
        "a transaction's write did not change the ETag",
    );
    s.none("b after the good multi", store.get(&b).await);
    s.value("c after the good multi", store.get(&c).await, b"c");
    s.value("d after the good multi", store.get(&d).await, b"d");
    let err = store.set(SetRequest::new(&a, "a3").with_etag(&ea)).await;
    s.mismatch("the ETag replaced by a transaction is stale", &a, err);
}

/// Every check of a transaction is made against the state before it, as the contract's wording
/// says ("checks every ETag first; only if all pass, applies..."), not against the state its
/// earlier operations leave: an ETag read before the transaction stays good for a later operation
/// on a key the transaction already wrote or deleted, and a first-write of a key that existed
/// before the transaction fails even after the transaction deleted it.
pub async fn transaction_checks_before_applying(store: &dyn Store) {
    let s = Scenario::new("transaction_checks_before_applying", store);
    if !transactional(&s, store).await {
        return;
    }
    let (a, b, c) = (s.key("a"), s.key("b"), s.key("c"));
    let ea = s.ok("seed a", store.set(SetRequest::new(&a, "a1")).await);
    let eb = s.ok("seed b", store.set(SetRequest::new(&b, "b1")).await);
    s.ok("seed c", store.set(SetRequest::new(&c, "c1")).await);
    s.ok(
        "multi: upsert a, then upsert a with the ETag read before",
        store
            .multi(vec![
                upsert(&a, "a2"),
                TxOperation::Upsert(SetRequest::new(&a, "a3").with_etag(&ea)),
            ])
            .await,
    );
    s.value("a", store.get(&a).await, b"a3");
    s.ok(
        "multi: delete b, then upsert b with the ETag read before",
        store
            .multi(vec![
                delete(&b),
                TxOperation::Upsert(SetRequest::new(&b, "b2").with_etag(&eb)),
            ])
            .await,
    );
    s.value("b", store.get(&b).await, b"b2");
    let cause = s.aborted(
        "multi: delete c, then first-write c",
        1,
        &c,
        store
            .multi(vec![
                delete(&c),
                TxOperation::Upsert(
                    SetRequest::new(&c, "c2").with_concurrency(Concurrency::FirstWrite),
                ),
            ])
            .await,
    );
    s.mismatch("cause", &c, Err::<(), _>(cause));
    s.value("c, after the aborted multi", store.get(&c).await, b"c1");
}
