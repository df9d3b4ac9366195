//! A source instance: batches records from a pull function or a push channel, with timeout,
//! cancellation, close and progress callbacks, and sticky end of stream.

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, BatchEnd, HelperError};
use super::fill::Fill;
use super::options::BatchOptions;
use super::progress::ProgressReport;
use super::pull::{self, PullFn};
use super::push::{self, PushEvent};
use crate::connector::Result;
use crate::record::Record;

/// Deadline used when `now + timeout` does not fit in an `Instant` (an absurdly long timeout).
const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);

/// Where records come from.
enum Producer {
    Pull(PullFn),
    Push(mpsc::Receiver<PushEvent>),
}

/// Where the stream stands.
enum State {
    /// Records may still come.
    Running,
    /// The producer failed; the error is returned once the records before it are delivered.
    Failed(HelperError),
    /// No record will come again (sticky).
    Ended,
}

/// One open stream of records, handed out in batches by [`SourceInstance::next_batch`].
///
/// Built with [`SourceInstance::pull`] or [`SourceInstance::push`], then optionally
/// [`with_cancellation`](Self::with_cancellation), [`on_close`](Self::on_close) and
/// [`with_progress`](Self::with_progress). Records collected by a `next_batch` call whose future
/// is dropped stay in the instance and are returned by the next call (cancel-safe).
pub struct SourceInstance {
    producer: Option<Producer>,
    options: BatchOptions,
    cancel: CancellationToken,
    on_close: Option<Box<dyn FnOnce() + Send>>,
    progress: Option<Box<dyn Fn() -> (f64, String) + Send>>,
    buf: Vec<Record>,
    state: State,
}

impl std::fmt::Debug for SourceInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = match self.producer {
            Some(Producer::Pull(_)) => "pull",
            Some(Producer::Push(_)) => "push",
            None => "closed",
        };
        f.debug_struct("SourceInstance")
            .field("model", &model)
            .field("options", &self.options)
            .field("buffered", &self.buf.len())
            .field("ended", &self.is_ended())
            .finish_non_exhaustive()
    }
}

impl SourceInstance {
    /// A pull instance: `pull` is called once per record (see [`PullFn`] for its contract; it must
    /// not block).
    pub fn pull(
        pull: impl FnMut() -> Result<Option<Record>> + Send + 'static,
        options: BatchOptions,
    ) -> Self {
        Self::with_producer(Producer::Pull(Box::new(pull)), options)
    }

    /// A push instance reading `events` (a bounded channel: the producer waits when the batcher
    /// falls behind). Dropping every sender ends the stream; sending an `Err` ends it after the
    /// error is reported.
    pub fn push(events: mpsc::Receiver<PushEvent>, options: BatchOptions) -> Self {
        Self::with_producer(Producer::Push(events), options)
    }

    fn with_producer(producer: Producer, options: BatchOptions) -> Self {
        SourceInstance {
            producer: Some(producer),
            options,
            cancel: CancellationToken::new(),
            on_close: None,
            progress: None,
            buf: Vec::new(),
            state: State::Running,
        }
    }

