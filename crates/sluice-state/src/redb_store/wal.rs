//! The write-ahead log beside the store file: what makes a commit durable without an fsync of
//! the redb file per commit.
//!
//! Each committed write transaction appends one record — its sequence number and its redo
//! record (see [`super::tables::Tables`]) — and waits until an `fdatasync` of the log covers it.
//! Concurrent commits share one `fdatasync` (the first waiter syncs for everyone appended so
//! far). The log is a series of segment files, `<store file>.wal-<n>`. A checkpoint (a durable
//! redb commit) first moves appends to a new segment, then commits, then deletes the older
//! segments, whose records the file now holds — so records appended by commits that follow the
//! checkpoint's are never lost with them. Opening the store replays the records the file does
//! not have yet.
//!
//! A segment starts with a header: `SLUICWAL` and the database's log id (a random number kept in
//! the store file), so that the segments of a deleted store file are never replayed into a new
//! one at the same path. On disk a record is its payload length (`u32`), the CRC-32 of the payload (`u32`), then the
//! payload: the sequence number (`u64`), a codec byte (0: as is, 1: LZ4 with the length first)
//! and the redo record, all little-endian. A record cut
//! short or failing its checksum at the end of the last segment is a torn tail after a crash: it
//! is dropped, as no commit waiting on it was acknowledged. Anywhere else it is damage, and the
//! store refuses to open rather than skip acknowledged commits.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::errors::backend_error;
use crate::error::StateError;

/// Bytes before a record's payload.
const HEADER: usize = 4 + 4;

/// Record bodies: as they are, or LZ4-compressed with their length first.
const RAW: u8 = 0;
const LZ4: u8 = 1;
/// Redo records from this size on are compressed (flows and other JSON values shrink several
/// times, which means less to sync and fewer checkpoints).
const COMPRESS_FROM: usize = 256;

/// The encoding buffer is kept between appends up to this capacity (a larger one, after a big
/// bulk write, is given back).
const SCRATCH_KEEP: usize = 1 << 20;

/// A segment starts with these bytes, then the database's log id (little-endian `u64`).
const MAGIC: &[u8; 8] = b"SLUICWAL";
/// Bytes of a segment's header.
const SEGMENT_HEADER: usize = 8 + 8;

/// The header of a segment of the database with `log_id`.
fn segment_header(log_id: u64) -> [u8; SEGMENT_HEADER] {
    let mut header = [0u8; SEGMENT_HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&log_id.to_le_bytes());
    header
}

/// The size of a segment: appends move on to a new one beyond it. Each segment is written with
/// zeros ahead of time: an `fdatasync` after a write into blocks that already exist flushes the
/// data alone, while one after an append must also journal the file's new size (measured here:
/// ~105 µs against ~145 µs).
pub(super) const SEGMENT_BYTES: u64 = 8 << 20;

/// One record read back from the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Its sequence number.
    pub(super) lsn: u64,
    /// Its redo record.
    pub(super) redo: Vec<u8>,
}

