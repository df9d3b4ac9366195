//! Scenarios of the pull and push source helpers (spec/connectors.md, "Writing a source").

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_sdk::source_helpers::{
    opener_fn, BatchEnd, BatchOptions, HelperError, HelperSource, Opener, OptionsError, PushEvent,
    SourceInstance, PROGRESS_SCALE,
};
use sluice_sdk::spec::Settings;
use sluice_sdk::{ConnectorError, Position, Progress, ProgressUnit, Record, Source};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous bound for calls that must finish; far above any expected duration, so never flaky.
const BOUND: Duration = Duration::from_secs(10);

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, fut)
        .await
        .expect("call did not finish within the bound")
}

fn rec(n: u64) -> Record {
    Record::new(Position::from_u64(n), format!("r{n}").into_bytes())
}

fn positions(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r.position.to_u64().unwrap())
        .collect()
}

fn opts(batch_size: usize, timeout: Duration) -> BatchOptions {
    BatchOptions::default()
        .with_batch_size(batch_size)
        .unwrap()
        .with_timeout(timeout)
}

/// A pull function yielding records `from..to`, then end of stream; counts its calls.
fn counting_pull(
    from: u64,
    to: u64,
    calls: Arc<AtomicUsize>,
) -> impl FnMut() -> sluice_sdk::connector::Result<Option<Record>> + Send + 'static {
    let mut next = from;
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        if next >= to {
            return Ok(None);
        }
        next += 1;
        Ok(Some(rec(next - 1)))
    }
}

fn endless_pull() -> impl FnMut() -> sluice_sdk::connector::Result<Option<Record>> + Send + 'static
{
    counting_pull(0, u64::MAX, Arc::new(AtomicUsize::new(0)))
}

fn close_counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    (count, move || {
        c.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn defaults_are_128_records_256_kib_30_ms() {
    let o = BatchOptions::default();
    assert_eq!(o.batch_size(), 128);
    assert_eq!(o.max_event_size(), 256 * 1024);
    assert_eq!(o.timeout(), Duration::from_millis(30));
}

#[test]
fn batch_size_zero_is_rejected() {
    let err = BatchOptions::default().with_batch_size(0).unwrap_err();
    assert_eq!(err, OptionsError::ZeroBatchSize);
    assert!(matches!(
        ConnectorError::from(err),
        ConnectorError::InvalidSettings(_)
    ));
    assert_eq!(
        BatchOptions::default()
            .with_batch_size(1)
            .unwrap()
            .batch_size(),
        1
    );
}

#[tokio::test]
async fn pull_fills_a_full_batch_in_order() {
    let mut inst = SourceInstance::pull(endless_pull(), opts(4, Duration::from_secs(3600)));
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::Full);
    assert_eq!(positions(&b.records), vec![0, 1, 2, 3]);
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(positions(&b.records), vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn push_fills_a_full_batch_from_queued_records() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    for n in 0..6 {
        tx.send(Ok(rec(n))).await.unwrap();
    }
    let mut inst = SourceInstance::push(rx, opts(4, Duration::from_secs(3600)));
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::Full);
    assert_eq!(positions(&b.records), vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn push_timeout_delivers_the_partial_batch() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    for n in 0..3 {
        tx.send(Ok(rec(n))).await.unwrap();
    }
    let mut inst = SourceInstance::push(rx, opts(128, Duration::from_millis(20)));
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::Timeout);
    assert_eq!(positions(&b.records), vec![0, 1, 2]);
    drop(tx);
}

#[tokio::test]
async fn pull_timeout_delivers_the_partial_batch_and_is_not_sticky() {
    // A zero timeout expires after the first call: one record per batch, reason Timeout.
    let mut inst = SourceInstance::pull(endless_pull(), opts(128, Duration::ZERO));
    for expected in 0..3 {
        let b = within(inst.next_batch()).await.unwrap();
        assert_eq!(b.end, BatchEnd::Timeout);
        assert_eq!(positions(&b.records), vec![expected]);
    }
}

#[tokio::test]
async fn timeout_with_an_empty_batch_is_not_sticky() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    let mut inst = SourceInstance::push(rx, opts(128, Duration::from_millis(10)));
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::Timeout);
    assert!(b.records.is_empty());
    assert!(!inst.is_ended());

    tx.send(Ok(rec(7))).await.unwrap();
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(positions(&b.records), vec![7]);
    assert_eq!(b.end, BatchEnd::Timeout);
}

