//! What one `next_batch` call returns: the records, why the batch ended, and the errors it can raise.

use crate::connector::ConnectorError;
use crate::record::{Position, Record};

/// Why a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// The batch holds as many records as were asked for.
    Full,
    /// The call's timeout expired first; the batch may be partial or empty. Not sticky: a later
    /// call may return records.
    Timeout,
    /// An error cut the batch short; the records before it are in this batch and the next call
    /// returns the error (after which the stream has ended).
    Interrupted,
    /// The stream has ended; the batch may still hold the last records. Sticky: every later call
    /// returns no records and `EndOfStream`.
    EndOfStream,
}

/// Records handed out by one `next_batch` call.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The records, in the order they were produced. Possibly fewer than asked for, possibly none.
    pub records: Vec<Record>,
    /// Why the batch ended.
    pub end: BatchEnd,
}

impl Batch {
    /// True if the stream has ended (no later call returns records).
    pub fn is_end_of_stream(&self) -> bool {
        self.end == BatchEnd::EndOfStream
    }
}

/// An error that ended a helper's stream.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The pull function returned an error, or an error was sent on the push channel.
    #[error(transparent)]
    Source(#[from] ConnectorError),
    /// A record was larger than the maximum event size. Records are never truncated.
    #[error(
        "record at position {position} is {size} bytes, over the maximum event size of {max} bytes"
    )]
    EventTooLarge {
        /// The oversized record's position.
        position: Position,
        /// Its size, as measured by [`Record::size`].
        size: usize,
        /// The configured maximum.
        max: usize,
    },
}

impl From<HelperError> for ConnectorError {
    /// The producer's own errors pass through unchanged; an oversized record is a permanent
    /// [`ConnectorError::System`] failure (retrying reads the same record again).
    fn from(e: HelperError) -> Self {
        match e {
            HelperError::Source(e) => e,
            e @ HelperError::EventTooLarge { .. } => ConnectorError::system(e.to_string()),
        }
    }
}
