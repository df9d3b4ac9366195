//! The PostgreSQL backend against a real server.
//!
//! Needs `SLUICE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); every test
//! prints why it is skipped when it is unset. Each test works in its own table
//! (`sluice_state_test_<random>`), dropped at the end even when the test fails.

#![cfg(feature = "postgres")]

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use sluice_state::postgres::MAX_TABLE_NAME_LEN;
use sluice_state::{
    conformance, query, Concurrency, DeleteRequest, Filter, Page, PostgresOptions, PostgresStore,
    Query, SetRequest, Sort, StateError, Store, TxOperation,
};

/// The server's URL, or `None` (with the reason printed) when the tests should be skipped.
fn url(test: &str) -> Option<String> {
    match std::env::var("SLUICE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipping {test}: SLUICE_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A table name no other run uses.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let random = RandomState::new().hash_one((std::process::id(), n, nanos));
    let name = format!("{prefix}_{random:016x}");
    assert!(name.len() <= MAX_TABLE_NAME_LEN);
    name
}

/// A table (and optionally a schema) of one test, dropped with everything the store created
/// for it when the guard goes, also when the test panics.
struct Fixture {
    url: String,
    options: PostgresOptions,
}

impl Fixture {
    fn new(url: String) -> Self {
        let options = PostgresOptions {
            table: unique_name("sluice_state_test"),
            pool_size: 8,
            ..PostgresOptions::default()
        };
        Fixture { url, options }
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url, self.options.clone())
            .await
            .expect("connect")
    }

    fn qualified(&self, name: &str) -> String {
        match &self.options.schema {
            Some(schema) => format!("\"{schema}\".\"{name}\""),
            None => format!("\"{name}\""),
        }
    }

    /// The items table, quoted.
    fn table(&self) -> String {
        self.qualified(&self.options.table)
    }

    /// A plain connection for checks behind the store's back.
    async fn direct(&self) -> tokio_postgres::Client {
        direct(&self.url).await
    }
}