/// An open log: appends under a lock; a syncer thread of its own runs `fdatasync` whenever
/// records are waiting, one for all of them, and publishes how far the log is on disk.
pub(super) struct Wal {
    shared: Arc<Shared>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

/// What the store's writers and the syncer share.
struct Shared {
    /// The store file the segments are named after.
    base: PathBuf,
    appender: Mutex<Appender>,
    /// Wakes the syncer when a record is appended (or the log is closed).
    appended_cond: Condvar,
    /// How far the log is on disk; writers wait on it.
    status: tokio::sync::watch::Sender<SyncStatus>,
    /// The next segment is being written ahead of time.
    preparing: AtomicBool,
    /// The database's log id, in every segment's header.
    log_id: u64,
    /// The log is closed: a spare being written is given up.
    closed: AtomicBool,
    /// Where the record being appended is encoded: one buffer reused by every append (appends
    /// are serialised by the store's writer), so an append allocates nothing.
    scratch: Mutex<Vec<u8>>,
}

/// The segment being appended to.
struct Appender {
    file: Arc<File>,
    number: u64,
    /// Bytes in the segment.
    len: u64,
    /// Bytes and records appended since the last checkpoint began (see [`Wal::rotate`]).
    pending_bytes: u64,
    pending_records: u64,
    /// The highest sequence number appended.
    appended: u64,
    /// The log is being closed: the syncer stops.
    closing: bool,
}

/// How far the log is on disk.
#[derive(Clone, Debug, Default)]
struct SyncStatus {
    /// Every record up to this sequence number is on disk.
    synced: u64,
    /// The log failed (a sync, or taking back a record): its state on disk is unknown, so every
    /// later commit fails.
    failed: Option<String>,
}

impl Wal {
    /// Opens the log of the store file `base`, whose log id is `log_id`: reads every segment
    /// and returns the intact records of this database's segments, in order; appends go to a new
    /// segment after them. Segments of another database (left behind when a store file was
    /// deleted and created anew) are skipped, and go with the next [`Wal::retire`]. A torn tail
    /// of the last segment is cut off.
    pub(super) fn open(base: &Path, log_id: u64) -> Result<(Wal, Vec<Entry>), StateError> {
        let numbers = segment_numbers(base)?;
        let mut entries = Vec::new();
        for (at, &number) in numbers.iter().enumerate() {
            let path = segment_path(base, number);
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
            let body = match bytes.get(..SEGMENT_HEADER) {
                Some(head) if head == segment_header(log_id) => &bytes[SEGMENT_HEADER..],
                Some(head) if head.starts_with(MAGIC) => {
                    tracing::warn!(log = %path.display(), "ignoring a write-ahead log segment of another database (its store file was replaced)");
                    continue;
                }
                // Never written to (created, or a spare, before a crash).
                _ if zero_from(&bytes, 0) => continue,
                _ => {
                    return Err(backend_error(format!(
                        "{} is not a write-ahead log segment of sluice (bad header); move it away to open the store",
                        path.display()
                    )))
                }
            };
            let (mut found, intact) = decode_all(body);
            entries.append(&mut found);
            if zero_from(body, intact) {
                continue;
            }
            if at + 1 < numbers.len() {
                return Err(backend_error(format!(
                    "the write-ahead log segment {} is damaged at byte {} and is not the last one; \
                     the store will not open without the commits after that point (restore it or remove \
                     the segment to accept their loss)",
                    path.display(),
                    SEGMENT_HEADER + intact
                )));
            }
            tracing::warn!(
                log = %path.display(),
                dropped_bytes = body.len() - intact,
                "the write-ahead log ends in a torn record (a crash during a commit that was not acknowledged); dropping it"
            );
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_len((SEGMENT_HEADER + intact) as u64)?;
                    f.sync_data()
                })
                .map_err(|e| io_error(&path, "truncate", e))?;
        }
        let number = numbers.last().map_or(1, |n| n + 1);
        let file = start_segment(base, number, log_id)?;
        let last = entries.last().map_or(0, |e| e.lsn);
        let (status, _) = tokio::sync::watch::channel(SyncStatus {
            synced: last,
            failed: None,
        });
        let shared = Arc::new(Shared {
            appender: Mutex::new(Appender {
                file: Arc::new(file),
                number,
                len: SEGMENT_HEADER as u64,
                pending_bytes: 0,
                pending_records: 0,
                appended: last,
                closing: false,
            }),
            appended_cond: Condvar::new(),
            status,
            preparing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            log_id,
            base: base.to_path_buf(),
            scratch: Mutex::new(Vec::new()),
        });
        let syncer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("sluice-wal-sync".into())
                .spawn(move || shared.sync_loop())
                .map_err(|e| io_error(base, "start the syncer thread of", e))?
        };
        let wal = Wal {
            shared,
            syncer: Some(syncer),
        };
        wal.prepare_spare();
        Ok((wal, entries))
    }

    /// Deletes every segment before the one being appended to: after a reopen's replay made
    /// their records durable in the file.
    pub(super) fn retire_older(&self) -> Result<(), StateError> {
        let current = self.shared.appender.lock().number;
        self.retire(current.saturating_sub(1))
    }

    /// Bytes and records appended since the last checkpoint began: what a crash now would
    /// replay.
    pub(super) fn pending(&self) -> (u64, u64) {
        let appender = self.shared.appender.lock();
        (appender.pending_bytes, appender.pending_records)
    }

    /// Appends record `lsn` and wakes the syncer (it is durable once [`Wal::synced`] says so).
    /// Records must be appended in sequence order; the store appends while holding redb's write
    /// transaction.
    pub(super) fn append(&self, lsn: u64, redo: &[u8]) -> Result<u64, StateError> {
        let shared = &self.shared;
        shared.check_failed()?;
        let mut scratch = shared.scratch.lock();
        let record_len = encode_record(&mut scratch, lsn, redo).map_err(|payload_len| {
            backend_error(format!(
                "a commit of {payload_len} bytes is too large for the write-ahead log of {} (4 GiB at most)",
                shared.base.display()
            ))
        })?;
        let record = &scratch[..record_len];
        let mut appender = shared.appender.lock();
        if appender.len > SEGMENT_HEADER as u64
            && appender.len + record.len() as u64 > SEGMENT_BYTES
        {
            self.next_segment(&mut appender)?;
        }
        if let Err(e) = (&*appender.file).write_all(record) {
            let path = segment_path(&shared.base, appender.number);
            // Part of the record may be in the file: cut it off so that later records follow
            // the last whole one.
            let whole = appender.len;
            if let Err(why) = appender.cut_to(whole) {
                drop(appender);
                shared.fail(format!("cannot cut off a partly appended record: {why}"));
            }
            return Err(io_error(&path, "append to", e));
        }
        let written = record.len() as u64;
        appender.len += written;
        appender.pending_bytes += written;
        appender.pending_records += 1;
        appender.appended = lsn;
        shared.appended_cond.notify_one();
        drop(appender);
        if scratch.len() > SCRATCH_KEEP {
            *scratch = Vec::new();
        }
        Ok(written)
    }

    /// Returns once every record up to `lsn` is on disk (the syncer's next `fdatasync`).
    pub(super) async fn synced(&self, lsn: u64) -> Result<(), StateError> {
        let mut status = self.shared.status.subscribe();
        let reached = status
            .wait_for(|s| s.synced >= lsn || s.failed.is_some())
            .await
            .map(|s| s.failed.clone());
        match reached {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(self.shared.failed_error(&why)),
            // The sender lives as long as `self`.
            Err(_) => Err(self.shared.failed_error("the log was closed")),
        }
    }

    /// Like [`Wal::synced`], for callers outside a runtime: syncs the current segment itself.
    pub(super) fn sync_blocking(&self, lsn: u64) -> Result<(), StateError> {
        let shared = &self.shared;
        shared.check_failed()?;
        if shared.status.borrow().synced >= lsn {
            return Ok(());
        }
        shared.sync_once()
    }

    /// Starts a checkpoint: moves appends to a new segment (see [`Wal::next_segment`]) and
    /// returns the number of the last segment the checkpoint covers (see [`Wal::retire`]).
    /// Called while holding redb's write transaction, before its durable commit.
    pub(super) fn rotate(&self) -> Result<u64, StateError> {
        let mut appender = self.shared.appender.lock();
        let old = appender.number;
        self.next_segment(&mut appender)?;
        appender.pending_bytes = 0;
        appender.pending_records = 0;
        Ok(old)
    }

    /// Syncs the current segment (so that the syncer, which syncs only the current one, owes
    /// nothing to it) and appends to a new one from now on: the spare written ahead, if ready.
    fn next_segment(&self, appender: &mut Appender) -> Result<(), StateError> {
        let shared = &self.shared;
        let old_path = segment_path(&shared.base, appender.number);
        appender
            .file
            .sync_data()
            .map_err(|e| io_error(&old_path, "sync", e))?;
        let number = appender.number + 1;
        let file = start_segment(&shared.base, number, shared.log_id)?;
        appender.file = Arc::new(file);
        appender.number = number;
        appender.len = SEGMENT_HEADER as u64;
        let synced_through = appender.appended;
        shared
            .status
            .send_modify(|s| s.synced = s.synced.max(synced_through));
        self.prepare_spare();
        Ok(())
    }

    /// Writes the next segment ahead of time on a thread of its own (see [`SEGMENT_BYTES`]),
    /// unless one is being written.
    fn prepare_spare(&self) {
        if self.shared.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let started = std::thread::Builder::new()
            .name("sluice-wal-prep".into())
            .spawn(move || {
                if let Err(e) = write_spare_unless(&shared.base, &shared.closed) {
                    tracing::warn!(log = %shared.base.display(), error = %e, "cannot write the next write-ahead log segment ahead of time; it will be created when needed");
                }
                shared.preparing.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.shared.preparing.store(false, Ordering::Release);
        }
    }

    /// Ends a checkpoint whose durable commit returned: deletes the segments up to `through`.
    pub(super) fn retire(&self, through: u64) -> Result<(), StateError> {
        let base = &self.shared.base;
        for number in segment_numbers(base)?.into_iter().filter(|&n| n <= through) {
            let path = segment_path(base, number);
            std::fs::remove_file(&path).map_err(|e| io_error(&path, "delete", e))?;
        }
        Ok(())
    }
}

