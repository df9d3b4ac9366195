//! The `blackhole` destination: counts records and bytes, drops them and acknowledges everything —
//! the cheapest destination there is, for benchmarks. Each write costs two relaxed atomic adds
//! and a pass over the batch for the byte count. The counts are readable while it runs
//! ([`BlackholeDestination::counters`]) and logged as a summary when it stops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::spec::Specification;
use sluice_sdk::{Acks, ConnectorError, Destination, Plugin, Position, Record, Settings, Source};
use tokio::time::Instant;

/// Registers the blackhole: a destination only.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlackholePlugin;

impl Plugin for BlackholePlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "blackhole".into(),
            summary: "Counts and drops every record.".into(),
            description: "A destination that drops every record it receives and acknowledges it \
                at once, counting records and bytes (key and payload sizes). Use it to measure \
                how fast a source and the pipeline can go. When it stops it logs how many records \
                and bytes it received and at what rate. It has no settings."
                .into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: BTreeMap::new(),
            destination_params: BTreeMap::new(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        None
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(BlackholeDestination::new()))
    }
}

/// What a blackhole received, shareable with whoever wants to watch.
#[derive(Debug, Default)]
pub struct BlackholeCounters {
    records: AtomicU64,
    bytes: AtomicU64,
}

impl BlackholeCounters {
    /// Records received.
    pub fn records(&self) -> u64 {
        self.records.load(Relaxed)
    }

    /// Bytes received (the sum of [`Record::size`]).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
}

/// Counts and drops records; see the [module documentation](self).
#[derive(Debug)]
pub struct BlackholeDestination {
    counters: Arc<BlackholeCounters>,
    open: bool,
    pending: usize,
    opened_at: Option<Instant>,
}

impl Default for BlackholeDestination {
    fn default() -> Self {
        Self::new()
    }
}

impl BlackholeDestination {
    /// A new blackhole with zero counts.
    pub fn new() -> Self {
        BlackholeDestination {
            counters: Arc::default(),
            open: false,
            pending: 0,
            opened_at: None,
        }
    }

    /// Its counters, live.
    pub fn counters(&self) -> Arc<BlackholeCounters> {
        self.counters.clone()
    }
}

#[async_trait]
impl Destination for BlackholeDestination {
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        self.open = true;
        self.opened_at = Some(Instant::now());
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        if !self.open {
            return Err(ConnectorError::StreamNotOpen);
        }
        let bytes: usize = records.iter().map(Record::size).sum();
        self.counters
            .records
            .fetch_add(records.len() as u64, Relaxed);
        self.counters.bytes.fetch_add(bytes as u64, Relaxed);
        self.pending += records.len();
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        Ok(Acks {
            count: std::mem::take(&mut self.pending),
            nacks: Vec::new(),
        })
    }

    async fn stop(&mut self, last: Option<&Position>) -> Result<()> {
        let records = self.counters.records();
        let elapsed = self.opened_at.map(|t| t.elapsed()).unwrap_or_default();
        let rate = if elapsed.is_zero() {
            0.0
        } else {
            records as f64 / elapsed.as_secs_f64()
        };
        tracing::info!(
            records,
            bytes = self.counters.bytes(),
            elapsed = ?elapsed,
            records_per_second = rate.round(),
            last = ?last,
            "blackhole stopped"
        );
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.open = false;
        Ok(())
    }
}
