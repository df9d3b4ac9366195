//! Reading a file in big chunks on a blocking thread, one chunk ahead of the consumer.
//!
//! Reads are positional (`pread`), so no shared file cursor can drift. Each completed read is split
//! at its last `\n`: the complete lines are frozen into a [`Bytes`] chunk handed to the caller, and
//! the partial last line stays buffered and is carried into the next read. The in-flight read is
//! kept in `self`, which makes [`ChunkReader::fill`] cancel-safe: a dropped call loses nothing,
//! the next call picks up the same read.

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::error::FileError;
use super::lines::{split_complete_lines, Line};

/// What [`ChunkReader::fill`] produced.
#[derive(Debug)]
pub(crate) enum Fill {
    /// Complete lines (ending with `\n`) starting at file offset `start`.
    Lines {
        /// The lines.
        data: Bytes,
        /// File offset of `data[0]`.
        start: u64,
    },
    /// The end of the file was reached; a partial last line may be buffered (see
    /// [`ChunkReader::take_partial`]).
    Eof,
}

/// A finished background read.
struct ReadDone {
    /// The buffer: the carried partial line followed by what was read.
    buf: BytesMut,
    /// Length of the carried partial line (which holds no `\n`).
    carried: usize,
    /// Bytes read, or the OS error.
    result: io::Result<usize>,
}

/// Chunked, read-ahead reader of one file from a starting offset.
pub(crate) struct ChunkReader {
    file: Arc<File>,
    path: Arc<str>,
    /// File offset of the first buffered byte (the start of the partial line).
    buf_start: u64,
    /// The partial line carried to the next read; `None` while a read is in flight.
    buf: Option<BytesMut>,
    /// The in-flight read, if any.
    pending: Option<JoinHandle<ReadDone>>,
    /// File offset up to which the file has been read.
    read_end: u64,
    read_size: usize,
    max_line: usize,
    /// Set once a background task failed: the buffered partial line is gone, so reading on would
    /// emit garbage.
    broken: bool,
}

impl ChunkReader {
    /// A reader of `file` starting at `offset`, asking the OS for `read_size` bytes at a time and
    /// refusing lines longer than `max_line`.
    pub fn new(
        file: Arc<File>,
        path: Arc<str>,
        offset: u64,
        read_size: usize,
        max_line: usize,
    ) -> Self {
        ChunkReader {
            file,
            path,
            buf_start: offset,
            buf: Some(BytesMut::new()),
            pending: None,
            read_end: offset,
            read_size: read_size.max(1),
            max_line,
            broken: false,
        }
    }

    /// File offset up to which bytes were read from the file (handed out or buffered).
    pub fn read_end(&self) -> u64 {
        self.read_end
    }

    /// True when a read-ahead has completed, so [`ChunkReader::fill`] returns without waiting.
    pub fn is_ready(&self) -> bool {
        self.pending.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// [`ChunkReader::fill`] if it can finish without waiting (a read-ahead completed), else
    /// `None`. Never suspends, so a caller holding records it has not returned yet cannot lose
    /// them to a dropped future.
    pub fn fill_now(&mut self) -> Option<Result<Fill, FileError>> {
        if !self.is_ready() {
            return None;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(self.fill()).poll(&mut cx) {
            Poll::Ready(result) => Some(result),
            // Only if the runtime's cooperative budget ran out, or a long line needs another read;
            // `fill` keeps its state in `self`, so dropping it here loses nothing.
            Poll::Pending => None,
        }
    }

    /// The next chunk of complete lines, or [`Fill::Eof`] when the file has no more complete line
    /// right now. Reads further (growing the buffer) while a line is longer than one read. After
    /// returning lines it starts reading the next chunk in the background.
    pub async fn fill(&mut self) -> Result<Fill, FileError> {
        loop {
            if self.broken {
                return Err(FileError::Poisoned {
                    path: self.path.to_string(),
                    message: "a background read failed".into(),
                });
            }
            if let Some(buf) = &self.buf {
                if buf.len() > self.max_line {
                    return Err(self.line_too_long());
                }
            }
            let Some(handle) = self.pending.as_mut() else {
                self.start_read();
                continue;
            };
            let joined = handle.await;
            self.pending = None;
            let done = joined.map_err(|source| {
                self.broken = true;
                FileError::Task {
                    path: self.path.to_string(),
                    source,
                }
            })?;
            let ReadDone {
                mut buf,
                carried,
                result,
            } = done;
            let n = match result {
                Ok(n) => n,
                Err(e) => {
                    self.buf = Some(buf);
                    return Err(FileError::io(
                        format!("cannot read {} at byte offset {}", self.path, self.read_end),
                        e,
                    ));
                }
            };
            if n == 0 {
                self.buf = Some(buf);
                return Ok(Fill::Eof);
            }
            self.read_end += n as u64;
            if let Some(data) = split_complete_lines(&mut buf, carried) {
                let start = self.buf_start;
                self.buf_start += data.len() as u64;
                self.buf = Some(buf);
                self.start_read();
                return Ok(Fill::Lines { data, start });
            }
            self.buf = Some(buf);
        }
    }

    fn line_too_long(&self) -> FileError {
        FileError::LineTooLong {
            path: self.path.to_string(),
            offset: self.buf_start,
            max: self.max_line,
        }
    }

    /// At end of file, hands out the buffered bytes after the last `\n` as a final line (whose end
    /// is the file's length). `None` if nothing is buffered or a read is in flight.
    pub fn take_partial(&mut self) -> Option<Line> {
        if self.pending.is_some() {
            return None;
        }
        let buf = self.buf.as_mut().filter(|b| !b.is_empty())?;
        let bytes = buf.split().freeze();
        let start = self.buf_start;
        self.buf_start += bytes.len() as u64;
        Some(Line {
            bytes,
            start,
            end: self.buf_start,
        })
    }

    /// Starts a background read unless one is in flight.
    fn start_read(&mut self) {
        if self.pending.is_some() {
            return;
        }
        let Some(buf) = self.buf.take() else {
            return;
        };
        // Reading at least as much as is buffered doubles the buffer for a very long line.
        let want = self.read_size.max(buf.len());
        let file = Arc::clone(&self.file);
        let offset = self.read_end;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            read_job(&file, buf, offset, want)
        }));
    }
}

