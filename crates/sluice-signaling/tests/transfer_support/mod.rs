//! Shared by the transfer tests: a Sluice data plane with transfers over real HTTP, a test
//! control plane receiving callbacks, and message builders.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use sluice_signaling::messages::FlowMessage;
use sluice_signaling::outbox::{self, OutboxMetrics, OutboxOptions};
use sluice_signaling::transfer::{DatasetConfig, DestinationConfig, TransferConfig, Transfers};
use sluice_signaling::{DataAddress, DataPlane, FlowState, PrepareMessage, StartMessage};
use sluice_state::{MemoryStore, Store};
use tokio_util::sync::CancellationToken;

pub const PULL: &str = "https://w3id.org/dspace-sig/profile/http-pull";
pub const PUSH: &str = "https://w3id.org/dspace-sig/profile/http-push";

/// A data plane with transfers, its public endpoint served on 127.0.0.1.
pub struct Node {
    pub dp: DataPlane,
    pub transfers: Arc<Transfers>,
    pub base: String,
    pub store: Arc<dyn Store>,
    _stop: tokio_util::sync::DropGuard,
}

/// Callbacks received: (process, event, body).
pub type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A test control plane; returns its callback base URL.
pub async fn control_plane() -> (String, Received) {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/cp/transfers/{process}/dataflow/{event}",
            post(
                |State(r): State<Received>,
                 UrlPath((process, event)): UrlPath<(String, String)>,
                 Json(body): Json<Value>| async move {
                    r.lock().expect("lock").push((process, event, body));
                    StatusCode::OK
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cp"), received)
}

/// Waits until a callback with `event` for `process` arrived; returns its body.
pub async fn callback(received: &Received, process: &str, event: &str) -> Value {
    for _ in 0..3000 {
        if let Some((_, _, body)) = received
            .lock()
            .expect("lock")
            .iter()
            .find(|(p, e, _)| p == process && e == event)
        {
            return body.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {event} callback for {process}");
}

pub fn dataset(path: &Path) -> DatasetConfig {
    DatasetConfig {
        plugin: "file".into(),
        settings: BTreeMap::from([("path".to_string(), path.display().to_string())]),
        asynchronous: false,
    }
}

pub fn file_destination(path: &Path) -> DestinationConfig {
    DestinationConfig {
        plugin: "file".into(),
        settings: BTreeMap::from([("path".to_string(), path.display().to_string())]),
        asynchronous: false,
    }
}

/// Starts a node; `configure` adjusts its transfer configuration (https is not required).
pub async fn node(configure: impl FnOnce(&mut TransferConfig)) -> Node {
    node_on(Arc::new(MemoryStore::new()), configure).await
}

/// Starts a node on `store`.
pub async fn node_on(store: Arc<dyn Store>, configure: impl FnOnce(&mut TransferConfig)) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let mut config = TransferConfig {
        public_base_url: Some(base.clone()),
        require_https: false,
        ..TransferConfig::default()
    };
    configure(&mut config);
    let registry = Arc::new(sluice_connectors::builtin_registry());
    let transfers = Transfers::new(config, registry, store.clone()).expect("valid config");
    let dp = transfers.install(DataPlane::builder(store.clone())).build();
    transfers.attach(dp.clone());
    let app = Router::new().nest("/public", transfers.public_router());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    tokio::spawn(outbox::run(
        dp.clone(),
        OutboxOptions {
            poll_interval: Duration::from_millis(10),
            ..OutboxOptions::default()
        },
        Arc::new(OutboxMetrics::default()),
        stop.clone(),
    ));
    Node {
        dp,
        transfers,
        base,
        store,
        _stop: stop.drop_guard(),
    }
}

/// A provider serving `input` as dataset `ds`, and a consumer writing what it receives for
/// `destination` (a dataset id or a profile) to `output`.
pub async fn provider_and_consumer(input: &Path, output: &Path, destination: &str) -> (Node, Node) {
    let provider = node(|c| {
        c.datasets.insert("ds".into(), dataset(input));
    })
    .await;
    let consumer = node(|c| {
        c.destinations
            .insert(destination.into(), file_destination(output));
    })
    .await;
    (provider, consumer)
}

pub fn flow_message(
    process: &str,
    dataset: &str,
    profile: &str,
    callback: Option<&str>,
) -> FlowMessage {
    FlowMessage {
        message_id: format!("msg-{process}"),
        participant_id: "me".into(),
        counter_party_id: "them".into(),
        dataspace_context: "ctx".into(),
        process_id: process.into(),
        agreement_id: "agreement".into(),
        dataset_id: dataset.into(),
        profile: profile.into(),
        callback_address: callback.map(str::to_string),
        ..FlowMessage::default()
    }
}

pub fn start(
    process: &str,
    dataset: &str,
    profile: &str,
    address: Option<DataAddress>,
    callback: Option<&str>,
) -> StartMessage {
    StartMessage {
        flow: FlowMessage {
            data_address: address,
            ..flow_message(process, dataset, profile, callback)
        },
    }
}

pub fn prepare(
    process: &str,
    dataset: &str,
    profile: &str,
    callback: Option<&str>,
) -> PrepareMessage {
    PrepareMessage {
        flow: flow_message(process, dataset, profile, callback),
    }
}

/// Waits until the flow is in `state`.
pub async fn wait_state(dp: &DataPlane, id: &str, state: FlowState) {
    for _ in 0..3000 {
        if dp.status(id).await.expect("status").state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "flow {id} never reached {state}: it is {}",
        dp.status(id).await.expect("status").state
    );
}

/// Writes a file of `size` bytes or a little more: numbered lines of varying length.
pub fn write_lines(path: &Path, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut written = 0;
    let mut i = 0u64;
    while written < size {
        let line = format!("{i:010} {}\n", "x".repeat((i % 97) as usize));
        f.write_all(line.as_bytes()).expect("write");
        written += line.len();
        i += 1;
    }
    f.flush().expect("flush");
}

/// The `authorization` property of an address.
pub fn token_of(a: &DataAddress) -> String {
    a.property("authorization")
        .expect("authorization")
        .to_string()
}
