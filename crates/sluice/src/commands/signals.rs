//! SIGINT and SIGTERM as one stream of stop requests, for the commands that run until stopped
//! (`sluice run`, `sluice serve`).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM listeners.
pub(crate) struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Signals {
    /// Listens for both; a signal that cannot be listened for is logged and never arrives.
    pub(crate) fn listen() -> Self {
        let open = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen for {name}: {e}");
                None
            }
        };
        Signals {
            interrupt: open(SignalKind::interrupt(), "SIGINT"),
            terminate: open(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for the next signal; true for SIGINT, false for SIGTERM.
    pub(crate) async fn next(&mut self) -> bool {
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.interrupt) => true,
            _ = recv(&mut self.terminate) => false,
        }
    }
}