/// Appends up to `want` bytes read at `offset` to `buf`.
fn read_job(file: &File, mut buf: BytesMut, offset: u64, want: usize) -> ReadDone {
    let carried = buf.len();
    // Zero-filling costs a memset per chunk, small next to the copy from the page cache, and keeps
    // the code free of `unsafe`.
    buf.resize(carried + want, 0);
    let result = loop {
        match pread(file, &mut buf[carried..], offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    buf.truncate(carried + result.as_ref().map_or(0, |n| *n));
    ReadDone {
        buf,
        carried,
        result,
    }
}

/// Counts the lines before `offset` (the number of `\n` in `file[..offset]`), for error messages.
/// Blocking; reads the file again, which is fine on an error path.
pub(crate) fn count_lines_before(file: &File, offset: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    let mut lines = 0u64;
    while at < offset {
        let want = usize::try_from(offset - at).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match pread(file, &mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        at += n as u64;
    }
    Ok(lines)
}

/// Reads at an absolute offset without moving the file cursor.
#[cfg(unix)]
pub(crate) fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// Reads at an absolute offset (moves the file cursor, which this connector never relies on).
#[cfg(windows)]
pub(crate) fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn reader_over(
        content: &[u8],
        offset: u64,
        read_size: usize,
    ) -> (tempfile::TempPath, ChunkReader) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(content).expect("write");
        let path = f.into_temp_path();
        let file = File::open(&path).expect("open");
        let reader = ChunkReader::new(Arc::new(file), "test".into(), offset, read_size, 1 << 20);
        (path, reader)
    }

    #[tokio::test]
    async fn reads_chunks_of_whole_lines_and_the_partial_tail() {
        let (_p, mut r) = reader_over(b"aaaa\nbb\ncccccccc\ndd", 0, 6);
        let mut got = Vec::new();
        while let Fill::Lines { data, start } = r.fill().await.expect("fill") {
            got.push((start, data));
        }
        let starts: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        let joined: Vec<u8> = got.iter().flat_map(|(_, d)| d.to_vec()).collect();
        assert_eq!(joined, b"aaaa\nbb\ncccccccc\n");
        assert_eq!(starts[0], 0);
        for w in got.windows(2) {
            assert_eq!(
                w[0].0 + w[0].1.len() as u64,
                w[1].0,
                "chunks are contiguous"
            );
        }
        let last = r.take_partial().expect("partial");
        assert_eq!(
            (&last.bytes[..], last.start, last.end),
            (&b"dd"[..], 17, 19)
        );
        assert!(r.take_partial().is_none());
        assert_eq!(r.read_end(), 19);
    }

    #[tokio::test]
    async fn starts_at_an_offset() {
        let (_p, mut r) = reader_over(b"skip\nkeep\n", 5, 1024);
        match r.fill().await.expect("fill") {
            Fill::Lines { data, start } => assert_eq!((start, &data[..]), (5, &b"keep\n"[..])),
            Fill::Eof => panic!("expected a line"),
        }
    }

    #[tokio::test]
    async fn refuses_a_line_over_the_limit() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&[b'x'; 100]).expect("write");
        let file = File::open(f.path()).expect("open");
        let mut r = ChunkReader::new(Arc::new(file), "big.txt".into(), 0, 16, 40);
        let err = r.fill().await.expect_err("too long");
        assert!(err.to_string().contains("big.txt"), "{err}");
        assert!(err.to_string().contains("max-line-size"), "{err}");
    }

    #[test]
    fn counts_lines_before_an_offset() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(b"a\nb\nc\nd").expect("write");
        let file = File::open(f.path()).expect("open");
        assert_eq!(count_lines_before(&file, 0).expect("count"), 0);
        assert_eq!(count_lines_before(&file, 4).expect("count"), 2);
        assert_eq!(count_lines_before(&file, 100).expect("count"), 3);
    }
}