    /// Ends the stream when `cancel` fires: the call in progress (or the next one) returns what it
    /// has with [`BatchEnd::EndOfStream`], even while a push channel is idle.
    pub fn with_cancellation(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Calls `close` exactly once, when the instance closes: at end of stream (including after an
    /// error or a cancellation is noticed), on [`close`](Self::close), or when dropped.
    pub fn on_close(mut self, close: impl FnOnce() + Send + 'static) -> Self {
        self.on_close = Some(Box::new(close));
        self
    }

    /// Answers [`progress`](Self::progress) with `progress()`: a fraction from 0 to 1 and a text.
    pub fn with_progress(mut self, progress: impl Fn() -> (f64, String) + Send + 'static) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// The batching options in force.
    pub fn options(&self) -> &BatchOptions {
        &self.options
    }

    /// The next batch of up to [`BatchOptions::batch_size`] records.
    pub async fn next_batch(&mut self) -> std::result::Result<Batch, HelperError> {
        self.next_batch_up_to(usize::MAX).await
    }

    /// The next batch of up to `max` records (and never more than the batch size). A batch is
    /// [`Full`](BatchEnd::Full) when it holds that many. An error is returned only once the records
    /// produced before it have been delivered; after it the stream has ended.
    pub async fn next_batch_up_to(
        &mut self,
        max: usize,
    ) -> std::result::Result<Batch, HelperError> {
        let limit = max.min(self.options.batch_size());
        if matches!(self.state, State::Running) {
            if self.cancel.is_cancelled() {
                self.end();
            } else if self.buf.len() < limit {
                let fill = self.fill(limit).await;
                match fill {
                    Fill::Full | Fill::TimedOut => {}
                    Fill::Ended => self.end(),
                    Fill::Failed(e) => {
                        self.state = State::Failed(e);
                        self.release();
                    }
                }
            }
        }
        self.deliver(limit)
    }

    /// Fills the buffer from the producer up to `limit` records, until the call's deadline.
    async fn fill(&mut self, limit: usize) -> Fill {
        let now = Instant::now();
        let deadline = now
            .checked_add(self.options.timeout())
            .or_else(|| now.checked_add(FAR_FUTURE))
            .unwrap_or(now);
        self.buf.reserve(limit - self.buf.len());
        let max_size = self.options.max_event_size();
        match self.producer.as_mut() {
            Some(Producer::Pull(f)) => {
                pull::fill(f, &mut self.buf, limit, deadline, &self.cancel, max_size).await
            }
            Some(Producer::Push(rx)) => {
                push::fill(rx, &mut self.buf, limit, deadline, &self.cancel, max_size).await
            }
            None => Fill::Ended,
        }
    }

    /// Hands out up to `limit` buffered records with the reason the batch ended.
    fn deliver(&mut self, limit: usize) -> std::result::Result<Batch, HelperError> {
        let records = if self.buf.len() > limit {
            let rest = self.buf.split_off(limit);
            std::mem::replace(&mut self.buf, rest)
        } else {
            std::mem::take(&mut self.buf)
        };
        if records.is_empty() && self.buf.is_empty() && matches!(self.state, State::Failed(_)) {
            // Everything produced before the error is out: report it; the stream has ended.
            if let State::Failed(e) = std::mem::replace(&mut self.state, State::Ended) {
                return Err(e);
            }
        }
        let end = if !self.buf.is_empty() {
            BatchEnd::Full
        } else {
            match self.state {
                State::Running if records.len() >= limit => BatchEnd::Full,
                State::Running => BatchEnd::Timeout,
                State::Failed(_) => BatchEnd::Interrupted,
                State::Ended => BatchEnd::EndOfStream,
            }
        };
        Ok(Batch { records, end })
    }

    /// The progress callback's current answer, if one was set.
    pub fn progress(&self) -> Option<ProgressReport> {
        self.progress.as_ref().map(|f| {
            let (fraction, text) = f();
            ProgressReport { fraction, text }
        })
    }

    /// True once the stream has ended: every later batch is empty with `EndOfStream` (a pending
    /// error is still returned first).
    pub fn is_ended(&self) -> bool {
        !matches!(self.state, State::Running)
    }

    /// Closes the instance now: releases the producer (a push channel's senders see it closed),
    /// calls the close callback if not called yet, and discards records not yet handed out (they
    /// were never returned, so a resume reads them again). Later batches are end of stream.
    /// Idempotent.
    pub fn close(&mut self) {
        self.buf.clear();
        self.state = State::Ended;
        self.release();
    }

    /// Marks the stream ended and releases the producer, keeping buffered records for delivery.
    fn end(&mut self) {
        self.state = State::Ended;
        self.release();
    }

    /// Drops the producer and calls the close callback, at most once.
    fn release(&mut self) {
        self.producer = None;
        if let Some(close) = self.on_close.take() {
            close();
        }
    }
}

impl Drop for SourceInstance {
    fn drop(&mut self) {
        self.release();
    }
}
