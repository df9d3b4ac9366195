//! Time to live: expiry, the reported expiry time, and writes that clear a TTL.

use std::time::{Duration, Instant, SystemTime};

use super::scenario::Scenario;
use crate::store::{Concurrency, Item, SetRequest, Store, TxOperation};

/// How long an item written with a one-second TTL may stay visible before the scenario fails
/// (generous: the contract says "at once", but machines stall).
pub const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);
/// How far a reported expiry time may be from the write time plus the TTL (backends may keep
/// whole seconds).
const EXPIRY_SLACK: Duration = Duration::from_secs(2);
/// The TTL of items that must not expire during a run.
const LONG_TTL: Duration = Duration::from_secs(3600);
/// The TTL of items that must expire during a run.
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Pause between reads while waiting for an item to expire.
const POLL: Duration = Duration::from_millis(100);

/// True if the store advertises TTLs; otherwise announces the skip and checks that a write with
/// a TTL answers `Unsupported` without applying anything.
async fn supports_ttl(s: &Scenario, store: &dyn Store) -> bool {
    if store.features().ttl {
        return true;
    }
    s.skip("the backend does not advertise TTL");
    let key = s.key("unsupported");
    s.unsupported(
        "set with a TTL",
        store
            .set(SetRequest::new(&key, "v").with_ttl(SHORT_TTL))
            .await,
    );
    s.none(
        "an unsupported TTL write applied nothing",
        store.get(&key).await,
    );
    false
}

