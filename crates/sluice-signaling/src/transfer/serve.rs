//! Streaming a dataset to a puller. A `file` dataset (lines, not following) is streamed straight
//! from the file in 1 MiB chunks — the bytes the file source's lines stand for, without per-line
//! work — and honours `Range: bytes=N-` so a consumer can resume. Any other dataset runs its
//! source connector and streams each record's payload followed by `\n`, acknowledging records
//! once they are handed to the connection.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sluice_sdk::{Data, Settings, Source};
use tokio::io::AsyncSeekExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::TransferCounters;
use super::public::json_error;
use super::{is_file_plugin, Transfers};

const CHUNK: usize = 1 << 20;

/// A file dataset that can be streamed as is: its path.
fn plain_file(plugin: &str, settings: &Settings) -> Option<String> {
    if !is_file_plugin(plugin) {
        return None;
    }
    let lines = settings.get("format").is_none_or(|f| f == "lines");
    let follow = settings.get("follow").is_some_and(|f| f == "true");
    (lines && !follow)
        .then(|| settings.get("path").cloned())
        .flatten()
}

/// Parses `bytes=N-`.
pub(super) fn range_start(value: Option<&HeaderValue>) -> Option<u64> {
    let v = value?.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes=")?;
    let (from, to) = rest.split_once('-')?;
    if !to.trim().is_empty() {
        return None;
    }
    from.trim().parse().ok()
}

impl Transfers {
    /// The response streaming dataset `dataset_id` from byte `from` (file datasets only).
    pub(super) async fn serve_dataset(
        self: &Arc<Self>,
        dataset_id: &str,
        from: Option<u64>,
        cancel: CancellationToken,
    ) -> Response {
        let (Some(ds), Some(settings)) = (
            self.config.datasets.get(dataset_id),
            self.datasets.get(dataset_id),
        ) else {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!("dataset {dataset_id:?} is no longer offered"),
            );
        };
        match plain_file(&ds.plugin, settings) {
            Some(path) => serve_file(&path, from, cancel, self.counters.clone()).await,
            None => self.serve_source(&ds.plugin, settings.clone(), cancel),
        }
    }

    fn serve_source(
        self: &Arc<Self>,
        plugin: &str,
        settings: Settings,
        cancel: CancellationToken,
    ) -> Response {
        let source = match self.registry.new_source(plugin) {
            Ok(s) => s,
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let counters = self.counters.clone();
        tokio::spawn(pump(source, settings, tx, cancel, counters));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut resp = Response::new(Body::from_stream(stream));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        resp
    }
}

async fn serve_file(
    path: &str,
    from: Option<u64>,
    cancel: CancellationToken,
    counters: Arc<TransferCounters>,
) -> Response {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path, error = %e, "pull: cannot open the dataset file");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the dataset cannot be read right now",
            );
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the dataset cannot be read right now",
            )
        }
    };
    let start = from.unwrap_or(0);
    if start > len {
        return json_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            &format!("range starts at byte {start}, the dataset has {len}"),
        );
    }
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "cannot seek the dataset");
    }
    let reader = tokio_util::io::ReaderStream::with_capacity(file, CHUNK);
    let stream = reader
        .take_until(cancel.cancelled_owned())
        .map(move |chunk| {
            if let Ok(c) = &chunk {
                counters.moved(0, c.len() as u64);
            }
            chunk
        });
    let status = if from.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = (status, Body::from_stream(stream)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&(len - start).to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if from.is_some() && len > start {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// Runs a source and sends its payloads, one `\n`-terminated line each, in buffers of ~1 MiB.
async fn pump(
    mut source: Box<dyn Source>,
    settings: Settings,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    cancel: CancellationToken,
    counters: Arc<TransferCounters>,
) {
    let fail = |e: String| std::io::Error::other(e);
    if let Err(e) = source.configure(&settings).await {
        let _ = tx.send(Err(fail(format!("dataset source: {e}")))).await;
        return;
    }
    if let Err(e) = source.open(None).await {
        let _ = tx.send(Err(fail(format!("dataset source: {e}")))).await;
        let _ = source.teardown().await;
        return;
    }
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        let batch = tokio::select! {
            r = source.read(4096) => r,
            _ = cancel.cancelled() => break,
            _ = tx.closed() => break,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(fail(format!("dataset source: {e}")))).await;
                break;
            }
        };
        let mut positions = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            match &r.payload.after {
                Some(Data::Raw(b)) => buf.extend_from_slice(b),
                Some(Data::Structured(m)) => {
                    if let Ok(v) = serde_json::to_vec(m) {
                        buf.extend_from_slice(&v);
                    }
                }
                None => {}
            }
            buf.extend_from_slice(b"\n");
            positions.push(r.position.clone());
        }
        if !buf.is_empty() {
            let n = buf.len() as u64;
            let chunk = buf.split().freeze();
            let sent = tokio::select! {
                r = tx.send(Ok(chunk)) => r.is_ok(),
                _ = cancel.cancelled() => false,
            };
            if !sent {
                break;
            }
            counters.moved(positions.len() as u64, n);
        }
        if !positions.is_empty() {
            let _ = source.ack(&positions).await;
        }
        if batch.end_of_stream {
            break;
        }
    }
    if !buf.is_empty() && !cancel.is_cancelled() {
        let _ = tx.send(Ok(buf.freeze())).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), source.stop()).await;
    let _ = source.teardown().await;
}
