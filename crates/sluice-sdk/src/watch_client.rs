//! A client for the remote watch of `sluice serve` (`GET /v1/watch/{store}`, server-sent events).
//!
//! [`WatchClient::watch`] connects, parses the event stream and yields typed [`RemoteEvent`]s:
//! first a [`RemoteEvent::Resync`] (unless resuming), then every put and delete in revision order.
//! It remembers the id of the last event it handed out; when the connection drops (or goes silent
//! longer than [`WatchClientOptions::idle_timeout`], well above the server's keep-alive), it
//! reconnects with `Last-Event-ID`, so the events continue where they stopped — none missing, none
//! twice — waiting between attempts with a bounded exponential backoff. Answers that retrying
//! cannot fix (unknown store, store without watch, bad request) end the watch with an error.
//! Cancelling the token (or dropping the [`RemoteWatch`]) ends it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_sdk::watch_client::WatchClientError> {
//! use sluice_sdk::watch_client::{RemoteEvent, WatchClient, WatchClientOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! let client = WatchClient::new("http://127.0.0.1:3500", "statestore",
//!     vec!["pipelines/".into()], WatchClientOptions::default())?;
//! let mut events = client.watch(None, CancellationToken::new());
//! while let Some(event) = events.next().await {
//!     match event? {
//!         RemoteEvent::Resync { entries, .. } => println!("{} keys", entries.len()),
//!         RemoteEvent::Put { key, .. } => println!("put {key}"),
//!         RemoteEvent::Delete { key, .. } => println!("delete {key}"),
//!         RemoteEvent::Compacted { .. } => {} // a resync follows
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One key and value of a resync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Bytes,
}

/// One event of a remote watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteEvent {
    /// Every key under the prefixes at `revision`; changes that follow come after it.
    Resync {
        /// The snapshot's revision.
        revision: u64,
        /// The keys and values, in key order.
        entries: Vec<RemoteEntry>,
    },
    /// A key was written.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Bytes,
        /// The value before, if any.
        prev_value: Option<Bytes>,
        /// The commit's revision.
        revision: u64,
    },
    /// A key was deleted.
    Delete {
        /// The key.
        key: String,
        /// The value before, if any.
        prev_value: Option<Bytes>,
        /// The commit's revision.
        revision: u64,
    },
    /// History the watch needed was compacted; a [`RemoteEvent::Resync`] follows.
    Compacted {
        /// The last revision delivered before.
        after: u64,
        /// The oldest revision history could serve.
        oldest: u64,
    },
}

/// Why a remote watch failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchClientError {
    /// The base URL or store name does not make a URL.
    #[error("invalid watch URL {url:?}: {message}")]
    Url {
        /// The URL tried.
        url: String,
        /// Why.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The server refused the watch with an answer retrying cannot change (4xx, 501).
    #[error("{url} refused the watch with {status}: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached (or kept failing) after every attempt.
    #[error("gave up on {url} after {attempts} attempt(s): {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// Consecutive failed attempts.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The server sent an event this client cannot read.
    #[error("malformed {event:?} event: {message}")]
    Malformed {
        /// The event type.
        event: String,
        /// What is wrong.
        message: String,
    },
}

/// How the client connects and retries.
#[derive(Clone, Debug)]
pub struct WatchClientOptions {
    /// First wait before reconnecting.
    pub min_backoff: Duration,
    /// Longest wait between attempts (the wait doubles up to it).
    pub max_backoff: Duration,
    /// Consecutive failed attempts after which the watch ends with [`WatchClientError::GaveUp`]
    /// (`None`: never give up).
    pub max_attempts: Option<u32>,
    /// Timeout of establishing a connection.
    pub connect_timeout: Duration,
    /// Silence after which the connection is taken as dead and reopened (the server sends a
    /// keep-alive every 15 s).
    pub idle_timeout: Duration,
    /// Events buffered between the connection and the caller.
    pub queue: usize,
}

impl Default for WatchClientOptions {
    fn default() -> Self {
        WatchClientOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(45),
            queue: 256,
        }
    }
}

/// Where to watch: server, store and prefixes.
#[derive(Clone, Debug)]
pub struct WatchClient {
    http: reqwest::Client,
    url: reqwest::Url,
    options: WatchClientOptions,
}

