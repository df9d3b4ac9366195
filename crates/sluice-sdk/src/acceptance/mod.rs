//! The acceptance kit every connector passes.
//!
//! A connector's own tests call [`source_acceptance`] or [`destination_acceptance`] with a
//! *fixture*: a small adapter that knows how to make the connector's external resource (a file, a
//! topic) and put records into it or read them back. The kit then runs every check of
//! `spec/connectors.md` ("Acceptance kit") against the real connector and panics, naming the check
//! and the connector, at the first failure; it returns a [`Report`] of what ran and what was
//! skipped (and why) otherwise.
//!
//! Source checks: the specification is well-formed; valid settings configure, invalid ones fail
//! naming the parameter, and removing each required parameter fails; `read` before `open` fails
//! with [`ConnectorError::StreamNotOpen`](crate::ConnectorError::StreamNotOpen); teardown works
//! without open and twice; a source opened at no position reads what was produced, in order, each
//! record complete (non-empty unique position, a payload), honouring `max`; snapshot-then-live
//! reads have unique positions; resuming at a position continues right after it, nothing lost or
//! repeated (a snapshot may restart); acks are accepted for every record, also after `stop`;
//! `stop` returns the last position read and no record comes after it; reads dropped mid-flight
//! lose nothing, and a read cancelled by a [`CancellationToken`](tokio_util::sync::CancellationToken)
//! ends within [`CANCEL_BOUND`], leaving a source that still reads, stops and tears down.
//!
//! Destination checks: the same specification and settings checks; `write` before `open` fails;
//! records written in several batches are acknowledged, `Acks::count` adding up to exactly what
//! was written with no nacks; the fixture reads back what was written; teardown is idempotent and
//! works without open; a cancelled write ends promptly and the destination still tears down.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use async_trait::async_trait;
//! use sluice_sdk::acceptance::{source_acceptance, Expected, SourceCapabilities, SourceFixture};
//! use sluice_sdk::{Plugin, Settings};
//!
//! struct MyFixture {
//!     plugin: Arc<dyn Plugin>,
//! }
//!
//! #[async_trait]
//! impl SourceFixture for MyFixture {
//!     fn plugin(&self) -> Arc<dyn Plugin> {
//!         self.plugin.clone()
//!     }
//!     async fn settings(&mut self) -> Settings {
//!         Settings::new() // make a fresh, empty resource and return settings pointing at it
//!     }
//!     async fn produce(&mut self, n: usize) -> Vec<Expected> {
//!         vec![Expected::Any; n] // write n records into the resource; say what each looks like
//!     }
//!     fn capabilities(&self) -> SourceCapabilities {
//!         SourceCapabilities::default()
//!     }
//! }
//!
//! # async fn example(plugin: Arc<dyn Plugin>) {
//! // In a connector's tests, inside `#[tokio::test] async fn ...`:
//! let report = source_acceptance(MyFixture { plugin }).await;
//! assert!(report.passed.contains(&"resume"));
//! # }
//! ```

mod call;
mod destination_checks;
mod failure;
mod read;
mod settings_checks;
mod source_checks;
mod spec_checks;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::connector::{Destination, Source};
use crate::record::{metadata, Data, Position, Record};
use crate::registry::Plugin;
use crate::spec::Settings;

pub use spec_checks::{specification_problems, Side};

/// How soon a read or write must end once it was cancelled.
pub const CANCEL_BOUND: Duration = Duration::from_secs(5);

/// What one record produced by a [`SourceFixture`] should look like when read.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    /// Any complete record: for sources whose content the fixture does not predict.
    Any,
    /// `payload.after` as bytes: raw data as is, structured data as compact JSON.
    Payload(Bytes),
    /// `payload.after` exactly.
    After(Data),
}

/// What a source under test can do; decides which checks apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceCapabilities {
    /// Records produced after `open` are read too (a followed file, a broker, CDC).
    pub live: bool,
    /// Records that existed before `open` are read as `snapshot` operations, later ones are not.
    pub snapshot: bool,
    /// Once everything that existed at `open` was read, the stream ends (`end_of_stream`).
    pub end_of_stream: bool,
    /// `open(Some(position))` resumes right after `position`.
    pub resume: bool,
    /// The source makes its own records (a generator): reads never run dry, and
    /// [`SourceFixture::produce`] predicts the next records instead of creating them.
    pub self_producing: bool,
}

impl Default for SourceCapabilities {
    /// A source that resumes, reads only what existed at open and never ends by itself.
    fn default() -> Self {
        SourceCapabilities {
            live: false,
            snapshot: false,
            end_of_stream: false,
            resume: true,
            self_producing: false,
        }
    }
}

