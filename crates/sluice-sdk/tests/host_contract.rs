//! The host's contract (spec/connectors.md, "Acceptance kit", host part), checked against mock
//! plugins: errors pass through, stream calls out of lifecycle fail with "stream not open", stop
//! returns the plugin's last position, acks stay in order, a hung call returns once cancelled.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::host::{AckRefusal, GuardedDestination, GuardedSource};
use sluice_sdk::spec::Settings;
use sluice_sdk::{
    Acks, ConnectorError, Destination, Nack, Position, Progress, ProgressUnit, ReadBatch, Record,
    Source,
};
use tokio_util::sync::CancellationToken;

/// Generous bound for calls that must finish; far above any expected duration, so never flaky.
const BOUND: Duration = Duration::from_secs(10);

fn pos(n: u64) -> Position {
    Position::from_u64(n)
}

fn rec(n: u64) -> Record {
    Record::new(pos(n), "x")
}

/// Every call a mock received, by name.
type Calls = Arc<Mutex<Vec<String>>>;

fn count(calls: &Calls, name: &str) -> usize {
    calls.lock().unwrap().iter().filter(|c| *c == name).count()
}

/// What a mock source's `read` does.
enum ReadMode {
    /// Hands out `per_read` records per call from a counter; end of stream after `end`.
    Records { per_read: u64, end: u64 },
    /// Fails with this (transient) message.
    Fail(&'static str),
    /// Never completes.
    Hang,
}

/// A source plugin whose behaviour each test picks.
struct MockSource {
    calls: Calls,
    read: ReadMode,
    next: u64,
    last: Option<Position>,
    fail_ack: bool,
    fail_configure: bool,
}

impl MockSource {
    fn new(read: ReadMode) -> (Self, Calls) {
        let calls = Calls::default();
        let mock = MockSource {
            calls: calls.clone(),
            read,
            next: 0,
            last: None,
            fail_ack: false,
            fail_configure: false,
        };
        (mock, calls)
    }

