//! Throughput figures (ignored by default; run in release with `--ignored --nocapture`):
//! provider pull GET of a file dataset over loopback, and a provider push of a file dataset
//! into a consumer push flow (two data planes), both byte-identical.

mod transfer_support;

use std::time::Instant;

use futures::StreamExt;
use sluice_signaling::FlowState;
use transfer_support::*;

fn size_mib() -> usize {
    std::env::var("SLUICE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn bench_pull_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, size_mib() << 20);
    let total = std::fs::metadata(&input).unwrap().len();
    let provider = node(|c| {
        c.datasets.insert("ds".into(), dataset(&input));
    })
    .await;
    let (started, _) = provider
        .dp
        .start(start("bench-pull", "ds", PULL, None, None))
        .await
        .unwrap();
    let a = started.data_address.unwrap();
    for round in 0..3 {
        let t = Instant::now();
        let r = reqwest::Client::new()
            .get(&a.endpoint)
            .bearer_auth(token_of(&a))
            .send()
            .await
            .unwrap();
        let mut stream = r.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            n += chunk.unwrap().len() as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(n, total);
        println!(
            "pull round {round}: {n} bytes in {secs:.3} s = {:.2} GiB/s",
            n as f64 / secs / (1u64 << 30) as f64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn bench_push_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    write_lines(&input, (size_mib() / 8).max(1) << 20);
    let total = std::fs::metadata(&input).unwrap().len();
    let (provider, consumer) = provider_and_consumer(&input, &output, "ds").await;
    let (prepared, _) = consumer
        .dp
        .prepare(prepare("bench-c", "ds", PUSH, None))
        .await
        .unwrap();
    let t = Instant::now();
    let (started, _) = provider
        .dp
        .start(start("bench-p", "ds", PUSH, prepared.data_address, None))
        .await
        .unwrap();
    wait_state(&provider.dp, &started.data_flow_id, FlowState::Completed).await;
    let secs = t.elapsed().as_secs_f64();
    assert!(std::fs::read(&output).unwrap() == std::fs::read(&input).unwrap());
    println!(
        "push: {total} bytes in {secs:.3} s = {:.1} MiB/s",
        total as f64 / secs / (1u64 << 20) as f64
    );
}
