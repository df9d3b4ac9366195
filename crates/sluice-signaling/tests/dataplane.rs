//! The data plane's transitions, deduplication, hooks and outbox, on the in-memory and redb stores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_signaling::dataplane::OUTBOX_PREFIX;
use sluice_signaling::messages::FlowMessage;
use sluice_signaling::{
    AddressMessage, Completion, DataAddress, DataPlane, FlowState, HookError, HookOutput,
    OutboxEntry, PrepareMessage, ReasonMessage, SignalingError, StartMessage,
};
use sluice_state::{MemoryStore, Page, RedbStore, Store};

fn flow_message(process: &str, message: &str, profile: &str) -> FlowMessage {
    FlowMessage {
        message_id: message.into(),
        participant_id: "provider".into(),
        counter_party_id: "consumer".into(),
        dataspace_context: "ctx".into(),
        process_id: process.into(),
        agreement_id: "agreement".into(),
        dataset_id: "dataset".into(),
        profile: profile.into(),
        callback_address: Some("http://127.0.0.1:1/cp".into()),
        ..FlowMessage::default()
    }
}

fn start(process: &str, message: &str) -> StartMessage {
    StartMessage {
        flow: flow_message(
            process,
            message,
            "https://w3id.org/dspace-sig/profile/http-pull",
        ),
    }
}

fn prepare(process: &str, message: &str) -> PrepareMessage {
    PrepareMessage {
        flow: flow_message(
            process,
            message,
            "https://w3id.org/dspace-sig/profile/http-push",
        ),
    }
}

fn reason(m: &str) -> ReasonMessage {
    ReasonMessage {
        message_id: m.into(),
        reason: Some("because".into()),
    }
}

fn stores() -> Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = RedbStore::open(dir.path().join("s.redb")).expect("redb");
    vec![
        (Arc::new(MemoryStore::new()), None),
        (Arc::new(redb), Some(dir)),
    ]
}

async fn outbox(store: &Arc<dyn Store>) -> Vec<(String, OutboxEntry)> {
    let page = store
        .keys(&format!("{OUTBOX_PREFIX}%"), Page::default())
        .await
        .expect("keys");
    let mut out = Vec::new();
    for k in page.keys {
        let item = store.get(&k).await.expect("get").expect("entry");
        out.push((k, serde_json::from_slice(&item.value).expect("entry json")));
    }
    out
}

#[tokio::test]
async fn provider_pull_lifecycle_with_an_issued_address() {
    for (store, _dir) in stores() {
        let suspended = Arc::new(AtomicUsize::new(0));
        let s2 = suspended.clone();
        let dp = DataPlane::builder(store.clone())
            .on_start(|flow| async move {
                Ok(HookOutput {
                    issued_address: Some(
                        DataAddress::new(
                            "https://w3id.org/dspace-sig/profile/http-pull",
                            format!("http://127.0.0.1/public/{}", flow.id),
                        )
                        .with_property("authorization", "token-1"),
                    ),
                    ..HookOutput::done()
                })
            })
            .on_suspend(move |_| {
                let s2 = s2.clone();
                async move {
                    s2.fetch_add(1, Ordering::SeqCst);
                    Ok(HookOutput::done())
                }
            })
            .build();
        let (status, is_async) = dp.start(start("proc-1", "m1")).await.expect("start");
        assert!(!is_async);
        assert_eq!(status.state, FlowState::Started);
        let address = status.data_address.clone().expect("pull address");
        assert_eq!(address.property("authorization"), Some("token-1"));
        let id = status.data_flow_id.clone();

        let s = dp.suspend(&id, reason("m2")).await.expect("suspend");
        assert_eq!(s.state, FlowState::Suspended);
        assert!(s.data_address.is_none(), "suspend revokes the address");
        // Same state: a no-op, the hook is not called again, the counter does not move.
        dp.suspend(&id, reason("m3")).await.expect("same state");
        assert_eq!(suspended.load(Ordering::SeqCst), 1);
        let (flow, _) = dp.flows().get(&id).await.expect("get").expect("flow");
        assert_eq!(flow.state_count, 2);

        let r = dp
            .resume(
                &id,
                AddressMessage {
                    message_id: "m4".into(),
                    data_address: None,
                },
            )
            .await
            .expect("resume");
        assert_eq!(r.state, FlowState::Started);
        dp.terminate(&id, reason("m5")).await.expect("terminate");
        assert_eq!(
            dp.status(&id).await.expect("status").state,
            FlowState::Terminated
        );
        let err = dp
            .resume(
                &id,
                AddressMessage {
                    message_id: "m6".into(),
                    data_address: None,
                },
            )
            .await
            .expect_err("final");
        assert_eq!(err.status(), 400, "{err}");
    }
}

#[tokio::test]
async fn duplicates_replay_and_conflicts_are_409() {
    for (store, _dir) in stores() {
        let dp = DataPlane::builder(store).build();
        let (first, _) = dp.start(start("proc-d", "m1")).await.expect("start");
        let (again, _) = dp.start(start("proc-d", "m1")).await.expect("replay");
        assert_eq!(again, first);
        let err = dp.start(start("proc-d", "m2")).await.expect_err("conflict");
        assert_eq!(err.status(), 409, "{err}");
    }
}

