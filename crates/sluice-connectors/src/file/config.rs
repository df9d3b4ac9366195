//! Typed settings of the file source and destination, checked against the specification.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sluice_sdk::spec::{validate_settings, Config, Violation};
use sluice_sdk::{Settings, ValidationErrors};

use super::{
    destination_params, source_params, PARAM_BUFFER_SIZE, PARAM_FOLLOW, PARAM_FORMAT, PARAM_FSYNC,
    PARAM_MAX_LINE_SIZE, PARAM_PATH, PARAM_POLL_INTERVAL, PARAM_READ_BUFFER_SIZE,
};

/// How records map to lines of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One line is one payload: the source emits each line's bytes as raw `payload.after`; the
    /// destination writes `payload.after`.
    #[default]
    Lines,
    /// One line is one OpenCDC JSON record.
    OpenCdc,
}

impl Format {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Lines => "lines",
            Format::OpenCdc => "opencdc",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lines" => Ok(Format::Lines),
            "opencdc" => Ok(Format::OpenCdc),
            other => Err(format!(
                "unknown format {other:?} (expected lines or opencdc)"
            )),
        }
    }
}

/// When the destination forces written data to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// fsync before every ack: an acknowledged record survives a power loss.
    #[default]
    Always,
    /// Never fsync: an acknowledged record is in the OS page cache, which survives a process
    /// crash but not a power loss.
    Never,
}

impl FsyncPolicy {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Never => "never",
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "unknown fsync policy {other:?} (expected always or never)"
            )),
        }
    }
}

/// The source's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceConfig {
    /// The file to read.
    pub path: PathBuf,
    /// How lines become records.
    pub format: Format,
    /// Keep polling for appended data at end of file.
    pub follow: bool,
    /// Pause between polls when following.
    pub poll_interval: Duration,
    /// Bytes per read.
    pub read_buffer_size: usize,
    /// Longest accepted line.
    pub max_line_size: usize,
}

impl SourceConfig {
    /// Validates `settings` against the source specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&source_params(), settings)?;
        let c = Config::new(&resolved);
        let poll_interval = c
            .duration(PARAM_POLL_INTERVAL)?
            .unwrap_or(Duration::from_millis(200));
        if poll_interval.is_zero() {
            return Err(violation(PARAM_POLL_INTERVAL, "must be greater than zero"));
        }
        Ok(SourceConfig {
            path: PathBuf::from(c.required_str(PARAM_PATH)?),
            format: parse_enum(&c, PARAM_FORMAT)?,
            follow: c.bool(PARAM_FOLLOW)?.unwrap_or(false),
            poll_interval,
            read_buffer_size: size(&c, PARAM_READ_BUFFER_SIZE, super::DEFAULT_READ_BUFFER_SIZE)?,
            max_line_size: size(&c, PARAM_MAX_LINE_SIZE, super::DEFAULT_MAX_LINE_SIZE)?,
        })
    }
}

/// The destination's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DestinationConfig {
    /// The file to append to.
    pub path: PathBuf,
    /// How records become lines.
    pub format: Format,
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Bytes buffered before a write.
    pub buffer_size: usize,
}

impl DestinationConfig {
    /// Validates `settings` against the destination specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&destination_params(), settings)?;
        let c = Config::new(&resolved);
        Ok(DestinationConfig {
            path: PathBuf::from(c.required_str(PARAM_PATH)?),
            format: parse_enum(&c, PARAM_FORMAT)?,
            fsync: parse_enum(&c, PARAM_FSYNC)?,
            buffer_size: size(&c, PARAM_BUFFER_SIZE, super::DEFAULT_BUFFER_SIZE)?,
        })
    }
}

fn parse_enum<T: FromStr<Err = String> + Default>(
    c: &Config<'_>,
    name: &str,
) -> Result<T, ValidationErrors> {
    match c.str(name) {
        None => Ok(T::default()),
        Some(v) => v.parse().map_err(|e: String| violation(name, &e)),
    }
}

fn size(c: &Config<'_>, name: &str, default: usize) -> Result<usize, ValidationErrors> {
    match c.u64(name)? {
        None => Ok(default),
        Some(0) => Err(violation(name, "must be greater than zero")),
        Some(n) => usize::try_from(n).map_err(|_| violation(name, "is too large")),
    }
}

fn violation(name: &str, message: &str) -> ValidationErrors {
    ValidationErrors(vec![Violation {
        parameter: name.to_string(),
        message: message.to_string(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn conduit_settings_get_defaults() {
        let s = settings(&[("path", "/tmp/in.txt"), ("sdk.batch.size", "100")]);
        let c = SourceConfig::from_settings(&s).expect("valid");
        assert_eq!(c.path, PathBuf::from("/tmp/in.txt"));
        assert_eq!(c.format, Format::Lines);
        assert!(!c.follow);
        assert_eq!(c.poll_interval, Duration::from_millis(200));
        assert_eq!(c.read_buffer_size, 1 << 20);
        let d = DestinationConfig::from_settings(&s).expect("valid");
        assert_eq!(d.fsync, FsyncPolicy::Always);
        assert_eq!(d.format, Format::Lines);
        assert_eq!(d.buffer_size, 1 << 20);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let s = settings(&[("path", "/x"), ("fsync", "sometimes"), ("format", "xml")]);
        let err = DestinationConfig::from_settings(&s).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("\"fsync\""), "{text}");
        assert!(text.contains("\"format\""), "{text}");
        let s = settings(&[("path", "/x"), ("poll-interval", "0s")]);
        let err = SourceConfig::from_settings(&s).expect_err("zero interval");
        assert!(err.to_string().contains("poll-interval"), "{err}");
        let err = SourceConfig::from_settings(&Settings::new()).expect_err("no path");
        assert!(err.to_string().contains("\"path\": is required"), "{err}");
    }

    #[test]
    fn enums_round_trip_their_text() {
        for f in [Format::Lines, Format::OpenCdc] {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
        }
        for p in [FsyncPolicy::Always, FsyncPolicy::Never] {
            assert_eq!(p.to_string().parse::<FsyncPolicy>(), Ok(p));
        }
        assert!("sometimes"
            .parse::<FsyncPolicy>()
            .unwrap_err()
            .contains("sometimes"));
    }
}
