//! What filling a batch came to, shared by the pull and push producers.

use super::batch::HelperError;
use crate::record::Record;

/// How one fill of the batch buffer stopped.
#[derive(Debug)]
pub(super) enum Fill {
    /// The buffer holds the records asked for.
    Full,
    /// The call's deadline passed first.
    TimedOut,
    /// The stream ended (pull function said so, channel closed, or cancelled).
    Ended,
    /// The producer failed; the stream ends after the error is reported.
    Failed(HelperError),
}

/// Refuses a record larger than `max` bytes (as measured by [`Record::size`]).
pub(super) fn check_size(record: &Record, max: usize) -> Result<(), HelperError> {
    let size = record.size();
    if size > max {
        return Err(HelperError::EventTooLarge {
            position: record.position.clone(),
            size,
            max,
        });
    }
    Ok(())
}
