//! The `http` connector: a source that receives webhooks or polls a URL, and a destination that
//! POSTs batches with retries.
//!
//! - [`HttpSource`] with `mode: webhook` runs an HTTP server that accepts POSTed records into a
//!   bounded queue (503 with `Retry-After` when it is full); with `mode: poll` it GETs `url` every
//!   `pollingPeriod` and dedupes by an increasing cursor field or by the response's validator
//!   (ETag, Last-Modified or a hash of the body). See [`webhook`] and [`poll`].
//! - [`HttpDestination`] sends batches of records as one JSON array of payloads or as OpenCDC JSON
//!   lines, retrying 429, 5xx and connection failures with exponential backoff; any other 4xx nacks
//!   the batch's records with the status and an excerpt of the answer. See [`destination`].
//!
//! Accepts the settings of Conduit's HTTP connector (`url`, `method`, `headers`, `pollingPeriod`).

mod body;
mod config;
pub mod destination;
mod error;
pub mod poll;
pub mod source;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_sdk::{
    Destination, Parameter, ParameterType, Plugin, Registry, Source, Specification, Validation,
};

pub use body::BodyFormat;
pub use config::{DestinationConfig, Mode, SourceConfig, WebhookResponse};
pub use destination::HttpDestination;
pub use error::HttpError;
pub use source::HttpSource;

/// Parameter names (Conduit's where it has one).
pub mod param {
    /// `webhook` or `poll`.
    pub const MODE: &str = "mode";
    /// The URL to poll (source) or to send to (destination).
    pub const URL: &str = "url";
    /// The HTTP method.
    pub const METHOD: &str = "method";
    /// Headers as Conduit writes them: `Name: value` pairs separated by commas.
    pub const HEADERS: &str = "headers";
    /// One header per parameter: `headers.NAME: value`.
    pub const HEADER_PREFIX: &str = "headers.";
    /// How bodies map to records.
    pub const FORMAT: &str = "format";
    /// How often the poller asks.
    pub const POLLING_PERIOD: &str = "pollingPeriod";
    /// JSON pointer to the array of items in a polled response.
    pub const ITEMS: &str = "items";
    /// JSON pointer, within an item, to an increasing cursor.
    pub const CURSOR_FIELD: &str = "cursor.field";
    /// Query parameter that carries the last cursor to the polled URL.
    pub const CURSOR_PARAM: &str = "cursor.param";
    /// Webhook listen address.
    pub const ADDRESS: &str = "address";
    /// Webhook path.
    pub const PATH: &str = "path";
    /// Webhook queue bound, in records.
    pub const QUEUE_SIZE: &str = "queue.size";
    /// When the webhook answers: once received or once acknowledged.
    pub const RESPONSE: &str = "response";
    /// Largest accepted request body.
    pub const MAX_BODY_SIZE: &str = "maxBodySize";
    /// How long `open` retries the first poll.
    pub const CONNECT_TIMEOUT: &str = "connect.timeout";
    /// Timeout of one request.
    pub const REQUEST_TIMEOUT: &str = "request.timeout";
    /// Records per request (destination).
    pub const BATCH_SIZE: &str = "batch.size";
    /// Attempts per request before the destination fails.
    pub const RETRY_MAX_ATTEMPTS: &str = "retry.maxAttempts";
    /// First pause between attempts.
    pub const RETRY_INITIAL_BACKOFF: &str = "retry.initialBackoff";
    /// Longest pause between attempts.
    pub const RETRY_MAX_BACKOFF: &str = "retry.maxBackoff";
}

/// The built-in `http` connector plugin (source and destination).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpPlugin;

/// Registers the connector as `http`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(HttpPlugin));
}

impl Plugin for HttpPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "http".into(),
            summary: "Receives webhooks or polls a URL; POSTs batches of records with retries."
                .into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: source_params(),
            destination_params: destination_params(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(HttpSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(HttpDestination::new()))
    }
}

const DESCRIPTION: &str = "\
HTTP. Accepts the settings of Conduit's HTTP connector (url, method, headers, pollingPeriod).

Source, `mode: poll` (the default): requests `url` every `pollingPeriod`. With `format: json` the \
response is JSON: the array at `items` (a JSON pointer; empty means the whole body), or the body \
itself when it is not an array, gives one record per element (objects become structured \
payloads). With `cursor.field` (a JSON pointer into each item, e.g. /id or /updatedAt) items are \
sorted by that increasing value, the position is the cursor, items at or below the last position \
are skipped, and `cursor.param` passes the last cursor to the server as a query parameter: this \
resumes exactly. Without a cursor the position is the response's validator (ETag, else \
Last-Modified, else a hash of the body) with the item's index: an unchanged response (304, or the \
same validator) yields nothing, a changed one yields all its items again. `format: raw` makes the \
whole body one record; `format: opencdc` reads OpenCDC records (a JSON array or JSON lines). 401 or \
403 is an error naming `headers`, 404 one naming `url`; 429, 5xx and connection failures are \
retried with backoff (for `connect.timeout` on the first poll).

