//! Callback delivery with several `sluice serve` replicas over one shared store: every outbox entry
//! is claimed before it is sent, so each callback reaches the control plane exactly once, and an
//! entry claimed by another replica waits until that claim is removed or expires.
//!
//! Runs on the in-memory store, and on PostgreSQL when `SLUICE_TEST_POSTGRES_URL` is set (in a
//! schema of its own, dropped at the end even when the test fails).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use sluice_signaling::dataplane::OUTBOX_PREFIX;
use sluice_signaling::outbox::{self, claim_key, OutboxMetrics, OutboxOptions, CLAIM_PREFIX};
use sluice_signaling::{
    Completion, DataPlane, FlowState, HookOutput, PrepareMessage, StartMessage,
};
use sluice_state::{
    Concurrency, DeleteRequest, MemoryStore, Page, PostgresOptions, PostgresStore, SetRequest,
    Store,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod transfer_support;
use transfer_support::flow_message;

const PG_VAR: &str = "SLUICE_TEST_POSTGRES_URL";

/// How long the test control plane takes to answer, to widen the window for duplicates.
const ANSWER_DELAY: Duration = Duration::from_millis(20);

/// The longest wait for the outbox to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// POSTs the test control plane received, per (process id, event).
type Counts = Arc<Mutex<HashMap<(String, String), usize>>>;

/// A control plane on 127.0.0.1 that counts callbacks and answers 200 after [`ANSWER_DELAY`].
async fn control_plane() -> (String, Counts) {
    control_plane_answering_after(ANSWER_DELAY).await
}

/// A control plane that counts each callback as it arrives and answers 200 `delay` later.
async fn control_plane_answering_after(delay: Duration) -> (String, Counts) {
    let counts: Counts = Arc::default();
    let app =
        Router::new()
            .route(
                "/cp/transfers/{process}/dataflow/{event}",
                post(
                    move |State(c): State<Counts>,
                          Path((process, event)): Path<(String, String)>| async move {
                        *c.lock().expect("lock").entry((process, event)).or_default() += 1;
                        tokio::time::sleep(delay).await;
                        StatusCode::OK
                    },
                ),
            )
            .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cp"), counts)
}

fn count(counts: &Counts, process: &str, event: &str) -> usize {
    counts
        .lock()
        .expect("lock")
        .get(&(process.to_string(), event.to_string()))
        .copied()
        .unwrap_or(0)
}

/// A data plane whose prepare and start finish async (so they report through the outbox).
fn async_dataplane(store: Arc<dyn Store>) -> DataPlane {
    let later = || async {
        Ok(HookOutput {
            completion: Completion::Async,
            ..HookOutput::done()
        })
    };
    DataPlane::builder(store)
        .on_prepare(move |_| later())
        .on_start(move |_| later())
        .build()
}

/// A consumer flow whose `prepared` callback waits in the outbox; its id.
async fn prepared_later(dp: &DataPlane, process: &str, callback: &str) -> String {
    let msg = PrepareMessage {
        flow: flow_message(
            process,
            "dataset",
            "https://w3id.org/dspace-sig/profile/http-push",
            Some(callback),
        ),
    };
    let (status, is_async) = dp.prepare(msg).await.expect("prepare");
    assert!(is_async);
    dp.finish_prepare(&status.data_flow_id)
        .await
        .expect("finish prepare");
    status.data_flow_id
}

/// A provider flow whose `started` callback waits in the outbox; its id.
async fn started_later(dp: &DataPlane, process: &str, callback: &str) -> String {
    let msg = StartMessage {
        flow: flow_message(
            process,
            "dataset",
            "https://w3id.org/dspace-sig/profile/http-pull",
            Some(callback),
        ),
    };
    let (status, is_async) = dp.start(msg).await.expect("start");
    assert!(is_async);
    dp.finish_start(&status.data_flow_id)
        .await
        .expect("finish start");
    status.data_flow_id
}

async fn keys(store: &Arc<dyn Store>, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut page = Page::default();
    loop {
        let p = store.keys(&format!("{prefix}%"), page).await.expect("keys");
        out.extend(p.keys);
        match p.next {
            Some(token) => {
                page = Page {
                    limit: None,
                    token: Some(token),
                }
            }
            None => return out,
        }
    }
}

/// Waits (bounded) until `done` holds.
async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// One replica's deliverer.
struct Replica {
    metrics: Arc<OutboxMetrics>,
    task: JoinHandle<()>,
}

fn deliverer(dp: DataPlane, stop: &CancellationToken) -> Replica {
    let metrics = Arc::new(OutboxMetrics::default());
    let task = tokio::spawn(outbox::run(
        dp,
        OutboxOptions {
            poll_interval: Duration::from_millis(10),
            ..OutboxOptions::default()
        },
        metrics.clone(),
        stop.clone(),
    ));
    Replica { metrics, task }
}

/// A PostgreSQL schema of one test, dropped when the guard goes (also when the test panics).
struct PgSchema {
    url: String,
    options: PostgresOptions,
}

impl PgSchema {
    fn new(url: String) -> Self {
        let schema = format!("outbox_replicas_{}", uuid::Uuid::new_v4().simple());
        PgSchema {
            url,
            options: PostgresOptions {
                table: "sluice_state".into(),
                schema: Some(schema),
                pool_size: 8,
                ..PostgresOptions::default()
            },
        }
    }

    /// A store of its own over the schema's table, as one replica opens it.
    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(
            PostgresStore::connect(&self.url, self.options.clone())
                .await
                .expect("connect"),
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.options.schema.clone().unwrap_or_default();
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        // A runtime of its own: the test's may be gone or unwinding.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test schema {schema}: {dropped:?}");
        }
    }
}

