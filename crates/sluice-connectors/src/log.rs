//! The `log` destination: prints every record through `tracing` — the whole record as OpenCDC
//! JSON, or just its payload as text — at a configurable level, with an optional message, and
//! acknowledges everything. It is also the default dead-letter destination, so it never fails a
//! record.
//!
//! Settings follow Conduit's log connector (`level`, `message`) plus `format`. A record is
//! formatted only if a subscriber will actually print it at that level, so a log destination
//! below the process's log level costs next to nothing.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::opencdc;
use sluice_sdk::spec::{
    Config, Parameter, ParameterType, Specification, ValidationErrors, Violation,
};
use sluice_sdk::{Acks, ConnectorError, Destination, Plugin, Record, Settings, Source};

/// Parameter names.
pub mod param {
    /// The level records are logged at.
    pub const LEVEL: &str = "level";
    /// A message added to every record's log line.
    pub const MESSAGE: &str = "message";
    /// What is printed of each record.
    pub const FORMAT: &str = "format";
}

/// The level records are logged at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info`.
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
}

impl LogLevel {
    const NAMES: [&'static str; 5] = ["trace", "debug", "info", "warn", "error"];

    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "trace" => Some(LogLevel::Trace),
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

/// What is printed of each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// The whole record as one line of OpenCDC JSON.
    OpenCdc,
    /// `payload.after` (or `payload.before` for deletes) as text; structured data as JSON.
    Payload,
}

/// Registers the log connector: a destination only.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogPlugin;

impl Plugin for LogPlugin {
    fn specification(&self) -> Specification {
        let mut params = BTreeMap::new();
        params.insert(
            param::LEVEL.to_string(),
            Parameter::new(
                ParameterType::String,
                "The log level used to log records: trace, debug, info, warn or error.",
            )
            .default_value("info")
            .validate(sluice_sdk::Validation::Inclusion(
                LogLevel::NAMES.iter().map(|s| s.to_string()).collect(),
            )),
        );
        params.insert(
            param::MESSAGE.to_string(),
            Parameter::new(
                ParameterType::String,
                "Optional message added to the log line of every record.",
            ),
        );
        params.insert(
            param::FORMAT.to_string(),
            Parameter::new(ParameterType::String, "What is printed of each record: opencdc (the whole record as OpenCDC JSON) or payload (the payload as text).")
                .default_value("opencdc")
                .validate(sluice_sdk::Validation::Inclusion(vec!["opencdc".into(), "payload".into()])),
        );
        Specification {
            name: "log".into(),
            summary: "Logs every record it receives.".into(),
            description: "A destination that prints each record through the process's logger, as \
                OpenCDC JSON (position and raw data base64-encoded) or as payload text, at the \
                configured level, and acknowledges every record. Records show only if the \
                process's log level lets that level through. It is the default dead-letter \
                destination."
                .into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: BTreeMap::new(),
            destination_params: params,
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        None
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(LogDestination::new()))
    }
}

/// Prints records; see the [module documentation](self).
#[derive(Debug)]
pub struct LogDestination {
    level: LogLevel,
    message: String,
    format: LogFormat,
    open: bool,
    pending: usize,
}

impl Default for LogDestination {
    fn default() -> Self {
        Self::new()
    }
}

impl LogDestination {
    /// A destination logging whole records at `info` until configured otherwise.
    pub fn new() -> Self {
        LogDestination {
            level: LogLevel::Info,
            message: String::new(),
            format: LogFormat::OpenCdc,
            open: false,
            pending: 0,
        }
    }

    fn log(&self, record: &Record) {
        let text = Shown(record, self.format);
        let message = if self.message.is_empty() {
            "record"
        } else {
            self.message.as_str()
        };
        match self.level {
            LogLevel::Trace => tracing::trace!(record = %text, "{message}"),
            LogLevel::Debug => tracing::debug!(record = %text, "{message}"),
            LogLevel::Info => tracing::info!(record = %text, "{message}"),
            LogLevel::Warn => tracing::warn!(record = %text, "{message}"),
            LogLevel::Error => tracing::error!(record = %text, "{message}"),
        }
    }
}

/// A record as the log prints it; formatted only when a subscriber asks.
struct Shown<'a>(&'a Record, LogFormat);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = match self.1 {
            LogFormat::OpenCdc => opencdc::to_json(self.0),
            LogFormat::Payload => {
                let data = self
                    .0
                    .payload
                    .after
                    .as_ref()
                    .or(self.0.payload.before.as_ref());
                data.map(|d| d.to_bytes().to_vec()).unwrap_or_default()
            }
        };
        f.write_str(&String::from_utf8_lossy(&bytes))
    }
}

#[async_trait]
impl Destination for LogDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let config = Config::new(settings);
        let mut problems = Vec::new();
        let level = config.str(param::LEVEL).unwrap_or("info");
        match LogLevel::parse(level) {
            Some(l) => self.level = l,
            None => problems.push(Violation {
                parameter: param::LEVEL.into(),
                message: format!("{level:?} must be one of: {}", LogLevel::NAMES.join(", ")),
            }),
        }
        match config.str(param::FORMAT).unwrap_or("opencdc") {
            "opencdc" => self.format = LogFormat::OpenCdc,
            "payload" => self.format = LogFormat::Payload,
            other => problems.push(Violation {
                parameter: param::FORMAT.into(),
                message: format!("{other:?} must be opencdc or payload"),
            }),
        }
        self.message = config.str(param::MESSAGE).unwrap_or_default().to_string();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(problems).into())
        }
    }

    async fn open(&mut self) -> Result<()> {
        self.open = true;
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        if !self.open {
            return Err(ConnectorError::StreamNotOpen);
        }
        for record in records {
            self.log(record);
        }
        self.pending += records.len();
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        Ok(Acks {
            count: std::mem::take(&mut self.pending),
            nacks: Vec::new(),
        })
    }

    async fn teardown(&mut self) -> Result<()> {
        self.open = false;
        Ok(())
    }
}
