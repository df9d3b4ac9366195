//! The `mqtt` connector against a real Mosquitto (`SLUICE_TEST_MQTT_URL`): the acceptance kit on
//! both sides, faults (broker unreachable) and a broker restart mid-stream. The restart runs on a
//! private Mosquitto (its own port, config and persistence directory, started and stopped by the
//! test through its own process id), so it never disturbs the shared broker and runs whenever
//! `mosquitto` is installed.
//!
//! Every test uses its own topics and client ids and removes the persistent sessions it created.
#![cfg(feature = "mqtt")]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use sluice_connectors::mqtt::MqttPlugin;
use sluice_sdk::acceptance::{
    destination_acceptance, source_acceptance, DestinationFixture, Expected, SourceCapabilities,
    SourceFixture, Written,
};
use sluice_sdk::{Data, Destination, Plugin, Position, Record, Settings, Source};
use tokio::time::{sleep, timeout, Instant};

mod support;
use support::{bodies, payload, read_until_seen, settings, unique};

/// The broker's URL, or `None` (with the reason printed) when the tests must skip.
fn mqtt_url(test: &str) -> Option<String> {
    support::service_url("SLUICE_TEST_MQTT_URL", test, "mqtt://127.0.0.1:1883")
}

/// Host and port of an `mqtt://host:port` URL.
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .trim_start_matches("mqtt://")
        .trim_start_matches("tcp://")
        .trim_end_matches('/');
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().expect("port")),
        None => (rest.to_string(), 1883),
    }
}

/// A plain client for preparing sessions, publishing and reading back.
async fn helper(url: &str, client_id: &str, clean: bool) -> (AsyncClient, EventLoop) {
    let (host, port) = host_port(url);
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_clean_start(clean)
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(Some(16 << 20));
    if !clean {
        o.set_session_expiry_interval(Some(u32::MAX));
    }
    let (client, mut eventloop) = AsyncClient::new(o, 1024);
    loop {
        match timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("broker answers")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("helper cannot connect to {url}: {e}"),
        }
    }
    (client, eventloop)
}

async fn poll_until(eventloop: &mut EventLoop, mut done: impl FnMut(&Event) -> bool) {
    loop {
        let event = timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("broker answers")
            .expect("helper connection");
        if done(&event) {
            return;
        }
    }
}

