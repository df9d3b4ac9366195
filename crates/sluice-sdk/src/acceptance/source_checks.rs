//! The source checks: reading, snapshot then live, resume, acks, stop, teardown, cancellation.

use std::time::Duration;

use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::connector::{ConnectorError, Source};
use crate::record::{Operation, Position, Record};
use crate::spec::{Settings, Specification};

use super::call::{bounded, settled};
use super::failure::Check;
use super::read::{
    check_batch_size, check_sequence, matches, read_dropped_after, read_exactly, read_once,
    read_to_end_expecting_nothing, Positions, READ_DEADLINE,
};
use super::settings_checks::{self, Subject};
use super::spec_checks::{resolve_valid, Side};
use super::{Expected, Report, SourceCapabilities, SourceFixture, CANCEL_BOUND};

/// How many records the reading checks produce.
const RECORDS: usize = 10;

/// Runs every source check.
pub(crate) async fn run<F: SourceFixture + ?Sized>(fx: &mut F) -> Report {
    let spec = fx.plugin().specification();
    let caps = fx.capabilities();
    let mut report = Report::new(&spec.name);
    {
        let valid = fx.settings().await;
        let subject = Subject {
            spec: &spec,
            side: Side::Source,
            valid,
            invalid: fx.invalid_settings(),
        };
        settings_checks::run(subject, &mut report, || fx.new_source()).await;
    }
    let mut t = Tester {
        fx,
        spec: &spec,
        caps,
    };
    t.read_before_open(&mut report).await;
    t.read(&mut report).await;
    t.snapshot_then_live(&mut report).await;
    t.resume(&mut report).await;
    t.cancel(&mut report).await;
    report
}

struct Tester<'a, F: SourceFixture + ?Sized> {
    fx: &'a mut F,
    spec: &'a Specification,
    caps: SourceCapabilities,
}

