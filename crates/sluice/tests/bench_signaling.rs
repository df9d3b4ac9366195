//! `sluice bench --signaling` for a fraction of a second on the in-memory store, so that the
//! benchmark keeps working: the real DPS router is served over HTTP, the load generator completes
//! start+terminate pairs at one and several connections, and no request fails.

use std::time::Duration;

use sluice::commands::bench_signaling::{run, Plan, StoreKind, Timing};

/// A plan of a fraction of a second per row on no PostgreSQL.
fn quick_plan(store: StoreKind, concurrency: &[usize], dir: &std::path::Path) -> Plan {
    Plan {
        stores: vec![store],
        concurrency: concurrency.to_vec(),
        timing: Timing {
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(300),
        },
        dir: dir.to_path_buf(),
        postgres_url: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_rows_complete_pairs_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let plan = quick_plan(StoreKind::Memory, &[1, 4], dir.path());
    let mut progress = Vec::new();
    let rows = run(&plan, &mut progress).await;
    let text = String::from_utf8_lossy(&progress);
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        let outcome = row
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{} conn failed: {e}", row.concurrency));
        assert!(outcome.pairs > 0, "no pairs completed: {text}");
        assert_eq!(outcome.errors, 0, "{:?}: {text}", outcome.first_error);
        assert_eq!(outcome.latency.len(), outcome.pairs);
        assert!(
            outcome.cpu.is_some_and(|cpu| cpu > Duration::ZERO),
            "the window's CPU time is measured: {:?}",
            outcome.cpu
        );
        assert!(text.contains("µs/pair"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_rows_complete_pairs_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let plan = quick_plan(StoreKind::Redb, &[8], dir.path());
    let rows = run(&plan, &mut Vec::new()).await;
    let outcome = rows[0].outcome.as_ref().unwrap();
    assert!(outcome.pairs > 0);
    assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the redb file is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_row_measures_pairs_without_a_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let plan = quick_plan(StoreKind::Floor, &[4], dir.path());
    let mut progress = Vec::new();
    let rows = run(&plan, &mut progress).await;
    let text = String::from_utf8_lossy(&progress);
    let outcome = rows[0].outcome.as_ref().unwrap();
    assert!(outcome.pairs > 0, "{text}");
    assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
    assert!(text.starts_with("floor"), "{text}");
    assert!(text.contains("this machine's ceiling"), "{text}");
    assert!(!text.contains("target"), "the floor has no target: {text}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the floor writes nothing"
    );
}