/// The stores of the two replicas: one `MemoryStore` shared by both, and (with
/// `SLUICE_TEST_POSTGRES_URL`) two PostgreSQL stores over one fresh table.
async fn replica_stores() -> Vec<(&'static str, [Arc<dyn Store>; 2], Option<PgSchema>)> {
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut out = vec![("memory", [memory.clone(), memory], None)];
    match std::env::var(PG_VAR) {
        Ok(url) if !url.is_empty() => {
            let pg = PgSchema::new(url);
            let a = pg.store().await;
            let b = pg.store().await;
            out.push(("postgres", [a, b], Some(pg)));
        }
        _ => println!("skipping the PostgreSQL run: {PG_VAR} is not set"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_deliver_every_callback_exactly_once() {
    for (backend, [store_a, store_b], _pg) in replica_stores().await {
        let (cp, counts) = control_plane().await;
        let dp_a = async_dataplane(store_a.clone());
        let dp_b = async_dataplane(store_b.clone());

        // Queue every callback first, so both replicas find the same entries on their first scan.
        let mut flows = Vec::new();
        for i in 0..15 {
            let p = format!("{backend}-consumer-{i}");
            let id = prepared_later(&dp_a, &p, &cp).await;
            flows.push((p, "prepared", id, FlowState::Prepared));
            let p = format!("{backend}-provider-{i}");
            let id = started_later(&dp_b, &p, &cp).await;
            flows.push((p, "started", id, FlowState::Started));
        }
        assert_eq!(keys(&store_a, OUTBOX_PREFIX).await.len(), flows.len());

        let stop = CancellationToken::new();
        let replicas = [deliverer(dp_a.clone(), &stop), deliverer(dp_b, &stop)];
        wait_for("the outbox to drain", || {
            let store = store_a.clone();
            async move { keys(&store, OUTBOX_PREFIX).await.is_empty() }
        })
        .await;
        stop.cancel();
        let mut delivered = Vec::new();
        for r in replicas {
            r.task.await.expect("deliverer");
            delivered.push(r.metrics.delivered.load(Ordering::Relaxed));
        }
        println!("{backend}: delivered per replica {delivered:?}");

        for (process, event, id, state) in &flows {
            assert_eq!(
                count(&counts, process, event),
                1,
                "{backend}: {event} callback of {process}"
            );
            assert_eq!(
                dp_a.status(id).await.expect("status").state,
                *state,
                "{backend}: state of {process}"
            );
        }
        let total: usize = counts.lock().expect("lock").values().sum();
        assert_eq!(total, flows.len(), "{backend}: no other callbacks");
        assert_eq!(
            delivered.iter().sum::<u64>(),
            flows.len() as u64,
            "{backend}: each entry recorded as delivered once"
        );
        assert!(
            keys(&store_a, CLAIM_PREFIX).await.is_empty(),
            "{backend}: claims are removed with their entries"
        );
    }
}

/// A stop asked for while a callback is on its way lets that attempt finish: the callback is
/// recorded as delivered and its claim goes with the entry, so no claim is left to hold the entry
/// back from the other replicas until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_during_a_send_finishes_the_attempt_and_leaves_no_claim() {
    for (backend, [store, _], _pg) in replica_stores().await {
        let (cp, counts) = control_plane_answering_after(Duration::from_millis(300)).await;
        let dp = async_dataplane(store.clone());
        let process = format!("{backend}-stopped-mid-send");
        let id = prepared_later(&dp, &process, &cp).await;
        let stop = CancellationToken::new();
        let replica = deliverer(dp.clone(), &stop);
        wait_for("the callback to reach the control plane", || {
            let (counts, process) = (counts.clone(), process.clone());
            async move { count(&counts, &process, "prepared") == 1 }
        })
        .await;
        stop.cancel();
        replica.task.await.expect("deliverer");
        assert_eq!(
            replica.metrics.delivered.load(Ordering::Relaxed),
            1,
            "{backend}: the attempt in flight finished"
        );
        assert!(
            keys(&store, CLAIM_PREFIX).await.is_empty(),
            "{backend}: no claim left behind"
        );
        assert!(
            keys(&store, OUTBOX_PREFIX).await.is_empty(),
            "{backend}: the delivered entry is gone"
        );
        assert_eq!(
            dp.status(&id).await.expect("status").state,
            FlowState::Prepared,
            "{backend}: the transition the callback reported"
        );
    }
}

/// Moves the one outbox entry not in `known` to `sluice/outbox/<suffix>`, so that entries sort as
/// the test needs; its new key.
async fn rekey_new_entry(store: &Arc<dyn Store>, known: &[&str], suffix: &str) -> String {
    let new: Vec<String> = keys(store, OUTBOX_PREFIX)
        .await
        .into_iter()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    assert_eq!(new.len(), 1, "one new entry in the outbox");
    let item = store.get(&new[0]).await.expect("get").expect("entry");
    let key = format!("{OUTBOX_PREFIX}{suffix}");
    store
        .set(SetRequest::new(key.clone(), item.value))
        .await
        .expect("set");
    store
        .delete(DeleteRequest::new(new[0].clone()))
        .await
        .expect("delete");
    key
}

/// Claims `entry` as another replica would, with an optional TTL.
async fn foreign_claim(store: &Arc<dyn Store>, entry: &str, ttl: Option<Duration>) {
    let mut req = SetRequest::new(claim_key(entry), "other-replica")
        .with_concurrency(Concurrency::FirstWrite);
    if let Some(ttl) = ttl {
        req = req.with_ttl(ttl);
    }
    store.set(req).await.expect("claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_claimed_elsewhere_waits_for_the_claim_to_go() {
    for (backend, [store, _], _pg) in replica_stores().await {
        let (cp, counts) = control_plane().await;
        let dp = async_dataplane(store.clone());

        // Keys sort held < expiring < probe, and a pass goes through them in that order.
        let held_p = format!("{backend}-held");
        let held_id = prepared_later(&dp, &held_p, &cp).await;
        let held = rekey_new_entry(&store, &[], "00000000000000000001-held").await;
        let expiring_p = format!("{backend}-expiring");
        let expiring_id = prepared_later(&dp, &expiring_p, &cp).await;
        let expiring = rekey_new_entry(&store, &[&held], "00000000000000000002-expiring").await;
        foreign_claim(&store, &held, None).await;
        let claim_ttl = Duration::from_secs(1);
        foreign_claim(&store, &expiring, Some(claim_ttl)).await;

        let stop = CancellationToken::new();
        let replica = deliverer(dp.clone(), &stop);

        // A probe entry sorting after both: once it is delivered, a pass went past the others.
        let probe_p = format!("{backend}-probe");
        prepared_later(&dp, &probe_p, &cp).await;
        wait_for("the probe callback", || {
            let c = counts.clone();
            let p = probe_p.clone();
            async move { count(&c, &p, "prepared") == 1 }
        })
        .await;
        assert_eq!(count(&counts, &held_p, "prepared"), 0, "{backend}: held");
        assert!(store.get(&held).await.expect("get").is_some());
        assert_eq!(
            dp.status(&held_id).await.expect("status").state,
            FlowState::Preparing
        );
        // The expiring claim held back its entry as long as it was the other replica's.
        let other_still_holds = store
            .get(&claim_key(&expiring))
            .await
            .expect("get claim")
            .is_some_and(|c| c.value.as_ref() == b"other-replica");
        if other_still_holds {
            assert_eq!(
                count(&counts, &expiring_p, "prepared"),
                0,
                "{backend}: expiring"
            );
        } else {
            println!("{backend}: the short claim expired before the probe was through");
        }

        // The other replica lets go of one entry; the other claim expires by itself.
        store
            .delete(DeleteRequest::new(claim_key(&held)))
            .await
            .expect("release");
        wait_for("the outbox to drain", || {
            let store = store.clone();
            async move { keys(&store, OUTBOX_PREFIX).await.is_empty() }
        })
        .await;
        stop.cancel();
        replica.task.await.expect("deliverer");

        for (p, id) in [(&held_p, &held_id), (&expiring_p, &expiring_id)] {
            assert_eq!(count(&counts, p, "prepared"), 1, "{backend}: {p} sent once");
            assert_eq!(
                dp.status(id).await.expect("status").state,
                FlowState::Prepared,
                "{backend}: {p}"
            );
        }
        assert_eq!(replica.metrics.delivered.load(Ordering::Relaxed), 3);
        assert_eq!(replica.metrics.failures.load(Ordering::Relaxed), 0);
        assert!(keys(&store, CLAIM_PREFIX).await.is_empty(), "{backend}");
    }
}

/// A store that cannot expire keys (no TTL): the memory store with that feature hidden.
struct NoTtl(MemoryStore);

#[async_trait::async_trait]
impl Store for NoTtl {
    fn name(&self) -> &'static str {
        "no-ttl"
    }
    fn features(&self) -> sluice_state::Features {
        sluice_state::Features {
            ttl: false,
            ..self.0.features()
        }
    }
    async fn get(&self, key: &str) -> Result<Option<sluice_state::Item>, sluice_state::StateError> {
        self.0.get(key).await
    }
    async fn set(&self, req: SetRequest) -> Result<String, sluice_state::StateError> {
        if req.ttl.is_some() {
            return Err(sluice_state::StateError::unsupported("no-ttl", "ttl"));
        }
        self.0.set(req).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<(), sluice_state::StateError> {
        self.0.delete(req).await
    }
    async fn multi(
        &self,
        ops: Vec<sluice_state::TxOperation>,
    ) -> Result<(), sluice_state::StateError> {
        self.0.multi(ops).await
    }
    async fn keys(
        &self,
        pattern: &str,
        page: Page,
    ) -> Result<sluice_state::KeyPage, sluice_state::StateError> {
        self.0.keys(pattern, page).await
    }
}

#[tokio::test]
async fn a_store_without_ttl_sends_callbacks_unclaimed() {
    let (cp, counts) = control_plane().await;
    let store: Arc<dyn Store> = Arc::new(NoTtl(MemoryStore::new()));
    let dp = async_dataplane(store.clone());
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(prepared_later(&dp, &format!("nottl-{i}"), &cp).await);
        }
        ids
    };
    let stop = CancellationToken::new();
    let replica = deliverer(dp.clone(), &stop);
    wait_for("the outbox to drain", || {
        let store = store.clone();
        async move { keys(&store, OUTBOX_PREFIX).await.is_empty() }
    })
    .await;
    stop.cancel();
    let _ = replica.task.await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(count(&counts, &format!("nottl-{i}"), "prepared"), 1);
        assert_eq!(
            dp.status(id).await.expect("status").state,
            FlowState::Prepared
        );
    }
    assert_eq!(replica.metrics.delivered.load(Ordering::Relaxed), 5);
    assert!(
        keys(&store, CLAIM_PREFIX).await.is_empty(),
        "no claim is written"
    );
}

