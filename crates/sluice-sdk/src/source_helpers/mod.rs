//! Pull and push helpers for writing sources (see spec/connectors.md, "Writing a source").
//!
//! A [`SourceInstance`] hands out batches through [`SourceInstance::next_batch`]: it fills up to
//! [`BatchOptions::batch_size`] records and returns when the batch is full, when the per-call
//! timeout (counted from the call's start) expires, or at end of stream, together with the
//! [`BatchEnd`] reason. Records come either from a **pull** function called once per record
//! ([`SourceInstance::pull`]) or from a bounded **push** channel ([`SourceInstance::push`]).
//!
//! [`HelperSource`] turns an [`Opener`] — something that builds an instance for a start position —
//! into a complete [`Source`](crate::Source), so a connector author writes only "how to produce
//! records from here".
//!
//! Error rule, shared by both helpers: an error (from the pull function, sent on the push channel,
//! or an event over the size limit) **ends the stream**. Records batched before it are delivered
//! first (with [`BatchEnd::Interrupted`]), the next call returns the error, and every call after
//! that returns end of stream. A fresh instance (re-opening a [`HelperSource`]) starts over.

mod batch;
mod fill;
mod helper_source;
mod instance;
mod options;
mod progress;
mod pull;
mod push;

pub use batch::{Batch, BatchEnd, HelperError};
pub use helper_source::{opener_fn, FnOpener, HelperSource, Opener};
pub use instance::SourceInstance;
pub use options::{
    BatchOptions, OptionsError, DEFAULT_BATCH_SIZE, DEFAULT_MAX_EVENT_SIZE, DEFAULT_TIMEOUT,
};
pub use progress::{ProgressReport, PROGRESS_SCALE};
pub use pull::PullFn;
pub use push::PushEvent;
