//! Appending to a file through a large buffer, with writes and fsyncs on a blocking thread.
//!
//! Two buffers alternate: records are encoded into the active one while the other is being
//! written. At most one write (or fsync) is in flight; it is kept in `self`, so a dropped future
//! never loses or repeats a write. After a failed write or fsync the file's tail is unknown, so the
//! writer refuses everything from then on (the next open truncates the torn tail).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::config::FsyncPolicy;
use super::error::FileError;
use super::reader::pread;

/// A finished background write.
struct FlushDone {
    /// The buffer, emptied, for reuse.
    buf: Vec<u8>,
    /// True if bytes were written.
    wrote: bool,
    /// True if the file was fsynced after the write.
    synced: bool,
    /// What failed ("write to" or "fsync") and how.
    result: Result<(), (&'static str, io::Error)>,
}

/// A buffered, append-only writer of one file.
pub(crate) struct AppendWriter {
    file: Arc<File>,
    path: Arc<str>,
    fsync: FsyncPolicy,
    buffer_size: usize,
    active: Vec<u8>,
    spare: Option<Vec<u8>>,
    pending: Option<JoinHandle<FlushDone>>,
    /// Bytes were handed to the OS since the last fsync.
    unsynced: bool,
    poisoned: Option<String>,
}

/// What opening found.
pub(crate) struct OpenReport {
    /// Bytes after the last `\n` that were cut off (a torn write from an earlier run).
    pub truncated: u64,
}

impl AppendWriter {
    /// Opens (creating if missing) `path` for appending. A torn last line (bytes after the last
    /// `\n`) is truncated away: those bytes were never acknowledged, so they will be redelivered.
    pub async fn open(
        path: &Path,
        fsync: FsyncPolicy,
        buffer_size: usize,
    ) -> Result<(Self, OpenReport), FileError> {
        let shown: Arc<str> = path.display().to_string().into();
        let owned = path.to_path_buf();
        let (file, report) = tokio::task::spawn_blocking(move || open_blocking(&owned, fsync))
            .await
            .map_err(|source| FileError::Task {
                path: shown.to_string(),
                source,
            })??;
        let writer = AppendWriter {
            file: Arc::new(file),
            path: shown,
            fsync,
            buffer_size: buffer_size.max(1),
            active: Vec::with_capacity(buffer_size + buffer_size / 4),
            spare: None,
            pending: None,
            unsynced: false,
            poisoned: None,
        };
        Ok((writer, report))
    }

    /// Fails if an earlier write or fsync failed.
    pub fn check(&self) -> Result<(), FileError> {
        match &self.poisoned {
            None => Ok(()),
            Some(message) => Err(FileError::Poisoned {
                path: self.path.to_string(),
                message: message.clone(),
            }),
        }
    }

    /// The buffer to encode lines into. Call [`AppendWriter::make_room`] before each batch.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.active
    }

    /// If the buffer is full, hands it to a background write (after the previous one finished).
    /// The only wait is for that previous write.
    pub async fn make_room(&mut self) -> Result<(), FileError> {
        self.check()?;
        if self.active.len() < self.buffer_size {
            return Ok(());
        }
        self.finish_pending().await?;
        self.start_flush(false);
        Ok(())
    }

    /// Writes everything buffered and, with `fsync: always`, fsyncs it: once this returns, every
    /// byte given to [`AppendWriter::buffer`] is durable per the policy.
    pub async fn settle(&mut self) -> Result<(), FileError> {
        self.check()?;
        self.finish_pending().await?;
        let sync = self.fsync == FsyncPolicy::Always;
        if !self.active.is_empty() || (sync && self.unsynced) {
            self.start_flush(sync);
            self.finish_pending().await?;
        }
        Ok(())
    }

    /// Waits for the in-flight write, if any (unbuffered data is dropped with the writer).
    pub async fn close(&mut self) -> Result<(), FileError> {
        self.finish_pending().await
    }

    fn start_flush(&mut self, sync: bool) {
        let next = self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(self.buffer_size + self.buffer_size / 4));
        let buf = std::mem::replace(&mut self.active, next);
        let file = Arc::clone(&self.file);
        let keep = self.buffer_size * 2;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            flush_job(&file, buf, sync, keep)
        }));
    }

    async fn finish_pending(&mut self) -> Result<(), FileError> {
        let Some(handle) = self.pending.as_mut() else {
            return Ok(());
        };
        let joined = handle.await;
        self.pending = None;
        let done = match joined {
            Ok(done) => done,
            Err(source) => {
                self.poisoned = Some(format!("background write failed: {source}"));
                return Err(FileError::Task {
                    path: self.path.to_string(),
                    source,
                });
            }
        };
        match done.result {
            Ok(()) => {
                if done.synced {
                    self.unsynced = false;
                } else if done.wrote {
                    self.unsynced = true;
                }
                self.spare = Some(done.buf);
                Ok(())
            }
            Err((what, e)) => {
                self.poisoned = Some(format!("cannot {what} the file: {e}"));
                Err(FileError::io(format!("cannot {what} {}", self.path), e))
            }
        }
    }
}

