//! Behaviour specific to the redb backend: persistence across reopen (TTLs included), the sweep
//! of expired items, clear open errors, and the checks shared with the memory backend.

mod shared;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use sluice_state::{DeleteRequest, Page, RedbStore, SetRequest, StateError, Store, TxOperation};

fn open(path: &Path) -> RedbStore {
    RedbStore::open(path).expect("open redb store")
}

/// The message of a backend error, failing the test on any other outcome.
fn backend_message(result: Result<RedbStore, StateError>) -> String {
    match result {
        Err(StateError::Backend {
            backend, message, ..
        }) => {
            assert_eq!(backend, "redb");
            message
        }
        Err(other) => panic!("want a backend error, got {other:?}"),
        Ok(store) => panic!("want an error, but the store opened: {store:?}"),
    }
}

#[test]
fn redb_store_is_send_and_sync() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<RedbStore>();
    shareable::<std::sync::Arc<dyn Store>>();
}

#[tokio::test]
async fn values_survive_drop_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let raw: Vec<u8> = (0..=255u8).collect();
    let (etag_a, etag_raw) = {
        let store = open(&path);
        let a = store
            .set(SetRequest::new("a", "alpha"))
            .await
            .expect("set a");
        let r = store
            .set(SetRequest::new("raw", raw.clone()))
            .await
            .expect("set raw");
        store
            .set(SetRequest::new("gone", "x"))
            .await
            .expect("set gone");
        store
            .delete(DeleteRequest::new("gone"))
            .await
            .expect("delete gone");
        let results = store
            .set_many(
                (0..100)
                    .map(|i| SetRequest::new(format!("bulk{i}"), vec![i]))
                    .collect(),
            )
            .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        (a, r)
    };
    let store = open(&path);
    let a = store.get("a").await.expect("get a").expect("a exists");
    assert_eq!(
        (a.value.as_ref(), a.etag.as_str()),
        (&b"alpha"[..], etag_a.as_str())
    );
    let r = store
        .get("raw")
        .await
        .expect("get raw")
        .expect("raw exists");
    assert_eq!(
        (r.value.as_ref(), r.etag.as_str()),
        (raw.as_slice(), etag_raw.as_str())
    );
    assert_eq!(store.get("gone").await.expect("get gone"), None);
    for i in 0..100u8 {
        let item = store
            .get(&format!("bulk{i}"))
            .await
            .expect("get")
            .expect("bulk exists");
        assert_eq!(item.value.as_ref(), [i]);
    }
}

#[tokio::test]
async fn etags_keep_changing_and_never_repeat_across_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let mut seen = HashSet::new();
    let mut last = None;
    for round in 0..3 {
        let store = open(&path);
        if let Some(etag) = &last {
            let item = store.get("k").await.expect("get").expect("k exists");
            assert_eq!(
                &item.etag, etag,
                "round {round}: the ETag changed without a write"
            );
            // The ETag read before the reopen is still good for a conditional write.
            let next = store
                .set(SetRequest::new("k", "cond").with_etag(etag))
                .await
                .expect("conditional set after reopen");
            assert!(seen.insert(next), "round {round}: repeated ETag");
        }
        for i in 0..5u8 {
            let etag = store
                .set(SetRequest::new("k", vec![round, i]))
                .await
                .expect("set");
            assert!(seen.insert(etag), "round {round}: repeated ETag");
        }
        // Delete and re-create: the new ETag must still be fresh.
        store.delete(DeleteRequest::new("k")).await.expect("delete");
        let etag = store
            .set(SetRequest::new("k", "again"))
            .await
            .expect("re-create");
        assert!(
            seen.insert(etag.clone()),
            "round {round}: repeated ETag after re-create"
        );
        last = Some(etag);
    }
    assert_eq!(seen.len(), 3 * 6 + 2);
}

#[test]
fn open_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/c/state.redb");
    let store = open(&path);
    assert_eq!(store.path(), path);
    assert!(path.is_file());
}

#[test]
fn opening_a_file_that_is_not_redb_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in [
        ("short.txt", b"not a database\n".to_vec()),
        ("long.bin", b"definitely not redb ".repeat(2048)),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &content).expect("write file");
        let message = backend_message(RedbStore::open(&path));
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a redb database"), "{message}");
        // The file is left as it was.
        assert_eq!(std::fs::read(&path).expect("read file"), content);
    }
}

#[test]
fn opening_under_a_regular_file_names_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file, not a directory").expect("write file");
    let message = backend_message(RedbStore::open(blocker.join("sub/state.redb")));
    assert!(message.contains("cannot create directory"), "{message}");
    assert!(
        message.contains(&blocker.display().to_string()),
        "{message}"
    );
}