/// Reads `key` until it is gone, failing after [`EXPIRY_DEADLINE`].
async fn wait_until_expired(s: &Scenario, store: &dyn Store, key: &str) {
    let started = Instant::now();
    loop {
        if s.ok("read while waiting for expiry", store.get(key).await)
            .is_none()
        {
            return;
        }
        if started.elapsed() > EXPIRY_DEADLINE {
            s.fail(&format!(
                "{key:?}, written with a TTL of {SHORT_TTL:?}, is still visible after \
                 {EXPIRY_DEADLINE:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `item` reports an expiry within [`EXPIRY_SLACK`] of (write time + `ttl`).
fn check_expiry(s: &Scenario, what: &str, item: &Item, before: SystemTime, after: SystemTime) {
    let Some(at) = item.expires_at else {
        s.fail(&format!(
            "{what}: written with a TTL, but reads report no expiry time"
        ));
    };
    let earliest = before + LONG_TTL - EXPIRY_SLACK;
    let latest = after + LONG_TTL + EXPIRY_SLACK;
    s.check(
        at >= earliest && at <= latest,
        &format!(
            "{what}: expiry time {at:?} is outside [{earliest:?}, {latest:?}] (write time + \
             {LONG_TTL:?} ± {EXPIRY_SLACK:?})"
        ),
    );
}

/// An item written with a TTL is invisible once it expires (to get, bulk get, key listing and
/// queries); an expired key counts as missing for ETag and first-write checks.
pub async fn ttl_expiry(store: &dyn Store) {
    let s = Scenario::new("ttl_expiry", store);
    if !supports_ttl(&s, store).await {
        return;
    }
    let value = |name: &str| s.json(&serde_json::json!({ "run": s.prefix(), "name": name }));
    let (short, long) = (s.key("short"), s.key("long"));
    let old_etag = s.ok(
        "set with a short TTL",
        store
            .set(SetRequest::new(&short, value("short")).with_ttl(SHORT_TTL))
            .await,
    );
    s.ok(
        "set with a long TTL",
        store
            .set(SetRequest::new(&long, value("long")).with_ttl(LONG_TTL))
            .await,
    );
    wait_until_expired(&s, store, &short).await;

    let got = store.bulk_get(&[short.clone(), long.clone()]).await;
    s.count("bulk_get", &got, 2);
    let mut got = got.into_iter();
    if let Some(r) = got.next() {
        s.none("bulk_get of the expired key", r);
    }
    if let Some(r) = got.next() {
        s.some("bulk_get of the unexpired key", r);
    }
    let features = store.features();
    if features.keys_like {
        let mut pattern = super::listing::like_escape(s.prefix());
        pattern.push('%');
        let page = s.ok(
            "list keys",
            store.keys(&pattern, crate::store::Page::default()).await,
        );
        s.eq("keys listed after expiry", &page.keys, &vec![long.clone()]);
    }
    if features.query {
        let q = crate::query::Query {
            filter: Some(crate::query::Filter::Eq(
                "run".into(),
                serde_json::Value::String(s.prefix().to_string()),
            )),
            ..Default::default()
        };
        let found = s.ok("query", store.query(&q).await);
        let keys: Vec<&str> = found.results.iter().map(|r| r.key.as_str()).collect();
        s.eq(
            "keys a query finds after expiry",
            &keys,
            &vec![long.as_str()],
        );
    }
    let err = store
        .set(SetRequest::new(&short, "again").with_etag(&old_etag))
        .await;
    s.mismatch("set with the ETag of an expired item", &short, err);
    s.ok(
        "first-write of an expired key",
        store
            .set(SetRequest::new(&short, "again").with_concurrency(Concurrency::FirstWrite))
            .await,
    );
    let item = s.value(
        "after re-creating an expired key",
        store.get(&short).await,
        b"again",
    );
    s.eq("expiry of the re-created key", &item.expires_at, &None);
}

/// Reads of an item written with a TTL (by set, bulk set or a transaction) report when it
/// expires: write time + TTL, within a couple of seconds.
pub async fn ttl_expire_time(store: &dyn Store) {
    let s = Scenario::new("ttl_expire_time", store);
    if !supports_ttl(&s, store).await {
        return;
    }
    let (single, bulk, tx) = (s.key("set"), s.key("set_many"), s.key("multi"));
    let before = SystemTime::now();
    s.ok(
        "set with a TTL",
        store
            .set(SetRequest::new(&single, "v").with_ttl(LONG_TTL))
            .await,
    );
    let after = SystemTime::now();
    let item = s.some("get", store.get(&single).await);
    check_expiry(&s, "set", &item, before, after);
    let got = store.bulk_get(std::slice::from_ref(&single)).await;
    for r in got {
        let item = s.some("bulk_get", r);
        check_expiry(&s, "bulk_get", &item, before, after);
    }

    let before = SystemTime::now();
    for r in store
        .set_many(vec![SetRequest::new(&bulk, "v").with_ttl(LONG_TTL)])
        .await
    {
        s.ok("set_many with a TTL", r);
    }
    let after = SystemTime::now();
    let item = s.some("get", store.get(&bulk).await);
    check_expiry(&s, "set_many", &item, before, after);

    if store.features().transactional {
        let before = SystemTime::now();
        s.ok(
            "multi with a TTL",
            store
                .multi(vec![TxOperation::Upsert(
                    SetRequest::new(&tx, "v").with_ttl(LONG_TTL),
                )])
                .await,
        );
        let after = SystemTime::now();
        let item = s.some("get", store.get(&tx).await);
        check_expiry(&s, "multi", &item, before, after);
    }
}

/// A later write without a TTL (`ttlInSeconds: -1` over HTTP) removes the TTL: the item no longer
/// reports an expiry and outlives its first TTL.
pub async fn ttl_cleared_by_write(store: &dyn Store) {
    let s = Scenario::new("ttl_cleared_by_write", store);
    if !supports_ttl(&s, store).await {
        return;
    }
    let (cleared, witness) = (s.key("cleared"), s.key("witness"));
    s.ok(
        "set with a short TTL",
        store
            .set(SetRequest::new(&cleared, "v1").with_ttl(SHORT_TTL))
            .await,
    );
    // Written after `cleared` with the same TTL: once it is gone, `cleared`'s first TTL is over.
    s.ok(
        "set the witness with a short TTL",
        store
            .set(SetRequest::new(&witness, "w").with_ttl(SHORT_TTL))
            .await,
    );
    let etag = s.ok(
        "overwrite without a TTL",
        store.set(SetRequest::new(&cleared, "v2")).await,
    );
    let item = s.value("after the overwrite", store.get(&cleared).await, b"v2");
    s.eq(
        "expiry after a write without a TTL",
        &item.expires_at,
        &None,
    );
    wait_until_expired(&s, store, &witness).await;
    let item = s.value(
        "after the first TTL passed",
        store.get(&cleared).await,
        b"v2",
    );
    s.eq("ETag after the first TTL passed", &item.etag, &etag);
    s.eq("expiry after the first TTL passed", &item.expires_at, &None);

    let with_long = s.ok(
        "set with a long TTL",
        store
            .set(SetRequest::new(&cleared, "v3").with_ttl(LONG_TTL))
            .await,
    );
    let mut clear = SetRequest::new(&cleared, "v4").with_etag(&with_long);
    clear.ttl = None;
    s.ok(
        "conditional overwrite without a TTL",
        store.set(clear).await,
    );
    let item = s.value(
        "after the conditional overwrite",
        store.get(&cleared).await,
        b"v4",
    );
    s.eq(
        "expiry after a conditional write without a TTL",
        &item.expires_at,
        &None,
    );
}