impl Drop for Wal {
    /// Stops the syncer and any spare being written, so that no thread of the log touches its
    /// files afterwards.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.appender.lock().closing = true;
        self.shared.appended_cond.notify_one();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
        while self.shared.preparing.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Shared {
    /// The syncer: waits for records, syncs, publishes; until the log closes or a sync fails.
    fn sync_loop(&self) {
        loop {
            {
                let mut appender = self.appender.lock();
                while !appender.closing && appender.appended <= self.status.borrow().synced {
                    self.appended_cond.wait(&mut appender);
                }
                if appender.closing {
                    return;
                }
            }
            if self.sync_once().is_err() {
                return;
            }
        }
    }

    /// Syncs the segment being appended to and publishes how far that covers; a failure fails
    /// the log.
    fn sync_once(&self) -> Result<(), StateError> {
        // Every record before the current segment was synced when appends moved on from it.
        let (file, target) = {
            let appender = self.appender.lock();
            (Arc::clone(&appender.file), appender.appended)
        };
        match file.sync_data() {
            Ok(()) => {
                self.status.send_modify(|s| s.synced = s.synced.max(target));
                Ok(())
            }
            Err(e) => {
                tracing::error!(log = %self.base.display(), error = %e, "cannot sync the write-ahead log; the store refuses further writes until reopened");
                let why = e.to_string();
                self.fail(why.clone());
                Err(self.failed_error(&why))
            }
        }
    }

    fn fail(&self, why: String) {
        self.status.send_modify(|s| s.failed = Some(why));
    }

    fn check_failed(&self) -> Result<(), StateError> {
        match &self.status.borrow().failed {
            Some(why) => Err(self.failed_error(why)),
            None => Ok(()),
        }
    }

    fn failed_error(&self, why: &str) -> StateError {
        backend_error(format!(
            "the write-ahead log of {} failed ({why}); writes are refused until the store is reopened",
            self.base.display()
        ))
    }
}

impl Appender {
    /// Truncates the segment to `len` bytes and appends from there.
    fn cut_to(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        (&*self.file).seek(SeekFrom::Start(len)).map(drop)
    }
}

fn io_error(path: &Path, action: &str, e: std::io::Error) -> StateError {
    backend_error(format!(
        "cannot {action} the write-ahead log segment {}: {e}",
        path.display()
    ))
}

/// Segment `number` of the log of the store file `base`.
fn segment_path(base: &Path, number: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".wal-{number:08}"));
    PathBuf::from(name)
}

