//! SIGKILL of a process writing to a redb store: every write it had acknowledged is in the store
//! after a reopen, with the ETag it was acknowledged with (the write-ahead log is replayed, after
//! at least one checkpoint), and versions never repeat afterwards.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use sluice_state::watch::{ChangesAfter, Op};
use sluice_state::{DeleteRequest, RedbOptions, RedbStore, SetRequest, Store, TxOperation};

/// Set in the environment of the writing child process.
const CHILD_PATH_VAR: &str = "SLUICE_STATE_TEST_CRASH_PATH";
/// Concurrent writers in the child.
const WRITERS: usize = 16;
/// Log bytes between checkpoints in the child.
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Acknowledged writes before the kill: with [`value`]s of ~3 KB, more than one checkpoint's
/// worth of log.
const ACKS_BEFORE_KILL: usize = 10_000;

fn key(writer: usize, i: usize) -> String {
    format!("w{writer}/k{i}")
}

/// The value of step `i`: 3 KB that do not compress, so that the log grows past checkpoints.
fn value(i: usize) -> Bytes {
    let mut seed = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = format!("v{i}-").into_bytes();
    bytes.extend((0..3000).map(|_| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    }));
    Bytes::from(bytes)
}

/// Child: writers loop until killed, printing each acknowledgement once it is returned.
/// Every third step is a transaction that writes a new key and deletes the previous one.
fn write_until_killed(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let options = RedbOptions {
            checkpoint_bytes: CHECKPOINT_BYTES,
            ..RedbOptions::default()
        };
        let store = Arc::new(RedbStore::open_with_options(path, options).expect("open in child"));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0.. {
                        let value = value(i);
                        let line = if i % 3 == 2 {
                            store
                                .multi(vec![
                                    TxOperation::Upsert(SetRequest::new(key(w, i), value)),
                                    TxOperation::Delete(DeleteRequest::new(key(w, i - 1))),
                                ])
                                .await
                                .expect("multi");
                            format!("M {} {}\n", key(w, i), key(w, i - 1))
                        } else {
                            let etag = store
                                .set(SetRequest::new(key(w, i), value))
                                .await
                                .expect("set");
                            format!("S {} {etag}\n", key(w, i))
                        };
                        let mut out = std::io::stdout().lock();
                        out.write_all(line.as_bytes()).expect("stdout");
                        out.flush().expect("stdout");
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// What the acknowledgements say a key must hold.
#[derive(Debug)]
enum Expect {
    Value { i: usize, etag: Option<String> },
    Gone,
}

#[test]
fn acknowledged_writes_survive_a_sigkill() {
    if let Some(path) = std::env::var_os(CHILD_PATH_VAR) {
        write_until_killed(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "acknowledged_writes_survive_a_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_PATH_VAR, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writing child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut expected: HashMap<String, Expect> = HashMap::new();
    // The last acknowledged step of each writer.
    let mut last: HashMap<usize, usize> = HashMap::new();
    let mut acks = 0;
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        let parts: Vec<&str> = line.split(' ').collect();
        let (w, i) = match parts.as_slice() {
            ["S", k, etag] => {
                let (w, i) = parse_key(k);
                expected.insert(
                    k.to_string(),
                    Expect::Value {
                        i,
                        etag: Some(etag.to_string()),
                    },
                );
                (w, i)
            }
            ["M", k, gone] => {
                let (w, i) = parse_key(k);
                expected.insert(k.to_string(), Expect::Value { i, etag: None });
                expected.insert(gone.to_string(), Expect::Gone);
                (w, i)
            }
            _ => continue, // test harness output
        };
        last.insert(w, i);
        acks += 1;
        if acks == ACKS_BEFORE_KILL && !killed {
            child.kill().expect("SIGKILL the child");
            killed = true;
        }
    }
    let status = child.wait().expect("wait for the child");
    assert!(killed, "the child stopped before the kill: {status:?}");
    assert!(acks >= ACKS_BEFORE_KILL);

    // A writer's next step, in flight at the kill, may have deleted its last key.
    for (w, i) in &last {
        if (i + 1) % 3 == 2 {
            expected.remove(&key(*w, *i));
        }
    }
    // The child appended to segment 1 of the log; a checkpoint moved on from it and deleted it.
    let first_segment = dir.path().join("state.redb.wal-00000001");
    assert!(
        !first_segment.exists(),
        "no checkpoint ran before the kill (the test must cover one)"
    );
    let store = RedbStore::open(&path).expect("reopen after the kill");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut highest = 0u64;
        for (k, want) in &expected {
            let got = store.get(k).await.expect("get after reopen");
            match (want, got) {
                (Expect::Gone, None) => {}
                (Expect::Gone, Some(item)) => {
                    panic!("{k} was deleted (acknowledged) but holds {item:?} after the kill")
                }
                (Expect::Value { .. }, None) => {
                    panic!("{k} was written (acknowledged) but is missing after the kill")
                }
                (Expect::Value { i, etag }, Some(item)) => {
                    assert!(item.value == value(*i), "value of {k}");
                    if let Some(etag) = etag {
                        assert_eq!(&item.etag, etag, "ETag of {k}");
                    }
                    highest = highest.max(item.etag.parse().expect("numeric ETag"));
                }
            }
        }
        check_history(&store, &expected).await;
        let next = store
            .set(SetRequest::new("after/the-kill", Bytes::from_static(b"x")))
            .await
            .expect("write after reopen");
        assert!(
            next.parse::<u64>().expect("numeric ETag") > highest,
            "a version was handed out twice: {next} after {highest}"
        );
    });
}

/// The replayed history agrees with the items: revisions only grow, and each acknowledged key's
/// latest change is its acknowledged write or delete.
async fn check_history(store: &RedbStore, expected: &HashMap<String, Expect>) {
    let feed = store.change_feed().expect("redb has a change feed");
    let mut latest: HashMap<String, (Op, Option<Bytes>)> = HashMap::new();
    let (mut after, mut last_revision) = (0, 0);
    loop {
        let page = match feed.changes_after(after, 1000).await.expect("read history") {
            ChangesAfter::Changes(page) => page,
            ChangesAfter::Compacted { oldest } => {
                panic!("history compacted through {oldest}: the retention should keep it all")
            }
        };
        if page.changes.is_empty() {
            break;
        }
        for change in page.changes {
            assert!(change.revision >= last_revision, "history out of order");
            last_revision = change.revision;
            latest.insert(change.key, (change.op, change.value));
        }
        after = page.last_revision;
    }
    for (k, want) in expected {
        match (want, latest.get(k)) {
            (Expect::Gone, Some((Op::Delete, None))) => {}
            (Expect::Value { i, .. }, Some((Op::Put, Some(v)))) => {
                assert!(*v == value(*i), "the history's last value of {k}")
            }
            (want, got) => panic!("{k}: acknowledged {want:?}, history's last change {got:?}"),
        }
    }
}

fn parse_key(k: &str) -> (usize, usize) {
    let (w, i) = k
        .strip_prefix('w')
        .and_then(|rest| rest.split_once("/k"))
        .unwrap_or_else(|| panic!("bad key {k}"));
    (
        w.parse().expect("writer number"),
        i.parse().expect("step number"),
    )
}
