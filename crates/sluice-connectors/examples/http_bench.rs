//! Throughput of the `http` connector beside direct reqwest / axum loops, in the same run (prints
//! only). Everything runs in-process on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p sluice-connectors --example http_bench -- [records] [batch]
//! ```
//!
//! Write: the destination gets `batch` records per `write` followed by an `ack` (`batch.size` =
//! `batch`, so one POST per batch); the baseline POSTs the same JSON arrays with reqwest, one after
//! the other. Both go to an axum server that parses each array and counts its elements. Read: four
//! concurrent senders POST arrays of `batch` JSON objects; the baseline is an axum handler that
//! parses and counts them, the webhook source is drained with `read(batch)` + `ack`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use sluice_connectors::http::{HttpPlugin, HttpSource};
use sluice_sdk::{Data, Plugin, Position, Record, Settings, Source};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BODY: usize = 200;
const SENDERS: usize = 4;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let records: usize = args.first().map_or(Ok(200_000), |s| s.parse())?;
    let batch: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    tokio::runtime::Runtime::new()?.block_on(run(records, batch))
}

fn payload(i: usize) -> Bytes {
    let mut s = format!("{{\"id\":{i},\"data\":\"");
    while s.len() < BODY - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

fn array(payloads: &[Bytes]) -> Bytes {
    let mut body = Vec::with_capacity(payloads.len() * (BODY + 1) + 2);
    body.push(b'[');
    for (i, p) in payloads.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(p);
    }
    body.push(b']');
    Bytes::from(body)
}

fn report(what: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what:<40} {n:>8} records in {secs:>6.2}s = {:>9.0} records/s",
        n as f64 / secs
    );
}

async fn count(State(counter): State<Arc<AtomicUsize>>, body: Bytes) -> StatusCode {
    match serde_json::from_slice::<Vec<Value>>(&body) {
        Ok(items) => {
            counter.fetch_add(items.len(), Ordering::Relaxed);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn counting_server() -> Result<(SocketAddr, Arc<AtomicUsize>), BoxError> {
    let counter = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/in", post(count))
        .with_state(counter.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, counter))
}

/// `SENDERS` tasks POSTing the arrays round-robin, each retrying 503 until accepted.
fn senders(url: String, bodies: Arc<Vec<Bytes>>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SENDERS)
        .map(|k| {
            let url = url.clone();
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for body in bodies.iter().skip(k).step_by(SENDERS) {
                    loop {
                        let sent = client.post(&url).body(body.clone()).send().await;
                        if matches!(&sent, Ok(r) if r.status().is_success()) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect()
}

async fn run(records: usize, batch: usize) -> Result<(), BoxError> {
    let payloads: Vec<Bytes> = (0..records).map(payload).collect();
    let arrays: Vec<Bytes> = payloads.chunks(batch).map(array).collect();
    println!("{records} JSON payloads of {BODY} bytes, {batch} per request");

    // Write: direct reqwest.
    let (addr, counter) = counting_server().await?;
    let url = format!("http://{addr}/in");
    let client = reqwest::Client::new();
    let started = Instant::now();
    for body in &arrays {
        let status = client.post(&url).body(body.clone()).send().await?.status();
        if !status.is_success() {
            return Err(format!("baseline got {status}").into());
        }
    }
    report(
        "write: reqwest POST loop",
        counter.load(Ordering::Relaxed),
        started,
    );

    // Write: the destination.
    let (addr, counter) = counting_server().await?;
    let settings: Settings = [
        ("url", format!("http://{addr}/in")),
        ("batch.size", batch.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut dst = HttpPlugin.new_destination().ok_or("no destination")?;
    dst.configure(&settings).await?;
    dst.open().await?;
    let recs: Vec<Record> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Record::new(Position::from_u64(i as u64 + 1), Data::Raw(p.clone())))
        .collect();
    let started = Instant::now();
    for chunk in recs.chunks(batch) {
        dst.write(chunk).await?;
        let acks = dst.ack().await?;
        if !acks.nacks.is_empty() {
            return Err(acks.nacks[0].reason.clone().into());
        }
    }
    report(
        "write: http destination",
        counter.load(Ordering::Relaxed),
        started,
    );
    dst.teardown().await?;

    // Read: a plain axum handler.
    let arrays = Arc::new(arrays);
    let (addr, counter) = counting_server().await?;
    let started = Instant::now();
    for s in senders(format!("http://{addr}/in"), arrays.clone()) {
        s.await?;
    }
    report(
        "read: axum handler parsing JSON",
        counter.load(Ordering::Relaxed),
        started,
    );

    // Read: the webhook source.
    let settings: Settings = [
        ("mode", "webhook"),
        ("address", "127.0.0.1:0"),
        ("path", "/in"),
        ("queue.size", "20000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut src = HttpSource::new();
    src.configure(&settings).await?;
    src.open(None).await?;
    let addr = src.local_addr().ok_or("not listening")?;
    let started = Instant::now();
    let tasks = senders(format!("http://{addr}/in"), arrays.clone());
    let mut n = 0;
    while n < records {
        let read = src.read(batch).await?;
        let positions: Vec<Position> = read.records.iter().map(|r| r.position.clone()).collect();
        n += read.records.len();
        src.ack(&positions).await?;
    }
    report("read: http webhook source", n, started);
    for t in tasks {
        t.await?;
    }
    src.stop().await?;
    src.teardown().await?;
    Ok(())
}