/// The numbers of the existing segments of `base`'s log, ascending.
fn segment_numbers(base: &Path) -> Result<Vec<u64>, StateError> {
    let dir = parent_dir(base);
    let prefix = format!(
        "{}.wal-",
        base.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let listing = std::fs::read_dir(dir).map_err(|e| io_error(dir, "list the directory of", e))?;
    let mut numbers = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| io_error(dir, "list the directory of", e))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn parent_dir(base: &Path) -> &Path {
    base.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Deletes every segment and the spare of the log of the store file `base`.
pub(super) fn remove_all(base: &Path) -> Result<(), StateError> {
    let mut doomed: Vec<PathBuf> = segment_numbers(base)?
        .into_iter()
        .map(|n| segment_path(base, n))
        .collect();
    doomed.push(spare_path(base));
    for path in doomed {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, "delete", e)),
        }
    }
    Ok(())
}

/// The spare segment, written ahead of time.
fn spare_path(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".wal-spare");
    PathBuf::from(name)
}

/// Writes a spare segment of [`SEGMENT_BYTES`] zeros, durably, under a temporary name first so
/// that a spare is always whole.
#[cfg(test)]
fn write_spare(base: &Path) -> std::io::Result<()> {
    write_spare_unless(base, &AtomicBool::new(false))
}

