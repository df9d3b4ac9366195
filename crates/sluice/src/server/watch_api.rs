//! `GET /v1/watch/{store}?prefix=P[&prefix=Q][&fromRevision=R]`: a store's watch as server-sent
//! events (spec/state.md, "Watch"; issue 4, remote transport).
//!
//! Events, in order: `resync` (every key under the prefixes at a revision), then `put` and
//! `delete` for each change after it; `compacted` when the history the watch needed is gone (a
//! `resync` follows at once). Each event's `id:` is its revision; the n-th change (n ≥ 2) of a
//! commit that changed several watched keys carries `R.n`, so that a client resuming with
//! `Last-Event-ID` (which wins over `fromRevision`) gets every change exactly once even when the
//! connection dropped in the middle of a commit. `compacted` carries no id. A comment line is
//! sent every [`KEEP_ALIVE`] without events.
//!
//! `data:` is one JSON object: `resync` → `{"revision", "entries": [{"key", "value",
//! "encoding"}]}`; `put`/`delete` → `{"key", "value", "prevValue", "encoding", "revision"}`;
//! `compacted` → `{"after", "oldest"}`. Values are UTF-8 text (`"encoding": "utf8"`) or, when
//! any value of the event is not UTF-8, base64 (`"encoding": "base64"`).
//!
//! Acknowledgement: an event's `done` is completed once the connection has taken it (the body
//! stream is polled for the next frame), so the watch core's done timeout measures the client
//! connection. Each connection has its own registration with a bounded queue
//! ([`CONNECTION_QUEUE`] events): a slow client stalls only itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use sluice_state::watch::{self, DoneHandle, KeyValue, Op, Registration, WatchEvent, WatchOptions};
use tokio_util::sync::CancellationToken;

use super::errors::{
    ApiError, ERR_MALFORMED_REQUEST, ERR_NOT_FOUND, ERR_STATE_STORE_NOT_SUPPORTED,
};
use super::stores::Stores;

/// Time without events after which a keep-alive comment is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events queued per connection between the store's feed and the socket.
pub const CONNECTION_QUEUE: usize = 1024;
/// How long the watch waits for the connection to take one event before reporting a timeout.
pub const DONE_TIMEOUT: Duration = Duration::from_secs(30);

/// The token the streams opened since the last [`close_streams`] end on.
static STREAMS: Mutex<Option<CancellationToken>> = Mutex::new(None);

/// Ends every watch stream open now (their connections end cleanly), so that a graceful
/// shutdown, which waits for responses in flight, is not held up by streams that never end.
/// Streams opened afterwards are not affected.
pub fn close_streams() {
    if let Ok(mut g) = STREAMS.lock() {
        if let Some(t) = g.take() {
            t.cancel();
        }
    }
}

/// The token of streams opened now.
fn streams_token() -> CancellationToken {
    match STREAMS.lock() {
        Ok(mut g) => g.get_or_insert_with(CancellationToken::new).clone(),
        // A poisoned lock only means a panic elsewhere: such streams end with their connection.
        Err(_) => CancellationToken::new(),
    }
}

/// The watch route.
pub fn routes(stores: Arc<Stores>) -> Router {
    Router::new()
        .route("/v1/watch/{store}", get(watch_sse))
        .with_state(stores)
}

/// Where a resuming client left off, from `Last-Event-ID` or `fromRevision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The revision of the last event taken.
    pub revision: u64,
    /// Changes of `revision` already taken (0: the whole revision was taken).
    pub taken: u64,
}

impl Resume {
    /// Parses an event id: `R` (everything through revision R) or `R.n` (the first n changes of
    /// revision R).
    pub fn parse(id: &str) -> Option<Resume> {
        let id = id.trim();
        match id.split_once('.') {
            None => Some(Resume {
                revision: id.parse().ok()?,
                taken: 0,
            }),
            Some((r, n)) => Some(Resume {
                revision: r.parse().ok()?,
                taken: n.parse().ok()?,
            }),
        }
    }

    /// The revision to watch from, and how many changes of the next revision to skip.
    fn start(self) -> (u64, u64) {
        if self.taken == 0 || self.revision == 0 {
            (self.revision, 0)
        } else {
            (self.revision - 1, self.taken)
        }
    }
}

