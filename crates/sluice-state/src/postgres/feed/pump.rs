//! Wakes watchers in every process after this process commits: a task with a connection of its
//! own sends `pg_notify(channel)` after writes, coalescing any number of them into one.
//!
//! Not from the writing transactions themselves: PostgreSQL serialises the commits of
//! notifying transactions through their disk flush, which would cap the store's writes at one
//! flush each. The pump's transactions write nothing else and commit with `synchronous_commit`
//! off, so they are cheap and never hold writers up. A lost notification only delays watchers
//! until their poll fallback.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{Config, NoTls};

/// Pause before reconnecting after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The running pump; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Pump {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pump {
    /// Starts the pump; `None` outside a tokio runtime.
    pub(crate) fn spawn(config: Config, channel: String) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let wake = Arc::new(Notify::new());
        let task = runtime.spawn(run(config, channel, Arc::clone(&wake)));
        Some(Pump { wake, task })
    }

    /// Asks for a notification (one for any number of calls before it is sent).
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }
}

async fn run(config: Config, channel: String, wake: Arc<Notify>) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                let driver = tokio::spawn(connection);
                let ready = client
                    .batch_execute("SET synchronous_commit TO off")
                    .await
                    .and(Ok(()));
                if let Err(e) = ready {
                    tracing::warn!(error = %e, "postgres watch: cannot set up the notify connection");
                } else {
                    loop {
                        wake.notified().await;
                        if let Err(e) = client
                            .execute("SELECT pg_notify($1, '')", &[&channel])
                            .await
                        {
                            tracing::warn!(error = %e, "postgres watch: NOTIFY failed; reconnecting");
                            // Keep the wake-up for the next connection.
                            wake.notify_one();
                            break;
                        }
                    }
                }
                driver.abort();
            }
            Err(e) => {
                tracing::warn!(error = %e, "postgres watch: cannot open the notify connection");
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
