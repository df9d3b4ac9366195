//! `sluice bench --connectors` with tiny counts, so that the benchmark keeps working: both
//! scenarios run through the real engine against real PostgreSQL and NATS servers, every record
//! arrives (the benchmark itself checks distinct ids and row counts and fails otherwise), and
//! everything it created is dropped.
//!
//! Needs `SLUICE_TEST_POSTGRES_URL` (wal_level = logical) and `SLUICE_TEST_NATS_URL` (JetStream);
//! skips with a message otherwise.

use sluice::commands::bench_connectors::{self, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_in_both_scenarios() {
    let (Ok(postgres_url), Ok(nats_url)) = (
        std::env::var("SLUICE_TEST_POSTGRES_URL"),
        std::env::var("SLUICE_TEST_NATS_URL"),
    ) else {
        eprintln!("skipped: set SLUICE_TEST_POSTGRES_URL and SLUICE_TEST_NATS_URL to run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan {
        postgres_url: postgres_url.clone(),
        nats_url,
        records: 3_000,
        lag_rate: 2_000,
        lag_seconds: 1,
        batch: 256,
        pg_to_nats: true,
        nats_to_pg: true,
        dir: dir.path().to_path_buf(),
        tag: format!(
            "t{}_{}",
            std::process::id(),
            bench_connectors::unique_suffix()
        ),
    };
    let registry = sluice_connectors::builtin_registry();
    let (rows, failures) = bench_connectors::run(&plan, &registry).await;
    assert!(failures.is_empty(), "failures: {failures:?}");
    // Full speed against two baselines, lag at full speed, lag at a fixed rate, NATS → PostgreSQL.
    assert_eq!(rows.len(), 5, "{rows:#?}");
    for row in &rows {
        assert_eq!(row.arrived, row.records, "{row:#?}");
    }
    assert_eq!(rows[3].records, 2_000);
    assert!(rows[0].ratio.is_some_and(|r| r > 0.0), "{:#?}", rows[0]);

    // Nothing is left behind: no slot, no publication, no table of this run.
    let (client, connection) = tokio_postgres::connect(&postgres_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let like = format!("sluice_bench_{}%", plan.tag);
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE $1) \
                  + (SELECT count(*) FROM pg_publication WHERE pubname LIKE $1) \
                  + (SELECT count(*) FROM pg_tables WHERE tablename LIKE $1)",
            &[&like],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "slots, publications or tables of {like} were left behind"
    );
}
