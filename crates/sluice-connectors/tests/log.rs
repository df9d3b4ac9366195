//! The log destination: the acceptance kit, and what it prints, captured from `tracing`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_connectors::log::{LogDestination, LogPlugin};
use sluice_sdk::acceptance::{destination_acceptance, sample_records, DestinationFixture, Written};
use sluice_sdk::spec::validate_settings;
use sluice_sdk::{opencdc, Destination, Plugin, Settings};
use tracing_subscriber::fmt::MakeWriter;

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct LogFixture;

#[async_trait]
impl DestinationFixture for LogFixture {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(LogPlugin)
    }

    async fn settings(&mut self) -> Settings {
        settings(&[("level", "debug")])
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (settings(&[("level", "loud")]), "level"),
            (settings(&[("format", "xml")]), "format"),
        ]
    }

    async fn written(&mut self) -> Written {
        Written::Unverifiable
    }
}

#[tokio::test]
async fn passes_the_acceptance_kit() {
    let report = destination_acceptance(LogFixture).await;
    for check in ["specification", "configure", "write", "cancel"] {
        assert!(report.passed.contains(&check), "{check}: {report:?}");
    }
    assert_eq!(
        report.skipped.len(),
        1,
        "only read-back is skipped: {report:?}"
    );
}

/// Everything the subscriber printed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Writes three sample records through a log destination configured with `pairs`, while a
/// subscriber at `max_level` captures the output; returns it and the acknowledged count.
async fn log_records(pairs: &[(&str, &str)], max_level: tracing::Level) -> (String, usize) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(max_level)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let spec = LogPlugin.specification();
    let resolved = validate_settings(&spec.destination_params, &settings(pairs)).expect("valid");
    let mut d = LogDestination::new();
    d.configure(&resolved).await.expect("configure");
    d.open().await.expect("open");
    d.write(&sample_records(3)).await.expect("write");
    let acked = d.ack().await.expect("ack").count;
    d.teardown().await.expect("teardown");
    (captured.text(), acked)
}

#[tokio::test]
async fn prints_each_record_as_opencdc_json_at_info_by_default() {
    let (out, acked) = log_records(&[], tracing::Level::INFO).await;
    assert_eq!(acked, 3);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, written) in lines.iter().zip(sample_records(3)) {
        assert!(line.contains(" INFO "), "{line}");
        let json = line.split_once("record=").expect("a record field").1;
        let printed = opencdc::from_json(json.as_bytes()).expect("OpenCDC JSON");
        assert_eq!(printed, written);
    }
}

#[tokio::test]
async fn prints_payloads_with_the_message_at_the_chosen_level() {
    let (out, acked) = log_records(
        &[
            ("level", "warn"),
            ("format", "payload"),
            ("message", "dead letter"),
        ],
        tracing::Level::INFO,
    )
    .await;
    assert_eq!(acked, 3);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].contains(" WARN "), "{}", lines[1]);
    assert!(lines[1].contains("dead letter"), "{}", lines[1]);
    assert!(
        lines[1].ends_with("record=acceptance record 1"),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn below_the_process_level_nothing_prints_but_everything_is_acked() {
    let (out, acked) = log_records(&[("level", "debug")], tracing::Level::INFO).await;
    assert_eq!(out, "");
    assert_eq!(acked, 3);
}
