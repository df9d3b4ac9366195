//! The `format` setting shared by the message-broker connectors (nats, amqp, mqtt): how a
//! record maps to a message body.

use std::str::FromStr;

/// How a record maps to a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The body is the record's payload (`payload.after`) bytes.
    #[default]
    Raw,
    /// The body is the whole record as OpenCDC JSON.
    OpenCdc,
}

impl Format {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::OpenCdc => "opencdc",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Format::Raw),
            "opencdc" => Ok(Format::OpenCdc),
            other => Err(format!(
                "unknown format {other:?} (expected raw or opencdc)"
            )),
        }
    }
}
