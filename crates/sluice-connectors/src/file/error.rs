//! What can go wrong reading or writing a file, each error naming the file.

use sluice_sdk::{ConnectorError, Position};

/// A file connector failure. Every variant names the file; it converts into the SDK's
/// [`ConnectorError`] (I/O errors keep their OS error as the source).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// `open` was called before a successful `configure`.
    #[error("the file connector was opened before it was configured")]
    NotConfigured,
    /// An operating system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file (and offset, where it matters).
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line of an `opencdc` file is not an OpenCDC JSON record.
    #[error("{path}: line {line}: invalid OpenCDC record: {problem}")]
    BadRecord {
        /// The file.
        path: String,
        /// The 1-based line number, or "at byte offset N" when it could not be counted.
        line: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A line grew past `max-line-size` without a newline.
    #[error(
        "{path}: the line starting at byte offset {offset} is longer than max-line-size \
         ({max} bytes)"
    )]
    LineTooLong {
        /// The file.
        path: String,
        /// Where the line starts.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// While following, the file became shorter than what was already read.
    #[error(
        "{path} was truncated to {len} bytes while following it ({offset} bytes already read); \
         byte-offset positions cannot survive a truncation, so the source stops"
    )]
    Truncated {
        /// The file.
        path: String,
        /// Bytes already read.
        offset: u64,
        /// The file's new length.
        len: u64,
    },
    /// While following, the path stopped naming the file being read (rotated, replaced, deleted).
    #[error(
        "{path} no longer names the file being followed (rotated, replaced or deleted after \
         {offset} bytes); byte-offset positions cannot span files, so the source stops"
    )]
    Replaced {
        /// The file.
        path: String,
        /// Bytes already read.
        offset: u64,
    },
    /// `open` got a position this file cannot resume from.
    #[error("{path}: cannot resume at position {position}: {reason}")]
    InvalidPosition {
        /// The file.
        path: String,
        /// The position given.
        position: Position,
        /// Why it cannot be used.
        reason: String,
    },
    /// A background I/O task panicked or was cancelled by the runtime shutting down.
    #[error("{path}: background I/O task failed: {source}")]
    Task {
        /// The file.
        path: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// An earlier read, write or fsync failed in a way that leaves the connector's state unknown
    /// (a torn write, a lost buffer), so it refuses to go on rather than corrupt data.
    #[error("{path}: {message} earlier, so nothing more is attempted")]
    Poisoned {
        /// The file.
        path: String,
        /// The earlier failure.
        message: String,
    },
}

impl FileError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FileError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<FileError> for ConnectorError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { context, source } => ConnectorError::Io { context, source },
            FileError::InvalidPosition {
                path,
                position,
                reason,
            } => ConnectorError::InvalidPosition {
                position,
                reason: format!("{path}: {reason}"),
            },
            other => ConnectorError::system(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_keeps_the_os_error_and_the_file() {
        let e = FileError::io(
            "cannot open /no/such for reading",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let c = ConnectorError::from(e);
        assert!(matches!(c, ConnectorError::Io { .. }));
        assert!(c.to_string().contains("/no/such"), "{c}");

        let c = ConnectorError::from(FileError::InvalidPosition {
            path: "/data/in".into(),
            position: Position::from_u64(99),
            reason: "past the end".into(),
        });
        match c {
            ConnectorError::InvalidPosition { position, reason } => {
                assert_eq!(position.to_u64(), Some(99));
                assert!(reason.contains("/data/in"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