/// Like [`write_spare`], giving up (and removing the partial file) once `closed` is set.
fn write_spare_unless(base: &Path, closed: &AtomicBool) -> std::io::Result<()> {
    let spare = spare_path(base);
    if std::fs::metadata(&spare).is_ok_and(|m| m.len() == SEGMENT_BYTES) {
        return Ok(());
    }
    static WRITER: AtomicU64 = AtomicU64::new(0);
    let mut temp = spare.clone().into_os_string();
    temp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        WRITER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = PathBuf::from(temp);
    let mut file = File::create(&temp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < SEGMENT_BYTES {
        if closed.load(Ordering::Acquire) {
            drop(file);
            return std::fs::remove_file(&temp);
        }
        file.write_all(&zeros)?;
        written += zeros.len() as u64;
    }
    file.sync_all()?;
    std::fs::rename(&temp, &spare)
}

/// Creates segment `number` of `base`'s log — from the spare if one is ready — with its header
/// written and its directory entry durable; returns it open for appending after the header.
fn start_segment(base: &Path, number: u64, log_id: u64) -> Result<File, StateError> {
    let path = segment_path(base, number);
    let mut file = take_spare(base, &path)?;
    file.write_all(&segment_header(log_id))
        .map_err(|e| io_error(&path, "write", e))?;
    sync_dir(base)?;
    Ok(file)
}

/// Opens segment `path` for appending: the spare renamed, if one is ready, else a new file.
fn take_spare(base: &Path, path: &Path) -> Result<File, StateError> {
    let spare = spare_path(base);
    if std::fs::metadata(&spare).is_ok_and(|m| m.len() == SEGMENT_BYTES)
        && std::fs::rename(&spare, path).is_ok()
    {
        return OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_error(path, "open", e));
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_error(path, "create", e))
}

/// True if every byte of `bytes` from `at` on is zero: the unused end of a segment.
fn zero_from(bytes: &[u8], at: usize) -> bool {
    bytes
        .get(at..)
        .is_none_or(|rest| rest.iter().all(|&b| b == 0))
}

/// Makes a created segment's directory entry durable.
fn sync_dir(base: &Path) -> Result<(), StateError> {
    let dir = parent_dir(base);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "sync the directory of", e))
}