#[tokio::test]
async fn pull_end_of_stream_is_sticky_and_delivers_the_last_records() {
    let calls = Arc::new(AtomicUsize::new(0));
    let pull = counting_pull(0, 3, calls.clone());
    let mut inst = SourceInstance::pull(pull, opts(10, Duration::from_secs(3600)));
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::EndOfStream);
    assert_eq!(positions(&b.records), vec![0, 1, 2]);
    for _ in 0..3 {
        let b = within(inst.next_batch()).await.unwrap();
        assert_eq!(b.end, BatchEnd::EndOfStream);
        assert!(b.records.is_empty());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "not called again after None"
    );
}

#[tokio::test]
async fn push_channel_closed_is_a_sticky_end_of_stream() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    tx.send(Ok(rec(0))).await.unwrap();
    tx.send(Ok(rec(1))).await.unwrap();
    drop(tx);
    let mut inst = SourceInstance::push(rx, opts(10, Duration::from_secs(3600)));
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::EndOfStream);
    assert_eq!(positions(&b.records), vec![0, 1]);
    for _ in 0..2 {
        let b = within(inst.next_batch()).await.unwrap();
        assert!(b.is_end_of_stream());
        assert!(b.records.is_empty());
    }
}

#[tokio::test]
async fn push_error_ends_the_stream_after_reporting_it() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    tx.send(Ok(rec(0))).await.unwrap();
    tx.send(Ok(rec(1))).await.unwrap();
    tx.send(Err(ConnectorError::system("broker gone")))
        .await
        .unwrap();
    tx.send(Ok(rec(2))).await.unwrap();
    let (closed, on_close) = close_counter();
    let mut inst = SourceInstance::push(rx, opts(10, Duration::from_secs(3600))).on_close(on_close);

    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::Interrupted);
    assert_eq!(positions(&b.records), vec![0, 1]);

    match within(inst.next_batch()).await {
        Err(HelperError::Source(ConnectorError::System { message, transient })) => {
            assert_eq!(message, "broker gone");
            assert!(!transient);
        }
        other => panic!("expected the pushed error, got {other:?}"),
    }
    let b = within(inst.next_batch()).await.unwrap();
    assert!(b.is_end_of_stream() && b.records.is_empty());
    assert!(
        tx.is_closed(),
        "the channel is released once the stream ends"
    );
    assert_eq!(closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn push_error_with_nothing_batched_is_returned_at_once() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    tx.send(Err(ConnectorError::system("nope"))).await.unwrap();
    let mut inst = SourceInstance::push(rx, opts(10, Duration::from_secs(3600)));
    assert!(matches!(
        within(inst.next_batch()).await,
        Err(HelperError::Source(ConnectorError::System { .. }))
    ));
    assert!(within(inst.next_batch()).await.unwrap().is_end_of_stream());
}

#[tokio::test]
async fn pull_error_delivers_the_partial_batch_then_the_error() {
    let mut n = 0u64;
    let pull = move || {
        n += 1;
        if n == 3 {
            return Err(ConnectorError::system("parse failed"));
        }
        Ok(Some(rec(n)))
    };
    let mut inst = SourceInstance::pull(pull, opts(10, Duration::from_secs(3600)));
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::Interrupted);
    assert_eq!(positions(&b.records), vec![1, 2]);
    let err = within(inst.next_batch()).await.unwrap_err();
    assert_eq!(err.to_string(), "parse failed");
    let b = within(inst.next_batch()).await.unwrap();
    assert!(b.is_end_of_stream() && b.records.is_empty());
}

