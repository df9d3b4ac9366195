//! The destination checks: write before open fails, writes are acknowledged exactly, what was
//! written can be read back, teardown, cancellation.

use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::connector::{Acks, ConnectorError, Destination};
use crate::record::Record;
use crate::spec::{Settings, Specification};

use super::call::{bounded, settled};
use super::failure::{excerpt, Check};
use super::read::READ_DEADLINE;
use super::settings_checks::{self, Subject};
use super::spec_checks::{resolve_valid, Side};
use super::{DestinationFixture, Report, Written, CANCEL_BOUND};

/// The batch sizes the write check writes, one `write` call each.
const BATCHES: [usize; 3] = [1, 4, 20];

/// Runs every destination check.
pub(crate) async fn run<F: DestinationFixture + ?Sized>(fx: &mut F) -> Report {
    let spec = fx.plugin().specification();
    let mut report = Report::new(&spec.name);
    {
        let valid = fx.settings().await;
        let subject = Subject {
            spec: &spec,
            side: Side::Destination,
            valid,
            invalid: fx.invalid_settings(),
        };
        settings_checks::run(subject, &mut report, || fx.new_destination()).await;
    }
    let mut t = Tester { fx, spec: &spec };
    t.write_before_open(&mut report).await;
    t.write(&mut report).await;
    t.cancel(&mut report).await;
    report
}

struct Tester<'a, F: DestinationFixture + ?Sized> {
    fx: &'a mut F,
    spec: &'a Specification,
}

