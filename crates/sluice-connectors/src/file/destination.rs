//! The file destination: appends one line per record, fsyncs once per ack.
//!
//! `write` encodes records into a large buffer and returns (records are *received*); a full buffer
//! is written by a background thread while the next batch is encoded. `ack` writes what is left
//! and, with `fsync: always`, fsyncs, then settles every record written since the previous ack.
//! The engine acks on its own cadence, so one fsync covers many records. A record the format
//! cannot represent is nacked (by its index within the settled records) instead of corrupting the
//! file; the records around it are still written.
//!
//! On open, bytes after the file's last `\n` are truncated: they are the torn end of a write that
//! a crash interrupted, never acknowledged, so the engine delivers those records again.

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::{Acks, ConnectorError, Destination, Nack, Position, Record, Settings};

use super::config::{DestinationConfig, Format};
use super::encode::encode;
use super::error::FileError;
use super::writer::AppendWriter;

/// Appends records to a file (see the [module documentation](self)).
#[derive(Default)]
pub struct FileDestination {
    config: Option<DestinationConfig>,
    state: State,
}

#[derive(Default)]
enum State {
    /// Not opened, or torn down.
    #[default]
    Closed,
    /// Open; after `stop`, writes are refused but acks still flow.
    Open { sink: Box<Sink>, stopped: bool },
}

/// An open destination.
struct Sink {
    writer: AppendWriter,
    format: Format,
    /// Records received since the last ack.
    unsettled: usize,
    /// Records among those that could not be written.
    nacks: Vec<Nack>,
}

impl FileDestination {
    /// A new, unconfigured destination.
    pub fn new() -> Self {
        Self::default()
    }

    fn sink(&mut self, writing: bool) -> Result<&mut Sink> {
        match &mut self.state {
            State::Open { sink, stopped } if !(writing && *stopped) => Ok(sink),
            _ => Err(ConnectorError::StreamNotOpen),
        }
    }
}

#[async_trait]
impl Destination for FileDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(DestinationConfig::from_settings(settings)?);
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        let config = self.config.as_ref().ok_or(FileError::NotConfigured)?;
        let (writer, report) =
            AppendWriter::open(&config.path, config.fsync, config.buffer_size).await?;
        tracing::debug!(
            path = %config.path.display(),
            fsync = %config.fsync,
            truncated = report.truncated,
            "file destination opened"
        );
        self.state = State::Open {
            sink: Box::new(Sink {
                writer,
                format: config.format,
                unsettled: 0,
                nacks: Vec::new(),
            }),
            stopped: false,
        };
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        let sink = self.sink(true)?;
        // The only await comes before any state changes, so a dropped call receives nothing.
        sink.writer.make_room().await?;
        let buf = sink.writer.buffer();
        for record in records {
            if let Err(reason) = encode(sink.format, record, buf) {
                sink.nacks.push(Nack {
                    index: sink.unsettled,
                    reason,
                });
            }
            sink.unsettled += 1;
        }
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        let sink = self.sink(false)?;
        sink.writer.settle().await?;
        Ok(Acks {
            count: std::mem::take(&mut sink.unsettled),
            nacks: std::mem::take(&mut sink.nacks),
        })
    }

    async fn stop(&mut self, _last: Option<&Position>) -> Result<()> {
        let State::Open { sink, stopped } = &mut self.state else {
            return Err(ConnectorError::StreamNotOpen);
        };
        *stopped = true;
        sink.writer.settle().await?;
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let State::Open { mut sink, .. } = std::mem::take(&mut self.state) {
            // Unacknowledged buffered records are dropped: the engine redelivers them.
            if let Err(e) = sink.writer.close().await {
                tracing::warn!(error = %e, "file destination: a write failed during teardown");
            }
        }
        Ok(())
    }
}
