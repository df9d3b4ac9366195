//! The file source: one record per line, positions are byte offsets.
//!
//! A record's position is the decimal byte offset right after its line's `\n` (for a last line
//! without `\n`, the file's length), so `open(Some(p))` continues with exactly the line starting at
//! `p`. A position past the end of the file, or one not right after a `\n`, is refused with
//! [`ConnectorError::InvalidPosition`]: the file was truncated or replaced since it was saved.
//!
//! In `lines` format a record is `create`, has no key and no metadata, and its raw `payload.after`
//! is the line without `\n` (a `\r` before it is kept: lossless, and a file-to-file copy is
//! byte-identical). Leaving metadata empty keeps a record free of allocations beyond the `Vec` slot
//! it occupies; the payload shares the chunk the line was read into. In `opencdc` format each
//! non-blank line is decoded with [`sluice_sdk::opencdc::from_json`] and its position replaced by
//! the line's offset.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::{
    ConnectorError, Position, Progress, ProgressUnit, ReadBatch, Record, Settings, Source,
};

use super::config::{Format, SourceConfig};
use super::error::FileError;
use super::lines::{Line, LineChunk};
use super::reader::{count_lines_before, pread, ChunkReader, Fill};

/// Records are pre-allocated for at most this many per read, whatever `max` asks for.
const MAX_PREALLOCATED_RECORDS: usize = 8192;

/// Reads a file line by line (see the [module documentation](self)).
#[derive(Default)]
pub struct FileSource {
    config: Option<SourceConfig>,
    state: State,
    last_position: Option<Position>,
    done: u64,
    total: Option<u64>,
}

#[derive(Default)]
enum State {
    /// Not opened, or torn down.
    #[default]
    Closed,
    /// Reading.
    Open(Box<Stream>),
    /// Stopped: no more reads, acks still accepted.
    Stopped,
}

/// Everything an open source holds.
struct Stream {
    path: Arc<str>,
    path_buf: PathBuf,
    file: Arc<File>,
    identity: Option<FileId>,
    reader: ChunkReader,
    chunk: LineChunk,
    /// A line taken from the file but not yet returned as a record (its decoding failed, or the
    /// batch was returned first). Processed before anything else.
    stash: Option<Line>,
    format: Format,
    follow: bool,
    poll_interval: Duration,
    ended: bool,
    size: u64,
}

impl FileSource {
    /// A new, unconfigured source.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Source for FileSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(SourceConfig::from_settings(settings)?);
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let config = self.config.clone().ok_or(FileError::NotConfigured)?;
        let position = position.filter(|p| !p.is_empty()).cloned();
        let path_buf = config.path.clone();
        let opened = tokio::task::spawn_blocking(move || open_at(&path_buf, position.as_ref()))
            .await
            .map_err(|source| FileError::Task {
                path: config.path.display().to_string(),
                source,
            })??;
        let path: Arc<str> = config.path.display().to_string().into();
        let file = Arc::new(opened.file);
        let reader = ChunkReader::new(
            Arc::clone(&file),
            Arc::clone(&path),
            opened.start,
            config.read_buffer_size,
            config.max_line_size,
        );
        self.done = opened.start;
        self.total = Some(opened.size);
        self.last_position = None;
        self.state = State::Open(Box::new(Stream {
            path,
            path_buf: config.path,
            file,
            identity: opened.identity,
            reader,
            chunk: LineChunk::default(),
            stash: None,
            format: config.format,
            follow: config.follow,
            poll_interval: config.poll_interval,
            ended: false,
            size: opened.size,
        }));
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        let State::Open(stream) = &mut self.state else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let batch = stream.read(max).await?;
        if let Some(last) = batch.records.last() {
            self.done = last.position.to_u64().unwrap_or(self.done);
            self.last_position = Some(last.position.clone());
        }
        let total = stream.size.max(stream.reader.read_end());
        if batch.end_of_stream {
            // Skipped blank lines at the end still count as done.
            self.done = total;
        }
        self.total = Some(total);
        Ok(batch)
    }

    async fn ack(&mut self, _positions: &[Position]) -> Result<()> {
        // Nothing to release: the file stays as it is.
        match self.state {
            State::Closed => Err(ConnectorError::StreamNotOpen),
            State::Open(_) | State::Stopped => Ok(()),
        }
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        match std::mem::take(&mut self.state) {
            State::Closed => Err(ConnectorError::StreamNotOpen),
            State::Open(_) | State::Stopped => {
                self.state = State::Stopped;
                Ok(self.last_position.clone())
            }
        }
    }

    async fn teardown(&mut self) -> Result<()> {
        // Dropping the stream closes the file; an in-flight read finishes on its blocking thread
        // and frees its buffer.
        self.state = State::Closed;
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        let total = self.total?;
        Some(Progress {
            done: self.done,
            total: Some(total.max(self.done)),
            unit: ProgressUnit::Bytes,
        })
    }
}

