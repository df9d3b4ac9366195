//! The `file` connector: reads lines (or OpenCDC JSON lines) from a file and appends records to a
//! file.
//!
//! Compatible with Conduit's `builtin:file`: a pipeline that sets only `path` (plus any generic
//! `sdk.*` settings) runs unchanged; every other parameter has a default.
//!
//! - [`FileSource`] reads big chunks on a blocking thread and hands out each line as a zero-copy
//!   slice of its chunk. Positions are byte offsets (see [`source`]).
//! - [`FileDestination`] encodes records into a large buffer, writes it on a blocking thread and
//!   fsyncs once per `ack` (see [`destination`]). On open it truncates a torn last line left by a
//!   crash.

mod config;
pub mod destination;
mod encode;
mod error;
mod lines;
mod reader;
pub mod source;
mod writer;

use std::collections::BTreeMap;

use sluice_sdk::{
    Destination, Parameter, ParameterType, Plugin, Source, Specification, Validation,
};

pub use config::{Format, FsyncPolicy};
pub use destination::FileDestination;
pub use error::FileError;
pub use source::FileSource;

/// Name of the parameter holding the file's path (source and destination).
pub const PARAM_PATH: &str = "path";
/// Name of the parameter choosing `lines` or `opencdc` (source and destination).
pub const PARAM_FORMAT: &str = "format";
/// Name of the source parameter that keeps reading appended data at end of file.
pub const PARAM_FOLLOW: &str = "follow";
/// Name of the source parameter setting how often a following source looks for new data.
pub const PARAM_POLL_INTERVAL: &str = "poll-interval";
/// Name of the source parameter setting how many bytes one read asks the OS for.
pub const PARAM_READ_BUFFER_SIZE: &str = "read-buffer-size";
/// Name of the source parameter bounding the length of one line.
pub const PARAM_MAX_LINE_SIZE: &str = "max-line-size";
/// Name of the destination parameter choosing the fsync policy.
pub const PARAM_FSYNC: &str = "fsync";
/// Name of the destination parameter setting the write buffer size.
pub const PARAM_BUFFER_SIZE: &str = "buffer-size";

/// Default size of one source read (1 MiB): large enough that syscall and task hand-off costs
/// vanish, small enough that the chunks pinned by in-flight records stay well inside the memory
/// budget.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 1 << 20;
/// Default bound on one line (32 MiB), so a file without newlines fails instead of exhausting
/// memory.
pub const DEFAULT_MAX_LINE_SIZE: usize = 32 << 20;
/// Default destination buffer (1 MiB) handed to the OS in one write.
pub const DEFAULT_BUFFER_SIZE: usize = 1 << 20;
/// Default pause between looks for appended data when following.
pub const DEFAULT_POLL_INTERVAL: &str = "200ms";

/// The built-in `file` connector plugin (source and destination).
#[derive(Debug, Clone, Copy, Default)]
pub struct FilePlugin;

impl Plugin for FilePlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "file".into(),
            summary: "Reads lines or OpenCDC JSON lines from a file; appends records to a file."
                .into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: source_params(),
            destination_params: destination_params(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(FileSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(FileDestination::new()))
    }
}

const DESCRIPTION: &str = "\
Source: reads the file at `path` from the beginning (or right after the saved position) and emits \
one record per line. With `format: lines` (the default) the payload is the line's bytes without \
its `\\n`; a `\\r` before the `\\n` is kept, so a file-to-file copy is byte-identical. Records carry \
no metadata and no key, which keeps reading at memory speed. With `format: opencdc` each line is an \
OpenCDC JSON record (blank lines are skipped) and a bad line stops the pipeline with an error naming \
the file, the line number and the problem. A record's position is the byte offset right after its \
line, so a restart resumes with exactly the next line; a position beyond the end of the file (the \
file was truncated or replaced) is refused. Without `follow` the source ends at end of file, \
emitting a last line that has no `\\n`; with `follow: true` it keeps polling for appended data like \
`tail -f`, emits a line only once its `\\n` arrives, and stops with an error if the file is truncated \
or replaced.

Destination: appends each record to the file at `path` (created if missing; its directory must \
exist) followed by `\\n`. With `format: lines` it writes `payload.after` (raw bytes as is, \
structured data as compact JSON); a record without `payload.after`, or whose raw payload contains \
a `\\n`, is nacked rather than corrupting the file. With `format: opencdc` it writes one OpenCDC \
JSON record per line. With `fsync: always` (the default) every ack follows an fsync, so an \
acknowledged record survives a power loss; with `fsync: never` it survives a process crash. On \
open, bytes after the last `\\n` (a write torn by a crash, never acknowledged) are truncated.