impl<F: SourceFixture + ?Sized> Tester<'_, F> {
    fn check(&self, name: &'static str) -> Check {
        Check::new(&self.spec.name, name)
    }

    /// Produces `n` records and fails if the fixture returned a different number.
    async fn produce(&mut self, check: &Check, n: usize) -> Vec<Expected> {
        let expected = self.fx.produce(n).await;
        check.ensure(expected.len() == n, || {
            format!(
                "the fixture's produce({n}) returned {} expectations",
                expected.len()
            )
        });
        expected
    }

    /// A new source configured with `settings` as the runtime would (validated, defaults filled),
    /// with `on_created` called when `first_run`.
    async fn configured(
        &mut self,
        check: &Check,
        settings: &Settings,
        first_run: bool,
    ) -> Box<dyn Source> {
        let resolved = resolve_valid(check, self.spec, Side::Source, settings);
        let mut src = self.fx.new_source();
        bounded(check, "configure", src.configure(&resolved)).await;
        if first_run {
            bounded(check, "on_created", src.on_created(&resolved)).await;
        }
        src
    }

    async fn read_before_open(&mut self, report: &mut Report) {
        let check = self.check("read-before-open");
        let settings = self.fx.settings().await;
        let mut src = self.configured(&check, &settings, true).await;
        match settled(&check, "read before open", src.read(1)).await {
            Err(ConnectorError::StreamNotOpen) => {}
            Err(other) => check.fail(format!(
                "read before open failed with {other:?} instead of `stream not open`"
            )),
            Ok(batch) => check.fail(format!(
                "read before open returned {} records instead of failing with `stream not open`",
                batch.records.len()
            )),
        }
        bounded(&check, "teardown", src.teardown()).await;
        report.pass(check.name());
    }

    /// Reads what was produced before open, then acks (half before, half after stop), stop,
    /// teardown twice.
    async fn read(&mut self, report: &mut Report) {
        let check = self.check("read");
        let settings = self.fx.settings().await;
        let expected = self.produce(&check, RECORDS).await;
        let mut src = self.configured(&check, &settings, true).await;
        bounded(&check, "open at no position", src.open(None)).await;
        let (records, ended) = read_exactly(&check, src.as_mut(), RECORDS).await;
        let mut positions = Positions::default();
        check_sequence(&check, &mut positions, 0, &records, &expected);
        if self.caps.snapshot {
            check_operations(&check, &records, 0, true);
        }
        if self.caps.end_of_stream {
            if !ended {
                read_to_end_expecting_nothing(&check, src.as_mut()).await;
            }
            let again = read_once(&check, src.as_mut(), 16, deadline()).await;
            check.ensure(again.records.is_empty() && again.end_of_stream, || {
                "end of stream is not sticky: a read after it returned records or no end".into()
            });
        } else if !self.caps.self_producing {
            let more = read_once(&check, src.as_mut(), 16, deadline()).await;
            check.ensure(more.records.is_empty(), || {
                format!(
                    "read {} records beyond the {RECORDS} that were produced",
                    more.records.len()
                )
            });
        }
        report.pass(check.name());

        let acks = self.check("acks");
        let all: Vec<Position> = records.iter().map(|r| r.position.clone()).collect();
        let (before_stop, after_stop) = all.split_at(all.len() / 2);
        for chunk in before_stop.chunks(2) {
            bounded(&acks, "ack", src.ack(chunk)).await;
        }

        let stop = self.check("stop");
        check_stop(&stop, src.as_mut(), records.last()).await;
        no_records_after_stop(&stop, src.as_mut()).await;
        report.pass(stop.name());

        bounded(&acks, "ack after stop", src.ack(after_stop)).await;
        report.pass(acks.name());

        let teardown = self.check("teardown");
        bounded(&teardown, "teardown", src.teardown()).await;
        bounded(&teardown, "a second teardown", src.teardown()).await;
        report.pass(teardown.name());
    }

    /// Records produced before open, then after: all read, positions unique, operations as the
    /// capabilities say.
    async fn snapshot_then_live(&mut self, report: &mut Report) {
        const NAME: &str = "snapshot-then-live";
        if !self.caps.live {
            report.skip(NAME, "the source reads no records produced after open");
            return;
        }
        let check = self.check(NAME);
        let settings = self.fx.settings().await;
        let before = self.produce(&check, RECORDS / 2).await;
        let mut src = self.configured(&check, &settings, true).await;
        bounded(&check, "open at no position", src.open(None)).await;
        let mut positions = Positions::default();
        let (snapshot, _) = read_exactly(&check, src.as_mut(), before.len()).await;
        check_sequence(&check, &mut positions, 0, &snapshot, &before);
        let after = self.produce(&check, RECORDS / 2).await;
        let (live, _) = read_exactly(&check, src.as_mut(), after.len()).await;
        check_sequence(&check, &mut positions, snapshot.len(), &live, &after);
        if self.caps.snapshot {
            check_operations(&check, &snapshot, 0, true);
            check_operations(&check, &live, snapshot.len(), false);
        }
        let all: Vec<Position> = snapshot
            .iter()
            .chain(&live)
            .map(|r| r.position.clone())
            .collect();
        bounded(&check, "ack", src.ack(&all)).await;
        check_stop(&check, src.as_mut(), live.last()).await;
        bounded(&check, "teardown", src.teardown()).await;
        report.pass(NAME);
    }

    /// Reads some records, stops, and resumes a new instance at the last one: the rest follow,
    /// nothing lost, nothing repeated (unless a snapshot restarts).
    async fn resume(&mut self, report: &mut Report) {
        const NAME: &str = "resume";
        if !self.caps.resume {
            report.skip(NAME, "the source cannot resume at a position");
            return;
        }
        let check = self.check(NAME);
        let settings = self.fx.settings().await;
        let expected = self.produce(&check, RECORDS).await;
        let mut first = self.configured(&check, &settings, true).await;
        bounded(&check, "open at no position", first.open(None)).await;
        let taken = RECORDS * 4 / 10;
        let (head, _) = read_exactly(&check, first.as_mut(), taken).await;
        let mut head_positions = Positions::default();
        check_sequence(&check, &mut head_positions, 0, &head, &expected[..taken]);
        let acked: Vec<Position> = head.iter().map(|r| r.position.clone()).collect();
        bounded(&check, "ack", first.ack(&acked)).await;
        let resume_at = check_stop(&check, first.as_mut(), head.last()).await;
        bounded(&check, "teardown", first.teardown()).await;

        // Same settings, not a first run: no lifecycle hook.
        let mut second = self.configured(&check, &settings, false).await;
        bounded(
            &check,
            &format!("open at position {resume_at}"),
            second.open(Some(&resume_at)),
        )
        .await;
        let mut want: Vec<Expected> = expected.clone();
        if self.caps.live {
            want.extend(self.produce(&check, 3).await);
        }
        let (first_again, _) = read_exactly(&check, second.as_mut(), 1).await;
        let restart = restart_index(&head, &first_again[0], &want);
        let (rest, _) = read_exactly(&check, second.as_mut(), want.len() - restart - 1).await;
        let resumed: Vec<Record> = first_again.into_iter().chain(rest).collect();
        let mut positions = Positions::default();
        check_sequence(&check, &mut positions, restart, &resumed, &want[restart..]);
        if restart == taken {
            if let Some(r) = resumed
                .iter()
                .find(|r| head_positions.contains(&r.position))
            {
                check.fail(format!(
                    "after resuming at {resume_at}, position {} was read again",
                    r.position
                ));
            }
        }
        let all: Vec<Position> = resumed.iter().map(|r| r.position.clone()).collect();
        bounded(&check, "ack", second.ack(&all)).await;
        check_stop(&check, second.as_mut(), resumed.last()).await;
        bounded(&check, "teardown", second.teardown()).await;
        report.pass(NAME);
    }

    /// Reads dropped mid-flight lose nothing; a read loop cancelled by a token ends within
    /// [`CANCEL_BOUND`]; the source still reads, stops and tears down afterwards.
    async fn cancel(&mut self, report: &mut Report) {
        let check = self.check("cancel");
        let settings = self.fx.settings().await;
        let expected = self.produce(&check, 2 * RECORDS).await;
        let mut src = self.configured(&check, &settings, true).await;
        bounded(&check, "open at no position", src.open(None)).await;

        let mut positions = Positions::default();
        let mut read = Vec::new();
        let until = deadline();
        let mut round = 0usize;
        while read.len() < expected.len() {
            check.ensure(tokio::time::Instant::now() < until, || {
                format!(
                    "only {} of {} records arrived within {READ_DEADLINE:?} while reads were being dropped",
                    read.len(),
                    expected.len()
                )
            });
            let max = expected.len() - read.len();
            // Every other read is dropped after one to three polls; the others run to the end.
            let drop_this_read = round & 1 == 0;
            let batch = if drop_this_read {
                match read_dropped_after(src.as_mut(), max, 1 + round % 3).await {
                    Some(result) => {
                        let batch = check.ok(result, &format!("read({max})"));
                        check_batch_size(&check, &batch, max);
                        batch
                    }
                    None => Default::default(),
                }
            } else {
                read_once(&check, src.as_mut(), max, until).await
            };
            round += 1;
            let ended = batch.end_of_stream;
            let from = read.len();
            let upto = from + batch.records.len();
            check_sequence(
                &check,
                &mut positions,
                from,
                &batch.records,
                &expected[from..upto],
            );
            read.extend(batch.records);
            check.ensure(!ended || read.len() == expected.len(), || {
                format!(
                    "the stream ended after {} of {} records while reads were being dropped",
                    read.len(),
                    expected.len()
                )
            });
            tokio::task::yield_now().await;
        }

        let extra = self.cancelled_read_loop(&check, src.as_mut()).await;
        let mut last = read.last().cloned();
        if !extra.is_empty() {
            check.ensure(self.caps.self_producing, || {
                format!(
                    "read {} records nobody produced (first at position {})",
                    extra.len(),
                    extra[0].position
                )
            });
            let predicted = self.produce(&check, extra.len()).await;
            check_sequence(&check, &mut positions, read.len(), &extra, &predicted);
            last = extra.last().cloned();
        }
        if !self.caps.end_of_stream {
            let more = self.produce(&check, 3).await;
            let (after, _) = read_exactly(&check, src.as_mut(), more.len()).await;
            check_sequence(
                &check,
                &mut positions,
                read.len() + extra.len(),
                &after,
                &more,
            );
            last = after.last().cloned();
        }
        check_stop(&check, src.as_mut(), last.as_ref()).await;
        bounded(&check, "teardown after a cancelled read", src.teardown()).await;
        report.pass(check.name());
    }

    /// Reads in a loop until a token cancelled after 50 ms stops it; fails unless the loop ends
    /// within [`CANCEL_BOUND`] of the cancellation. Returns the records read meanwhile.
    async fn cancelled_read_loop(&self, check: &Check, src: &mut dyn Source) -> Vec<Record> {
        const KEEP_AT_MOST: usize = 1000;
        let token = CancellationToken::new();
        let canceller = {
            let token = token.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(50)).await;
                token.cancel();
            })
        };
        let bound = CANCEL_BOUND + Duration::from_millis(50);
        let outcome = timeout(bound, async {
            let mut got = Vec::new();
            loop {
                if got.len() >= KEEP_AT_MOST {
                    token.cancelled().await;
                    break;
                }
                tokio::select! {
                    biased;
                    _ = token.cancelled() => break,
                    result = src.read(8) => {
                        let batch = check.ok(result, "read(8)");
                        check_batch_size(check, &batch, 8);
                        got.extend(batch.records);
                    }
                }
                tokio::task::yield_now().await;
            }
            got
        })
        .await;
        canceller.abort();
        match outcome {
            Ok(got) => got,
            Err(_) => check.fail(format!(
                "a read did not end within {CANCEL_BOUND:?} of its cancellation"
            )),
        }
    }
}

fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + READ_DEADLINE
}

/// Fails unless every record is (or, with `snapshot` false, none is) a snapshot operation.
fn check_operations(check: &Check, records: &[Record], first_index: usize, snapshot: bool) {
    for (i, r) in records.iter().enumerate() {
        let is_snapshot = r.operation == Operation::Snapshot;
        check.ensure(is_snapshot == snapshot, || {
            format!(
                "record #{} (position {}) is a {} operation, but records produced {} open must {}be snapshots",
                first_index + i,
                r.position,
                r.operation.as_str(),
                if snapshot { "before" } else { "after" },
                if snapshot { "" } else { "not " }
            )
        });
    }
}

/// Stops the source and fails unless it returned the position of `last` (the last record read);
/// returns that position.
async fn check_stop(check: &Check, src: &mut dyn Source, last: Option<&Record>) -> Position {
    let stopped = bounded(check, "stop", src.stop()).await;
    let Some(last) = last else {
        check.fail("the check read no record before stopping")
    };
    match stopped {
        Some(p) if p == last.position => p,
        Some(p) => check.fail(format!(
            "stop returned position {p}, but the last record read was at {}",
            last.position
        )),
        None => check.fail(format!(
            "stop returned no position, but the last record read was at {}",
            last.position
        )),
    }
}

/// After `stop`, a read must not return records: an empty batch, the end of the stream, or an
/// error such as `stream not open` are all fine.
async fn no_records_after_stop(check: &Check, src: &mut dyn Source) {
    if let Ok(batch) = settled(check, "read after stop", src.read(16)).await {
        check.ensure(batch.records.is_empty(), || {
            format!(
                "a read after stop returned {} records past the position stop returned",
                batch.records.len()
            )
        });
    }
}

/// Where a resumed stream restarted within `want`: right after `head` (the records read before
/// stopping), or — only if the records it goes back over are snapshots — earlier, at the record
/// `first` matches.
fn restart_index(head: &[Record], first: &Record, want: &[Expected]) -> usize {
    let after = head.len();
    if want
        .get(after)
        .is_some_and(|w| matches(first, w) && !matches!(w, Expected::Any))
    {
        return after;
    }
    let snapshot_from = head
        .iter()
        .rposition(|r| r.operation != Operation::Snapshot)
        .map_or(0, |i| i + 1);
    (snapshot_from..after)
        .find(|&j| match &want[j] {
            Expected::Any => head[j].position == first.position,
            w => matches(first, w),
        })
        .unwrap_or(after)
}