impl WatchClient {
    /// A client for `store` on the server at `base_url` (`http://host:port`), watching every key
    /// under `prefixes` (none: every key).
    pub fn new(
        base_url: &str,
        store: &str,
        prefixes: Vec<String>,
        options: WatchClientOptions,
    ) -> Result<Self, WatchClientError> {
        let text = format!("{}/v1/watch/", base_url.trim_end_matches('/'));
        let bad = |message: String| WatchClientError::Url {
            url: text.clone(),
            message,
        };
        let mut url = reqwest::Url::parse(&text).map_err(|e| bad(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| bad("the base URL cannot have a path".into()))?
            .pop_if_empty()
            .push(store);
        {
            let mut q = url.query_pairs_mut();
            for p in &prefixes {
                q.append_pair("prefix", p);
            }
        }
        if prefixes.is_empty() {
            url.set_query(None);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.idle_timeout)
            .build()
            .map_err(|e| WatchClientError::Client(e.to_string()))?;
        Ok(WatchClient { http, url, options })
    }

    /// Starts watching: from the beginning (a resync) with `from_revision` `None`, else resuming
    /// after that revision. Runs until `cancel` is cancelled, the [`RemoteWatch`] is dropped or
    /// the watch fails for good. Must be called inside a tokio runtime.
    pub fn watch(&self, from_revision: Option<u64>, cancel: CancellationToken) -> RemoteWatch {
        let (tx, rx) = mpsc::channel(self.options.queue.max(1));
        let shared = Arc::new(Progress {
            last_id: Mutex::new(from_revision.map(|r| r.to_string())),
            reconnects: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(self.clone(), Arc::clone(&shared), tx, cancel.clone()));
        RemoteWatch {
            events: rx,
            progress: shared,
            cancel,
            task,
        }
    }
}

/// What the connection task shares with the handle.
#[derive(Debug)]
struct Progress {
    /// The id of the last event handed to the caller.
    last_id: Mutex<Option<String>>,
    /// Connections opened after the first.
    reconnects: AtomicU64,
}

impl Progress {
    fn last_id(&self) -> Option<String> {
        self.last_id.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn set_last_id(&self, id: &str) {
        if let Ok(mut g) = self.last_id.lock() {
            *g = Some(id.to_string());
        }
    }
}

/// A running remote watch: its events, and where it is.
#[derive(Debug)]
pub struct RemoteWatch {
    events: mpsc::Receiver<Result<RemoteEvent, WatchClientError>>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl RemoteWatch {
    /// The next event; an `Err` ends the watch; `None` once it ended (cancelled or failed).
    pub async fn next(&mut self) -> Option<Result<RemoteEvent, WatchClientError>> {
        self.events.recv().await
    }

    /// The revision of the last event handed out (queued for [`RemoteWatch::next`]), if any.
    pub fn last_revision(&self) -> Option<u64> {
        self.progress
            .last_id()
            .and_then(|id| id.split('.').next().and_then(|r| r.parse().ok()))
    }

    /// How many times the connection was reopened.
    pub fn reconnects(&self) -> u64 {
        self.progress.reconnects.load(Ordering::Relaxed)
    }

    /// Stops the watch.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl Drop for RemoteWatch {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

/// How one connection ended.
enum Ended {
    /// Cancelled, or the caller went away.
    Stop,
    /// The connection dropped or failed; try again. `delivered` says whether it carried events.
    Retry { reason: String, delivered: bool },
    /// A failure retrying cannot fix.
    Fatal(WatchClientError),
}

/// Connects, reconnects with backoff, until told to stop.
async fn run(
    client: WatchClient,
    progress: Arc<Progress>,
    tx: mpsc::Sender<Result<RemoteEvent, WatchClientError>>,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut backoff = client.options.min_backoff;
    let mut first = true;
    loop {
        if !first {
            progress.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let ended = tokio::select! {
            _ = cancel.cancelled() => Ended::Stop,
            e = connection(&client, &progress, &tx) => e,
        };
        match ended {
            Ended::Stop => return,
            Ended::Fatal(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Ended::Retry { reason, delivered } => {
                if delivered {
                    failures = 0;
                    backoff = client.options.min_backoff;
                }
                failures += 1;
                if client.options.max_attempts.is_some_and(|m| failures >= m) {
                    let _ = tx
                        .send(Err(WatchClientError::GaveUp {
                            url: client.url.to_string(),
                            attempts: failures,
                            last: reason,
                        }))
                        .await;
                    return;
                }
                tracing::warn!(
                    url = %client.url,
                    error = %reason,
                    retry_in = ?backoff,
                    "remote watch connection lost; reconnecting"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(client.options.max_backoff);
            }
        }
    }
}

/// One connection: request, then events until it ends.
async fn connection(
    client: &WatchClient,
    progress: &Progress,
    tx: &mpsc::Sender<Result<RemoteEvent, WatchClientError>>,
) -> Ended {
    let mut req = client
        .http
        .get(client.url.clone())
        .header("accept", "text/event-stream");
    if let Some(id) = progress.last_id() {
        req = req.header("last-event-id", id);
    }
    let response = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Ended::Retry {
                reason: e.to_string(),
                delivered: false,
            }
        }
    };
    let status = response.status();
    if !status.is_success() {
        let message = response.text().await.unwrap_or_default();
        let retryable = status.is_server_error() && status.as_u16() != 501
            || status.as_u16() == 429
            || status.as_u16() == 408;
        if retryable {
            return Ended::Retry {
                reason: format!("{status}: {message}"),
                delivered: false,
            };
        }
        return Ended::Fatal(WatchClientError::Refused {
            url: client.url.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    let mut delivered = false;
    loop {
        let chunk = match body.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Ended::Retry {
                    reason: e.to_string(),
                    delivered,
                }
            }
            None => {
                return Ended::Retry {
                    reason: "the server closed the stream".into(),
                    delivered,
                }
            }
        };
        for frame in parser.push(&chunk) {
            let event = match decode(&frame) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => return Ended::Fatal(e),
            };
            // Recorded before the event is queued, so a reader never sees an event that
            // `last_revision` does not yet cover.
            if let Some(id) = &frame.id {
                progress.set_last_id(id);
            }
            if tx.send(Ok(event)).await.is_err() {
                return Ended::Stop;
            }
            delivered = true;
        }
    }
}

/// One parsed SSE event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// `event:` (default `message`).
    pub event: String,
    /// `id:`, if the event had one.
    pub id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental parser of `text/event-stream` (WHATWG HTML, "server-sent events").
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseFrame,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                let frame = std::mem::take(&mut self.current);
                if std::mem::take(&mut self.has_data) {
                    out.push(frame);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.current.event = value.to_string(),
                "id" => self.current.id = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[derive(Deserialize)]
struct ResyncDoc {
    revision: u64,
    entries: Vec<EntryDoc>,
}

#[derive(Deserialize)]
struct EntryDoc {
    key: String,
    value: String,
    encoding: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeDoc {
    key: String,
    value: Option<String>,
    prev_value: Option<String>,
    encoding: String,
    revision: u64,
}

#[derive(Deserialize)]
struct CompactedDoc {
    after: u64,
    oldest: u64,
}

/// The typed event of a frame; `None` for event types this client does not know.
fn decode(frame: &SseFrame) -> Result<Option<RemoteEvent>, WatchClientError> {
    let bad = |message: String| WatchClientError::Malformed {
        event: frame.event.clone(),
        message,
    };
    let value = |text: String, encoding: &str| -> Result<Bytes, WatchClientError> {
        match encoding {
            "utf8" => Ok(Bytes::from(text)),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Bytes::from)
                .map_err(|e| bad(format!("bad base64 value: {e}"))),
            other => Err(bad(format!("unknown encoding {other:?}"))),
        }
    };
    Ok(Some(match frame.event.as_str() {
        "resync" => {
            let d: ResyncDoc = serde_json::from_str(&frame.data).map_err(|e| bad(e.to_string()))?;
            let entries = d
                .entries
                .into_iter()
                .map(|e| {
                    Ok(RemoteEntry {
                        value: value(e.value, &e.encoding)?,
                        key: e.key,
                    })
                })
                .collect::<Result<Vec<_>, WatchClientError>>()?;
            RemoteEvent::Resync {
                revision: d.revision,
                entries,
            }
        }
        "put" | "delete" => {
            let d: ChangeDoc = serde_json::from_str(&frame.data).map_err(|e| bad(e.to_string()))?;
            let prev_value = d.prev_value.map(|p| value(p, &d.encoding)).transpose()?;
            if frame.event == "put" {
                let v = d.value.ok_or_else(|| bad("a put without a value".into()))?;
                RemoteEvent::Put {
                    value: value(v, &d.encoding)?,
                    key: d.key,
                    prev_value,
                    revision: d.revision,
                }
            } else {
                RemoteEvent::Delete {
                    key: d.key,
                    prev_value,
                    revision: d.revision,
                }
            }
        }
        "compacted" => {
            let d: CompactedDoc =
                serde_json::from_str(&frame.data).map_err(|e| bad(e.to_string()))?;
            RemoteEvent::Compacted {
                after: d.after,
                oldest: d.oldest,
            }
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_and_comments_are_skipped() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nevent: put\nid: 7").is_empty());
        let got = p.push(b".2\r\ndata: {\"a\":\n\n");
        assert_eq!(
            got,
            vec![SseFrame {
                event: "put".into(),
                id: Some("7.2".into()),
                data: "{\"a\":".into()
            }]
        );
    }

    #[test]
    fn events_decode_with_both_encodings() {
        let frame = SseFrame {
            event: "put".into(),
            id: Some("3".into()),
            data: r#"{"key":"k","value":"/w==","prevValue":null,"encoding":"base64","revision":3}"#
                .into(),
        };
        assert_eq!(
            decode(&frame).unwrap(),
            Some(RemoteEvent::Put {
                key: "k".into(),
                value: Bytes::from_static(&[0xff]),
                prev_value: None,
                revision: 3
            })
        );
        let frame = SseFrame {
            event: "resync".into(),
            id: Some("9".into()),
            data: r#"{"revision":9,"entries":[{"key":"a","value":"x","encoding":"utf8"}]}"#.into(),
        };
        assert!(matches!(
            decode(&frame).unwrap(),
            Some(RemoteEvent::Resync { revision: 9, ref entries }) if entries.len() == 1
        ));
    }
}
