//! Unbounded sources stay STARTED: suspend stops the pipeline with its checkpoint, resume
//! continues from it (nothing sent twice); after a restart `recover` resumes a push from its
//! checkpoint and the consumer ends up with the exact file.

mod transfer_support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_signaling::transfer::DatasetConfig;
use sluice_signaling::{AddressMessage, FlowState, ReasonMessage};
use sluice_state::{MemoryStore, Store};
use transfer_support::*;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_lines(path: &std::path::Path, more_than: usize) -> usize {
    for _ in 0..3000 {
        let n = lines(path).len();
        if n > more_than {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no more than {more_than} lines arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_push_suspends_and_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let (cp, received) = control_plane().await;
    let provider = node(|c| {
        c.datasets.insert(
            "stream".into(),
            DatasetConfig {
                plugin: "generator".into(),
                settings: BTreeMap::from([
                    ("format.type".to_string(), "structured".to_string()),
                    ("rate".to_string(), "2000".to_string()),
                    ("recordSize".to_string(), "64".to_string()),
                ]),
                asynchronous: false,
            },
        );
    })
    .await;
    let consumer = node(|c| {
        c.destinations
            .insert("stream".into(), file_destination(&output));
    })
    .await;
    let (prepared, _) = consumer
        .dp
        .prepare(prepare("c-stream", "stream", PUSH, None))
        .await
        .unwrap();
    let (started, _) = provider
        .dp
        .start(start(
            "p-stream",
            "stream",
            PUSH,
            prepared.data_address.clone(),
            Some(&cp),
        ))
        .await
        .unwrap();
    let id = started.data_flow_id;
    wait_lines(&output, 100).await;
    provider
        .dp
        .suspend(
            &id,
            ReasonMessage {
                message_id: "s".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    // Suspended: the pipeline has stopped (everything it read was delivered and acknowledged).
    let at_suspend = lines(&output).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lines(&output).len(),
        at_suspend,
        "nothing moves while suspended"
    );

    let resumed = provider
        .dp
        .resume(
            &id,
            AddressMessage {
                message_id: "r".into(),
                data_address: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(resumed.state, FlowState::Started);
    wait_lines(&output, at_suspend + 100).await;
    provider
        .dp
        .terminate(
            &id,
            ReasonMessage {
                message_id: "t".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    let all = lines(&output);
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "resume continued from the checkpoint"
    );
    // An unbounded source never completes by itself.
    assert!(!received
        .lock()
        .unwrap()
        .iter()
        .any(|(p, e, _)| p == "p-stream" && e == "completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_provider_recovers_its_push_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    write_lines(&input, 20 << 20);
    let (cp, received) = control_plane().await;
    let consumer = node(|c| {
        c.destinations
            .insert("ds".into(), file_destination(&output));
    })
    .await;
    let (prepared, _) = consumer
        .dp
        .prepare(prepare("c-rec", "ds", PUSH, None))
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = node_on(store.clone(), |c| {
        c.datasets.insert("ds".into(), dataset(&input));
    })
    .await;
    let (started, _) = first
        .dp
        .start(start(
            "p-rec",
            "ds",
            PUSH,
            prepared.data_address.clone(),
            Some(&cp),
        ))
        .await
        .unwrap();
    for _ in 0..3000 {
        if std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.transfers.shutdown().await;
    let partial = std::fs::metadata(&output).unwrap().len();
    let total = std::fs::metadata(&input).unwrap().len();
    assert!(partial < total, "stopped mid-way ({partial} of {total})");
    drop(first);

    let second = node_on(store, |c| {
        c.datasets.insert("ds".into(), dataset(&input));
    })
    .await;
    assert_eq!(second.dp.recover().await.unwrap(), 1);
    callback(&received, "p-rec", "completed").await;
    wait_state(&second.dp, &started.data_flow_id, FlowState::Completed).await;
    assert!(
        std::fs::read(&output).unwrap() == std::fs::read(&input).unwrap(),
        "byte-identical after the restart"
    );
}
