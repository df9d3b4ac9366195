//! `sluice run FILE`: runs every `running` pipeline of a file concurrently until its source ends
//! or it is stopped, with a durable state store, live progress and a summary per pipeline.
//!
//! The file is loaded and checked completely before anything is written: a bad file leaves no
//! state behind. Stopping: the first SIGINT or SIGTERM stops every pipeline gracefully (in-flight
//! records are written, checkpointed and acknowledged); a second Ctrl-C (SIGINT) stops them at
//! once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::{Engine, EngineError, MetricsSnapshot, PipelineController};
use sluice_sdk::Registry;
use sluice_state::RedbStore;
use tokio::task::JoinSet;

use super::signals::Signals;
use super::validate::load_and_check;
use super::CommandError;
use crate::cli::RunArgs;
use crate::config::Status;
use crate::progress::{self, Display, Mode, Watched};
use crate::ui;

/// Name of the state file in the data directory.
pub const STATE_FILE: &str = "state.redb";

/// Signals this soon after the first one are taken as the same request.
const SIGNAL_DEBOUNCE: Duration = Duration::from_millis(250);

/// Time between progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The data directory: the one given (flag or `SLUICE_DATA_DIR`), else `<platform data dir>/sluice`.
pub fn data_dir(given: Option<PathBuf>) -> Result<PathBuf, CommandError> {
    given
        .or_else(|| dirs::data_dir().map(|d| d.join("sluice")))
        .ok_or(CommandError::NoDataDir)
}