Differences from Conduit's builtin:file: Conduit's source always follows, waits for a missing file \
and sets the line number as key and `file.path` metadata; Conduit's destination writes records in \
`sdk.record.format` (OpenCDC JSON by default). Set `follow: true` and `format: opencdc` to match.";

fn format_param(what: &str) -> Parameter {
    Parameter::new(ParameterType::String, what)
        .default_value(Format::Lines.as_str())
        .validate(Validation::Inclusion(vec![
            Format::Lines.as_str().into(),
            Format::OpenCdc.as_str().into(),
        ]))
}

/// The source side's parameters.
pub(crate) fn source_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    p.insert(
        PARAM_PATH.into(),
        Parameter::new(ParameterType::File, "Path of the file to read.").required(),
    );
    p.insert(
        PARAM_FORMAT.into(),
        format_param(
            "`lines`: each line's bytes are the payload; `opencdc`: each line is an OpenCDC JSON \
             record.",
        ),
    );
    p.insert(
        PARAM_FOLLOW.into(),
        Parameter::new(
            ParameterType::Bool,
            "Keep reading data appended to the file (like `tail -f`) instead of ending at end of \
             file.",
        )
        .default_value("false"),
    );
    p.insert(
        PARAM_POLL_INTERVAL.into(),
        Parameter::new(
            ParameterType::Duration,
            "With `follow`, how long to wait at end of file before looking for new data again.",
        )
        .default_value(DEFAULT_POLL_INTERVAL),
    );
    p.insert(
        PARAM_READ_BUFFER_SIZE.into(),
        Parameter::new(ParameterType::Int, "Bytes asked of the OS per read.")
            .default_value(DEFAULT_READ_BUFFER_SIZE.to_string())
            .validate(Validation::GreaterThan(0.0))
            .validate(Validation::LessThan(f64::from(1u32 << 30) + 1.0)),
    );
    p.insert(
        PARAM_MAX_LINE_SIZE.into(),
        Parameter::new(
            ParameterType::Int,
            "Longest line accepted, in bytes; a longer line is an error rather than unbounded \
             memory use.",
        )
        .default_value(DEFAULT_MAX_LINE_SIZE.to_string())
        .validate(Validation::GreaterThan(0.0)),
    );
    p
}

/// The destination side's parameters.
pub(crate) fn destination_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    p.insert(
        PARAM_PATH.into(),
        Parameter::new(
            ParameterType::File,
            "Path of the file to append to (created if missing; its directory must exist).",
        )
        .required(),
    );
    p.insert(
        PARAM_FORMAT.into(),
        format_param(
            "`lines`: write `payload.after` then `\\n`; `opencdc`: write each record as one line \
             of OpenCDC JSON.",
        ),
    );
    p.insert(
        PARAM_FSYNC.into(),
        Parameter::new(
            ParameterType::String,
            "`always`: fsync before every ack (acked records survive power loss); `never`: ack \
             once the OS has the data (survives a process crash only).",
        )
        .default_value(FsyncPolicy::Always.as_str())
        .validate(Validation::Inclusion(vec![
            FsyncPolicy::Always.as_str().into(),
            FsyncPolicy::Never.as_str().into(),
        ])),
    );
    p.insert(
        PARAM_BUFFER_SIZE.into(),
        Parameter::new(
            ParameterType::Int,
            "Bytes buffered before they are handed to the OS in one write.",
        )
        .default_value(DEFAULT_BUFFER_SIZE.to_string())
        .validate(Validation::GreaterThan(0.0))
        .validate(Validation::LessThan(f64::from(1u32 << 30) + 1.0)),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specification_is_well_formed() {
        let spec = FilePlugin.specification();
        assert_eq!(spec.name, "file");
        assert_eq!(spec.version, "v0.1.0");
        assert_eq!(spec.author, "Sluice");
        for params in [&spec.source_params, &spec.destination_params] {
            assert!(params[PARAM_PATH].is_required());
            for (name, p) in params {
                assert!(!p.description.is_empty(), "{name} has no description");
                assert!(
                    p.is_required() || p.default.is_some(),
                    "{name} is optional without a default"
                );
            }
        }
    }
}
