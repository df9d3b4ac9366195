//! Batching options of a source instance: batch size, maximum event size and per-call timeout.

use std::time::Duration;

use crate::connector::ConnectorError;
use crate::spec::{ValidationErrors, Violation};

/// Default number of records per batch.
pub const DEFAULT_BATCH_SIZE: usize = 128;

/// Default maximum size of one record, in bytes as measured by [`Record::size`](crate::Record::size).
pub const DEFAULT_MAX_EVENT_SIZE: usize = 256 * 1024;

/// Default time one `next_batch` call may wait for records.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30);

/// A batching option that was given an unusable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The batch size was 0; a batch must be able to hold at least one record.
    #[error("batch size must be at least 1, got 0")]
    ZeroBatchSize,
    /// The maximum event size was 0, which would refuse every record.
    #[error("maximum event size must be at least 1 byte, got 0")]
    ZeroMaxEventSize,
}

impl OptionsError {
    /// The name of the option at fault, as used in error reports.
    pub fn option(&self) -> &'static str {
        match self {
            OptionsError::ZeroBatchSize => "batch_size",
            OptionsError::ZeroMaxEventSize => "max_event_size",
        }
    }
}

impl From<OptionsError> for ConnectorError {
    /// Bad batching options are bad settings: reported as [`ConnectorError::InvalidSettings`] so a
    /// connector's `configure` can use `?` on them.
    fn from(e: OptionsError) -> Self {
        ConnectorError::InvalidSettings(ValidationErrors(vec![Violation {
            parameter: e.option().to_string(),
            message: e.to_string(),
        }]))
    }
}

/// How a source instance batches records. Build with [`BatchOptions::default`] and the `with_*`
/// methods; invalid values are refused when set, so a `BatchOptions` is always usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    batch_size: usize,
    max_event_size: usize,
    timeout: Duration,
}

impl Default for BatchOptions {
    /// Batch size 128, maximum event size 256 KiB, timeout 30 ms.
    fn default() -> Self {
        BatchOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl BatchOptions {
    /// Sets the most records one batch holds; 0 is refused.
    pub fn with_batch_size(mut self, batch_size: usize) -> Result<Self, OptionsError> {
        if batch_size == 0 {
            return Err(OptionsError::ZeroBatchSize);
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// Sets the largest record accepted, in bytes; a larger record is an error, never truncated.
    /// 0 is refused.
    pub fn with_max_event_size(mut self, bytes: usize) -> Result<Self, OptionsError> {
        if bytes == 0 {
            return Err(OptionsError::ZeroMaxEventSize);
        }
        self.max_event_size = bytes;
        Ok(self)
    }

    /// Sets how long one `next_batch` call may take to fill its batch, counted from the call's
    /// start. Zero means "return what is ready": a push instance does not wait, a pull instance
    /// calls its function once.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most records one batch holds (at least 1).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The largest record accepted, in bytes (at least 1).
    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// How long one `next_batch` call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_max_event_size_is_refused_and_maps_to_invalid_settings() {
        let err = BatchOptions::default().with_max_event_size(0).unwrap_err();
        assert_eq!(err, OptionsError::ZeroMaxEventSize);
        match ConnectorError::from(err) {
            ConnectorError::InvalidSettings(v) => assert_eq!(v.0[0].parameter, "max_event_size"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn setters_keep_other_values() {
        let o = BatchOptions::default()
            .with_batch_size(7)
            .unwrap()
            .with_timeout(Duration::from_secs(2));
        assert_eq!(o.batch_size(), 7);
        assert_eq!(o.max_event_size(), DEFAULT_MAX_EVENT_SIZE);
        assert_eq!(o.timeout(), Duration::from_secs(2));
    }
}