/// Creates the persistent session `client_id` subscribed to `topic` at QoS 1 (what a source's
/// first run leaves behind), so messages published before the source opens are kept for it.
async fn create_session(url: &str, client_id: &str, topic: &str) {
    let (client, mut el) = helper(url, client_id, false).await;
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    poll_until(&mut el, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await;
    client.disconnect().await.expect("disconnect");
    let _ = timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// Removes the persistent session `client_id` (connects with clean start).
async fn forget_session(url: &str, client_id: &str) {
    let (client, mut el) = helper(url, client_id, true).await;
    let _ = client.disconnect().await;
    let _ = timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// Publishes `bodies` to `topic` at QoS 1 and waits for every PUBACK.
async fn publish(url: &str, topic: &str, bodies: &[Bytes]) {
    let (client, mut el) = helper(url, &unique("pub"), true).await;
    let publisher = {
        let client = client.clone();
        let topic = topic.to_string();
        let bodies = bodies.to_vec();
        tokio::spawn(async move {
            for b in bodies {
                client
                    .publish_bytes(topic.clone(), QoS::AtLeastOnce, false, b)
                    .await
                    .expect("publish");
            }
        })
    };
    let mut acked = 0;
    while acked < bodies.len() {
        let event = timeout(Duration::from_secs(10), el.poll())
            .await
            .expect("broker answers")
            .expect("publisher connection");
        if matches!(event, Event::Incoming(Packet::PubAck(_))) {
            acked += 1;
        }
    }
    publisher.await.expect("publisher");
    client.disconnect().await.expect("disconnect");
    let _ = timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// Reads what the persistent session `client_id` holds, until nothing arrives for `quiet`.
async fn drain_session(url: &str, client_id: &str, quiet: Duration) -> Vec<Bytes> {
    let (client, mut el) = helper(url, client_id, false).await;
    let mut out = Vec::new();
    while let Ok(event) = timeout(quiet, el.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = event.expect("reader connection") {
            out.push(p.payload);
        }
    }
    let _ = client.disconnect().await;
    let _ = timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
    out
}

async fn source(pairs: &[(&str, &str)], position: Option<&Position>) -> Box<dyn Source> {
    support::validated_source(&MqttPlugin, pairs, position).await
}

async fn destination(pairs: &[(&str, &str)]) -> Box<dyn Destination> {
    support::validated_destination(&MqttPlugin, pairs).await
}

/// Client ids whose sessions a test must remove at the end.
type Sessions = Arc<Mutex<Vec<String>>>;

async fn forget_all(url: &str, sessions: &Sessions) {
    let ids = sessions.lock().map(|s| s.clone()).unwrap_or_default();
    for id in ids {
        forget_session(url, &id).await;
    }
}

struct SourceFx {
    url: String,
    sessions: Sessions,
    topic: String,
    produced: usize,
}

#[async_trait]
impl SourceFixture for SourceFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(MqttPlugin)
    }

    async fn settings(&mut self) -> Settings {
        let client_id = unique("src");
        self.topic = format!("sluice-test/{}", unique("topic"));
        self.produced = 0;
        create_session(&self.url, &client_id, &self.topic).await;
        if let Ok(mut s) = self.sessions.lock() {
            s.push(client_id.clone());
        }
        settings(&[
            ("url", &self.url),
            ("topic", &self.topic),
            ("clientId", &client_id),
        ])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let b = bodies(&self.topic, self.produced..self.produced + n);
        self.produced += n;
        publish(&self.url, &self.topic, &b).await;
        b.into_iter().map(Expected::Payload).collect()
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (
                settings(&[
                    ("url", "http://127.0.0.1"),
                    ("topic", "t"),
                    ("clientId", "c"),
                ]),
                "url",
            ),
            (
                settings(&[
                    ("url", &self.url),
                    ("topic", "t"),
                    ("clientId", "c"),
                    ("receiveMaximum", "0"),
                ]),
                "receiveMaximum",
            ),
            (
                settings(&[
                    ("url", &self.url),
                    ("topic", "t"),
                    ("clientId", "has space"),
                ]),
                "clientId",
            ),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        support::LIVE_AND_RESUMABLE
    }
}

#[tokio::test]
async fn source_passes_the_acceptance_kit() {
    let Some(url) = mqtt_url("source_passes_the_acceptance_kit") else {
        return;
    };
    let sessions = Sessions::default();
    let fx = SourceFx {
        url: url.clone(),
        sessions: sessions.clone(),
        topic: String::new(),
        produced: 0,
    };
    let report = source_acceptance(fx).await;
    forget_all(&url, &sessions).await;
    assert!(report.skipped.is_empty(), "{report:?}");
    for check in [
        "read",
        "acks",
        "stop",
        "snapshot-then-live",
        "resume",
        "cancel",
    ] {
        assert!(report.passed.contains(&check), "{check}: {report:?}");
    }
}

struct DestinationFx {
    url: String,
    sessions: Sessions,
    reader: String,
    format: &'static str,
}

#[async_trait]
impl DestinationFixture for DestinationFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(MqttPlugin)
    }

    async fn settings(&mut self) -> Settings {
        let topic = format!("sluice-test/{}", unique("topic"));
        self.reader = unique("reader");
        let writer = unique("dst");
        // A reader session subscribed before anything is written keeps every message for the
        // read-back.
        create_session(&self.url, &self.reader, &topic).await;
        if let Ok(mut s) = self.sessions.lock() {
            s.push(self.reader.clone());
            s.push(writer.clone());
        }
        settings(&[
            ("url", &self.url),
            ("topic", &topic),
            ("clientId", &writer),
            ("format", self.format),
        ])
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (
                settings(&[("url", &self.url), ("topic", "a/#"), ("clientId", "c")]),
                "topic",
            ),
            (
                settings(&[
                    ("url", &self.url),
                    ("topic", "t"),
                    ("clientId", "c"),
                    ("inflight", "0"),
                ]),
                "inflight",
            ),
        ]
    }

    async fn written(&mut self) -> Written {
        let bodies = drain_session(&self.url, &self.reader, Duration::from_millis(500)).await;
        Written::Records(support::read_back(bodies, self.format))
    }
}

