//! Provider pull: the public endpoint streams the dataset with a bearer token; suspend revokes
//! the token at once, resume hands out a new one, the refresh grant issues new access tokens.
//! Consumer pull: a second data plane pulls the address into a file destination and reports
//! `completed`.

mod transfer_support;

use sluice_signaling::{AddressMessage, FlowState, ReasonMessage};
use transfer_support::*;

async fn get(url: &str, token: &str) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_tokens_are_checked_revoked_renewed_and_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, 2 << 20);
    let data = std::fs::read(&input).unwrap();
    let provider = node(|c| {
        c.datasets.insert("ds".into(), dataset(&input));
    })
    .await;
    let (started, _) = provider
        .dp
        .start(start("pull-1", "ds", PULL, None, None))
        .await
        .unwrap();
    assert_eq!(started.state, FlowState::Started);
    let id = started.data_flow_id.clone();
    let a = started.data_address.expect("pull address");
    assert_eq!(a.endpoint_type, PULL);
    assert_eq!(
        a.endpoint,
        format!("{}/public/flows/{id}/data", provider.base)
    );
    assert_eq!(a.property("authType"), Some("bearer"));
    assert_eq!(a.property("expiresIn"), Some("600"));
    assert_eq!(
        a.property("refreshEndpoint"),
        Some(format!("{}/public/token", provider.base).as_str())
    );
    let token = token_of(&a);

    let (status, body) = get(&a.endpoint, &token).await;
    assert_eq!(status, 200);
    assert!(body == data, "the streamed body is the dataset");
    assert_eq!(get(&a.endpoint, "bad.token").await.0, 401);
    let r = reqwest::Client::new()
        .get(&a.endpoint)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A range resumes.
    let r = reqwest::Client::new()
        .get(&a.endpoint)
        .bearer_auth(&token)
        .header("Range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap()[..] == data[100..]);

    // The refresh grant (form): a new access token that works.
    let http = reqwest::Client::new();
    let refresh = a.property("refreshToken").unwrap().to_string();
    let r = http
        .post(format!("{}/public/token", provider.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=refresh_token&refresh_token={refresh}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    let refreshed = v["access_token"].as_str().unwrap().to_string();
    assert_ne!(refreshed, token);
    assert_eq!(get(&a.endpoint, &refreshed).await.0, 200);
    // The old access token was replaced.
    assert_eq!(get(&a.endpoint, &token).await.0, 401);
    // JSON works too; a bad refresh token is invalid_grant.
    let r = http
        .post(format!("{}/public/token", provider.base))
        .json(&serde_json::json!({"grant_type": "refresh_token", "refresh_token": "x.y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_grant");

    // Suspend revokes at once.
    provider
        .dp
        .suspend(
            &id,
            ReasonMessage {
                message_id: "s1".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(get(&a.endpoint, &refreshed).await.0, 401);
    let r = http
        .post(format!("{}/public/token", provider.base))
        .json(&serde_json::json!({"grant_type": "refresh_token", "refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the refresh token is revoked too");

    // Resume hands out a new address that works.
    let resumed = provider
        .dp
        .resume(
            &id,
            AddressMessage {
                message_id: "r1".into(),
                data_address: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(resumed.state, FlowState::Started);
    let b = resumed.data_address.expect("new address");
    let new_token = token_of(&b);
    assert_ne!(new_token, refreshed);
    let (status, body) = get(&b.endpoint, &new_token).await;
    assert_eq!(status, 200);
    assert!(body == data);
    assert_eq!(get(&b.endpoint, &refreshed).await.0, 401);

    provider
        .dp
        .terminate(
            &id,
            ReasonMessage {
                message_id: "t1".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(get(&b.endpoint, &new_token).await.0, 401);
    assert!(provider.transfers.metrics().bytes_transferred >= 3 * data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_pull_writes_the_file_and_reports_completed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    write_lines(&input, 10 << 20);
    let (cp, received) = control_plane().await;
    let (provider, consumer) = provider_and_consumer(&input, &output, PULL).await;
    let (prepared, _) = consumer
        .dp
        .prepare(prepare("cpull-1", "ds", PULL, Some(&cp)))
        .await
        .unwrap();
    assert_eq!(prepared.state, FlowState::Prepared);
    assert!(prepared.data_address.is_none());
    let (started, _) = provider
        .dp
        .start(start("ppull-1", "ds", PULL, None, None))
        .await
        .unwrap();
    consumer
        .dp
        .started(
            &prepared.data_flow_id,
            AddressMessage {
                message_id: "st-1".into(),
                data_address: started.data_address.clone(),
            },
        )
        .await
        .unwrap();
    let body = callback(&received, "cpull-1", "completed").await;
    assert_eq!(body["state"], "COMPLETED");
    wait_state(&consumer.dp, &prepared.data_flow_id, FlowState::Completed).await;
    assert!(
        std::fs::read(&output).unwrap() == std::fs::read(&input).unwrap(),
        "byte-identical"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_start_reports_started_with_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, 1000);
    let (cp, received) = control_plane().await;
    let provider = node(|c| {
        let mut d = dataset(&input);
        d.asynchronous = true;
        c.datasets.insert("ds".into(), d);
    })
    .await;
    let (started, is_async) = provider
        .dp
        .start(start("apull-1", "ds", PULL, None, Some(&cp)))
        .await
        .unwrap();
    assert!(is_async);
    assert_eq!(started.state, FlowState::Starting);
    let body = callback(&received, "apull-1", "started").await;
    assert_eq!(body["state"], "STARTED");
    let a: sluice_signaling::DataAddress =
        serde_json::from_value(body["dataAddress"].clone()).unwrap();
    wait_state(&provider.dp, &started.data_flow_id, FlowState::Started).await;
    assert_eq!(get(&a.endpoint, &token_of(&a)).await.0, 200);
}