/// `GET /v1/watch/{store}`.
async fn watch_sse(
    State(stores): State<Arc<Stores>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    match open(&stores, path, query, &headers) {
        Ok(stream) => stream,
        Err(e) => e.into_response(),
    }
}

fn open(
    stores: &Stores,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::malformed(e.body_text()))?;
    let Query(params) = query.map_err(|e| ApiError::malformed(e.body_text()))?;
    let mut prefixes = Vec::new();
    let mut from: Option<Resume> = None;
    for (k, v) in params {
        match k.as_str() {
            "prefix" => prefixes.push(v),
            "fromRevision" => {
                let r = v.parse::<u64>().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ERR_MALFORMED_REQUEST,
                        format!("fromRevision {v:?} is not a revision (a whole number)"),
                    )
                })?;
                from = Some(Resume {
                    revision: r,
                    taken: 0,
                });
            }
            _ => {}
        }
    }
    if let Some(id) = headers.get("last-event-id") {
        let text = id.to_str().unwrap_or("");
        from = Some(Resume::parse(text).ok_or_else(|| {
            ApiError::malformed(format!(
                "Last-Event-ID {text:?} is not an event id of this stream (R or R.n)"
            ))
        })?);
    }
    if prefixes.is_empty() {
        prefixes.push(String::new());
    }
    let Some(named) = stores.get(&name) else {
        let mut known = stores.names().join(", ");
        if known.is_empty() {
            known = "none".into();
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ERR_NOT_FOUND,
            format!("no state store named {name:?} (stores: {known})"),
        ));
    };
    let (position, skip) = match from {
        Some(r) => {
            let (p, s) = r.start();
            (Some(p), s)
        }
        None => (None, 0),
    };
    let options = WatchOptions::default()
        .with_queue(CONNECTION_QUEUE)
        .with_done_timeout(DONE_TIMEOUT);
    let registration = watch::watch_store(
        named.store.as_ref(),
        format!("sse:{name}"),
        prefixes,
        position,
        options,
    )
    .map_err(|e| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            ERR_STATE_STORE_NOT_SUPPORTED,
            format!("state store {name:?} cannot be watched: {e}"),
        )
    })?;
    let skip = Skip {
        revision: position.map(|p| p + 1).filter(|_| skip > 0),
        left: skip,
    };
    let stream = Stream {
        registration,
        pending: None,
        skip,
        current: None,
        closed: streams_token(),
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(frame), s))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Changes of the first revision of a resumed watch the client had already taken.
#[derive(Debug)]
struct Skip {
    revision: Option<u64>,
    left: u64,
}

/// One connection's event source.
struct Stream {
    registration: Registration,
    /// The done handle of the frame handed out last: completed when the next is asked for.
    pending: Option<DoneHandle>,
    skip: Skip,
    /// The revision of the last change written and how many changes of it were written.
    current: Option<(u64, u64)>,
    /// Cancelled when the server shuts down.
    closed: CancellationToken,
}