impl Stream {
    /// Reads up to `max` records (see [`Source::read`]).
    async fn read(&mut self, max: usize) -> Result<ReadBatch, FileError> {
        let mut records = Vec::with_capacity(max.min(MAX_PREALLOCATED_RECORDS));
        if self.ended || max == 0 {
            return Ok(ReadBatch {
                records,
                end_of_stream: self.ended,
            });
        }
        if let Some(line) = self.stash.take() {
            self.push(line, &mut records).await?;
        }
        let mut waited = false;
        while records.len() < max {
            // Fast path: hand out the lines of the current chunk.
            match self.format {
                Format::Lines => {
                    while records.len() < max {
                        let Some(line) = self.chunk.next_line() else {
                            break;
                        };
                        records.push(Record::new(Position::from_u64(line.end), line.bytes));
                    }
                }
                Format::OpenCdc => {
                    while records.len() < max && self.stash.is_none() {
                        let Some(line) = self.chunk.next_line() else {
                            break;
                        };
                        self.push(line, &mut records).await?;
                    }
                }
            }
            if records.len() >= max || self.stash.is_some() {
                break;
            }
            // The chunk is exhausted: take the next one if it is already read, or wait for it
            // if there is nothing to return yet. Records in hand are never held across an await,
            // so a dropped call cannot lose them.
            let fill = if records.is_empty() {
                self.reader.fill().await?
            } else {
                match self.reader.fill_now() {
                    Some(Ok(fill)) => fill,
                    // Return what we have; the error comes back on the next call.
                    Some(Err(_)) | None => break,
                }
            };
            match fill {
                Fill::Lines { data, start } => self.chunk = LineChunk::new(data, start),
                Fill::Eof if !self.follow => {
                    if let Some(line) = self.reader.take_partial() {
                        self.push(line, &mut records).await?;
                    }
                    if self.stash.is_none() {
                        self.ended = true;
                    }
                    break;
                }
                Fill::Eof => {
                    if !records.is_empty() || waited {
                        break;
                    }
                    self.check_still_same_file().await?;
                    // Dropping the future here loses nothing: all state is in `self`.
                    tokio::time::sleep(self.poll_interval).await;
                    waited = true;
                }
            }
        }
        Ok(ReadBatch {
            records,
            end_of_stream: self.ended,
        })
    }