/// Adapts a source connector and its external resource to the kit.
///
/// The kit calls [`settings`](SourceFixture::settings) at the start of every check: it prepares
/// a fresh, empty resource and returns valid settings for it. [`produce`](SourceFixture::produce)
/// then makes `n` more records readable from that resource (before or after the source opened)
/// and says what each should look like, in the order they will be read.
#[async_trait]
pub trait SourceFixture: Send {
    /// The plugin under test.
    fn plugin(&self) -> Arc<dyn Plugin>;

    /// A new, unconfigured source. The default asks [`plugin`](SourceFixture::plugin); override
    /// it to keep a handle on each instance.
    fn new_source(&mut self) -> Box<dyn Source> {
        let plugin = self.plugin();
        match plugin.new_source() {
            Some(source) => source,
            None => panic!(
                "acceptance: plugin `{}` has no source side",
                plugin.specification().name
            ),
        }
    }

    /// Prepares a fresh, empty resource and returns valid settings for it (as written in a
    /// pipeline file: defaults may be left out).
    async fn settings(&mut self) -> Settings;

    /// Makes `n` more records readable from the current resource and returns what each should
    /// look like, in read order. A self-producing source only predicts its next `n` records.
    async fn produce(&mut self, n: usize) -> Vec<Expected>;

    /// Invalid settings, each with the parameter the rejection must name.
    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        Vec::new()
    }

    /// What the source can do.
    fn capabilities(&self) -> SourceCapabilities;
}

/// What a destination's resource holds after the kit wrote to it.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    /// The records, in the order they were stored (their `payload.after` is compared).
    Records(Vec<Record>),
    /// Only how many records arrived (a counter).
    Count(u64),
    /// Nothing the test can inspect (records printed to a terminal).
    Unverifiable,
}

/// Adapts a destination connector and its external resource to the kit.
#[async_trait]
pub trait DestinationFixture: Send {
    /// The plugin under test.
    fn plugin(&self) -> Arc<dyn Plugin>;

    /// A new, unconfigured destination. The default asks [`plugin`](DestinationFixture::plugin);
    /// override it to keep a handle on each instance (e.g. its counters).
    fn new_destination(&mut self) -> Box<dyn Destination> {
        let plugin = self.plugin();
        match plugin.new_destination() {
            Some(destination) => destination,
            None => panic!(
                "acceptance: plugin `{}` has no destination side",
                plugin.specification().name
            ),
        }
    }

    /// Prepares a fresh, empty resource and returns valid settings for it.
    async fn settings(&mut self) -> Settings;

    /// Invalid settings, each with the parameter the rejection must name.
    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        Vec::new()
    }

    /// `n` records to write; the default is [`sample_records`].
    fn records(&mut self, n: usize) -> Vec<Record> {
        sample_records(n)
    }

    /// What the resource prepared by the last [`settings`](DestinationFixture::settings) call
    /// holds now (called after the destination that wrote to it was torn down).
    async fn written(&mut self) -> Written;
}

/// `n` ordinary records: `create` operations at positions `1..=n` with a raw key, a raw payload
/// naming the record, and a collection in the metadata.
pub fn sample_records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut r = Record::new(
                Position::from_u64(i as u64 + 1),
                Data::from(format!("acceptance record {i}").into_bytes()),
            );
            r.key = Some(Data::from(format!("key-{i}").into_bytes()));
            r.metadata
                .insert(metadata::COLLECTION.to_string(), "acceptance".to_string());
            r
        })
        .collect()
}

/// What one acceptance run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The connector's name.
    pub connector: String,
    /// Checks that ran and passed, in order.
    pub passed: Vec<&'static str>,
    /// Checks that did not apply, with the reason.
    pub skipped: Vec<(&'static str, &'static str)>,
}

impl Report {
    fn new(connector: &str) -> Self {
        Report {
            connector: connector.to_string(),
            ..Report::default()
        }
    }

    fn pass(&mut self, check: &'static str) {
        self.passed.push(check);
    }

    fn skip(&mut self, check: &'static str, why: &'static str) {
        self.skipped.push((check, why));
    }
}

/// Runs every source check against the fixture's connector; panics at the first failure with a
/// message naming the check and the connector.
pub async fn source_acceptance<F: SourceFixture>(mut fixture: F) -> Report {
    source_checks::run(&mut fixture).await
}

/// Runs every destination check against the fixture's connector; panics at the first failure with
/// a message naming the check and the connector.
pub async fn destination_acceptance<F: DestinationFixture>(mut fixture: F) -> Report {
    destination_checks::run(&mut fixture).await
}
