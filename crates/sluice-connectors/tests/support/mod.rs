//! Scaffolding shared by the connector integration tests: service URLs from the environment,
//! unique names, settings, payloads and reading from a source until what a test waits for came.
//!
//! Each test file is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_sdk::acceptance::SourceCapabilities;
use sluice_sdk::spec::validate_settings;
use sluice_sdk::{Data, Destination, Plugin, Position, Record, Settings, Source};
use tokio::time::Instant;

/// The URL of a local service from the environment variable `var`, or `None` when it is unset or
/// empty — after printing that `test` skips and an `example` value that works.
pub fn service_url(var: &str, test: &str, example: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipping {test}: {var} is not set (e.g. {var}={example})");
            None
        }
    }
}

/// A name no other test or run uses: `sluice-test-<prefix>-<pid>-<counter>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "sluice-test-{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connector settings from `(key, value)` pairs.
pub fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Cases for the acceptance kit's invalid settings: `with(key, value)` is `base` with `key` set
/// to `value`, paired with `key` (the setting the error must name).
pub fn with_setting<'a>(
    base: &'a [(&'a str, &'a str)],
) -> impl Fn(&'static str, &'static str) -> (Settings, &'static str) + 'a {
    move |key, value| {
        let mut s = settings(base);
        s.insert(key.to_string(), value.to_string());
        (s, key)
    }
}

/// What a source that follows a broker (or a feed) can do: it reads what is produced after
/// `open` and resumes after a position; no snapshot, no end of stream, nothing self-made.
pub const LIVE_AND_RESUMABLE: SourceCapabilities = SourceCapabilities {
    live: true,
    snapshot: false,
    end_of_stream: false,
    resume: true,
    self_producing: false,
};

/// Message bodies `"<prefix> message <i>"` for every `i` in `range`.
pub fn bodies(prefix: &str, range: std::ops::Range<usize>) -> Vec<Bytes> {
    range
        .map(|i| Bytes::from(format!("{prefix} message {i}")))
        .collect()
}

/// `n` records with raw payloads `r0`, `r1`, … at positions 0, 1, ….
pub fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::new(
                Position::from_u64(i as u64),
                Data::from(format!("r{i}").into_bytes()),
            )
        })
        .collect()
}

/// The bytes of a record's `payload.after`, which must be there.
pub fn payload(r: &Record) -> Bytes {
    r.payload.after.as_ref().expect("payload.after").to_bytes()
}

/// The bytes of a record's `payload.after`, empty when there is none.
pub fn raw_payload(r: &Record) -> Vec<u8> {
    r.payload
        .after
        .as_ref()
        .map(|d| d.to_bytes().to_vec())
        .unwrap_or_default()
}

/// Message bodies a destination wrote, read back as records: OpenCDC JSON when `format` is
/// `opencdc`, raw payloads otherwise.
pub fn read_back(bodies: Vec<Bytes>, format: &str) -> Vec<Record> {
    bodies
        .into_iter()
        .map(|b| {
            if format == "opencdc" {
                sluice_sdk::opencdc::from_json(&b).expect("an OpenCDC body")
            } else {
                Record::new(Position::default(), Data::Raw(b))
            }
        })
        .collect()
}

/// `plugin`'s source, configured with `settings` as they are and opened at `position`.
pub async fn open_source(
    plugin: &dyn Plugin,
    settings: &Settings,
    position: Option<&Position>,
) -> Box<dyn Source> {
    let mut src = plugin.new_source().expect("source side");
    src.configure(settings).await.expect("configure");
    src.open(position).await.expect("open");
    src
}

/// `plugin`'s source, configured with `pairs` checked against its specification (defaults
/// filled in) and opened at `position`.
pub async fn validated_source(
    plugin: &dyn Plugin,
    pairs: &[(&str, &str)],
    position: Option<&Position>,
) -> Box<dyn Source> {
    let spec = plugin.specification();
    let resolved = validate_settings(&spec.source_params, &settings(pairs)).expect("valid");
    open_source(plugin, &resolved, position).await
}

/// `plugin`'s destination, configured with `pairs` checked against its specification (defaults
/// filled in) and opened.
pub async fn validated_destination(
    plugin: &dyn Plugin,
    pairs: &[(&str, &str)],
) -> Box<dyn Destination> {
    let spec = plugin.specification();
    let resolved = validate_settings(&spec.destination_params, &settings(pairs)).expect("valid");
    let mut dst = plugin.new_destination().expect("destination side");
    dst.configure(&resolved).await.expect("configure");
    dst.open().await.expect("open");
    dst
}

/// Reads until `n` records arrived; fails when they did not within `limit`.
pub async fn read_n(src: &mut dyn Source, n: usize, limit: Duration) -> Vec<Record> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records arrived within {limit:?}",
            out.len()
        );
        out.extend(src.read(n - out.len()).await.expect("read").records);
    }
    out
}

/// Reads until `want` distinct payloads have been seen (duplicates allowed), acking everything
/// read; returns every record read. Fails when they were not all seen within `limit`.
pub async fn read_until_seen(
    src: &mut dyn Source,
    want: &BTreeSet<Bytes>,
    limit: Duration,
) -> Vec<Record> {
    let deadline = Instant::now() + limit;
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    while !want.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "only {} of {} messages arrived within {limit:?}",
            want.intersection(&seen).count(),
            want.len()
        );
        let batch = src.read(100).await.expect("read");
        let positions: Vec<Position> = batch.records.iter().map(|r| r.position.clone()).collect();
        for r in &batch.records {
            seen.insert(payload(r));
        }
        all.extend(batch.records);
        src.ack(&positions).await.expect("ack");
    }
    all
}

/// Tests that stop and start a local broker hold this exclusively, every other test of the
/// binary shares it: tests of one binary run in parallel, and a broker going away would fail
/// the others. (Test binaries themselves run one after another.)
pub static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
