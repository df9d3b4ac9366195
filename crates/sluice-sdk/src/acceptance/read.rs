//! Robust reading for the source checks: loops over empty batches (read timeouts) until the wanted
//! number of records arrived or a generous deadline passed, and verifies every record as it comes.

use std::collections::HashSet;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use crate::connector::{ReadBatch, Result as ConnectorResult, Source};
use crate::record::{Position, Record};

use super::failure::{excerpt, Check};
use super::Expected;

/// How long the kit waits for records that should be readable.
pub(crate) const READ_DEADLINE: Duration = Duration::from_secs(10);

/// Reads exactly `n` records, each call asking for no more than are still missing. Fails the
/// check on an error, on a batch larger than asked for, if the stream ends early, or if the
/// records don't arrive within [`READ_DEADLINE`]. Returns the records and whether the batch that
/// completed them also ended the stream.
pub(crate) async fn read_exactly(
    check: &Check,
    src: &mut dyn Source,
    n: usize,
) -> (Vec<Record>, bool) {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        let max = n - records.len();
        let batch = read_once(check, src, max, deadline).await;
        records.extend(batch.records);
        if batch.end_of_stream {
            check.ensure(records.len() == n, || {
                format!(
                    "the stream ended after {} of the {n} records that were expected",
                    records.len()
                )
            });
            return (records, true);
        }
        if records.len() < n {
            check.ensure(Instant::now() < deadline, || {
                format!(
                    "only {} of {n} expected records arrived within {READ_DEADLINE:?}",
                    records.len()
                )
            });
            tokio::task::yield_now().await;
        }
    }
    (records, false)
}

/// Reads until the stream ends; fails if any record arrives on the way or the end doesn't come
/// within [`READ_DEADLINE`].
pub(crate) async fn read_to_end_expecting_nothing(check: &Check, src: &mut dyn Source) {
    let deadline = Instant::now() + READ_DEADLINE;
    loop {
        let batch = read_once(check, src, 16, deadline).await;
        if let Some(r) = batch.records.first() {
            check.fail(format!(
                "read an unexpected record at position {} after every produced record was read",
                r.position
            ));
        }
        if batch.end_of_stream {
            return;
        }
        check.ensure(Instant::now() < deadline, || {
            format!("the stream did not end within {READ_DEADLINE:?} after its last record")
        });
        tokio::task::yield_now().await;
    }
}

/// One `read(max)`, bounded by `deadline`; fails the check on an error, a hang or an oversized
/// batch.
pub(crate) async fn read_once(
    check: &Check,
    src: &mut dyn Source,
    max: usize,
    deadline: Instant,
) -> ReadBatch {
    let left = deadline.saturating_duration_since(Instant::now());
    let batch = match timeout(left.max(Duration::from_millis(1)), src.read(max)).await {
        Err(_) => check.fail(format!(
            "read({max}) did not return by the deadline (read must return within a bounded time)"
        )),
        Ok(result) => check.ok(result, &format!("read({max})")),
    };
    check_batch_size(check, &batch, max);
    batch
}

/// Fails the check if a batch holds more records than asked for.
pub(crate) fn check_batch_size(check: &Check, batch: &ReadBatch, max: usize) {
    check.ensure(batch.records.len() <= max, || {
        format!(
            "read({max}) returned {} records, more than asked for",
            batch.records.len()
        )
    });
}

/// Polls `read` at most `polls` times and drops it if it has not finished by then: a hard stop
/// arriving in the middle of a read. `None` when it was dropped.
pub(crate) async fn read_dropped_after(
    src: &mut dyn Source,
    max: usize,
    polls: usize,
) -> Option<ConnectorResult<ReadBatch>> {
    let mut read = src.read(max);
    let mut left = polls.max(1);
    poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => {
            left -= 1;
            if left == 0 {
                Poll::Ready(None)
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    })
    .await
}

/// Positions seen within one check, to prove they are unique.
#[derive(Default)]
pub(crate) struct Positions(HashSet<Position>);

impl Positions {
    /// Fails the check if `record` is incomplete (empty position, no payload) or its position was
    /// seen before; remembers the position.
    pub(crate) fn record(&mut self, check: &Check, index: usize, record: &Record) {
        check_complete(check, index, record);
        check.ensure(self.0.insert(record.position.clone()), || {
            format!(
                "record #{index} repeats position {} (positions must be unique)",
                record.position
            )
        });
    }

    /// True if `position` was seen.
    pub(crate) fn contains(&self, position: &Position) -> bool {
        self.0.contains(position)
    }
}

/// Fails the check unless the record has a position and a payload.
pub(crate) fn check_complete(check: &Check, index: usize, record: &Record) {
    check.ensure(!record.position.is_empty(), || {
        format!("record #{index} has an empty position")
    });
    check.ensure(
        record.payload.after.is_some() || record.payload.before.is_some(),
        || {
            format!(
                "record #{index} (position {}) has no payload, neither before nor after",
                record.position
            )
        },
    );
}

/// True if `record` looks like `expected`.
pub(crate) fn matches(record: &Record, expected: &Expected) -> bool {
    match expected {
        Expected::Any => true,
        Expected::Payload(bytes) => {
            record.payload.after.as_ref().map(|d| d.to_bytes()).as_ref() == Some(bytes)
        }
        Expected::After(data) => record.payload.after.as_ref() == Some(data),
    }
}

/// Fails the check unless `record` (the `index`th of the check) looks like `expected`.
pub(crate) fn check_expected(check: &Check, index: usize, record: &Record, expected: &Expected) {
    let want = match expected {
        _ if matches(record, expected) => return,
        Expected::Any => return,
        Expected::Payload(bytes) => excerpt(bytes),
        Expected::After(data) => excerpt(&data.to_bytes()),
    };
    let got = record.payload.after.as_ref().map_or_else(
        || "no payload.after".to_string(),
        |d| excerpt(&d.to_bytes()),
    );
    check.fail(format!(
        "record #{index} (position {}) is not the one expected: payload.after is {got}, expected {want} \
         (records must arrive complete, in the order they were produced, none lost or repeated)",
        record.position
    ))
}

/// Checks a run of records against expectations, in order: same count, each one complete, with a
/// unique position, looking as expected.
pub(crate) fn check_sequence(
    check: &Check,
    positions: &mut Positions,
    first_index: usize,
    records: &[Record],
    expected: &[Expected],
) {
    check.ensure(records.len() == expected.len(), || {
        format!(
            "read {} records where {} were expected",
            records.len(),
            expected.len()
        )
    });
    for (i, (record, want)) in records.iter().zip(expected).enumerate() {
        positions.record(check, first_index + i, record);
        check_expected(check, first_index + i, record, want);
    }
}