Source, `mode: webhook`: listens on `address` and accepts POSTs to `path`. With `format: json` \
the body is one JSON value: an array gives one record per element, anything else one record; \
`format: raw` makes the body one record; `format: opencdc` takes OpenCDC records (one object, an \
array, or JSON lines). Records go into a queue of `queue.size` records; when it is full the answer \
is 503 with Retry-After (backpressure), a body that cannot be parsed gets 400. With `response: \
received` (the default) the answer, 202, comes once the records are in the queue: a sender may \
consider them delivered, but records still queued when Sluice crashes are lost. With `response: \
acked` the answer, 200, comes only once every record of the request has been checkpointed by the \
pipeline (503 if Sluice stops first), so a sender that retries until it gets 200 loses nothing \
(at-least-once). A webhook cannot be replayed, so the position only numbers the records.

Destination: sends the records written since the last send, up to `batch.size` per request, with \
`method` to `url`. `format: json` sends a JSON array of payloads (structured payloads as objects, \
raw payloads as the JSON they hold, else as a string, or base64 if not UTF-8); `format: opencdc` \
sends OpenCDC JSON lines; `format: raw` sends the raw payloads (structured ones as compact JSON), \
each followed by a newline, as application/octet-stream, so the lines of a file arrive \
byte-identical; each raw request carries the positions of its first and last records in the \
`Sluice-First-Position` and `Sluice-Last-Position` headers (the position's text, or 0x and hex \
when it is binary), which lets a receiver recognise a batch it already stored when the \
destination retries it or a restarted pipeline resends it. 2xx settles the batch. 429, 5xx and connection failures are retried up \
to `retry.maxAttempts` times with exponential backoff from `retry.initialBackoff` to \
`retry.maxBackoff` (honouring Retry-After), then the destination fails (nothing is acked, the \
pipeline resends from its checkpoint). Any other status nacks every record of the batch with the \
status and an excerpt of the answer. Records without payload.after cannot be sent as json and are \
nacked. Header values may come from the environment with ${VAR} in the pipeline file.";

fn headers_param() -> Parameter {
    Parameter::new(
        ParameterType::String,
        "Request headers as `Name: value` pairs separated by commas (Conduit's form); use \
         `headers.NAME` for values that contain commas.",
    )
    .default_value("")
}

fn header_param() -> Parameter {
    Parameter::new(
        ParameterType::String,
        "One request header: `headers.Authorization: Bearer ${TOKEN}`.",
    )
}

fn timeouts(p: &mut BTreeMap<String, Parameter>) {
    p.insert(
        param::REQUEST_TIMEOUT.into(),
        Parameter::new(ParameterType::Duration, "Timeout of one HTTP request.")
            .default_value("30s")
            .validate(Validation::Exclusion(vec!["0s".into()])),
    );
}

/// The source side's parameters.
pub(crate) fn source_params() -> BTreeMap<String, Parameter> {
    use ParameterType as T;
    let mut p = BTreeMap::new();
    p.insert(
        param::MODE.into(),
        Parameter::new(
            T::String,
            "`poll`: request `url` periodically; `webhook`: receive POSTs.",
        )
        .default_value("poll")
        .validate(Validation::Inclusion(vec!["poll".into(), "webhook".into()])),
    );
    p.insert(
        param::URL.into(),
        Parameter::new(T::String, "URL to poll (required with `mode: poll`).")
            .default_value("")
            .validate(Validation::Regex("^(https?://.+)?$".into())),
    );
    p.insert(
        param::METHOD.into(),
        Parameter::new(T::String, "HTTP method of a poll.")
            .default_value("GET")
            .validate(Validation::Inclusion(vec!["GET".into(), "POST".into()])),
    );
    p.insert(param::HEADERS.into(), headers_param());
    p.insert(format!("{}*", param::HEADER_PREFIX), header_param());
    p.insert(
        param::FORMAT.into(),
        Parameter::new(
            T::String,
            "How a body maps to records: `json` (an array is one record per element), `raw` (the \
             body is one record) or `opencdc` (OpenCDC records).",
        )
        .default_value("json")
        .validate(Validation::Inclusion(vec![
            "json".into(),
            "raw".into(),
            "opencdc".into(),
        ])),
    );
    p.insert(
        param::POLLING_PERIOD.into(),
        Parameter::new(T::Duration, "How often `url` is requested (poll).")
            .default_value("10s")
            .validate(Validation::Exclusion(vec!["0s".into()])),
    );
    p.insert(
        param::ITEMS.into(),
        Parameter::new(
            T::String,
            "JSON pointer to the array of items in a polled JSON response, e.g. /data; empty \
             means the whole body.",
        )
        .default_value("")
        .validate(Validation::Regex("^(/.*)?$".into())),
    );
    p.insert(
        param::CURSOR_FIELD.into(),
        Parameter::new(
            T::String,
            "JSON pointer, within each item, to a unique increasing value (an id, an update \
             time): the position, used to skip what was already read (poll).",
        )
        .default_value("")
        .validate(Validation::Regex("^(/.*)?$".into())),
    );
    p.insert(
        param::CURSOR_PARAM.into(),
        Parameter::new(
            T::String,
            "Query parameter that sends the last cursor to the server, e.g. `since` (poll).",
        )
        .default_value(""),
    );
    p.insert(
        param::ADDRESS.into(),
        Parameter::new(T::String, "Address the webhook server listens on.")
            .default_value("127.0.0.1:8080"),
    );
    p.insert(
        param::PATH.into(),
        Parameter::new(T::String, "Path that accepts webhook POSTs.")
            .default_value("/")
            .validate(Validation::Regex("^/".into())),
    );
    p.insert(
        param::QUEUE_SIZE.into(),
        Parameter::new(
            T::Int,
            "Records the webhook queues before it answers 503 (backpressure).",
        )
        .default_value("10000")
        .validate(Validation::GreaterThan(0.0)),
    );
    p.insert(
        param::RESPONSE.into(),
        Parameter::new(
            T::String,
            "When the webhook answers: `received` (202 once queued) or `acked` (200 once every \
             record of the request is checkpointed).",
        )
        .default_value("received")
        .validate(Validation::Inclusion(vec![
            "received".into(),
            "acked".into(),
        ])),
    );
    p.insert(
        param::MAX_BODY_SIZE.into(),
        Parameter::new(T::Int, "Largest accepted webhook body, in bytes.")
            .default_value((16u64 << 20).to_string())
            .validate(Validation::GreaterThan(0.0)),
    );
    p.insert(
        param::CONNECT_TIMEOUT.into(),
        Parameter::new(
            T::Duration,
            "How long `open` retries the first poll (or binding the webhook address) before it \
             fails.",
        )
        .default_value("30s")
        .validate(Validation::Exclusion(vec!["0s".into()])),
    );
    timeouts(&mut p);
    p
}

/// The destination side's parameters.
pub(crate) fn destination_params() -> BTreeMap<String, Parameter> {
    use ParameterType as T;
    let mut p = BTreeMap::new();
    p.insert(
        param::URL.into(),
        Parameter::new(T::String, "URL the records are sent to.")
            .required()
            .validate(Validation::Regex("^https?://.+".into())),
    );
    p.insert(
        param::METHOD.into(),
        Parameter::new(T::String, "HTTP method.")
            .default_value("POST")
            .validate(Validation::Inclusion(vec![
                "POST".into(),
                "PUT".into(),
                "PATCH".into(),
            ])),
    );
    p.insert(param::HEADERS.into(), headers_param());
    p.insert(format!("{}*", param::HEADER_PREFIX), header_param());
    p.insert(
        param::FORMAT.into(),
        Parameter::new(
            T::String,
            "`json`: a JSON array of payloads; `opencdc`: OpenCDC JSON lines; `raw`: the raw \
             payloads, each followed by `\\n` (byte-identical line files), with the positions of \
             the batch's first and last records in `Sluice-First-Position` / \
             `Sluice-Last-Position` headers so a receiver can drop retried batches.",
        )
        .default_value("json")
        .validate(Validation::Inclusion(vec![
            "json".into(),
            "opencdc".into(),
            "raw".into(),
        ])),
    );
    p.insert(
        param::BATCH_SIZE.into(),
        Parameter::new(T::Int, "Most records in one request.")
            .default_value("1000")
            .validate(Validation::GreaterThan(0.0)),
    );
    p.insert(
        param::RETRY_MAX_ATTEMPTS.into(),
        Parameter::new(
            T::Int,
            "Attempts per request (429, 5xx, connection failures) before the destination fails.",
        )
        .default_value("5")
        .validate(Validation::GreaterThan(0.0)),
    );
    p.insert(
        param::RETRY_INITIAL_BACKOFF.into(),
        Parameter::new(
            T::Duration,
            "Pause before the second attempt; doubles each time.",
        )
        .default_value("200ms"),
    );
    p.insert(
        param::RETRY_MAX_BACKOFF.into(),
        Parameter::new(T::Duration, "Longest pause between attempts.").default_value("10s"),
    );
    timeouts(&mut p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::acceptance::{specification_problems, Side};

    #[test]
    fn specification_is_well_formed() {
        let spec = HttpPlugin.specification();
        assert!(specification_problems(&spec, Side::Source).is_empty());
        assert!(specification_problems(&spec, Side::Destination).is_empty());
        assert!(spec.destination_params[param::URL].is_required());
    }
}