/// Encodes record `lsn` of `redo` at the start of `out`: header, sequence number, codec and
/// body, LZ4-compressed (with the length first) when that makes it smaller; returns the record's
/// length. `out` only grows, and its bytes past the record are left as they were, so that a
/// buffer reused by every append is zero-filled once rather than for each record. Fails with
/// the payload's length when it does not fit the `u32` length field.
fn encode_record(out: &mut Vec<u8>, lsn: u64, redo: &[u8]) -> Result<usize, usize> {
    let body_at = HEADER + 8 + 1;
    let compress = redo.len() >= COMPRESS_FROM && u32::try_from(redo.len()).is_ok();
    let room = if compress {
        4 + lz4_flex::block::get_maximum_output_size(redo.len())
    } else {
        0
    };
    let needed = body_at + room.max(redo.len());
    if out.len() < needed {
        out.resize(needed, 0);
    }
    out[HEADER..HEADER + 8].copy_from_slice(&lsn.to_le_bytes());
    let mut end = None;
    if compress {
        let block_at = body_at + 4;
        if let Ok(n) = lz4_flex::block::compress_into(redo, &mut out[block_at..]) {
            if block_at + n - body_at < redo.len() {
                // `compress` checked that the length fits.
                let size = redo.len() as u32;
                out[body_at..block_at].copy_from_slice(&size.to_le_bytes());
                out[body_at - 1] = LZ4;
                end = Some(block_at + n);
            }
        }
    }
    let end = match end {
        Some(end) => end,
        None => {
            out[body_at - 1] = RAW;
            out[body_at..body_at + redo.len()].copy_from_slice(redo);
            body_at + redo.len()
        }
    };
    let payload_len = end - HEADER;
    let len = u32::try_from(payload_len).map_err(|_| payload_len)?;
    let crc = crc32fast::hash(&out[HEADER..end]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(end)
}

/// Decodes the records of `bytes` up to the first incomplete or damaged one; returns them and
/// the length of the intact prefix.
fn decode_all(bytes: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some((entry, next)) = decode_one(bytes, at) {
        entries.push(entry);
        at = next;
    }
    (entries, at)
}

fn decode_one(bytes: &[u8], at: usize) -> Option<(Entry, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let start = at + HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    if len < 9 || crc32fast::hash(payload) != crc {
        return None;
    }
    let lsn = u64::from_le_bytes(payload[..8].try_into().ok()?);
    let body = &payload[9..];
    let redo = match payload[8] {
        RAW => body.to_vec(),
        LZ4 => lz4_flex::block::decompress_size_prepended(body).ok()?,
        _ => return None,
    };
    Some((Entry { lsn, redo }, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 42;

    fn lsns(base: &Path) -> Vec<u64> {
        Wal::open(base, ID)
            .unwrap()
            .1
            .iter()
            .map(|e| e.lsn)
            .collect()
    }

    #[test]
    fn records_come_back_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, entries) = Wal::open(&base, ID).unwrap();
        assert!(entries.is_empty());
        wal.append(1, b"one").unwrap();
        wal.append(2, b"").unwrap();
        wal.append(3, b"three").unwrap();
        wal.sync_blocking(3).unwrap();
        assert_eq!(wal.pending().1, 3);
        drop(wal);
        let (_, entries) = Wal::open(&base, ID).unwrap();
        let got: Vec<(u64, &[u8])> = entries.iter().map(|e| (e.lsn, &e.redo[..])).collect();
        assert_eq!(
            got,
            vec![(1, &b"one"[..]), (2, &b""[..]), (3, &b"three"[..])]
        );
    }

    #[test]
    fn large_records_are_compressed_and_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        let json =
            br#"{"id":"0190","state":"STARTED","counterPartyAddress":"https://example.com"}"#;
        let redo: Vec<u8> = json.iter().copied().cycle().take(8192).collect();
        let took = wal.append(1, &redo).unwrap();
        assert!(took < redo.len() as u64 / 2, "took {took} bytes");
        wal.append(2, b"small").unwrap();
        drop(wal);
        let (_, entries) = Wal::open(&base, ID).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].redo, redo);
        assert_eq!(entries[1].redo, b"small");
    }

    /// `len` bytes of a xorshift sequence, which LZ4 cannot shrink.
    fn incompressible(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn records_encoded_into_a_reused_buffer_decode_whole() {
        let json = br#"{"id":"0190","state":"STARTED"}"#;
        let compressible: Vec<u8> = json.iter().copied().cycle().take(4096).collect();
        // Bytes LZ4 cannot shrink stay as they are.
        let noise = incompressible(4096);
        let mut buf = Vec::new();
        for (lsn, redo) in [
            (1, compressible.as_slice()),
            (2, b"small".as_slice()),
            (3, noise.as_slice()),
            (4, compressible.as_slice()),
        ] {
            let len = encode_record(&mut buf, lsn, redo).unwrap();
            let (entry, end) = decode_one(&buf[..len], 0).unwrap();
            assert_eq!((entry.lsn, entry.redo.as_slice()), (lsn, redo));
            assert_eq!(end, len);
            let codec = buf[HEADER + 8];
            match lsn {
                1 | 4 => assert_eq!(codec, LZ4),
                _ => assert_eq!(codec, RAW),
            }
        }
        // The compressed body is the format logs written before hold: the length, then the block.
        let len = encode_record(&mut buf, 5, &compressible).unwrap();
        assert_eq!(
            buf[HEADER + 9..len],
            lz4_flex::block::compress_prepend_size(&compressible)[..]
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_follow_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        wal.append(1, b"kept").unwrap();
        wal.append(2, b"torn away").unwrap();
        drop(wal);
        let segment = segment_path(&base, 1);
        let full = std::fs::metadata(&segment).unwrap().len();
        let f = OpenOptions::new().write(true).open(&segment).unwrap();
        f.set_len(full - 3).unwrap();
        drop(f);

        let (wal, entries) = Wal::open(&base, ID).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].redo, b"kept");
        wal.append(2, b"again").unwrap();
        drop(wal);
        assert_eq!(lsns(&base), vec![1, 2]);
    }

    /// Flips a byte inside the second record (of 5 payload bytes after the first) of `segment`.
    fn damage_second_record(segment: &Path) {
        let mut bytes = std::fs::read(segment).unwrap();
        bytes[SEGMENT_HEADER + HEADER + 9 + 5 + HEADER + 10] ^= 0xff;
        std::fs::write(segment, &bytes).unwrap();
    }

    #[test]
    fn a_damaged_record_ends_the_last_segment() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        wal.append(1, b"first").unwrap();
        wal.append(2, b"second").unwrap();
        wal.append(3, b"third").unwrap();
        drop(wal);
        damage_second_record(&segment_path(&base, 1));
        assert_eq!(lsns(&base), vec![1]);
    }

    #[test]
    fn a_damaged_record_in_an_earlier_segment_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        wal.append(1, b"first").unwrap();
        wal.append(2, b"second").unwrap();
        wal.rotate().unwrap();
        wal.append(3, b"third").unwrap();
        drop(wal);
        damage_second_record(&segment_path(&base, 1));
        let Err(StateError::Backend { message, .. }) = Wal::open(&base, ID).map(drop) else {
            panic!("a damaged earlier segment must refuse the open");
        };
        assert!(message.contains("damaged"), "{message}");
        assert!(message.contains(".wal-00000001"), "{message}");
    }

    #[test]
    fn segments_of_another_database_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        wal.append(1, b"old").unwrap();
        drop(wal);
        // The store file was deleted and created anew: a new log id.
        let (wal, entries) = Wal::open(&base, ID + 1).unwrap();
        assert!(entries.is_empty());
        wal.retire_older().unwrap();
        wal.append(1, b"new").unwrap();
        drop(wal);
        let (_, entries) = Wal::open(&base, ID + 1).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].redo, b"new");
    }

    #[test]
    fn remove_all_deletes_segments_and_the_spare() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        wal.append(1, b"x").unwrap();
        write_spare(&base).unwrap();
        drop(wal);
        remove_all(&base).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_checkpoint_keeps_records_appended_after_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        wal.append(1, b"x").unwrap();
        wal.append(2, b"y").unwrap();
        let covered = wal.rotate().unwrap();
        // Records 1 and 2 were synced by the rotation.
        wal.sync_blocking(2).unwrap();
        // A commit after the checkpoint's, before the checkpoint ends.
        wal.append(3, b"z").unwrap();
        wal.retire(covered).unwrap();
        assert_eq!(wal.pending(), (HEADER as u64 + 10, 1));
        wal.sync_blocking(3).unwrap();
        assert_eq!(segment_numbers(&base).unwrap(), vec![2]);
        drop(wal);
        assert_eq!(lsns(&base), vec![3]);
    }

    #[test]
    fn a_segment_written_ahead_reads_as_its_records_then_unused_space() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        wal.append(1, b"before").unwrap();
        write_spare(&base).unwrap();
        wal.rotate().unwrap();
        let written_ahead = segment_path(&base, 2);
        assert_eq!(
            std::fs::metadata(&written_ahead).unwrap().len(),
            SEGMENT_BYTES
        );
        wal.append(2, b"into the zeros").unwrap();
        wal.append(3, b"and on").unwrap();
        wal.sync_blocking(3).unwrap();
        assert_eq!(
            std::fs::metadata(&written_ahead).unwrap().len(),
            SEGMENT_BYTES
        );
        // Segment 2, zeros after its records, is no longer the last one.
        wal.rotate().unwrap();
        wal.append(4, b"after").unwrap();
        drop(wal);
        assert_eq!(lsns(&base), vec![1, 2, 3, 4]);
    }

    #[test]
    fn appends_move_on_to_a_new_segment_once_one_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("s.redb");
        let (wal, _) = Wal::open(&base, ID).unwrap();
        // Incompressible, so that each record takes its full size.
        let big = incompressible(1 << 20);
        let count = SEGMENT_BYTES / (1 << 20) + 2;
        for lsn in 1..=count {
            wal.append(lsn, &big).unwrap();
        }
        wal.sync_blocking(count).unwrap();
        assert_eq!(segment_numbers(&base).unwrap(), vec![1, 2]);
        assert_eq!(wal.pending().1, count);
        drop(wal);
        assert_eq!(lsns(&base), (1..=count).collect::<Vec<_>>());
    }

    #[test]
    fn concurrent_waiters_share_syncs_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&dir.path().join("s.redb"), ID).unwrap();
        let wal = Arc::new(wal);
        let next = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let wal = Arc::clone(&wal);
                let next = Arc::clone(&next);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let lsn = {
                            let mut n = next.lock();
                            *n += 1;
                            wal.append(*n, b"r").unwrap();
                            *n
                        };
                        wal.sync_blocking(lsn).unwrap();
                        assert!(wal.shared.status.borrow().synced >= lsn);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(wal.pending().1, 400);
    }
}