impl<F: DestinationFixture + ?Sized> Tester<'_, F> {
    fn check(&self, name: &'static str) -> Check {
        Check::new(&self.spec.name, name)
    }

    /// A new destination configured with `settings` as the runtime would, `on_created` called.
    async fn configured(&mut self, check: &Check, settings: &Settings) -> Box<dyn Destination> {
        let resolved = resolve_valid(check, self.spec, Side::Destination, settings);
        let mut dst = self.fx.new_destination();
        bounded(check, "configure", dst.configure(&resolved)).await;
        bounded(check, "on_created", dst.on_created(&resolved)).await;
        dst
    }

    async fn write_before_open(&mut self, report: &mut Report) {
        let check = self.check("write-before-open");
        let settings = self.fx.settings().await;
        let records = self.fx.records(1);
        let mut dst = self.configured(&check, &settings).await;
        match settled(&check, "write before open", dst.write(&records)).await {
            Err(ConnectorError::StreamNotOpen) => {}
            Err(other) => check.fail(format!(
                "write before open failed with {other:?} instead of `stream not open`"
            )),
            Ok(()) => {
                check.fail("write before open succeeded instead of failing with `stream not open`")
            }
        }
        bounded(&check, "teardown", dst.teardown()).await;
        report.pass(check.name());
    }

    /// Writes records in several batches; acks must add up to exactly what was written, without
    /// nacks; after stop and teardown (twice) the fixture reads back what was written.
    async fn write(&mut self, report: &mut Report) {
        let check = self.check("write");
        let settings = self.fx.settings().await;
        let total: usize = BATCHES.iter().sum();
        let records = self.fx.records(total);
        check.ensure(records.len() == total, || {
            format!(
                "the fixture's records({total}) returned {} records",
                records.len()
            )
        });
        let mut dst = self.configured(&check, &settings).await;
        bounded(&check, "open", dst.open()).await;
        let mut written = 0;
        let mut acked = 0;
        for size in BATCHES {
            let batch = &records[written..written + size];
            bounded(
                &check,
                &format!("write of {size} records"),
                dst.write(batch),
            )
            .await;
            written += size;
            let acks = bounded(&check, "ack", dst.ack()).await;
            count_acks(&check, &acks, &mut acked, written);
        }
        let until = Instant::now() + READ_DEADLINE;
        while acked < written {
            check.ensure(Instant::now() < until, || {
                format!("only {acked} of {written} written records were acknowledged within {READ_DEADLINE:?}")
            });
            sleep(Duration::from_millis(5)).await;
            let acks = bounded(&check, "ack", dst.ack()).await;
            count_acks(&check, &acks, &mut acked, written);
        }
        let last = records.last().map(|r| r.position.clone());
        bounded(&check, "stop", dst.stop(last.as_ref())).await;
        let acks = bounded(&check, "ack after stop", dst.ack()).await;
        count_acks(&check, &acks, &mut acked, written);
        bounded(&check, "teardown", dst.teardown()).await;
        bounded(&check, "a second teardown", dst.teardown()).await;
        report.pass(check.name());

        let check = self.check("read-back");
        match self.fx.written().await {
            Written::Records(stored) => compare_stored(&check, &records, &stored),
            Written::Count(n) => check.ensure(n == total as u64, || {
                format!("the destination holds {n} records, but {total} were written")
            }),
            Written::Unverifiable => {
                report.skip(
                    check.name(),
                    "the fixture cannot read back what was written",
                );
                return;
            }
        }
        report.pass(check.name());
    }

    /// Writes in a loop until a token cancelled after 50 ms stops it; the loop must end within
    /// [`CANCEL_BOUND`] of the cancellation, and the destination must still ack, stop and tear down.
    async fn cancel(&mut self, report: &mut Report) {
        const BATCH: usize = 10;
        const MAX_BATCHES: usize = 100;
        let check = self.check("cancel");
        let settings = self.fx.settings().await;
        let records = self.fx.records(BATCH);
        let mut dst = self.configured(&check, &settings).await;
        bounded(&check, "open", dst.open()).await;
        let token = CancellationToken::new();
        let canceller = {
            let token = token.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(50)).await;
                token.cancel();
            })
        };
        let outcome = timeout(CANCEL_BOUND + Duration::from_millis(50), async {
            let mut started = 0usize;
            loop {
                if started >= MAX_BATCHES {
                    token.cancelled().await;
                    break;
                }
                started += 1;
                tokio::select! {
                    biased;
                    _ = token.cancelled() => break,
                    result = dst.write(&records) => { check.ok(result, "write"); }
                }
                tokio::task::yield_now().await;
            }
            started * BATCH
        })
        .await;
        canceller.abort();
        let at_most = match outcome {
            Ok(n) => n,
            Err(_) => check.fail(format!(
                "a write did not end within {CANCEL_BOUND:?} of its cancellation"
            )),
        };
        let acks = bounded(&check, "ack after a cancelled write", dst.ack()).await;
        check.ensure(acks.count <= at_most, || {
            format!(
                "acknowledged {} records, but at most {at_most} were written",
                acks.count
            )
        });
        bounded(&check, "stop", dst.stop(None)).await;
        bounded(&check, "teardown after a cancelled write", dst.teardown()).await;
        report.pass(check.name());
    }
}

/// Adds `acks` to `acked`, failing on nacks or on more acknowledgements than records written.
fn count_acks(check: &Check, acks: &Acks, acked: &mut usize, written: usize) {
    if let Some(nack) = acks.nacks.first() {
        check.fail(format!(
            "{} of the records were nacked; the first, #{} of this ack, because: {}",
            acks.nacks.len(),
            *acked + nack.index,
            nack.reason
        ));
    }
    *acked += acks.count;
    check.ensure(*acked <= written, || {
        format!("{acked} records were acknowledged, but only {written} were written")
    });
}

/// Fails unless the stored records carry the written payloads, in order.
fn compare_stored(check: &Check, written: &[Record], stored: &[Record]) {
    check.ensure(stored.len() == written.len(), || {
        format!(
            "the destination holds {} records, but {} were written",
            stored.len(),
            written.len()
        )
    });
    for (i, (w, s)) in written.iter().zip(stored).enumerate() {
        let want = w.payload.after.as_ref().map(|d| d.to_bytes());
        let got = s.payload.after.as_ref().map(|d| d.to_bytes());
        check.ensure(want == got, || {
            let show = |b: &Option<bytes::Bytes>| b.as_deref().map_or("nothing".into(), excerpt);
            format!(
                "stored record #{i} has payload.after {}, but {} was written",
                show(&got),
                show(&want)
            )
        });
    }
}
