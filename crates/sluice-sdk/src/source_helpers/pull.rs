//! The pull model: a user function called once per record until the batch is full or the deadline passes.
//!
//! The function is **synchronous** (`FnMut`) and called on the tokio worker thread, as in Falco:
//! it must not block or wait (no network round trips, no sleeping). It suits producers whose next
//! record is at hand — an in-memory generator, a buffered reader over a local file. Anything that
//! has to wait for its records belongs in the push model, where the waiting happens on the
//! producer's own task. The deadline is checked after every call, so a slow call can overrun the
//! timeout by at most its own duration; each call also consumes tokio's cooperative budget, so a
//! long batch yields to the scheduler and stays cancellable from a `select!`.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::HelperError;
use super::fill::{check_size, Fill};
use crate::connector::Result;
use crate::record::Record;

/// A pull function: `Ok(Some(record))` for the next record, `Ok(None)` at end of stream, `Err` on
/// failure (which ends the stream, see the module docs of [`source_helpers`](super)).
pub type PullFn = Box<dyn FnMut() -> Result<Option<Record>> + Send>;

/// Calls `pull` until `buf` holds `limit` records, the deadline has passed (after at least one
/// call), the stream ends or fails, or `cancel` fires. Cancel-safe: every record produced is
/// already in `buf` at each await point.
pub(super) async fn fill(
    pull: &mut PullFn,
    buf: &mut Vec<Record>,
    limit: usize,
    deadline: Instant,
    cancel: &CancellationToken,
    max_event_size: usize,
) -> Fill {
    loop {
        if cancel.is_cancelled() {
            return Fill::Ended;
        }
        if buf.len() >= limit {
            return Fill::Full;
        }
        tokio::task::coop::consume_budget().await;
        match pull() {
            Ok(Some(record)) => {
                if let Err(e) = check_size(&record, max_event_size) {
                    return Fill::Failed(e);
                }
                buf.push(record);
            }
            Ok(None) => return Fill::Ended,
            Err(e) => return Fill::Failed(HelperError::Source(e)),
        }
        if buf.len() < limit && Instant::now() >= deadline {
            return Fill::TimedOut;
        }
    }
}
