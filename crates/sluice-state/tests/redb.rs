//! Behaviour specific to the redb backend: persistence across reopen, and clear open errors.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use sluice_state::{DeleteRequest, RedbStore, SetRequest, StateError, Store};

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