#[tokio::test]
async fn destination_passes_the_acceptance_kit_raw_and_opencdc() {
    let Some(url) = mqtt_url("destination_passes_the_acceptance_kit_raw_and_opencdc") else {
        return;
    };
    for format in ["raw", "opencdc"] {
        let sessions = Sessions::default();
        let fx = DestinationFx {
            url: url.clone(),
            sessions: sessions.clone(),
            reader: String::new(),
            format,
        };
        let report = destination_acceptance(fx).await;
        forget_all(&url, &sessions).await;
        assert!(report.skipped.is_empty(), "{format}: {report:?}");
        assert!(report.passed.contains(&"read-back"), "{format}: {report:?}");
    }
}

#[tokio::test]
async fn unreachable_broker_is_retried_then_named() {
    let mut src = MqttPlugin.new_source().expect("source side");
    src.configure(&settings(&[
        ("url", "mqtt://127.0.0.1:1"),
        ("topic", "t"),
        ("clientId", "sluice-unreachable"),
        ("connect.timeout", "700ms"),
    ]))
    .await
    .expect("configure");
    let started = Instant::now();
    let err = src.open(None).await.expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(text.starts_with("mqtt:"), "{text}");
    assert!(text.contains("setting `url`"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(700), "{text}");
    src.teardown().await.expect("teardown");

    let mut dst = MqttPlugin.new_destination().expect("destination side");
    dst.configure(&settings(&[
        ("url", "mqtt://127.0.0.1:1"),
        ("topic", "t"),
        ("clientId", "sluice-unreachable"),
        ("connect.timeout", "300ms"),
    ]))
    .await
    .expect("configure");
    let err = dst.open().await.expect_err("nothing listens on port 1");
    assert!(err.to_string().contains("setting `url`"), "{err}");
    dst.teardown().await.expect("teardown");
}

/// A private Mosquitto on a free port with persistence in a temporary directory: tests stop and
/// start it without disturbing the shared broker. Killed (by its own pid) when dropped.
struct PrivateBroker {
    child: Option<Child>,
    port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateBroker {
    fn start() -> Option<PrivateBroker> {
        Self::start_with("allow_anonymous true\n", |_| Some(()))
    }

    /// A private broker that only lets `user` in with `password`.
    fn start_with_password(user: &str, password: &str) -> Option<PrivateBroker> {
        Self::start_with("allow_anonymous false\n", |dir| {
            let file = dir.join("passwords");
            let made = Command::new("mosquitto_passwd")
                .arg("-b")
                .arg("-c")
                .arg(&file)
                .arg(user)
                .arg(password)
                .status()
                .ok()?;
            made.success().then_some(())?;
            let line = format!("password_file {}\n", file.display());
            std::fs::write(dir.join("auth.conf"), line).ok()
        })
    }

    fn start_with(
        access: &str,
        prepare: impl FnOnce(&std::path::Path) -> Option<()>,
    ) -> Option<PrivateBroker> {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().ok()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        prepare(dir.path())?;
        let auth = std::fs::read_to_string(dir.path().join("auth.conf")).unwrap_or_default();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                // `user root`: started as root, Mosquitto would switch to its own user, which
                // cannot write its persistence file into this root-owned directory.
                "user root\nlistener {port} 127.0.0.1\n{access}{auth}persistence true\n\
                 persistence_location {}/\nautosave_interval 0\n",
                dir.path().display()
            ),
        )
        .ok()?;
        let mut broker = PrivateBroker {
            child: None,
            port,
            config,
            _dir: dir,
        };
        broker.spawn(binary);
        Some(broker)
    }

    fn spawn(&mut self, binary: &str) {
        let child = Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    async fn wait_until_listening(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "private mosquitto did not start");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the broker gracefully (SIGTERM to its own pid: it saves its sessions to disk).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("mosquitto binary");
        self.spawn(binary);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn connection_lost_mid_stream_resumes_with_nothing_acked_lost() {
    // A private broker stopped and started again drops every connection: the source and the
    // destination must reconnect to their persistent sessions.
    let Some(mut broker) = PrivateBroker::start() else {
        eprintln!("skipping connection_lost_mid_stream_resumes_with_nothing_acked_lost: mosquitto is not installed");
        return;
    };
    broker.wait_until_listening().await;
    let url = broker.url();
    let topic = format!("sluice-test/{}", unique("lost"));
    let src_conf = [
        ("url", url.as_str()),
        ("topic", topic.as_str()),
        ("clientId", "sluice-test-lost-src"),
        ("reconnect.timeout", "60s"),
        ("receiveMaximum", "150"),
    ];
    let dst_conf = [
        ("url", url.as_str()),
        ("topic", topic.as_str()),
        ("clientId", "sluice-test-lost-dst"),
        ("reconnect.timeout", "60s"),
    ];
    let mut src = source(&src_conf, None).await;
    let mut dst = destination(&dst_conf).await;
    let records: Vec<Record> = (0..400)
        .map(|i| {
            Record::new(
                Position::from_u64(i),
                Data::from(format!("lost {i}").into_bytes()),
            )
        })
        .collect();
    dst.write(&records[..200]).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!((acks.count, acks.nacks.len()), (200, 0));
    // Read 100 and ack the first 50; 51..100 are read but unacked when the connection goes.
    let mut first = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while first.len() < 100 {
        assert!(
            Instant::now() < until,
            "only {} of 100 arrived",
            first.len()
        );
        first.extend(src.read(100 - first.len()).await.expect("read").records);
    }
    let acked: Vec<Position> = first[..50].iter().map(|r| r.position.clone()).collect();
    src.ack(&acked).await.expect("ack");
    sleep(Duration::from_millis(300)).await; // let the PUBACKs reach the broker
    broker.stop();
    // During the outage a read fails nothing (it may still return messages delivered before the
    // connection dropped); the destination accepts writes it cannot send yet.
    let during = src.read(10).await.expect("read while the broker is down");
    first.extend(during.records);
    let stale: Vec<Position> = first[50..].iter().map(|r| r.position.clone()).collect();
    src.ack(&stale)
        .await
        .expect("acks of the lost connection are accepted (and dropped)");
    let writer = tokio::spawn(async move {
        dst.write(&records[200..])
            .await
            .expect("write during the outage");
        let mut settled = 0;
        while settled < 200 {
            let acks = dst.ack().await.expect("ack after the restart");
            assert!(acks.nacks.is_empty(), "{:?}", acks.nacks);
            settled += acks.count;
        }
        dst.teardown().await.expect("teardown");
        records
    });
    sleep(Duration::from_secs(1)).await;
    broker.restart();
    broker.wait_until_listening().await;
    let records = writer.await.expect("writer");
    let want: BTreeSet<Bytes> = records[50..].iter().map(payload).collect();
    let rest = read_until_seen(src.as_mut(), &want, Duration::from_secs(60)).await;
    let again: Vec<Bytes> = rest.iter().map(payload).collect();
    for r in &records[..50] {
        assert!(!again.contains(&payload(r)), "an acked message came back");
    }
    let positions: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|r| r.position.to_u64().expect("decimal"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // No pause: teardown flushes the last PUBACKs before the connection closes.
    src.stop().await.expect("stop");
    src.teardown().await.expect("teardown");
    // Everything was acked: the session holds nothing more.
    let left = drain_session(&url, "sluice-test-lost-src", Duration::from_millis(500)).await;
    assert!(left.is_empty(), "{} messages were never acked", left.len());
}

#[tokio::test]
async fn wrong_credentials_fail_at_once_naming_the_settings() {
    let Some(broker) = PrivateBroker::start_with_password("sluice", "right") else {
        eprintln!("skipping wrong_credentials_fail_at_once_naming_the_settings: mosquitto or mosquitto_passwd is not installed");
        return;
    };
    broker.wait_until_listening().await;
    let url = broker.url();
    for (username, password) in [("sluice", "wrong"), ("nobody", "right")] {
        let mut src = MqttPlugin.new_source().expect("source side");
        src.configure(&settings(&[
            ("url", &url),
            ("topic", "t"),
            ("clientId", "sluice-test-credentials"),
            ("username", username),
            ("password", password),
            ("connect.timeout", "20s"),
        ]))
        .await
        .expect("configure");
        let started = Instant::now();
        let err = src.open(None).await.expect_err("refused");
        let text = err.to_string();
        assert!(text.starts_with("mqtt:"), "{text}");
        assert!(text.contains("`password`"), "{text}");
        assert!(!text.contains("wrong"), "the password leaked: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a refused login must not be retried until connect.timeout"
        );
        src.teardown().await.expect("teardown");
    }
    // The right ones work.
    let mut src = source(
        &[
            ("url", &url),
            ("topic", "t"),
            ("clientId", "sluice-test-credentials"),
            ("username", "sluice"),
            ("password", "right"),
        ],
        None,
    )
    .await;
    src.teardown().await.expect("teardown");
}
