//! A task that serves requests from a bounded queue, started by the first request (so that it
//! is spawned inside the runtime that uses it), with its answer sent back on a oneshot channel.
//! Group commit and group read are both built on it.

use std::future::Future;
use std::sync::OnceLock;

use sluice_state::StateError;
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the worker.
pub const QUEUE: usize = 1024;

/// The queue of a lazily started worker.
pub struct Worker<R> {
    queue: OnceLock<mpsc::Sender<R>>,
    /// Names the worker in the error a caller gets if it stops before answering.
    name: &'static str,
}

impl<R: Send + 'static> Worker<R> {
    /// A worker named `name`, not started yet.
    pub fn new(name: &'static str) -> Self {
        Worker {
            queue: OnceLock::new(),
            name,
        }
    }

    /// Sends the request `make(reply)` to the worker — starting it with `start(receiver)` on the
    /// first call — and waits for its answer. If the worker is gone (its runtime shut down), the
    /// request is handed back as `Err` for the caller to serve alone.
    pub async fn call<T, W>(
        &self,
        start: impl FnOnce(mpsc::Receiver<R>) -> W,
        make: impl FnOnce(oneshot::Sender<Result<T, StateError>>) -> R,
    ) -> Result<Result<T, StateError>, R>
    where
        W: Future<Output = ()> + Send + 'static,
    {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(start(rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = queue.send(make(reply)).await {
            return Err(request);
        }
        Ok(answer.await.unwrap_or_else(|_| {
            Err(StateError::Backend {
                backend: self.name,
                message: format!(
                    "the {} worker stopped before answering; the outcome is unknown",
                    self.name
                ),
                transient: true,
            })
        }))
    }
}