async fn direct(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("direct connect");
    tokio::spawn(connection);
    client
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let url = self.url.clone();
        let table = &self.options.table;
        let sql = match &self.options.schema {
            Some(schema) => format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
            None => format!(
                "DROP TABLE IF EXISTS {t}; DROP TABLE IF EXISTS {m}; DROP SEQUENCE IF EXISTS {s}; \
                 DROP TABLE IF EXISTS {c}, {w}; DROP SEQUENCE IF EXISTS {rs}, {cs}; \
                 DROP FUNCTION IF EXISTS {f}();",
                t = self.qualified(table),
                m = self.qualified(&format!("{table}_migrations")),
                s = self.qualified(&format!("{table}_version_seq")),
                // The change feed's objects (migration 3).
                c = self.qualified(&format!("{table}_changes")),
                w = self.qualified(&format!("{table}_watch")),
                rs = self.qualified(&format!("{table}_revision_seq")),
                cs = self.qualified(&format!("{table}_change_seq")),
                f = self.qualified(&format!("{table}_record")),
            ),
        };
        // A runtime of its own: the test's may be gone or unwinding.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let client = direct(&url).await;
                client.batch_execute(&sql).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test table {table}: {dropped:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let Some(url) = url("passes_the_conformance_suite") else {
        return;
    };
    let fx = Fixture::new(url);
    let store: Arc<dyn Store> = Arc::new(fx.store().await);
    // The full lost-update figures run in their own test below.
    let options = conformance::Options {
        lost_update_tasks: 4,
        lost_update_increments: 25,
    };
    conformance::run_all_with_options(store, options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_suites_share_one_table_concurrently() {
    let Some(url) = url("two_suites_share_one_table_concurrently") else {
        return;
    };
    let fx = Fixture::new(url);
    let store: Arc<dyn Store> = Arc::new(fx.store().await);
    let options = conformance::Options {
        lost_update_tasks: 2,
        lost_update_increments: 10,
    };
    tokio::join!(
        conformance::run_all_with_options(Arc::clone(&store), options),
        conformance::run_all_with_options(Arc::clone(&store), options),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_updates_16_tasks_times_500_increments_make_8000() {
    let Some(url) = url("no_lost_updates_16_tasks_times_500_increments_make_8000") else {
        return;
    };
    let mut fx = Fixture::new(url);
    fx.options.pool_size = 16;
    let store: Arc<dyn Store> = Arc::new(fx.store().await);
    assert_eq!(
        conformance::LOST_UPDATE_TASKS * conformance::LOST_UPDATE_INCREMENTS,
        8_000
    );
    conformance::lost_update(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_is_idempotent_and_concurrent_connects_to_a_fresh_table_succeed() {
    let Some(url) = url("migration_is_idempotent_and_concurrent_connects_to_a_fresh_table_succeed")
    else {
        return;
    };
    let fx = Arc::new(Fixture::new(url));
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let fx = Arc::clone(&fx);
        connects.spawn(async move { PostgresStore::connect(&fx.url, fx.options.clone()).await });
    }
    let mut stores = Vec::new();
    while let Some(joined) = connects.join_next().await {
        stores.push(joined.expect("task").expect("a concurrent connect failed"));
    }
    let etag = stores[0].set(SetRequest::new("k", "v")).await.expect("set");
    // Every store sees the one table.
    for store in &stores {
        let item = store.get("k").await.expect("get").expect("present");
        assert_eq!(item.etag, etag);
    }
    drop(stores);

    // Connecting again migrates nothing and keeps the data.
    let again = fx.store().await;
    assert_eq!(again.get("k").await.expect("get").expect("kept").value, "v");
    let client = fx.direct().await;
    let migrations = fx.qualified(&format!("{}_migrations", fx.options.table));
    let rows = client
        .query(
            &format!("SELECT version FROM {migrations} ORDER BY version"),
            &[],
        )
        .await
        .expect("read migrations");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let want: Vec<i32> = (1..=versions.len() as i32).collect();
    assert!(!versions.is_empty());
    assert_eq!(versions, want, "each migration recorded exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_migrated_by_a_newer_version_is_refused() {
    let Some(url) = url("a_table_migrated_by_a_newer_version_is_refused") else {
        return;
    };
    let fx = Fixture::new(url);
    drop(fx.store().await);
    let migrations = fx.qualified(&format!("{}_migrations", fx.options.table));
    fx.direct()
        .await
        .execute(
            &format!("INSERT INTO {migrations} (version, description) VALUES (9999, 'future')"),
            &[],
        )
        .await
        .expect("insert a future migration");
    let err = PostgresStore::connect(&fx.url, fx.options.clone())
        .await
        .expect_err("a newer schema must be refused");
    let text = err.to_string();
    assert!(text.contains("9999") && text.contains("newer"), "{text}");
    assert!(!err.is_transient(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_schema_is_created_and_used() {
    let Some(url) = url("a_configured_schema_is_created_and_used") else {
        return;
    };
    let mut fx = Fixture::new(url);
    fx.options.schema = Some(unique_name("sluice_test_schema"));
    let store = fx.store().await;
    store.set(SetRequest::new("k", "v")).await.expect("set");
    assert_eq!(
        store.table_name(),
        format!(
            "{}.{}",
            fx.options.schema.as_deref().unwrap_or_default(),
            fx.options.table
        )
    );
    let n: i64 = fx
        .direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {}", fx.table()), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn bad_table_names_are_refused_before_connecting() {
    // No server needed: the name is checked first.
    for bad in [
        "",
        "1abc",
        "a;b",
        "a\"b",
        "tab le",
        &"x".repeat(MAX_TABLE_NAME_LEN + 1),
    ] {
        let options = PostgresOptions {
            table: bad.to_string(),
            ..PostgresOptions::default()
        };
        let err = PostgresStore::connect("postgres://nobody@127.0.0.1:1/none", options)
            .await
            .expect_err(bad);
        assert!(
            matches!(err, StateError::InvalidRequest(_)),
            "{bad:?}: {err}"
        );
    }
    let options = PostgresOptions {
        schema: Some("bad schema".into()),
        ..PostgresOptions::default()
    };
    let err = PostgresStore::connect("postgres://nobody@127.0.0.1:1/none", options)
        .await
        .expect_err("bad schema");
    assert!(matches!(err, StateError::InvalidRequest(_)), "{err}");
}

#[tokio::test]
async fn connection_errors_name_the_server_but_not_the_password() {
    // Port 1 on the loopback interface: nothing listens there, the connect is refused.
    let options = PostgresOptions {
        connect_timeout: Duration::from_secs(2),
        acquire_timeout: Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    let err = PostgresStore::connect("postgres://alice:s3cret-pw@127.0.0.1:1/appdb", options)
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(
        err.is_transient(),
        "a refused connection is transient: {text}"
    );
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(text.contains("appdb"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    let err = PostgresStore::connect(
        "postgres://alice:s3cret-pw@127.0.0.1:nan/db",
        PostgresOptions::default(),
    )
    .await
    .expect_err("bad port");
    assert!(matches!(err, StateError::InvalidRequest(_)), "{err}");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_are_versions_that_never_repeat_across_deletes_and_reconnects() {
    let Some(url) = url("etags_are_versions_that_never_repeat_across_deletes_and_reconnects")
    else {
        return;
    };
    let fx = Fixture::new(url);
    let mut seen = HashSet::new();
    let mut last = 0u64;
    for round in 0..3 {
        let store = fx.store().await;
        for i in 0..20u8 {
            let etag = store.set(SetRequest::new("k", vec![i])).await.expect("set");
            let v: u64 = etag.parse().expect("numeric ETag");
            assert!(v > last, "round {round}: ETag {v} after {last}");
            last = v;
            assert!(seen.insert(etag), "an ETag repeated");
            if i % 5 == 4 {
                store.delete(DeleteRequest::new("k")).await.expect("delete");
            }
        }
        // Other keys draw from the same sequence.
        let other = store
            .set(SetRequest::new(format!("other{round}"), "x"))
            .await
            .expect("set");
        assert!(seen.insert(other));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_round_trip_and_only_json_objects_are_queryable() {
    let Some(url) = url("raw_bytes_round_trip_and_only_json_objects_are_queryable") else {
        return;
    };
    let fx = Fixture::new(url);
    let store = fx.store().await;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("nul", vec![0, 0, 0], false),
        (
            "invalid-utf8",
            vec![0xC3, 0x28, 0xFF, 0xFE, 0x00, b'a'],
            false,
        ),
        ("all", (0..=255u8).collect(), false),
        (
            "object",
            br#"{"a": 1, "b": {"c": [1, "x"]}}"#.to_vec(),
            true,
        ),
        (
            "object-with-nul-escape",
            br#"{"a": "x\u0000y"}"#.to_vec(),
            false,
        ),
        ("array", b"[1, 2]".to_vec(), false),
        ("string", b"\"just a string\"".to_vec(), false),
        ("empty", Vec::new(), false),
    ];
    for (key, value, _) in &cases {
        let etag = store
            .set(SetRequest::new(*key, value.clone()))
            .await
            .expect("set");
        let item = store.get(key).await.expect("get").expect("present");
        assert_eq!(item.value.as_ref(), value.as_slice(), "{key}");
        assert_eq!(item.etag, etag);
    }
    let client = fx.direct().await;
    for (key, value, queryable) in &cases {
        let row = client
            .query_one(
                &format!(
                    "SELECT value, value_json IS NOT NULL FROM {} WHERE key = $1",
                    fx.table()
                ),
                &[key],
            )
            .await
            .expect("select");
        let stored: Vec<u8> = row.get(0);
        assert_eq!(&stored, value, "{key}: bytea holds the exact bytes");
        let has_json: bool = row.get(1);
        assert_eq!(has_json, *queryable, "{key}: value_json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_nul_or_too_long_for_the_index_are_an_invalid_request() {
    let Some(url) = url("keys_with_nul_or_too_long_for_the_index_are_an_invalid_request") else {
        return;
    };
    let fx = Fixture::new(url);
    let store = fx.store().await;
    let bad = "a\0b";
    assert!(matches!(
        store.get(bad).await,
        Err(StateError::InvalidRequest(_))
    ));
    assert!(matches!(
        store.set(SetRequest::new(bad, "v")).await,
        Err(StateError::InvalidRequest(_))
    ));
    let results = store
        .set_many(vec![
            SetRequest::new(bad, "v"),
            SetRequest::new("good", "v"),
        ])
        .await;
    assert!(matches!(results[0], Err(StateError::InvalidRequest(_))));
    assert!(results[1].is_ok());
    let err = store
        .multi(vec![
            TxOperation::Upsert(SetRequest::new("t1", "v")),
            TxOperation::Delete(DeleteRequest::new(bad)),
        ])
        .await
        .expect_err("a NUL key aborts the transaction");
    assert!(
        matches!(err, StateError::TransactionAborted { index: 1, .. }),
        "{err}"
    );
    assert!(store.get("t1").await.expect("get").is_none());
    // A key too long for the primary-key index is bad input too, not a server failure.
    // (Incompressible: the index compresses entries.)
    let state = RandomState::new();
    let long: String = (0..700u64)
        .map(|i| format!("{:016x}", state.hash_one(i)))
        .collect();
    let err = store
        .set(SetRequest::new(&long, "v"))
        .await
        .expect_err("an 11,200-byte key");
    assert!(matches!(err, StateError::InvalidRequest(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_items_vanish_at_once_and_are_swept() {
    let Some(url) = url("expired_items_vanish_at_once_and_are_swept") else {
        return;
    };
    let mut fx = Fixture::new(url);
    // The test sweeps itself, to see the row before and after.
    fx.options.sweep_interval = None;
    let store = fx.store().await;
    let before = SystemTime::now();
    store
        .set(SetRequest::new("short", r#"{"k": "short"}"#).with_ttl(Duration::from_secs(1)))
        .await
        .expect("set short");
    store
        .set(SetRequest::new("long", r#"{"k": "long"}"#).with_ttl(Duration::from_secs(3600)))
        .await
        .expect("set long");
    let item = store
        .get("short")
        .await
        .expect("get")
        .expect("not expired yet");
    let at = item.expires_at.expect("an expiry time");
    assert!(
        at >= before + Duration::from_millis(500)
            && at <= SystemTime::now() + Duration::from_secs(5)
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    while store.get("short").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "a 1 s TTL item still visible after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Invisible to every read, though its row is still there.
    let got = store
        .bulk_get(&["short".to_string(), "long".to_string()])
        .await;
    assert!(got[0].as_ref().expect("bulk get").is_none());
    assert!(got[1].as_ref().expect("bulk get").is_some());
    let page = store.keys("%", Page::default()).await.expect("keys");
    assert_eq!(page.keys, vec!["long".to_string()]);
    let found = store.query(&Query::default()).await.expect("query");
    let keys: Vec<&str> = found.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, vec!["long"]);
    let client = fx.direct().await;
    let rows = |client: tokio_postgres::Client| {
        let sql = format!("SELECT count(*) FROM {}", fx.table());
        async move {
            client
                .query_one(&sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(rows(client).await, 2, "the expired row awaits the sweep");
    // It counts as absent for conditions, and is replaced by a first-write.
    assert!(matches!(
        store
            .delete(DeleteRequest::new("short").with_etag(item.etag.clone()))
            .await,
        Err(StateError::EtagMismatch { .. })
    ));
    assert_eq!(store.delete_with_prefix("sh").await.expect("prefix"), 0);

    store
        .set(SetRequest::new("gone", "x").with_ttl(Duration::from_millis(1)))
        .await
        .expect("set");
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.get("gone").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "a 1 ms TTL item still visible after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let swept = store.sweep_expired().await.expect("sweep");
    assert_eq!(
        swept, 1,
        "the expired `gone` row (`short` went with delete_with_prefix)"
    );
    assert_eq!(rows(fx.direct().await).await, 1);
    assert_eq!(store.sweep_expired().await.expect("sweep again"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sweeper_deletes_expired_rows() {
    let Some(url) = url("the_background_sweeper_deletes_expired_rows") else {
        return;
    };
    let mut fx = Fixture::new(url);
    fx.options.sweep_interval = Some(Duration::from_millis(200));
    let store = fx.store().await;
    for i in 0..5 {
        store
            .set(SetRequest::new(format!("k{i}"), "v").with_ttl(Duration::from_millis(10)))
            .await
            .expect("set");
    }
    store.set(SetRequest::new("stays", "v")).await.expect("set");
    let client = fx.direct().await;
    let sql = format!("SELECT count(*) FROM {}", fx.table());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = client.query_one(&sql, &[]).await.expect("count").get(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} rows left 20 s after they expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.get("stays").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_operations_report_per_key_and_apply_the_rest() {
    let Some(url) = url("bulk_operations_report_per_key_and_apply_the_rest") else {
        return;
    };
    let fx = Fixture::new(url);
    let store = fx.store().await;
    // A large batch: one transaction, pipelined.
    let reqs: Vec<SetRequest> = (0..500)
        .map(|i| SetRequest::new(format!("k{i:03}"), format!("v{i}")))
        .collect();
    let etags: Vec<String> = store
        .set_many(reqs)
        .await
        .into_iter()
        .map(|r| r.expect("set_many"))
        .collect();
    assert_eq!(etags.iter().collect::<HashSet<_>>().len(), 500);

    let keys: Vec<String> = (0..502).map(|i| format!("k{i:03}")).collect();
    let got = store.bulk_get(&keys).await;
    assert_eq!(got.len(), 502);
    for (i, r) in got.iter().enumerate() {
        let item = r.as_ref().expect("bulk get");
        if i < 500 {
            let item = item.as_ref().expect("present");
            assert_eq!(item.value, format!("v{i}"));
            assert_eq!(item.etag, etags[i]);
        } else {
            assert!(item.is_none(), "missing keys are None");
        }
    }

    let results = store
        .set_many(vec![
            SetRequest::new("k000", "new").with_etag(&etags[0]),
            SetRequest::new("k001", "new").with_etag("12345678901"),
            SetRequest::new("k002", "new").with_etag("not-an-etag"),
            SetRequest::new("k003", "new").with_concurrency(Concurrency::FirstWrite),
            SetRequest::new("", "new"),
            SetRequest::new("fresh", "new").with_concurrency(Concurrency::FirstWrite),
            SetRequest::new("k004", "new").with_etag(u64::MAX.to_string()),
        ])
        .await;
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(StateError::EtagMismatch { key }) if key == "k001"));
    assert!(matches!(&results[2], Err(StateError::EtagInvalid { key, .. }) if key == "k002"));
    assert!(matches!(&results[3], Err(StateError::EtagMismatch { key }) if key == "k003"));
    assert!(matches!(&results[4], Err(StateError::EmptyKey)));
    assert!(results[5].is_ok());
    assert!(matches!(&results[6], Err(StateError::EtagMismatch { key }) if key == "k004"));
    for (key, want) in [
        ("k000", "new"),
        ("k001", "v1"),
        ("k002", "v2"),
        ("k003", "v3"),
        ("fresh", "new"),
        ("k004", "v4"),
    ] {
        let item = store.get(key).await.expect("get").expect("present");
        assert_eq!(item.value, want, "{key}");
    }

    let results = store
        .delete_many(vec![
            DeleteRequest::new("k010").with_etag(&etags[10]),
            DeleteRequest::new("k011").with_etag(&etags[0]),
            DeleteRequest::new("k012"),
            DeleteRequest::new("never-was"),
            DeleteRequest::new("never-was-either").with_etag("7"),
        ])
        .await;
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(StateError::EtagMismatch { key }) if key == "k011"));
    assert!(results[2].is_ok());
    assert!(results[3].is_ok());
    assert!(matches!(&results[4], Err(StateError::EtagMismatch { .. })));
    assert!(store.get("k010").await.expect("get").is_none());
    assert!(store.get("k011").await.expect("get").is_some());
    assert!(store.get("k012").await.expect("get").is_none());
    assert!(store.set_many(Vec::new()).await.is_empty());
    assert!(store.delete_many(Vec::new()).await.is_empty());
    assert!(store.bulk_get(&[]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_write_transactions_on_a_new_key_let_exactly_one_win() {
    let Some(url) = url("concurrent_first_write_transactions_on_a_new_key_let_exactly_one_win")
    else {
        return;
    };
    let fx = Fixture::new(url);
    let store = Arc::new(fx.store().await);
    for round in 0..20 {
        let key = format!("contested-{round}");
        let mut tasks = tokio::task::JoinSet::new();
        for contender in 0..4 {
            let store = Arc::clone(&store);
            let key = key.clone();
            tasks.spawn(async move {
                let side = format!("side-{contender}-{key}");
                let mut ops = vec![TxOperation::Upsert(SetRequest::new(&side, "x"))];
                // Half delete the key first: that must not clear the way past a concurrent
                // first writer.
                if contender % 2 == 1 {
                    ops.push(TxOperation::Delete(DeleteRequest::new(&key)));
                }
                ops.push(TxOperation::Upsert(
                    SetRequest::new(&key, format!("{contender}"))
                        .with_concurrency(Concurrency::FirstWrite),
                ));
                let first_write = ops.len() - 1;
                let result = store.multi(ops).await;
                (contender, side, first_write, result)
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (contender, side, first_write, result) = joined.expect("task");
            match result {
                Ok(()) => {
                    winners.push(contender);
                    assert!(store.get(&side).await.expect("get").is_some());
                }
                Err(StateError::TransactionAborted { index, source, .. })
                    if matches!(*source, StateError::EtagMismatch { .. })
                        && (index == first_write || index == first_write - 1) =>
                {
                    assert!(
                        store.get(&side).await.expect("get").is_none(),
                        "a losing transaction applied its first operation"
                    );
                }
                Err(e) if e.is_transient() => {
                    // A deadlock between contenders is a transient failure; nothing applied.
                    assert!(store.get(&side).await.expect("get").is_none());
                }
                Err(e) => panic!("round {round}: unexpected {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let item = store.get(&key).await.expect("get").expect("written");
        assert_eq!(item.value, winners[0].to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_checks_etags_against_the_state_before_it() {
    let Some(url) = url("a_transaction_checks_etags_against_the_state_before_it") else {
        return;
    };
    let fx = Fixture::new(url);
    let store = fx.store().await;
    let e1 = store.set(SetRequest::new("a", "1")).await.expect("set");
    // The second operation's ETag is that of the state before the transaction.
    store
        .multi(vec![
            TxOperation::Upsert(SetRequest::new("a", "2")),
            TxOperation::Upsert(SetRequest::new("a", "3").with_etag(&e1)),
            TxOperation::Upsert(
                SetRequest::new("b", "b").with_concurrency(Concurrency::FirstWrite),
            ),
            TxOperation::Delete(DeleteRequest::new("b")),
            TxOperation::Upsert(SetRequest::new("b", "b2").with_ttl(Duration::from_secs(60))),
        ])
        .await
        .expect("multi");
    assert_eq!(store.get("a").await.expect("get").expect("a").value, "3");
    let b = store.get("b").await.expect("get").expect("b");
    assert_eq!(b.value, "b2");
    assert!(b.expires_at.is_some());
    let err = store
        .multi(vec![
            TxOperation::Delete(DeleteRequest::new("a")),
            TxOperation::Upsert(SetRequest::new("a", "x").with_etag(u64::MAX.to_string())),
        ])
        .await
        .expect_err("an ETag no item can have");
    assert!(
        matches!(err, StateError::TransactionAborted { index: 1, .. }),
        "{err}"
    );
    assert_eq!(store.get("a").await.expect("get").expect("a").value, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_prefix_and_keys_treat_wildcards_in_keys_literally() {
    let Some(url) = url("delete_with_prefix_and_keys_treat_wildcards_in_keys_literally") else {
        return;
    };
    let fx = Fixture::new(url);
    let store = fx.store().await;
    for key in [
        "a%_\\||k1",
        "a%_\\||k2",
        "a%_\\||sub||k3",
        "aXY\\||k4",
        "a%_\\",
        "ü||k",
        "ü||x||k",
    ] {
        store.set(SetRequest::new(key, "v")).await.expect("set");
    }
    assert_eq!(
        store.delete_with_prefix("a%_\\||").await.expect("prefix"),
        2
    );
    let all = store.keys("%", Page::default()).await.expect("keys");
    assert_eq!(
        all.keys,
        vec!["a%_\\", "a%_\\||sub||k3", "aXY\\||k4", "ü||k", "ü||x||k"]
    );
    // A lone trailing backslash stands for itself.
    let page = store
        .keys("a\\%\\_\\", Page::default())
        .await
        .expect("keys");
    assert_eq!(page.keys, vec!["a%_\\"]);
    let page = store
        .keys("a__\\\\||%", Page::default())
        .await
        .expect("keys");
    assert_eq!(page.keys, vec!["a%_\\||sub||k3", "aXY\\||k4"]);
    // `_` is one character, not one byte.
    let page = store.keys("_||%", Page::default()).await.expect("keys");
    assert_eq!(page.keys, vec!["ü||k", "ü||x||k"]);
    assert_eq!(store.delete_with_prefix("ü||").await.expect("prefix"), 1);
    assert!(matches!(
        store.delete_with_prefix("").await,
        Err(StateError::InvalidRequest(_))
    ));
    // Keys are listed in byte order, page by page, the token being the last key.
    let mut listed = Vec::new();
    let mut page = Page {
        limit: Some(2),
        token: None,
    };
    loop {
        let got = store.keys("%", page.clone()).await.expect("keys");
        assert!(got.keys.len() <= 2);
        listed.extend(got.keys);
        match got.next {
            Some(next) => page.token = Some(next),
            None => break,
        }
    }
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert_eq!(listed.len(), 4);
}

/// Values for the query comparison: every kind at every path the filters use.
fn query_values() -> Vec<(String, Vec<u8>)> {
    let kinds = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-1.5),
        json!(2),
        json!(2.0),
        json!(10),
        json!(u64::MAX),
        json!("10"),
        json!("9"),
        json!("a"),
        json!("B"),
        json!("é"),
        json!(""),
        json!([1, 2]),
        json!([1, "x"]),
        // jsonb orders arrays and objects by size first, Sluice element by element: these
        // sort differently unless the store sorts them in Sluice.
        json!([5]),
        json!({"x": 1}),
        json!({"a": 1, "b": 2}),
        json!({"z": 0}),
    ];
    let mut out = Vec::new();
    for (i, v) in kinds.iter().enumerate() {
        let w = &kinds[(i * 7 + 3) % kinds.len()];
        out.push((format!("q{i:02}a"), json!({ "v": v, "o": { "w": w } })));
        out.push((format!("q{i:02}b"), json!({ "v": w, "n": i })));
        out.push((format!("q{i:02}c"), json!({ "o": v })));
    }
    let mut raw: Vec<(String, Vec<u8>)> = out
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_vec(&v).expect("json")))
        .collect();
    raw.push(("r-array".into(), b"[{\"v\": 1}]".to_vec()));
    raw.push(("r-bytes".into(), vec![0xFF, 0x00, b'{']));
    raw.push(("r-number".into(), b"10".to_vec()));
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_in_sql_agree_with_the_in_process_evaluation() {
    let Some(url) = url("queries_in_sql_agree_with_the_in_process_evaluation") else {
        return;
    };
    let fx = Fixture::new(url);
    let store = fx.store().await;
    let values = query_values();
    for r in store
        .set_many(
            values
                .iter()
                .map(|(k, v)| SetRequest::new(k, v.clone()))
                .collect(),
        )
        .await
    {
        r.expect("seed");
    }
    let keys: Vec<String> = values.iter().map(|(k, _)| k.clone()).collect();
    let items: Vec<(String, sluice_state::Item)> = store
        .bulk_get(&keys)
        .await
        .into_iter()
        .zip(&keys)
        .map(|(r, k)| (k.clone(), r.expect("get").expect("present")))
        .collect();

    let probes = [
        json!(null),
        json!(true),
        json!(2),
        json!(2.0),
        json!(10),
        json!("10"),
        json!("a"),
        json!("é"),
        json!([1, 2]),
        json!([1.0, 2]),
        json!({"x": 1.0}),
    ];
    let mut filters: Vec<Filter> = Vec::new();
    for path in ["v", "o.w", "o", "n", "missing", "v.x"] {
        for p in &probes {
            filters.push(Filter::Eq(path.into(), p.clone()));
            filters.push(Filter::Neq(path.into(), p.clone()));
            filters.push(Filter::Gt(path.into(), p.clone()));
            filters.push(Filter::Gte(path.into(), p.clone()));
            filters.push(Filter::Lt(path.into(), p.clone()));
            filters.push(Filter::Lte(path.into(), p.clone()));
        }
        filters.push(Filter::In(path.into(), probes.to_vec()));
        filters.push(Filter::In(path.into(), vec![]));
    }
    filters.push(Filter::And(vec![]));
    filters.push(Filter::Or(vec![]));
    filters.push(Filter::Or(vec![
        Filter::And(vec![
            Filter::Gte("v".into(), json!(0)),
            Filter::Lt("n".into(), json!(30)),
        ]),
        Filter::Eq("o.w".into(), json!("a")),
    ]));
    let sorts: Vec<Vec<Sort>> = vec![
        vec![],
        vec![Sort {
            key: "n".into(),
            descending: false,
        }],
        vec![Sort {
            key: "v".into(),
            descending: true,
        }],
        vec![
            Sort {
                key: "o.w".into(),
                descending: false,
            },
            Sort {
                key: "n".into(),
                descending: true,
            },
        ],
        // Arrays and objects: sorted in Sluice.
        vec![Sort {
            key: "o".into(),
            descending: false,
        }],
    ];
    let mut compared = 0;
    for filter in filters.iter().map(|f| Some(f.clone())).chain([None]) {
        for sort in &sorts {
            for limit in [None, Some(7)] {
                let mut q = Query {
                    filter: filter.clone(),
                    sort: sort.clone(),
                    page: Page { limit, token: None },
                };
                loop {
                    let got = store.query(&q).await.expect("query");
                    let want = query::run(items.clone().into_iter(), &q).expect("run");
                    let got_keys: Vec<&str> = got.results.iter().map(|r| r.key.as_str()).collect();
                    let want_keys: Vec<&str> =
                        want.results.iter().map(|r| r.key.as_str()).collect();
                    assert_eq!(got_keys, want_keys, "query {q:?}");
                    assert_eq!(got.token, want.token, "token of {q:?}");
                    assert_eq!(got.results, want.results);
                    compared += 1;
                    match got.token {
                        Some(t) => q.page.token = Some(t),
                        None => break,
                    }
                }
            }
        }
    }
    println!("{compared} query pages agree");
    let bad = Query {
        page: Page {
            limit: None,
            token: Some("nope".into()),
        },
        ..Default::default()
    };
    assert!(matches!(
        store.query(&bad).await,
        Err(StateError::InvalidRequest(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_reconnects_after_its_connections_are_killed() {
    let Some(url) = url("the_pool_reconnects_after_its_connections_are_killed") else {
        return;
    };
    let mut fx = Fixture::new(url);
    let app = unique_name("sluice_test_app");
    fx.options.application_name = app.clone();
    fx.options.pool_size = 4;
    let store = Arc::new(fx.store().await);
    // Open several pooled connections.
    let mut warm = tokio::task::JoinSet::new();
    for i in 0..4 {
        let store = Arc::clone(&store);
        warm.spawn(async move { store.set(SetRequest::new(format!("w{i}"), "v")).await });
    }
    while let Some(j) = warm.join_next().await {
        j.expect("task").expect("warm-up set");
    }
    // What a server restart does to them: terminate every backend of this store.
    let client = fx.direct().await;
    let killed: Vec<bool> = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("terminate")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!killed.is_empty(), "no connection of the store found");

    // Every operation either succeeds or fails transiently, and the store recovers.
    let mut transient = 0;
    let mut ok = 0;
    for i in 0..20 {
        match store.set(SetRequest::new(format!("after{i}"), "v")).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(
                    e.is_transient(),
                    "a failure after the restart is not transient: {e}"
                );
                transient += 1;
            }
        }
    }
    println!(
        "after killing {} connections: {transient} transient failures, {ok} successes",
        killed.len()
    );
    assert!(ok > 0);
    assert!(
        transient <= killed.len(),
        "at most one failure per killed connection ({transient} failures, {} killed)",
        killed.len()
    );
    assert_eq!(
        store.get("w0").await.expect("get").expect("kept").value,
        "v"
    );
    assert!(store.get("after19").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_consistency_hints_read_what_was_written() {
    let Some(url) = url("both_consistency_hints_read_what_was_written") else {
        return;
    };
    let fx = Fixture::new(url);
    let store = fx.store().await;
    for consistency in [
        sluice_state::Consistency::Eventual,
        sluice_state::Consistency::Strong,
    ] {
        let mut req = SetRequest::new("k", format!("{consistency:?}"));
        req.consistency = consistency;
        let etag = store.set(req).await.expect("set");
        let item = store.get("k").await.expect("get").expect("present");
        assert_eq!(item.etag, etag);
        assert_eq!(item.value, format!("{consistency:?}"));
    }
    let names: BTreeMap<&str, bool> = store
        .features()
        .names()
        .into_iter()
        .map(|n| (n, true))
        .collect();
    for want in [
        "ETAG",
        "TRANSACTIONAL",
        "TTL",
        "QUERY_API",
        "DELETE_WITH_PREFIX",
        "KEYS_LIKE",
    ] {
        assert!(names.contains_key(want), "{want} not advertised");
    }
}