/// Runs `sluice run`.
pub async fn run(args: &RunArgs, registry: Registry) -> Result<(), CommandError> {
    let file = load_and_check(&args.file, &registry, &mut std::io::stderr())?;
    let mut configs = Vec::new();
    for p in file.pipelines {
        match p.status {
            Status::Running => configs.push(p.config),
            Status::Stopped => tracing::info!(
                pipeline = %p.config.id,
                "pipeline is `stopped` in the file: checked, not run"
            ),
        }
    }
    if configs.is_empty() {
        return Err(CommandError::NothingToRun {
            file: args.file.display().to_string(),
        });
    }

    // Listen before starting anything, so that an early Ctrl-C is not lost.
    let signals = Signals::listen();

    let dir = data_dir(args.data_dir.clone())?;
    std::fs::create_dir_all(&dir).map_err(|source| CommandError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let store_path = dir.join(STATE_FILE);
    let store = open_store(&store_path).await?;
    tracing::info!(path = %store_path.display(), "state store opened");
    let engine = Engine::new(registry, Arc::new(store));

    let started_at = Instant::now();
    let mut handles = Vec::new();
    for config in configs {
        let id = config.id.clone();
        match engine.start(config).await {
            Ok(h) => handles.push(h),
            Err(e) => {
                tracing::error!(pipeline = %id, "could not start: {e}");
                for h in &handles {
                    h.controller().stop();
                }
                for h in handles {
                    if let Err(e) = h.wait().await {
                        tracing::warn!("while stopping after a failed start: {e}");
                    }
                }
                return Err(CommandError::Start(e));
            }
        }
    }
    let watched: Vec<Watched> = handles
        .iter()
        .map(|h| Watched {
            id: h.id().to_string(),
            controller: h.controller(),
        })
        .collect();
    let requests = Arc::new(AtomicUsize::new(0));
    let controllers: Vec<PipelineController> =
        watched.iter().map(|w| w.controller.clone()).collect();
    let signal_task = tokio::spawn(signals.watch(controllers, requests.clone()));
    let mode = if std::io::stderr().is_terminal() {
        Mode::Bars
    } else {
        Mode::Lines { every: LINE_EVERY }
    };
    let display = Display::start(watched.clone(), mode);

    let mut waiting = JoinSet::new();
    for (i, h) in handles.into_iter().enumerate() {
        let requests = requests.clone();
        waiting.spawn(async move {
            let result = h.wait().await;
            // Whether a stop had been requested by the time it ended (else it finished by itself).
            let on_request = requests.load(Ordering::SeqCst) > 0;
            (i, result, Instant::now(), on_request)
        });
    }
    let mut ended: Vec<Option<Ended>> = watched.iter().map(|_| None).collect();
    while let Some(joined) = waiting.join_next().await {
        match joined {
            Ok((i, result, at, on_request)) => {
                let elapsed = at.duration_since(started_at);
                let entry = match result {
                    Ok(summary) => Ended {
                        result: Ok(summary.metrics),
                        elapsed,
                        killed: false,
                        on_request,
                    },
                    Err(e) => Ended {
                        killed: matches!(e, EngineError::Killed { .. }),
                        result: Err(e.to_string()),
                        elapsed,
                        on_request,
                    },
                };
                if let Some(slot) = ended.get_mut(i) {
                    *slot = Some(entry);
                }
            }
            Err(e) => tracing::error!("a pipeline's task ended abnormally: {e}"),
        }
    }
    display.finish().await;
    signal_task.abort();

    let stop_requests = requests.load(Ordering::SeqCst);
    let mut failed = 0;
    let mut killed = false;
    for (w, end) in watched.iter().zip(ended) {
        let end = end.unwrap_or_else(|| Ended {
            result: Err("its task ended abnormally".to_string()),
            elapsed: started_at.elapsed(),
            killed: false,
            on_request: false,
        });
        killed |= end.killed;
        let line = match &end.result {
            Ok(m) => progress::summary(&w.id, m, end.elapsed, None, end.on_request),
            Err(e) => {
                failed += 1;
                progress::summary(&w.id, &w.controller.metrics(), end.elapsed, Some(e), false)
            }
        };
        ui::note(&line);
    }
    if killed && stop_requests > 0 {
        return Err(CommandError::Killed);
    }
    if failed > 0 {
        return Err(CommandError::PipelinesFailed {
            failed,
            total: watched.len(),
        });
    }
    Ok(())
}

/// How one pipeline ended.
struct Ended {
    /// Its final counters, or its error.
    result: Result<MetricsSnapshot, String>,
    /// Time from the start of the run.
    elapsed: Duration,
    /// True if it was stopped hard.
    killed: bool,
    /// True if a stop had been requested when it ended.
    on_request: bool,
}

/// Opens the redb store off the async threads (it reads and may repair the file).
async fn open_store(path: &Path) -> Result<RedbStore, CommandError> {
    let owned = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || RedbStore::open(&owned)).await;
    match opened {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(source)) => Err(CommandError::Store {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) => Err(CommandError::Output(std::io::Error::other(format!(
            "opening {} did not complete: {e}",
            path.display()
        )))),
    }
}

impl Signals {
    /// The first signal stops every pipeline gracefully; a later SIGINT (Ctrl-C pressed again)
    /// stops them at once. Repeated SIGTERMs, and a SIGINT within [`SIGNAL_DEBOUNCE`] of the first
    /// signal (one request delivered twice, as `timeout` or a process-group kill do), only repeat
    /// the graceful request.
    async fn watch(mut self, controllers: Vec<PipelineController>, requests: Arc<AtomicUsize>) {
        let mut first: Option<Instant> = None;
        loop {
            let interrupt = self.next().await;
            requests.fetch_add(1, Ordering::SeqCst);
            match first {
                None => {
                    first = Some(Instant::now());
                    ui::note(
                        "stopping: finishing in-flight records and saving positions (press \
                         Ctrl-C again to stop immediately)",
                    );
                    for c in &controllers {
                        c.stop();
                    }
                }
                Some(at) if interrupt && at.elapsed() >= SIGNAL_DEBOUNCE => {
                    ui::note("stopping immediately");
                    for c in &controllers {
                        c.kill();
                    }
                }
                Some(_) => {}
            }
        }
    }
}
