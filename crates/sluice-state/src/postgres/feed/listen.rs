//! The feed's background task: one `LISTEN` connection per store, turning notifications (and,
//! as a fallback for lost ones, a periodic tick) into published horizons.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use super::horizon;
use super::sql::FeedSql;
use crate::watch::RevisionNotifier;

/// How often the horizon is recomputed without a notification (lost notifications, a dropped
/// `LISTEN` connection).
pub(crate) const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// Pause before reconnecting a dropped `LISTEN` connection.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// What the tasks share with the feed.
pub(crate) struct Shared {
    pub notifier: RevisionNotifier,
    /// Signalled on every notification.
    pub wake: Notify,
}

/// Aborts the tasks when dropped.
#[derive(Debug)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the listener and the horizon task.
pub(crate) fn spawn(
    config: Config,
    channel: String,
    pool: Pool,
    sql: Arc<FeedSql>,
    shared: Arc<Shared>,
    target: String,
) -> Tasks {
    let listener = tokio::spawn(listen(config, channel, Arc::clone(&shared), target.clone()));
    let publisher = tokio::spawn(publish(pool, sql, shared, target));
    Tasks(vec![listener, publisher])
}

/// Keeps a `LISTEN` connection open, reconnecting after failures; wakes the publisher on each
/// notification.
async fn listen(config: Config, channel: String, shared: Arc<Shared>, target: String) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
                let driver = tokio::spawn(async move {
                    loop {
                        match poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(_))) => {
                                // Full means a wake is pending already.
                                let _ = tx.try_send(());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "postgres watch: LISTEN connection failed");
                                return;
                            }
                            None => return,
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
                    Ok(()) => {
                        // A commit may have been missed while disconnected.
                        shared.wake.notify_one();
                        while rx.recv().await.is_some() {
                            shared.wake.notify_one();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, %target, "postgres watch: LISTEN failed"),
                }
                driver.abort();
            }
            Err(e) => {
                tracing::warn!(error = %e, %target, "postgres watch: cannot open the LISTEN connection");
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Recomputes and publishes the horizon after each wake-up, and at least every
/// [`POLL_FALLBACK`].
async fn publish(pool: Pool, sql: Arc<FeedSql>, shared: Arc<Shared>, target: String) {
    loop {
        let _ = tokio::time::timeout(POLL_FALLBACK, shared.wake.notified()).await;
        let client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, %target, "postgres watch: no connection for the horizon");
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        match horizon::settle(&client, &sql).await {
            Ok(h) => shared.notifier.publish(h),
            Err(e) => {
                tracing::warn!(error = %e, %target, "postgres watch: cannot read the horizon");
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}
