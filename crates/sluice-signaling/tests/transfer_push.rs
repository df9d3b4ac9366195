//! Provider push into a consumer push flow: two data planes over real HTTP, a file dataset
//! arriving byte-identical, retried bodies written once, https enforcement, and the failure path.

mod transfer_support;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use sluice_signaling::{AddressMessage, DataAddress, FlowState, SignalingError};
use transfer_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_push_arrives_byte_identical_at_a_consumer_push_flow() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    write_lines(&input, 10 << 20);
    let (cp, received) = control_plane().await;
    let (provider, consumer) = provider_and_consumer(&input, &output, "ds").await;

    let (prepared, is_async) = consumer
        .dp
        .prepare(prepare("c-1", "ds", PUSH, Some(&cp)))
        .await
        .unwrap();
    assert!(!is_async);
    assert_eq!(prepared.state, FlowState::Prepared);
    let address = prepared.data_address.clone().expect("push address");
    assert!(address.endpoint.starts_with(&consumer.base));
    assert!(address.endpoint.ends_with("/data"));

    let (started, _) = provider
        .dp
        .start(start("p-1", "ds", PUSH, Some(address.clone()), Some(&cp)))
        .await
        .unwrap();
    assert_eq!(started.state, FlowState::Started);
    assert!(started.data_address.is_none());

    // The provider reports `completed` by itself once everything was POSTed and acknowledged.
    let body = callback(&received, "p-1", "completed").await;
    assert_eq!(body["state"], "COMPLETED");
    wait_state(&provider.dp, &started.data_flow_id, FlowState::Completed).await;
    // The finished flow's checkpoint went with the transition: nothing of its job is left.
    let pipeline = format!("sluice/pipelines/dps-{}/", started.data_flow_id);
    let left = provider
        .store
        .keys(&format!("{pipeline}%"), Default::default())
        .await
        .unwrap();
    assert!(left.keys.is_empty(), "left in the store: {:?}", left.keys);
    // Every POST was answered only once durable, so the file is complete now.
    let sent = std::fs::read(&input).unwrap();
    assert_eq!(std::fs::read(&output).unwrap(), sent, "byte-identical");
    let m = provider.transfers.metrics();
    let lines = sent.iter().filter(|b| **b == b'\n').count() as u64;
    assert_eq!(m.records_transferred, lines);
    // Payload bytes: the lines without their newlines.
    assert_eq!(m.bytes_transferred, sent.len() as u64 - lines);
    assert_eq!(m.transfers_completed, 1);

    // A retried body (same Sluice-Last-Position) is acknowledged and written nothing twice.
    let http = reqwest::Client::new();
    let first_lines: Vec<u8> = sent[..sent.iter().position(|b| *b == b'\n').unwrap() + 1].to_vec();
    let r = http
        .post(&address.endpoint)
        .bearer_auth(token_of(&address))
        .header("Sluice-Last-Position", first_lines.len().to_string())
        .header("Sluice-Position-Kind", "byte-offset")
        .body(first_lines)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(&output).unwrap().len(), sent.len());
    // Wrong token: 401.
    let r = http
        .post(&address.endpoint)
        .bearer_auth("nope.nope")
        .body("x\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The consumer's control plane relays `started`, then completes its flow: the token is
    // revoked.
    consumer
        .dp
        .started(
            &prepared.data_flow_id,
            AddressMessage {
                message_id: "st".into(),
                data_address: None,
            },
        )
        .await
        .unwrap();
    consumer.dp.completed(&prepared.data_flow_id).await.unwrap();
    let r = http
        .post(&address.endpoint)
        .bearer_auth(token_of(&address))
        .body("late\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(std::fs::read(&output).unwrap(), sent);
}

#[tokio::test]
async fn non_https_push_endpoints_are_refused_when_https_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, 1000);
    let provider = node(|c| {
        c.require_https = true;
        c.datasets.insert("ds".into(), dataset(&input));
    })
    .await;
    let address =
        DataAddress::new(PUSH, "http://127.0.0.1:9/in").with_property("authorization", "t");
    let err = provider
        .dp
        .start(start("p-https", "ds", PUSH, Some(address), None))
        .await
        .expect_err("http refused");
    match err {
        SignalingError::Hook {
            message,
            client_error,
        } => {
            assert!(client_error);
            assert!(message.contains("dataAddress.endpoint"), "{message}");
            assert!(message.contains("https"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let err = provider
        .dp
        .start(start("p-unknown", "nope", PULL, None, None))
        .await
        .expect_err("unknown dataset");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_push_sends_errored_and_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, 10_000);
    let (cp, received) = control_plane().await;
    // A receiver that refuses everything (400: not worth retrying).
    let app = Router::new().route("/in", post(|| async { StatusCode::BAD_REQUEST }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let provider = node(|c| {
        c.datasets.insert("ds".into(), dataset(&input));
    })
    .await;
    let address =
        DataAddress::new(PUSH, format!("http://{addr}/in")).with_property("authorization", "t");
    let (started, _) = provider
        .dp
        .start(start("p-fail", "ds", PUSH, Some(address), Some(&cp)))
        .await
        .unwrap();
    let body = callback(&received, "p-fail", "errored").await;
    assert!(
        body["error"].as_str().unwrap_or_default().contains("400"),
        "{body}"
    );
    // `errored` changes no state.
    assert_eq!(
        provider
            .dp
            .status(&started.data_flow_id)
            .await
            .unwrap()
            .state,
        FlowState::Started
    );
    assert_eq!(provider.transfers.metrics().transfers_failed, 1);
    let _ = Arc::clone(&provider.transfers);
}