impl Stream {
    /// The next frame (an event or a keep-alive comment); `None` once the watch ended.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(done) = self.pending.take() {
            done.ok();
        }
        loop {
            let next = tokio::time::timeout(KEEP_ALIVE, self.registration.next());
            let event = tokio::select! {
                _ = self.closed.cancelled() => return None,
                e = next => match e {
                    Ok(Some(e)) => e,
                    Ok(None) => return None,
                    Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                },
            };
            if let Some(frame) = self.frame(event) {
                return Some(frame);
            }
        }
    }

    /// The SSE frame of `event`, or `None` for a change the client had already taken.
    fn frame(&mut self, event: WatchEvent) -> Option<Bytes> {
        match event {
            WatchEvent::Resync {
                revision,
                entries,
                done,
            } => {
                self.skip.left = 0;
                self.current = None;
                self.pending = Some(done);
                let data = ResyncData {
                    revision,
                    entries: entries.iter().map(entry).collect(),
                };
                Some(sse("resync", Some(&revision.to_string()), &data))
            }
            WatchEvent::Compacted { after, oldest } => {
                self.skip.left = 0;
                Some(sse("compacted", None, &CompactedData { after, oldest }))
            }
            WatchEvent::Change {
                key,
                op,
                value,
                prev_value,
                revision,
                done,
            } => {
                if self.skip.left > 0 && self.skip.revision == Some(revision) {
                    self.skip.left -= 1;
                    self.current = Some((revision, self.current.map_or(0, |c| c.1) + 1));
                    done.ok();
                    return None;
                }
                self.skip.left = 0;
                let n = match self.current {
                    Some((r, n)) if r == revision => n + 1,
                    _ => 1,
                };
                self.current = Some((revision, n));
                let id = if n == 1 {
                    revision.to_string()
                } else {
                    format!("{revision}.{n}")
                };
                self.pending = Some(done);
                let (value, prev_value, encoding) =
                    encode_pair(value.as_deref(), prev_value.as_deref());
                let data = ChangeData {
                    key: &key,
                    value,
                    prev_value,
                    encoding,
                    revision,
                };
                let kind = match op {
                    Op::Put => "put",
                    Op::Delete => "delete",
                };
                Some(sse(kind, Some(&id), &data))
            }
        }
    }
}

/// `data` of a `resync` event.
#[derive(Serialize)]
struct ResyncData {
    revision: u64,
    entries: Vec<EntryData>,
}

/// One entry of a resync.
#[derive(Serialize)]
struct EntryData {
    key: String,
    value: String,
    encoding: &'static str,
}

/// `data` of a `put` or `delete` event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangeData<'a> {
    key: &'a str,
    value: Option<String>,
    prev_value: Option<String>,
    encoding: &'static str,
    revision: u64,
}

/// `data` of a `compacted` event.
#[derive(Serialize)]
struct CompactedData {
    after: u64,
    oldest: u64,
}

fn entry(kv: &KeyValue) -> EntryData {
    let (value, encoding) = match std::str::from_utf8(&kv.value) {
        Ok(s) => (s.to_string(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&kv.value),
            "base64",
        ),
    };
    EntryData {
        key: kv.key.clone(),
        value,
        encoding,
    }
}

/// Both values as text, or both as base64 when either is not UTF-8.
fn encode_pair(
    value: Option<&[u8]>,
    prev: Option<&[u8]>,
) -> (Option<String>, Option<String>, &'static str) {
    let text = |v: Option<&[u8]>| v.map(|b| std::str::from_utf8(b).map(str::to_string));
    match (text(value), text(prev)) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => {
            let b64 =
                |v: Option<&[u8]>| v.map(|b| base64::engine::general_purpose::STANDARD.encode(b));
            (b64(value), b64(prev), "base64")
        }
        (v, p) => (v.and_then(Result::ok), p.and_then(Result::ok), "utf8"),
    }
}

/// One SSE frame: `event:`, optional `id:` and one `data:` line (JSON has no raw newlines).
fn sse<T: Serialize>(kind: &str, id: Option<&str>, data: &T) -> Bytes {
    // Serializing these plain structs cannot fail; an empty object stands in should it ever.
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_string());
    let mut out = String::with_capacity(json.len() + 48);
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&json);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_and_resume_before_a_partial_commit() {
        assert_eq!(
            Resume::parse("42"),
            Some(Resume {
                revision: 42,
                taken: 0
            })
        );
        assert_eq!(Resume::parse("42").map(Resume::start), Some((42, 0)));
        assert_eq!(Resume::parse("42.3").map(Resume::start), Some((41, 3)));
        assert_eq!(Resume::parse("x"), None);
        assert_eq!(Resume::parse("4.x"), None);
    }

    #[test]
    fn values_are_text_unless_one_is_not_utf8() {
        let (v, p, e) = encode_pair(Some(b"a"), None);
        assert_eq!((v.as_deref(), p, e), (Some("a"), None, "utf8"));
        let (v, p, e) = encode_pair(Some(b"a"), Some(&[0xff]));
        assert_eq!(
            (v.as_deref(), p.as_deref(), e),
            (Some("YQ=="), Some("/w=="), "base64")
        );
    }
}