#[tokio::test]
async fn a_hundred_concurrent_duplicate_starts_make_exactly_one_flow() {
    for (store, _dir) in stores() {
        let dp = DataPlane::builder(store.clone()).build();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let dp = dp.clone();
            // Half repeat the same message (replays), half are other messages (conflicts).
            let msg = if i % 2 == 0 {
                "same".to_string()
            } else {
                format!("other-{i}")
            };
            tasks.push(tokio::spawn(async move {
                dp.start(start("proc-c", &msg)).await
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut conflicts = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok((status, _)) => {
                    ids.insert(status.data_flow_id);
                }
                Err(SignalingError::Conflict(_)) => conflicts += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
        let (flows, _) = dp.flows().list(Page::default()).await.expect("list");
        assert_eq!(flows.len(), 1);
        assert!(conflicts >= 49, "{conflicts}");
    }
}

#[tokio::test]
async fn async_prepare_finishes_later_with_a_callback_in_the_outbox() {
    for (store, _dir) in stores() {
        let dp = DataPlane::builder(store.clone())
            .on_prepare(|_| async {
                Ok(HookOutput {
                    completion: Completion::Async,
                    ..HookOutput::done()
                })
            })
            .build();
        let (status, is_async) = dp.prepare(prepare("proc-a", "m1")).await.expect("prepare");
        assert!(is_async);
        assert_eq!(status.state, FlowState::Preparing);
        assert!(outbox(&store).await.is_empty());
        let id = status.data_flow_id.clone();
        dp.finish_prepare(&id).await.expect("finish");
        let entries = outbox(&store).await;
        assert_eq!(entries.len(), 1);
        let (key, entry) = &entries[0];
        assert_eq!(entry.event, "prepared");
        assert_eq!(entry.process_id, "proc-a");
        assert_eq!(entry.message.state, FlowState::Prepared);
        assert_eq!(
            entry.url(),
            "http://127.0.0.1:1/cp/transfers/proc-a/dataflow/prepared"
        );
        // The transition commits only once the control plane answered the callback.
        assert_eq!(
            dp.status(&id).await.expect("status").state,
            FlowState::Preparing
        );
        dp.delivered(key, entry).await.expect("delivered");
        assert_eq!(
            dp.status(&id).await.expect("status").state,
            FlowState::Prepared
        );
        assert!(outbox(&store).await.is_empty());
        // A replay of the creating message still says 202 / PREPARING, as the first answer did.
        let (again, again_async) = dp.prepare(prepare("proc-a", "m1")).await.expect("replay");
        assert!(again_async);
        assert_eq!(again.state, FlowState::Preparing);
    }
}

#[tokio::test]
async fn consumer_pull_gets_the_providers_address_on_started_then_completes() {
    for (store, _dir) in stores() {
        let dp = DataPlane::builder(store.clone()).build();
        let (status, _) = dp.prepare(prepare("proc-cp", "m1")).await.expect("prepare");
        assert_eq!(status.state, FlowState::Prepared);
        let id = status.data_flow_id;
        let addr = DataAddress::new("HttpData", "http://provider/data");
        dp.started(
            &id,
            AddressMessage {
                message_id: "m2".into(),
                data_address: Some(addr.clone()),
            },
        )
        .await
        .expect("started");
        let (flow, _) = dp.flows().get(&id).await.expect("get").expect("flow");
        assert_eq!(flow.source_address, Some(addr));
        dp.finish_transfer(&id).await.expect("complete");
        let entries = outbox(&store).await;
        let events: Vec<&str> = entries.iter().map(|(_, e)| e.event.as_str()).collect();
        assert_eq!(events, vec!["completed"]);
        dp.delivered(&entries[0].0, &entries[0].1)
            .await
            .expect("delivered");
        assert_eq!(
            dp.status(&id).await.expect("status").state,
            FlowState::Completed
        );
        // An error report changes no state.
        let (p2, _) = dp
            .prepare(prepare("proc-cp2", "m1"))
            .await
            .expect("prepare");
        dp.fail_transfer(&p2.data_flow_id, "disk full")
            .await
            .expect("errored");
        let entries = outbox(&store).await;
        assert_eq!(entries[0].1.event, "errored");
        assert_eq!(entries[0].1.message.error.as_deref(), Some("disk full"));
        dp.delivered(&entries[0].0, &entries[0].1)
            .await
            .expect("delivered");
        assert_eq!(
            dp.status(&p2.data_flow_id).await.expect("status").state,
            FlowState::Prepared
        );
    }
}

#[tokio::test]
async fn bad_messages_and_unknown_flows_are_client_errors() {
    let dp = DataPlane::builder(Arc::new(MemoryStore::new())).build();
    let mut msg = start("p", "m");
    msg.flow.dataset_id.clear();
    msg.flow.profile = "HttpData".into();
    let err = dp.start(msg).await.expect_err("invalid");
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("datasetId"), "{err}");
    let err = dp.suspend("nope", reason("m")).await.expect_err("unknown");
    assert_eq!(err.status(), 404);
    let (status, _) = dp.start(start("p2", "m")).await.expect("start");
    let err = dp
        .started(&status.data_flow_id, AddressMessage::default())
        .await
        .expect_err("provider flows get no started");
    assert_eq!(err.status(), 400);
}

#[tokio::test]
async fn a_hook_refusal_stores_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let dp = DataPlane::builder(store.clone())
        .on_start(|flow| async move {
            Err(HookError::bad_request(format!(
                "unknown dataset {}",
                flow.dataset_id
            )))
        })
        .build();
    let err = dp.start(start("p", "m")).await.expect_err("refused");
    assert_eq!(err.status(), 400);
    assert!(dp.flows().by_process("p").await.expect("get").is_none());
}
