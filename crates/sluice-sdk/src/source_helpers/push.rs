//! The push model: records arrive on a bounded channel from the producer's own task.
//!
//! Suited to producers that wait for their records (a socket, a broker subscription). Closing the
//! channel (dropping every sender) ends the stream; sending an `Err` ends it after reporting the
//! error. Records already queued are drained without touching a timer; only when the channel is
//! empty does the call wait, until a record arrives, the deadline passes or `cancel` fires.

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::HelperError;
use super::fill::{check_size, Fill};
use crate::connector::Result;
use crate::record::Record;

/// One message on a push channel: a record, or the error that ends the stream.
pub type PushEvent = Result<Record>;

/// Receives from `rx` until `buf` holds `limit` records, the deadline passes while the channel is
/// empty, the channel closes or delivers an error, or `cancel` fires (which wins over queued
/// records). Cancel-safe: a received record is in `buf` before the next await point, and
/// `mpsc::Receiver::recv` itself is cancel-safe.
pub(super) async fn fill(
    rx: &mut mpsc::Receiver<PushEvent>,
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
        let event = match rx.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Disconnected) => return Fill::Ended,
            Err(TryRecvError::Empty) => {
                let wait = async {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => None,
                        event = rx.recv() => event,
                    }
                };
                match tokio::time::timeout_at(deadline, wait).await {
                    Err(_elapsed) => return Fill::TimedOut,
                    // Cancelled, or every sender dropped.
                    Ok(None) => return Fill::Ended,
                    Ok(Some(event)) => event,
                }
            }
        };
        match event {
            Ok(record) => {
                if let Err(e) = check_size(&record, max_event_size) {
                    return Fill::Failed(e);
                }
                buf.push(record);
            }
            Err(e) => return Fill::Failed(HelperError::Source(e)),
        }
    }
}