#[test]
fn opening_a_directory_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message = backend_message(RedbStore::open(dir.path()));
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn a_second_open_in_the_same_process_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let first = open(&path);
    let message = backend_message(RedbStore::open(&path));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("already open"), "{message}");
    drop(first);
    open(&path);
}

/// Set in the environment of the child process [`a_second_process_is_refused`] starts.
const CHILD_PATH_VAR: &str = "SLUICE_STATE_TEST_SECOND_OPEN_PATH";
/// The child's report of the error it got.
const CHILD_MARKER: &str = "second-open-error: ";

#[test]
fn a_second_process_is_refused() {
    if let Some(path) = std::env::var_os(CHILD_PATH_VAR) {
        // Child: open the file the parent holds and report the error.
        let message = backend_message(RedbStore::open(Path::new(&path)));
        println!("{CHILD_MARKER}{message}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let _held = open(&path);
    let exe = std::env::current_exe().expect("current exe");
    let output = Command::new(exe)
        .args([
            "a_second_process_is_refused",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_PATH_VAR, &path)
        .output()
        .expect("run the child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(CHILD_MARKER).map(|(_, m)| m.to_string()))
        .unwrap_or_else(|| panic!("the child reported no error: {stdout}"));
    assert!(line.contains("already open"), "{line}");
    assert!(line.contains(&path.display().to_string()), "{line}");
}

/// A fresh store in a temporary directory (kept alive by the returned guard).
fn fresh() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("state.redb"));
    (dir, store)
}

#[test]
fn redb_store_advertises_every_feature_and_durability() {
    let (_dir, store) = fresh();
    shared::advertises_every_feature(&store);
    assert!(store.features().durable);
}

#[tokio::test]
async fn ttl_items_vanish_everywhere() {
    let (_dir, store) = fresh();
    shared::ttl_items_vanish_everywhere(&store).await;
}

#[tokio::test]
async fn ttl_is_per_write() {
    let (_dir, store) = fresh();
    shared::ttl_is_per_write(&store).await;
}

#[tokio::test]
async fn expired_items_count_as_missing_for_writes() {
    let (_dir, store) = fresh();
    shared::expired_items_count_as_missing_for_writes(&store).await;
}

#[tokio::test]
async fn multi_spec_example() {
    let (_dir, store) = fresh();
    shared::multi_spec_example(&store).await;
}

#[tokio::test]
async fn multi_failure_applies_nothing() {
    let (_dir, store) = fresh();
    shared::multi_failure_applies_nothing(&store).await;
}

#[tokio::test]
async fn multi_checks_against_the_state_before_it() {
    let (_dir, store) = fresh();
    shared::multi_checks_against_the_state_before_it(&store).await;
}

#[tokio::test]
async fn delete_with_prefix_rule() {
    let (_dir, store) = fresh();
    shared::delete_with_prefix_rule(&store).await;
}

#[tokio::test]
async fn keys_paging() {
    let (_dir, store) = fresh();
    shared::keys_paging(&store).await;
}

#[tokio::test]
async fn query_filter_sort_page() {
    let (_dir, store) = fresh();
    shared::query_filter_sort_page(&store).await;
}

#[tokio::test]
async fn bulk_calls_report_per_key() {
    let (_dir, store) = fresh();
    shared::bulk_calls_report_per_key(&store).await;
}

#[tokio::test]
async fn a_large_bulk_get_reads_every_key() {
    let (_dir, store) = fresh();
    let keys: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
    let results = store
        .set_many(
            keys.iter()
                .step_by(2)
                .map(|k| SetRequest::new(k, k.clone()))
                .collect(),
        )
        .await;
    assert!(results.iter().all(Result::is_ok));
    let got = store.bulk_get(&keys).await;
    assert_eq!(got.len(), keys.len());
    for (i, (key, result)) in keys.iter().zip(got).enumerate() {
        let item = result.expect("read");
        if i % 2 == 0 {
            assert_eq!(item.expect("written").value.as_ref(), key.as_bytes());
        } else {
            assert_eq!(item, None);
        }
    }
}

#[tokio::test]
async fn ttls_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let hour = Duration::from_secs(3600);
    let (long, tx, short_etag) = {
        let store = open(&path);
        store
            .set(SetRequest::new("long", "l").with_ttl(hour))
            .await
            .expect("set");
        store
            .multi(vec![TxOperation::Upsert(
                SetRequest::new("tx", "t").with_ttl(hour * 2),
            )])
            .await
            .expect("multi");
        let short_etag = store
            .set(SetRequest::new("short", "s").with_ttl(Duration::from_secs(1)))
            .await
            .expect("set");
        store.set(SetRequest::new("plain", "p")).await.expect("set");
        let long = store.get("long").await.expect("get").expect("long");
        let tx = store.get("tx").await.expect("get").expect("tx");
        (long, tx, short_etag)
    };
    // Reopened after the short TTL has surely passed (polled, not timed).
    let store = open(&path);
    shared::wait_gone(&store, "short").await;
    drop(store);
    let store = open(&path);
    assert_eq!(store.get("long").await.expect("get"), Some(long.clone()));
    assert_eq!(store.get("tx").await.expect("get"), Some(tx));
    assert!(long.expires_at.expect("deadline") > SystemTime::now() + hour / 2);
    let plain = store.get("plain").await.expect("get").expect("plain");
    assert_eq!(plain.expires_at, None);
    assert_eq!(store.get("short").await.expect("get"), None);
    let err = store
        .set(SetRequest::new("short", "x").with_etag(short_etag))
        .await;
    assert!(
        matches!(err, Err(StateError::EtagMismatch { .. })),
        "{err:?}"
    );
    let page = store.keys("%", Page::default()).await.expect("keys");
    assert_eq!(page.keys, ["long", "plain", "tx"]);
    // Opening swept the expired item from the file already.
    assert_eq!(store.purge_expired().await.expect("purge"), 0);
}

#[tokio::test]
async fn expired_items_are_swept_from_the_file() {
    let (_dir, store) = fresh();
    for i in 0..5 {
        store
            .set(SetRequest::new(format!("e{i}"), "v").with_ttl(Duration::from_secs(1)))
            .await
            .expect("set");
    }
    // Overwritten without a TTL: no longer due, whatever its first deadline.
    store
        .set(SetRequest::new("e0", "kept"))
        .await
        .expect("overwrite");
    // Overwritten with a long TTL: due much later.
    store
        .set(SetRequest::new("e1", "later").with_ttl(Duration::from_secs(3600)))
        .await
        .expect("overwrite");
    shared::wait_gone(&store, "e4").await;
    assert_eq!(store.purge_expired().await.expect("purge"), 3);
    assert_eq!(store.purge_expired().await.expect("purge again"), 0);
    let page = store.keys("e%", Page::default()).await.expect("keys");
    assert_eq!(page.keys, ["e0", "e1"]);

    // A later write sweeps items that expired meanwhile, so purging finds none.
    store
        .set(SetRequest::new("s", "v").with_ttl(Duration::from_secs(1)))
        .await
        .expect("set");
    shared::wait_gone(&store, "s").await;
    store.set(SetRequest::new("w", "v")).await.expect("set");
    assert_eq!(store.purge_expired().await.expect("purge"), 0);
}

#[tokio::test]
async fn calls_that_change_nothing_leave_versions_alone() {
    let (_dir, store) = fresh();
    let first = store.set(SetRequest::new("a", "1")).await.expect("set");
    // A rejected write, a delete of a missing key and a failed transaction hand out no version.
    assert!(store
        .set(SetRequest::new("a", "x").with_etag("424242"))
        .await
        .is_err());
    store
        .delete(DeleteRequest::new("missing"))
        .await
        .expect("delete");
    assert!(store
        .multi(vec![TxOperation::Upsert(
            SetRequest::new("b", "x").with_etag("424242")
        )])
        .await
        .is_err());
    let next = store.set(SetRequest::new("c", "1")).await.expect("set");
    let (first, next): (u64, u64) = (first.parse().expect("n"), next.parse().expect("n"));
    assert_eq!(next, first + 1);
}

#[tokio::test]
async fn a_store_file_deleted_alone_does_not_get_its_old_log_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let store = open(&path);
    store
        .set(SetRequest::new("old", "value"))
        .await
        .expect("set");
    drop(store);
    // Only the file is deleted; its write-ahead log stays behind.
    std::fs::remove_file(&path).expect("delete the file");
    let store = open(&path);
    assert_eq!(store.get("old").await.expect("get"), None);
    store.set(SetRequest::new("new", "v")).await.expect("set");
    drop(store);
    let store = open(&path);
    assert!(store.get("new").await.expect("get").is_some());
    assert_eq!(store.get("old").await.expect("get"), None);
}

#[tokio::test]
async fn remove_deletes_the_file_and_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let store = open(&path);
    store.set(SetRequest::new("k", "v")).await.expect("set");
    drop(store);
    RedbStore::remove(&path).expect("remove");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    RedbStore::remove(&path).expect("removing nothing is fine");
}
