//! Throughput of the `mqtt` connector beside a direct rumqttc loop, in the same run (prints only).
//!
//! ```text
//! SLUICE_TEST_MQTT_URL=mqtt://127.0.0.1:1883 \
//!   cargo run --release -p sluice-connectors --example mqtt_bench -- [records] [batch]
//! ```
//!
//! Write: the destination gets `batch` records per `write` followed by an `ack` (every PUBACK
//! awaited); the baseline publishes the same 200-byte payloads at QoS 1 with rumqttc (MQTT 5,
//! 100 in flight) and counts PUBACKs. Read: a paced publisher (never more than 1,500 messages ahead
//! of the reader, so the broker's queue limit drops nothing) feeds a persistent session; the
//! baseline reads it with rumqttc (automatic acks, receive maximum 1000), the source with
//! `read(batch)` + `ack`. Topics and client ids are unique; sessions are removed afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use sluice_connectors::mqtt::MqttPlugin;
use sluice_sdk::{Data, Plugin, Position, Record, Settings};
use tokio::time::sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BODY: usize = 200;
const AHEAD: usize = 1500;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let records: usize = args.first().map_or(Ok(50_000), |s| s.parse())?;
    let batch: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let url = std::env::var("SLUICE_TEST_MQTT_URL")
        .map_err(|_| "set SLUICE_TEST_MQTT_URL, e.g. mqtt://127.0.0.1:1883")?;
    tokio::runtime::Runtime::new()?.block_on(run(&url, records, batch))
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.trim_start_matches("mqtt://").trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(1883)),
        None => (rest.to_string(), 1883),
    }
}

fn body(i: usize) -> Bytes {
    let mut s = format!("{{\"id\":{i},\"data\":\"");
    while s.len() < BODY - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

fn report(what: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what:<40} {n:>8} records in {secs:>6.2}s = {:>9.0} records/s",
        n as f64 / secs
    );
}

async fn client(
    url: &str,
    id: &str,
    persistent: bool,
) -> Result<(AsyncClient, EventLoop), BoxError> {
    let (host, port) = host_port(url);
    let mut o = MqttOptions::new(id, host, port);
    o.set_clean_start(!persistent)
        .set_keep_alive(Duration::from_secs(30))
        .set_outgoing_inflight_upper_limit(100)
        .set_receive_maximum(Some(1000));
    if persistent {
        o.set_session_expiry_interval(Some(u32::MAX));
    }
    let (c, mut el) = AsyncClient::new(o, 1024);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await? {
            return Ok((c, el));
        }
    }
}

async fn close(c: AsyncClient, mut el: EventLoop) {
    let _ = c.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// Creates (or, with `clean`, removes) the persistent session `id` subscribed to `topic`.
async fn session(url: &str, id: &str, topic: &str, clean: bool) -> Result<(), BoxError> {
    let (c, mut el) = client(url, id, !clean).await?;
    if !clean {
        c.subscribe(topic, QoS::AtLeastOnce).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
                break;
            }
        }
    }
    close(c, el).await;
    Ok(())
}

/// Publishes `n` messages at QoS 1, never more than `AHEAD` beyond `consumed`.
fn paced_publisher(
    url: String,
    topic: String,
    n: usize,
    consumed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Result<(), BoxError>> {
    tokio::spawn(async move {
        let (c, mut el) = client(&url, &format!("{topic}-pub"), false).await?;
        let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
        for i in 0..n {
            while i >= consumed.load(Ordering::Relaxed) + AHEAD {
                sleep(Duration::from_millis(1)).await;
            }
            c.publish_bytes(topic.clone(), QoS::AtLeastOnce, false, body(i))
                .await?;
        }
        sleep(Duration::from_millis(200)).await;
        let _ = c.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
        Ok(())
    })
}

async fn run(url: &str, records: usize, batch: usize) -> Result<(), BoxError> {
    let pid = std::process::id();
    let bodies: Vec<Bytes> = (0..records).map(body).collect();
    println!("{records} QoS 1 messages of {BODY} bytes, batches of {batch}");

    // Write: direct rumqttc.
    let topic = format!("sluice-bench/{pid}/write-direct");
    let (c, mut el) = client(url, &format!("sluice-bench-{pid}-wd"), false).await?;
    let publisher = {
        let c = c.clone();
        let bodies = bodies.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for b in bodies {
                c.publish_bytes(topic.clone(), QoS::AtLeastOnce, false, b)
                    .await?;
            }
            Ok::<(), BoxError>(())
        })
    };
    let started = Instant::now();
    let mut acked = 0;
    while acked < records {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await? {
            acked += 1;
        }
    }
    report("write: rumqttc publish QoS 1", records, started);
    publisher.await??;
    close(c, el).await;

    // Write: the destination.
    let dst_id = format!("sluice-bench-{pid}-ws");
    let settings: Settings = [
        ("url", url),
        ("topic", &format!("sluice-bench/{pid}/write-sluice")),
        ("clientId", &dst_id),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut dst = MqttPlugin.new_destination().ok_or("no destination")?;
    dst.configure(&settings).await?;
    dst.open().await?;
    let recs: Vec<Record> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Record::new(Position::from_u64(i as u64 + 1), Data::Raw(b.clone())))
        .collect();
    let started = Instant::now();
    for chunk in recs.chunks(batch) {
        dst.write(chunk).await?;
        let acks = dst.ack().await?;
        if !acks.nacks.is_empty() {
            return Err(format!("{} nacks", acks.nacks.len()).into());
        }
    }
    report("write: mqtt destination", records, started);
    dst.teardown().await?;
    session(url, &dst_id, "", true).await?;

    // Read: direct rumqttc subscriber with automatic acks.
    let topic = format!("sluice-bench/{pid}/read-direct");
    let reader_id = format!("sluice-bench-{pid}-rd");
    session(url, &reader_id, &topic, false).await?;
    let consumed = Arc::new(AtomicUsize::new(0));
    let (c, mut el) = client(url, &reader_id, true).await?;
    let publisher = paced_publisher(url.to_string(), topic.clone(), records, consumed.clone());
    let started = Instant::now();
    let mut n = 0;
    while n < records {
        if let Event::Incoming(Packet::Publish(_)) = el.poll().await? {
            n += 1;
            consumed.store(n, Ordering::Relaxed);
        }
    }
    report("read: rumqttc subscribe QoS 1", records, started);
    publisher.await??;
    close(c, el).await;
    session(url, &reader_id, &topic, true).await?;

    // Read: the source.
    let topic = format!("sluice-bench/{pid}/read-sluice");
    let source_id = format!("sluice-bench-{pid}-rs");
    session(url, &source_id, &topic, false).await?;
    let settings: Settings = [("url", url), ("topic", &topic), ("clientId", &source_id)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut src = MqttPlugin.new_source().ok_or("no source")?;
    src.configure(&settings).await?;
    src.open(None).await?;
    let consumed = Arc::new(AtomicUsize::new(0));
    let publisher = paced_publisher(url.to_string(), topic.clone(), records, consumed.clone());
    let started = Instant::now();
    let mut n = 0;
    while n < records {
        let read = src.read(batch).await?;
        let positions: Vec<Position> = read.records.iter().map(|r| r.position.clone()).collect();
        n += read.records.len();
        consumed.store(n, Ordering::Relaxed);
        src.ack(&positions).await?;
    }
    report("read: mqtt source", records, started);
    publisher.await??;
    src.stop().await?;
    src.teardown().await?;
    session(url, &source_id, &topic, true).await?;
    Ok(())
}