/// A store whose key listings never answer (a store that hangs); everything else is the memory
/// store's. `listing` is notified when a listing starts.
struct StalledListing {
    inner: MemoryStore,
    listing: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl Store for StalledListing {
    fn name(&self) -> &'static str {
        "stalled-listing"
    }
    fn features(&self) -> sluice_state::Features {
        self.inner.features()
    }
    async fn get(&self, key: &str) -> Result<Option<sluice_state::Item>, sluice_state::StateError> {
        self.inner.get(key).await
    }
    async fn set(&self, req: SetRequest) -> Result<String, sluice_state::StateError> {
        self.inner.set(req).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<(), sluice_state::StateError> {
        self.inner.delete(req).await
    }
    async fn multi(
        &self,
        ops: Vec<sluice_state::TxOperation>,
    ) -> Result<(), sluice_state::StateError> {
        self.inner.multi(ops).await
    }
    async fn keys(
        &self,
        _pattern: &str,
        _page: Page,
    ) -> Result<sluice_state::KeyPage, sluice_state::StateError> {
        self.listing.notify_one();
        std::future::pending().await
    }
}

/// A stop is not held up by a store that does not answer the outbox listing: a listing holds no
/// claim, so it is cut short.
#[tokio::test]
async fn a_stop_is_not_held_up_by_a_listing_that_does_not_answer() {
    let listing = Arc::new(tokio::sync::Notify::new());
    let store: Arc<dyn Store> = Arc::new(StalledListing {
        inner: MemoryStore::new(),
        listing: listing.clone(),
    });
    let stop = CancellationToken::new();
    let replica = deliverer(async_dataplane(store), &stop);
    listing.notified().await;
    stop.cancel();
    let stopped = tokio::time::timeout(DRAIN_TIMEOUT, replica.task).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "the deliverer stops while its listing hangs: {stopped:?}"
    );
}
