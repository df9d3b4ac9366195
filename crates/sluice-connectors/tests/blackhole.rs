//! The blackhole: the acceptance kit (reading back its counters) and exact counts.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_connectors::blackhole::{BlackholeCounters, BlackholeDestination, BlackholePlugin};
use sluice_sdk::acceptance::{destination_acceptance, sample_records, DestinationFixture, Written};
use sluice_sdk::{ConnectorError, Data, Destination, Plugin, Position, Record, Settings};

/// Keeps the counters of the last blackhole it made, so the kit can read back what arrived.
#[derive(Default)]
struct BlackholeFixture {
    last: Arc<Mutex<Option<Arc<BlackholeCounters>>>>,
}

#[async_trait]
impl DestinationFixture for BlackholeFixture {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(BlackholePlugin)
    }

    fn new_destination(&mut self) -> Box<dyn Destination> {
        let d = BlackholeDestination::new();
        *self.last.lock().expect("lock") = Some(d.counters());
        Box::new(d)
    }

    async fn settings(&mut self) -> Settings {
        Settings::new()
    }

    async fn written(&mut self) -> Written {
        let counters = self.last.lock().expect("lock").clone();
        Written::Count(counters.map_or(0, |c| c.records()))
    }
}

#[tokio::test]
async fn passes_the_acceptance_kit() {
    let report = destination_acceptance(BlackholeFixture::default()).await;
    for check in ["specification", "write", "read-back", "cancel"] {
        assert!(report.passed.contains(&check), "{check}: {report:?}");
    }
}

#[tokio::test]
async fn counts_records_and_bytes_and_acks_them_all() {
    let mut d = BlackholeDestination::new();
    let counters = d.counters();
    d.configure(&Settings::new()).await.expect("configure");
    assert!(matches!(
        d.write(&sample_records(1)).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    d.open().await.expect("open");

    let mut keyed = Record::new(Position::from_u64(1), Data::from(vec![0u8; 100]));
    keyed.key = Some(Data::from("k"));
    let plain = Record::new(Position::from_u64(2), Data::from(vec![0u8; 50]));
    d.write(&[keyed, plain.clone()]).await.expect("write");
    d.write(&[plain]).await.expect("write");

    assert_eq!(counters.records(), 3);
    assert_eq!(counters.bytes(), 101 + 50 + 50);
    let acks = d.ack().await.expect("ack");
    assert_eq!((acks.count, acks.nacks.len()), (3, 0));
    assert_eq!(
        d.ack().await.expect("ack").count,
        0,
        "acks are never repeated"
    );
    d.stop(Some(&Position::from_u64(2))).await.expect("stop");
    d.teardown().await.expect("teardown");
    assert_eq!(counters.records(), 3, "counts survive teardown");
}