    /// Turns `line` into a record and appends it to `records`. A line that cannot be decoded is
    /// stashed: if records are waiting it is left for the next call (so they are delivered);
    /// otherwise its error is returned (and again on every later call).
    async fn push(&mut self, line: Line, records: &mut Vec<Record>) -> Result<(), FileError> {
        let decoded = match self.format {
            Format::Lines => Ok(Some(Record::new(
                Position::from_u64(line.end),
                line.bytes.clone(),
            ))),
            Format::OpenCdc => decode_opencdc(&line),
        };
        match decoded {
            Ok(Some(record)) => {
                records.push(record);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(problem) => {
                let start = line.start;
                self.stash = Some(line);
                if !records.is_empty() {
                    return Ok(());
                }
                Err(FileError::BadRecord {
                    path: self.path.to_string(),
                    line: self.line_number(start).await,
                    problem,
                })
            }
        }
    }

    /// "N" for the 1-based number of the line starting at `offset`, counted on demand (only on an
    /// error path), or a byte offset if counting failed.
    async fn line_number(&self, offset: u64) -> String {
        let file = Arc::clone(&self.file);
        match tokio::task::spawn_blocking(move || count_lines_before(&file, offset)).await {
            Ok(Ok(n)) => (n + 1).to_string(),
            _ => format!("at byte offset {offset}"),
        }
    }

    /// While following: fails if the file shrank below what was read or the path now names
    /// another file; otherwise notes the file's current size.
    async fn check_still_same_file(&mut self) -> Result<(), FileError> {
        let read_end = self.reader.read_end();
        let len = self
            .file
            .metadata()
            .map_err(|e| FileError::io(format!("cannot stat {}", self.path), e))?
            .len();
        if len < read_end {
            return Err(FileError::Truncated {
                path: self.path.to_string(),
                offset: read_end,
                len,
            });
        }
        self.size = len;
        let now = tokio::fs::metadata(&self.path_buf).await.ok();
        let replaced = match (&self.identity, now) {
            (_, None) => true,
            (Some(id), Some(meta)) => FileId::of(&meta).as_ref() != Some(id),
            (None, Some(_)) => false,
        };
        if replaced {
            return Err(FileError::Replaced {
                path: self.path.to_string(),
                offset: read_end,
            });
        }
        Ok(())
    }
}

/// Decodes one `opencdc` line: `None` for a blank line, the problem for a bad one.
fn decode_opencdc(line: &Line) -> Result<Option<Record>, String> {
    if line.bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut record = sluice_sdk::opencdc::from_json(&line.bytes).map_err(|e| e.to_string())?;
    record.position = Position::from_u64(line.end);
    Ok(Some(record))
}

/// The identity of a file (device and inode), to notice that a path was pointed elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    #[cfg(not(unix))]
    fn of(_meta: &std::fs::Metadata) -> Option<FileId> {
        None
    }
}

/// An opened file, where reading starts, and what it was when opened.
struct Opened {
    file: File,
    start: u64,
    size: u64,
    identity: Option<FileId>,
}

/// Opens `path` and checks that reading can resume at `position` (blocking).
fn open_at(path: &Path, position: Option<&Position>) -> Result<Opened, FileError> {
    let shown = path.display();
    let file = File::open(path)
        .map_err(|e| FileError::io(format!("cannot open {shown} for reading"), e))?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::io(format!("cannot stat {shown}"), e))?;
    if !meta.is_file() {
        return Err(FileError::io(
            format!("cannot read {shown}"),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let size = meta.len();
    let start = match position {
        None => 0,
        Some(p) => check_position(&file, &shown.to_string(), p, size)?,
    };
    Ok(Opened {
        file,
        start,
        size,
        identity: FileId::of(&meta),
    })
}

/// The offset `position` stands for, if reading can resume there: within the file, and right
/// after a `\n` (or at the very end of the file, after a last line without one).
fn check_position(
    file: &File,
    path: &str,
    position: &Position,
    size: u64,
) -> Result<u64, FileError> {
    let invalid = |reason: String| FileError::InvalidPosition {
        path: path.to_string(),
        position: position.clone(),
        reason,
    };
    let offset = position
        .to_u64()
        .ok_or_else(|| invalid("not a byte offset written by the file source".into()))?;
    if offset > size {
        return Err(invalid(format!(
            "it is past the end of the file ({size} bytes); was the file truncated or replaced \
             since the position was saved?"
        )));
    }
    if offset == 0 || offset == size {
        return Ok(offset);
    }
    let mut byte = [0u8; 1];
    let n = pread(file, &mut byte, offset - 1).map_err(|e| {
        FileError::io(
            format!("cannot read {path} at byte offset {}", offset - 1),
            e,
        )
    })?;
    if n == 1 && byte[0] == b'\n' {
        Ok(offset)
    } else {
        Err(invalid(
            "it is not at the start of a line; was the file modified since the position was \
             saved?"
                .into(),
        ))
    }
}