#[tokio::test]
async fn event_over_the_maximum_size_is_an_error_not_a_truncation() {
    let options = opts(10, Duration::from_secs(3600))
        .with_max_event_size(8)
        .unwrap();
    let mut records = vec![
        Record::new(Position::from_u64(1), b"12345678".to_vec()),
        Record::new(Position::from_u64(2), b"123456789".to_vec()),
    ]
    .into_iter();
    let mut inst = SourceInstance::pull(move || Ok(records.next()), options);

    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::Interrupted);
    assert_eq!(
        positions(&b.records),
        vec![1],
        "a record at the limit passes"
    );
    match within(inst.next_batch()).await {
        Err(HelperError::EventTooLarge {
            position,
            size,
            max,
        }) => {
            assert_eq!(position, Position::from_u64(2));
            assert_eq!((size, max), (9, 8));
        }
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
    assert!(within(inst.next_batch()).await.unwrap().is_end_of_stream());
}

#[tokio::test]
async fn oversized_event_maps_to_a_permanent_connector_error() {
    let (tx, rx) = mpsc::channel::<PushEvent>(4);
    tx.send(Ok(Record::new(Position::from_u64(9), vec![0u8; 100])))
        .await
        .unwrap();
    let options = opts(10, Duration::from_secs(3600))
        .with_max_event_size(99)
        .unwrap();
    let err = within(SourceInstance::push(rx, options).next_batch())
        .await
        .unwrap_err();
    match ConnectorError::from(err) {
        ConnectorError::System { message, transient } => {
            assert!(!transient);
            assert!(message.contains("100 bytes"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn cancellation_ends_the_stream_promptly_while_the_push_channel_is_idle() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    tx.send(Ok(rec(0))).await.unwrap();
    let cancel = CancellationToken::new();
    let (closed, on_close) = close_counter();
    // A one-hour timeout: only the cancellation can end this call within the bound.
    let mut inst = SourceInstance::push(rx, opts(128, Duration::from_secs(3600)))
        .with_cancellation(cancel.clone())
        .on_close(on_close);
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
    });
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(b.end, BatchEnd::EndOfStream);
    assert_eq!(positions(&b.records), vec![0], "partial batch delivered");
    assert_eq!(closed.load(Ordering::SeqCst), 1);
    assert!(tx.is_closed());
    let b = within(inst.next_batch()).await.unwrap();
    assert!(b.is_end_of_stream() && b.records.is_empty());
    canceller.await.unwrap();
}

#[tokio::test]
async fn cancellation_before_a_call_ends_a_pull_stream_without_calling_the_function() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let mut inst = SourceInstance::pull(
        counting_pull(0, 100, calls.clone()),
        opts(8, Duration::from_secs(3600)),
    )
    .with_cancellation(cancel.clone());
    cancel.cancel();
    let b = within(inst.next_batch()).await.unwrap();
    assert!(b.is_end_of_stream() && b.records.is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn close_callback_is_called_exactly_once() {
    // At end of stream, then again through close() and drop: still once.
    let (at_end, on_close) = close_counter();
    let mut inst = SourceInstance::pull(
        counting_pull(0, 1, Arc::new(AtomicUsize::new(0))),
        opts(8, Duration::from_secs(3600)),
    )
    .on_close(on_close);
    assert!(within(inst.next_batch()).await.unwrap().is_end_of_stream());
    assert!(within(inst.next_batch()).await.unwrap().is_end_of_stream());
    inst.close();
    drop(inst);
    assert_eq!(at_end.load(Ordering::SeqCst), 1);

    // Through close(), twice, then drop.
    let (explicit, on_close) = close_counter();
    let mut inst = SourceInstance::pull(endless_pull(), BatchOptions::default()).on_close(on_close);
    inst.close();
    inst.close();
    let b = within(inst.next_batch()).await.unwrap();
    assert!(b.is_end_of_stream() && b.records.is_empty());
    drop(inst);
    assert_eq!(explicit.load(Ordering::SeqCst), 1);

    // Only by dropping.
    let (dropped, on_close) = close_counter();
    let (_tx, rx) = mpsc::channel::<PushEvent>(1);
    drop(SourceInstance::push(rx, BatchOptions::default()).on_close(on_close));
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dropped_next_batch_keeps_the_records_it_collected() {
    let (tx, rx) = mpsc::channel::<PushEvent>(16);
    tx.send(Ok(rec(0))).await.unwrap();
    tx.send(Ok(rec(1))).await.unwrap();
    let mut inst = SourceInstance::push(rx, opts(10, Duration::from_secs(3600)));
    tokio::select! {
        r = inst.next_batch() => panic!("the call should still be waiting, got {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(30)) => {}
    }
    tx.send(Ok(rec(2))).await.unwrap();
    drop(tx);
    let b = within(inst.next_batch()).await.unwrap();
    assert_eq!(positions(&b.records), vec![0, 1, 2]);
    assert_eq!(b.end, BatchEnd::EndOfStream);
}

#[tokio::test]
async fn next_batch_up_to_respects_the_smaller_limit() {
    let mut inst = SourceInstance::pull(endless_pull(), opts(10, Duration::from_secs(3600)));
    let b = within(inst.next_batch_up_to(3)).await.unwrap();
    assert_eq!(b.end, BatchEnd::Full);
    assert_eq!(positions(&b.records), vec![0, 1, 2]);
    let b = within(inst.next_batch_up_to(1000)).await.unwrap();
    assert_eq!(b.records.len(), 10, "never more than the batch size");
}

// --- HelperSource -----------------------------------------------------------------------------

/// An opener over a push channel per open, recording acks and teardowns.
struct ChannelOpener {
    events: Option<mpsc::Receiver<PushEvent>>,
    acked: Arc<Mutex<Vec<Position>>>,
    teardowns: Arc<AtomicUsize>,
}

#[async_trait]
impl Opener for ChannelOpener {
    async fn configure(&mut self, _settings: &Settings) -> sluice_sdk::connector::Result<()> {
        Ok(())
    }

    async fn open(
        &mut self,
        _position: Option<&Position>,
    ) -> sluice_sdk::connector::Result<SourceInstance> {
        let rx = self
            .events
            .take()
            .ok_or_else(|| ConnectorError::system("opened twice"))?;
        Ok(SourceInstance::push(
            rx,
            opts(128, Duration::from_millis(10)),
        ))
    }

    async fn ack(&mut self, positions: &[Position]) -> sluice_sdk::connector::Result<()> {
        self.acked.lock().unwrap().extend(positions.iter().cloned());
        Ok(())
    }

    async fn teardown(&mut self) -> sluice_sdk::connector::Result<()> {
        self.teardowns.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A channel-fed helper source with the sender to feed it, its acks and its teardown count.
struct ChannelSource {
    tx: mpsc::Sender<PushEvent>,
    source: HelperSource<ChannelOpener>,
    acked: Arc<Mutex<Vec<Position>>>,
    teardowns: Arc<AtomicUsize>,
}

fn channel_source() -> ChannelSource {
    let (tx, rx) = mpsc::channel(16);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let teardowns = Arc::new(AtomicUsize::new(0));
    let source = HelperSource::new(ChannelOpener {
        events: Some(rx),
        acked: acked.clone(),
        teardowns: teardowns.clone(),
    });
    ChannelSource {
        tx,
        source,
        acked,
        teardowns,
    }
}

#[tokio::test]
async fn helper_source_read_and_ack_before_open_are_stream_not_open() {
    let ChannelSource {
        tx: _tx,
        mut source,
        ..
    } = channel_source();
    assert!(matches!(
        source.read(10).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert!(matches!(
        source.ack(&[Position::from_u64(1)]).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert!(matches!(
        source.stop().await,
        Err(ConnectorError::StreamNotOpen)
    ));
    source.teardown().await.unwrap();
}

#[tokio::test]
async fn helper_source_lifecycle_stop_returns_the_last_position() {
    let ChannelSource {
        tx,
        mut source,
        acked,
        teardowns,
    } = channel_source();
    source.configure(&Settings::new()).await.unwrap();
    source.open(None).await.unwrap();
    for n in 0..5 {
        tx.send(Ok(rec(n))).await.unwrap();
    }
    let b = within(source.read(3)).await.unwrap();
    assert_eq!(positions(&b.records), vec![0, 1, 2]);
    assert!(!b.end_of_stream);
    let b = within(source.read(100)).await.unwrap();
    assert_eq!(positions(&b.records), vec![3, 4]);

    let last = source.stop().await.unwrap();
    assert_eq!(last, Some(Position::from_u64(4)));
    assert!(
        tx.is_closed(),
        "stop closes the instance and releases its channel"
    );
    assert!(matches!(
        source.read(10).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    // Acks keep flowing after stop, until teardown.
    source.ack(&[Position::from_u64(0)]).await.unwrap();
    assert_eq!(*acked.lock().unwrap(), vec![Position::from_u64(0)]);

    source.teardown().await.unwrap();
    source.teardown().await.unwrap();
    assert_eq!(teardowns.load(Ordering::SeqCst), 1);
    assert!(matches!(
        source.ack(&[Position::from_u64(1)]).await,
        Err(ConnectorError::StreamNotOpen)
    ));
}

#[tokio::test]
async fn helper_source_passes_the_pushed_error_through_then_ends() {
    let ChannelSource { tx, mut source, .. } = channel_source();
    source.open(None).await.unwrap();
    tx.send(Ok(rec(0))).await.unwrap();
    tx.send(Err(ConnectorError::System {
        message: "lost connection".into(),
        transient: true,
    }))
    .await
    .unwrap();
    let b = within(source.read(10)).await.unwrap();
    assert_eq!(positions(&b.records), vec![0]);
    assert!(!b.end_of_stream);
    match within(source.read(10)).await {
        Err(ConnectorError::System { message, transient }) => {
            assert_eq!(message, "lost connection");
            assert!(transient);
        }
        other => panic!("expected the pushed error unchanged, got {other:?}"),
    }
    let b = within(source.read(10)).await.unwrap();
    assert!(b.end_of_stream && b.records.is_empty());
    assert_eq!(source.stop().await.unwrap(), Some(Position::from_u64(0)));
}

#[tokio::test]
async fn helper_source_opens_at_the_position_from_its_opener() {
    let mut source = HelperSource::new(opener_fn(|position: Option<&Position>| {
        let from = position.and_then(Position::to_u64).map_or(0, |p| p + 1);
        Ok(SourceInstance::pull(
            counting_pull(from, 8, Arc::new(AtomicUsize::new(0))),
            opts(128, Duration::from_secs(3600)),
        ))
    }));
    source.open(Some(&Position::from_u64(4))).await.unwrap();
    let b = within(source.read(100)).await.unwrap();
    assert_eq!(positions(&b.records), vec![5, 6, 7]);
    assert!(b.end_of_stream);
    assert_eq!(source.stop().await.unwrap(), Some(Position::from_u64(7)));
}

#[tokio::test]
async fn helper_source_read_is_cancel_safe() {
    let ChannelSource { tx, mut source, .. } = channel_source();
    source.open(None).await.unwrap();
    // Queue records, then drop a read while it waits for more (its batch is not full): the
    // records it had collected must come back on a later read. (Should the read finish first on a
    // very slow machine, its batch is counted instead; either way nothing may be lost.)
    tx.send(Ok(rec(0))).await.unwrap();
    tx.send(Ok(rec(1))).await.unwrap();
    let dropped = tokio::time::timeout(Duration::ZERO, source.read(100)).await;
    let mut seen = match dropped {
        Ok(batch) => positions(&batch.unwrap().records),
        Err(_) => Vec::new(),
    };
    drop(tx);
    loop {
        let b = within(source.read(100)).await.unwrap();
        seen.extend(positions(&b.records));
        if b.end_of_stream {
            break;
        }
    }
    assert_eq!(seen, vec![0, 1]);
}

#[tokio::test]
async fn progress_callback_surfaces_through_source_progress() {
    let mut source = HelperSource::new(opener_fn(|_: Option<&Position>| {
        Ok(
            SourceInstance::pull(endless_pull(), BatchOptions::default())
                .with_progress(|| (0.25, "file 1 of 4".to_string())),
        )
    }));
    assert_eq!(source.progress(), None, "no instance before open");
    source.open(None).await.unwrap();
    assert_eq!(
        source.progress(),
        Some(Progress {
            done: PROGRESS_SCALE / 4,
            total: Some(PROGRESS_SCALE),
            unit: ProgressUnit::Records,
        })
    );
    let report = source.progress_report().unwrap();
    assert_eq!(report.text, "file 1 of 4");
    assert_eq!(report.fraction, 0.25);
}