/// Writes `buf` (appending), fsyncs if asked, and returns the emptied buffer (shrunk to `keep`
/// if one huge batch grew it).
fn flush_job(file: &File, mut buf: Vec<u8>, sync: bool, keep: usize) -> FlushDone {
    let wrote = !buf.is_empty();
    let mut writer: &File = file;
    let mut result = writer.write_all(&buf).map_err(|e| ("write to", e));
    if result.is_ok() && sync {
        result = file.sync_data().map_err(|e| ("fsync", e));
    }
    buf.clear();
    if buf.capacity() > keep * 2 {
        buf.shrink_to(keep);
    }
    FlushDone {
        buf,
        wrote,
        synced: sync && result.is_ok(),
        result,
    }
}

/// Opens or creates `path` for appending and truncates a torn last line (blocking).
fn open_blocking(path: &Path, fsync: FsyncPolicy) -> Result<(File, OpenReport), FileError> {
    let shown = path.display();
    let open_err = |e| FileError::io(format!("cannot open {shown} for appending"), e);
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    let (file, created) = match options.clone().create_new(true).open(path) {
        Ok(file) => (file, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            (options.open(path).map_err(open_err)?, false)
        }
        Err(e) => return Err(open_err(e)),
    };
    let len = file
        .metadata()
        .map_err(|e| FileError::io(format!("cannot stat {shown}"), e))?
        .len();
    let keep = last_line_end(&file, len)
        .map_err(|e| FileError::io(format!("cannot read {shown} to check its last line"), e))?;
    if keep < len {
        file.set_len(keep).map_err(|e| {
            FileError::io(format!("cannot truncate the torn last line of {shown}"), e)
        })?;
        tracing::warn!(
            path = %shown,
            bytes = len - keep,
            "truncated a torn last line (an interrupted write from an earlier run, never \
             acknowledged; its records will be delivered again)"
        );
    }
    if fsync == FsyncPolicy::Always {
        if keep < len {
            file.sync_all()
                .map_err(|e| FileError::io(format!("cannot fsync {shown}"), e))?;
        }
        if created {
            sync_parent_dir(path)?;
        }
    }
    Ok((
        file,
        OpenReport {
            truncated: len - keep,
        },
    ))
}

/// The offset right after the last `\n` of a file of `len` bytes (0 if it has none).
fn last_line_end(file: &File, len: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let want = (end - start) as usize;
        let mut got = 0;
        while got < want {
            match pread(file, &mut buf[got..want], start + got as u64) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(i) = memchr::memrchr(b'\n', &buf[..want]) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Makes a newly created file's directory entry durable.
#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::io(format!("cannot fsync directory {}", dir.display()), e))
}

/// Directories cannot be fsynced portably outside Unix.
#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> Result<(), FileError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_the_last_complete_line() {
        let dir = tempfile::tempdir().expect("dir");
        let cases: [(&[u8], u64); 5] = [
            (b"", 0),
            (b"no newline", 0),
            (b"a\nb\n", 4),
            (b"a\nb\npart", 4),
            (b"\n", 1),
        ];
        for (content, want) in cases {
            let p = dir.path().join("f");
            std::fs::write(&p, content).expect("write");
            let f = File::open(&p).expect("open");
            assert_eq!(last_line_end(&f, content.len() as u64).expect("scan"), want);
        }
        // A torn tail longer than one scan block.
        let mut big = b"kept\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 200_000));
        let p = dir.path().join("big");
        std::fs::write(&p, &big).expect("write");
        let f = File::open(&p).expect("open");
        assert_eq!(last_line_end(&f, big.len() as u64).expect("scan"), 5);
    }

    #[tokio::test]
    async fn buffers_flushes_and_reuses_buffers() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("out");
        let (mut w, report) = AppendWriter::open(&p, FsyncPolicy::Always, 8)
            .await
            .expect("open");
        assert_eq!(report.truncated, 0);
        for i in 0..10 {
            w.make_room().await.expect("room");
            w.buffer()
                .extend_from_slice(format!("line{i}\n").as_bytes());
        }
        w.settle().await.expect("settle");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text.lines().count(), 10);
        assert!(text.starts_with("line0\n") && text.ends_with("line9\n"));
        assert!(!w.unsynced);
        w.close().await.expect("close");
    }
}
