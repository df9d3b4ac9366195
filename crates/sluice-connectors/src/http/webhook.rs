//! The webhook receiver: an axum server whose handler decodes a POST into records and puts them
//! into a bounded queue that `read` drains.
//!
//! Backpressure: a request whose records do not fit into the queue is answered 503 with
//! `Retry-After: 1` and nothing of it is queued. With `response: received` the answer, 202, means
//! the records are queued; with `response: acked` the handler holds the answer until every record
//! of the request was acknowledged by the pipeline (200), or answers 503 if the source stops first
//! (the sender should retry: at-least-once).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use sluice_sdk::Record;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::body::{decode, BodyFormat};
use super::config::{WebhookConfig, WebhookResponse};
use super::error::HttpError;

/// Tracks the records of one request in `acked` mode: the answer goes out when all are acked.
#[derive(Debug)]
pub(crate) struct Receipt {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Receipt {
    /// One of the request's records was acknowledged.
    pub(crate) fn acked_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut done) = self.done.lock() {
                if let Some(tx) = done.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// A received record waiting for `read`, with the receipt of its request in `acked` mode.
pub(crate) struct Queued {
    pub record: Record,
    pub receipt: Option<Arc<Receipt>>,
}

/// The bounded queue between the handler and `read`.
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<Queued>>,
    capacity: usize,
    /// Woken when records arrive.
    pub arrived: Notify,
    /// Set by `stop`: new requests are refused.
    closed: AtomicBool,
    format: BodyFormat,
    response: WebhookResponse,
}

impl Inbox {
    /// Takes up to `max` queued records, oldest first.
    pub(crate) fn take(&self, max: usize) -> Vec<Queued> {
        match self.queue.lock() {
            Ok(mut q) => {
                let n = max.min(q.len());
                q.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Refuses new requests from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Drops everything queued (their senders in `acked` mode get 503).
    pub(crate) fn clear(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
        }
    }

    fn offer(&self, records: Vec<Record>, receipt: Option<Arc<Receipt>>) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.len() + records.len() > self.capacity && !q.is_empty() {
            return false;
        }
        q.extend(records.into_iter().map(|record| Queued {
            record,
            receipt: receipt.clone(),
        }));
        drop(q);
        self.arrived.notify_one();
        true
    }
}

/// A running webhook server.
pub(crate) struct Server {
    /// The queue `read` drains.
    pub inbox: Arc<Inbox>,
    /// The address it listens on (useful when the configured port was 0).
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Server {
    /// Binds the address and starts serving.
    pub(crate) async fn start(
        config: &WebhookConfig,
        format: BodyFormat,
    ) -> Result<Server, HttpError> {
        let listener = tokio::net::TcpListener::bind(config.address)
            .await
            .map_err(|e| HttpError::Bind {
                address: config.address.to_string(),
                detail: e.to_string(),
            })?;
        let local_addr = listener.local_addr().map_err(|e| HttpError::Bind {
            address: config.address.to_string(),
            detail: e.to_string(),
        })?;
        let inbox = Arc::new(Inbox {
            queue: Mutex::new(VecDeque::new()),
            capacity: config.queue_size,
            arrived: Notify::new(),
            closed: AtomicBool::new(false),
            format,
            response: config.response,
        });
        let router = Router::new()
            .route(&config.path, post(receive))
            .layer(DefaultBodyLimit::max(config.max_body_size))
            .with_state(inbox.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "http: the webhook server failed");
            }
        });
        Ok(Server {
            inbox,
            local_addr,
            shutdown,
        })
    }

    /// Stops listening; requests waiting for acks are answered 503.
    pub(crate) fn shut_down(&self) {
        self.inbox.close();
        self.inbox.clear();
        self.shutdown.cancel();
    }
}

fn unavailable(reason: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        reason,
    )
        .into_response()
}

async fn receive(State(inbox): State<Arc<Inbox>>, body: Bytes) -> Response {
    if inbox.closed.load(Ordering::SeqCst) {
        return unavailable("the source is stopping\n");
    }
    let records = match decode(inbox.format, &body, "") {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let n = records.len();
    if n == 0 {
        return (StatusCode::OK, "{\"accepted\":0}\n").into_response();
    }
    let (receipt, done) = match inbox.response {
        WebhookResponse::Received => (None, None),
        WebhookResponse::Acked => {
            let (tx, rx) = oneshot::channel();
            let receipt = Arc::new(Receipt {
                remaining: AtomicUsize::new(n),
                done: Mutex::new(Some(tx)),
            });
            (Some(receipt), Some(rx))
        }
    };
    if !inbox.offer(records, receipt) {
        return unavailable("the queue is full, retry later\n");
    }
    let accepted = format!("{{\"accepted\":{n}}}\n");
    match done {
        None => (StatusCode::ACCEPTED, accepted).into_response(),
        Some(rx) => match rx.await {
            Ok(()) => (StatusCode::OK, accepted).into_response(),
            Err(_) => unavailable("the source stopped before acknowledging the records\n"),
        },
    }
}
