//! Leases on PostgreSQL: acquire, fencing by generation, claim of expired leases with
//! `FOR UPDATE SKIP LOCKED` (concurrent claimers never take the same flow), hand back, forget.
//! Needs `SLUICE_TEST_POSTGRES_URL`; skips with a message otherwise.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_signaling::lease::{LeaseStore, PostgresLeases};

const URL_VAR: &str = "SLUICE_TEST_POSTGRES_URL";

async fn leases(url: &str, table: &str) -> PostgresLeases {
    PostgresLeases::connect(url, table, None, 8, Duration::from_secs(10))
        .await
        .expect("connect")
}

async fn drop_table(url: &str, table: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await
        .expect("drop");
}

#[tokio::test]
async fn leases_fence_stale_owners_and_claims_never_overlap() {
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!("skipping: {URL_VAR} is not set");
        return;
    };
    let table = format!("lease_test_{}", uuid::Uuid::new_v4().simple());
    let l = leases(&url, &table).await;
    let long = Duration::from_secs(60);

    let a = l.acquire("f1", "a", long).await.unwrap().expect("free");
    assert!(l.acquire("f1", "b", long).await.unwrap().is_none(), "held");
    assert!(l.claim_due("b", long, 10).await.unwrap().is_empty());
    assert!(l.heartbeat(&a, long).await.unwrap());

    // A hands it back: B claims it with a new generation; A is fenced.
    l.hand_back(&a).await.unwrap();
    let b = l.claim_due("b", long, 10).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].flow_id, "f1");
    assert_eq!(b[0].generation, a.generation + 1);
    assert!(!l.heartbeat(&a, long).await.unwrap(), "stale owner fenced");
    l.release(&a).await.unwrap();
    assert!(
        l.heartbeat(&b[0], long).await.unwrap(),
        "stale release ignored"
    );

    // A short lease expires by itself.
    let c = l
        .acquire("f2", "c", Duration::from_millis(50))
        .await
        .unwrap()
        .expect("free");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = l.acquire("f2", "d", long).await.unwrap().expect("expired");
    assert!(!l.heartbeat(&c, long).await.unwrap());

    // Forget deletes whoever holds it.
    l.forget("f2").await.unwrap();
    assert!(!l.heartbeat(&d, long).await.unwrap());

    // Many expired leases, four concurrent claimers: each flow is claimed exactly once.
    for i in 0..100 {
        let x = l
            .acquire(&format!("g{i}"), "dead", Duration::from_millis(1))
            .await
            .unwrap()
            .expect("free");
        assert_eq!(x.generation, 1);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let l = Arc::new(l);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = l.claim_due(&format!("w{w}"), long, 7).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|l| l.flow_id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let g: Vec<_> = all.iter().filter(|f| f.starts_with('g')).collect();
    let distinct: HashSet<_> = g.iter().collect();
    assert_eq!(g.len(), 100, "every due lease claimed once: {g:?}");
    assert_eq!(distinct.len(), 100);
    drop_table(&url, &table).await;
}