    fn log(&self, call: &str) {
        self.calls.lock().unwrap().push(call.to_string());
    }
}

#[async_trait]
impl Source for MockSource {
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        self.log("configure");
        if self.fail_configure {
            return Err(ConnectorError::io(
                "reading /etc/mock.conf",
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        Ok(())
    }

    async fn on_created(&mut self, _settings: &Settings) -> Result<()> {
        self.log("on_created");
        Ok(())
    }

    async fn on_updated(&mut self, _before: &Settings, _after: &Settings) -> Result<()> {
        self.log("on_updated");
        Ok(())
    }

    async fn on_deleted(&mut self, _settings: &Settings) -> Result<()> {
        self.log("on_deleted");
        Ok(())
    }

    async fn open(&mut self, _position: Option<&Position>) -> Result<()> {
        self.log("open");
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        self.log("read");
        match self.read {
            ReadMode::Records { per_read, end } => {
                // Deliberately buggy after end of stream: keeps handing out records.
                let n = per_read.min(max as u64);
                let records: Vec<Record> = (self.next..self.next + n).map(rec).collect();
                self.next += n;
                if let Some(r) = records.last() {
                    self.last = Some(r.position.clone());
                }
                Ok(ReadBatch {
                    records,
                    end_of_stream: self.next >= end,
                })
            }
            ReadMode::Fail(message) => Err(ConnectorError::System {
                message: message.into(),
                transient: true,
            }),
            ReadMode::Hang => std::future::pending().await,
        }
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        self.log("ack");
        if self.fail_ack {
            return Err(ConnectorError::InvalidPosition {
                position: positions[0].clone(),
                reason: "broker rejected the ack".into(),
            });
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        self.log("stop");
        Ok(self.last.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.log("teardown");
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        Some(Progress {
            done: self.next,
            total: None,
            unit: ProgressUnit::Records,
        })
    }
}

fn guarded(read: ReadMode) -> (GuardedSource, Calls) {
    let (mock, calls) = MockSource::new(read);
    (GuardedSource::new(Box::new(mock)), calls)
}

fn records(per_read: u64) -> ReadMode {
    ReadMode::Records {
        per_read,
        end: u64::MAX,
    }
}

async fn open_and_read(source: &mut GuardedSource, reads: usize) -> Vec<Position> {
    source.open(None).await.unwrap();
    let mut read = Vec::new();
    for _ in 0..reads {
        let batch = source.read(100).await.unwrap();
        read.extend(batch.records.into_iter().map(|r| r.position));
    }
    read
}

#[tokio::test]
async fn plugin_errors_pass_through_unchanged() {
    let (mut mock, calls) = MockSource::new(ReadMode::Fail("disk on fire"));
    mock.fail_configure = true;
    let mut source = GuardedSource::new(Box::new(mock));
    match source.configure(&Settings::new()).await {
        Err(ConnectorError::Io { context, source }) => {
            assert_eq!(context, "reading /etc/mock.conf");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected the plugin's Io error, got {other:?}"),
    }
    source.open(None).await.unwrap();
    match source.read(10).await {
        Err(ConnectorError::System { message, transient }) => {
            assert_eq!(message, "disk on fire");
            assert!(transient);
        }
        other => panic!("expected the plugin's System error, got {other:?}"),
    }
    assert_eq!(count(&calls, "read"), 1);
}

#[tokio::test]
async fn plugin_ack_error_passes_through_and_later_acks_are_refused() {
    let (mut mock, calls) = MockSource::new(records(2));
    mock.fail_ack = true;
    let mut source = GuardedSource::new(Box::new(mock));
    let read = open_and_read(&mut source, 1).await;
    match source.ack(&read[..1]).await {
        Err(ConnectorError::InvalidPosition { reason, .. }) => {
            assert_eq!(reason, "broker rejected the ack")
        }
        other => panic!("expected the plugin's error, got {other:?}"),
    }
    // The next ack would be in order, but the one before it failed: refused, not reordered.
    assert!(matches!(
        source.check_ack(&read[..1]),
        Err(AckRefusal::AfterFailure { .. })
    ));
    assert!(matches!(
        source.ack(&read[..1]).await,
        Err(ConnectorError::InvalidPosition { .. })
    ));
    assert_eq!(
        count(&calls, "ack"),
        1,
        "the refused ack never reached the plugin"
    );
}

#[tokio::test]
async fn stream_calls_before_open_fail_with_stream_not_open() {
    let (mut source, calls) = guarded(records(3));
    assert!(matches!(
        source.read(10).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert!(matches!(
        source.ack(&[pos(0)]).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert!(matches!(
        source.stop().await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert_eq!(ConnectorError::StreamNotOpen.to_string(), "stream not open");
    assert!(
        calls.lock().unwrap().is_empty(),
        "nothing reached the plugin"
    );
}

#[tokio::test]
async fn reads_after_stop_or_teardown_fail_and_acks_flow_until_teardown() {
    let (mut source, calls) = guarded(records(3));
    let read = open_and_read(&mut source, 1).await;
    source.stop().await.unwrap();
    assert!(matches!(
        source.read(10).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    // The engine keeps acking what it processed after stop.
    source.ack(&read).await.unwrap();
    source.teardown().await.unwrap();
    assert!(matches!(
        source.read(10).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert!(matches!(
        source.ack(&[pos(3)]).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert!(matches!(
        source.open(None).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert_eq!(count(&calls, "read"), 1);
    assert_eq!(count(&calls, "open"), 1);
}

#[tokio::test]
async fn stop_returns_the_plugins_last_position() {
    let (mut source, calls) = guarded(records(4));
    let read = open_and_read(&mut source, 2).await;
    assert_eq!(read.last(), Some(&pos(7)));
    assert_eq!(source.stop().await.unwrap(), Some(pos(7)));
    assert_eq!(count(&calls, "stop"), 1);
}

#[tokio::test]
async fn acks_in_read_order_are_passed_on() {
    let (mut source, calls) = guarded(records(3));
    let read = open_and_read(&mut source, 2).await;
    assert_eq!(source.unacked(), 6);
    source.ack(&read[..2]).await.unwrap();
    source.ack(&read[2..3]).await.unwrap();
    source.ack(&read[3..]).await.unwrap();
    source.ack(&[]).await.unwrap();
    assert_eq!(source.unacked(), 0);
    assert_eq!(count(&calls, "ack"), 3);
}

#[tokio::test]
async fn out_of_order_ack_is_refused() {
    let (mut source, calls) = guarded(records(3));
    let read = open_and_read(&mut source, 1).await;
    assert_eq!(
        source.check_ack(&read[1..2]),
        Err(AckRefusal::OutOfOrder {
            position: pos(1),
            expected: pos(0),
        })
    );
    match source.ack(&[read[1].clone(), read[0].clone()]).await {
        Err(ConnectorError::InvalidPosition { position, reason }) => {
            assert_eq!(position, pos(1));
            assert!(reason.contains("out of order"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // After a refusal the stream of acks is broken: even the right one is refused.
    assert!(source.ack(&read[..1]).await.is_err());
    assert_eq!(count(&calls, "ack"), 0, "no refused ack reached the plugin");
}

#[tokio::test]
async fn ack_of_a_position_never_read_is_refused() {
    let (mut source, calls) = guarded(records(2));
    let read = open_and_read(&mut source, 1).await;
    assert_eq!(
        source.check_ack(&[read[0].clone(), read[1].clone(), pos(2)]),
        Err(AckRefusal::NeverRead { position: pos(2) })
    );
    source.ack(&read).await.unwrap();
    // Acking the same positions twice: they are no longer unacknowledged.
    assert!(matches!(
        source.ack(&read[..1]).await,
        Err(ConnectorError::InvalidPosition { .. })
    ));
    assert_eq!(count(&calls, "ack"), 1);
}

#[tokio::test]
async fn hung_read_returns_promptly_once_cancelled() {
    let (mut source, calls) = guarded(ReadMode::Hang);
    source.open(None).await.unwrap();
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cancel.cancel();
        })
    };
    let outcome = tokio::time::timeout(BOUND, async {
        tokio::select! {
            _ = cancel.cancelled() => None,
            r = source.read(10) => Some(r),
        }
    })
    .await
    .expect("the guard must not block cancellation");
    assert!(outcome.is_none(), "the hung read cannot have completed");
    canceller.await.unwrap();
    // The guard is still consistent after the dropped read.
    assert_eq!(source.unacked(), 0);
    assert_eq!(source.stop().await.unwrap(), None);
    source.teardown().await.unwrap();
    assert_eq!(count(&calls, "teardown"), 1);
}

#[tokio::test]
async fn end_of_stream_is_sticky_whatever_the_plugin_does() {
    let (mut source, calls) = guarded(ReadMode::Records {
        per_read: 2,
        end: 2,
    });
    source.open(None).await.unwrap();
    let b = source.read(10).await.unwrap();
    assert!(b.end_of_stream);
    assert_eq!(b.records.len(), 2);
    let b = source.read(10).await.unwrap();
    assert!(b.end_of_stream && b.records.is_empty());
    assert_eq!(count(&calls, "read"), 1);
}

#[tokio::test]
async fn teardown_is_idempotent_and_works_without_open() {
    let (mut source, calls) = guarded(records(1));
    source.teardown().await.unwrap();
    source.teardown().await.unwrap();
    assert_eq!(count(&calls, "teardown"), 1);
}

#[tokio::test]
async fn lifecycle_hooks_and_progress_pass_through() {
    let (mut source, calls) = guarded(records(5));
    let s = Settings::new();
    source.configure(&s).await.unwrap();
    source.on_created(&s).await.unwrap();
    source.on_updated(&s, &s).await.unwrap();
    source.on_deleted(&s).await.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec!["configure", "on_created", "on_updated", "on_deleted"]
    );
    open_and_read(&mut source, 1).await;
    assert_eq!(source.progress().map(|p| p.done), Some(5));
}

// --- destinations -----------------------------------------------------------------------------

/// A destination plugin that settles everything written on `ack`, or over-reports if told to.
struct MockDestination {
    calls: Calls,
    written: usize,
    over_report: bool,
    fail_write: bool,
}

#[async_trait]
impl Destination for MockDestination {
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        self.calls.lock().unwrap().push("open".into());
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        self.calls.lock().unwrap().push("write".into());
        if self.fail_write {
            return Err(ConnectorError::system("table is read-only"));
        }
        self.written += records.len();
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        let count = std::mem::take(&mut self.written) + usize::from(self.over_report);
        Ok(Acks {
            count,
            nacks: Vec::<Nack>::new(),
        })
    }

    async fn teardown(&mut self) -> Result<()> {
        self.calls.lock().unwrap().push("teardown".into());
        Ok(())
    }
}

fn guarded_destination(over_report: bool, fail_write: bool) -> (GuardedDestination, Calls) {
    let calls = Calls::default();
    let mock = MockDestination {
        calls: calls.clone(),
        written: 0,
        over_report,
        fail_write,
    };
    (GuardedDestination::new(Box::new(mock)), calls)
}

#[tokio::test]
async fn destination_write_before_open_or_after_stop_is_stream_not_open() {
    let (mut dest, calls) = guarded_destination(false, false);
    let batch: Vec<Record> = (0..3).map(rec).collect();
    assert!(matches!(
        dest.write(&batch).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert!(matches!(
        dest.ack().await,
        Err(ConnectorError::StreamNotOpen)
    ));
    dest.open().await.unwrap();
    dest.write(&batch).await.unwrap();
    dest.stop(Some(&pos(2))).await.unwrap();
    assert!(matches!(
        dest.write(&batch).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    // Acks keep flowing after stop.
    assert_eq!(dest.ack().await.unwrap().count, 3);
    dest.teardown().await.unwrap();
    dest.teardown().await.unwrap();
    assert!(matches!(
        dest.ack().await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert_eq!(count(&calls, "write"), 1);
    assert_eq!(count(&calls, "teardown"), 1);
}

#[tokio::test]
async fn destination_errors_pass_through_and_over_settling_is_caught() {
    let (mut dest, _) = guarded_destination(false, true);
    dest.open().await.unwrap();
    match dest.write(&[rec(0)]).await {
        Err(ConnectorError::System { message, .. }) => assert_eq!(message, "table is read-only"),
        other => panic!("expected the plugin's error, got {other:?}"),
    }

    let (mut dest, _) = guarded_destination(true, false);
    dest.open().await.unwrap();
    dest.write(&[rec(0), rec(1)]).await.unwrap();
    assert_eq!(dest.unsettled(), 2);
    let err = dest.ack().await.unwrap_err();
    assert!(err.to_string().contains("settled 3 records"), "{err}");
}

#[tokio::test]
async fn many_batches_acked_in_order_drain_the_unacked_queue() {
    // Many reads, acked batch by batch: the queue drains completely each time.
    let (mut source, _) = guarded(records(64));
    source.open(None).await.unwrap();
    let mut pending: VecDeque<Vec<Position>> = VecDeque::new();
    for _ in 0..10 {
        let b = source.read(64).await.unwrap();
        pending.push_back(b.records.iter().map(|r| r.position.clone()).collect());
    }
    assert_eq!(source.unacked(), 640);
    while let Some(batch) = pending.pop_front() {
        source.ack(&batch).await.unwrap();
    }
    assert_eq!(source.unacked(), 0);
}
