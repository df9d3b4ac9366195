//! One declarative pipeline definition: a store value holding a pipeline file in the `sluice run`
//! format, parsed and checked, and the pipelines it runs on the engine.

use std::time::Duration;

use sluice_engine::{Engine, EngineError, PipelineConfig, PipelineController};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::check::check;
use crate::config::{self, Status};

/// How long a graceful stop may take before the pipelines are stopped hard.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// A checked definition: its text and the pipelines it starts.
#[derive(Debug)]
pub struct Definition {
    /// The pipeline file as stored (decoded).
    pub text: String,
    /// The `running` pipelines of the file.
    pub configs: Vec<PipelineConfig>,
}

/// The text of a stored value: the string itself when the value is a JSON string (as written
/// through the HTTP state API), else the bytes as UTF-8.
pub fn decode_value(value: &[u8]) -> Result<String, String> {
    if let Ok(s) = serde_json::from_slice::<String>(value) {
        return Ok(s);
    }
    std::str::from_utf8(value)
        .map(str::to_string)
        .map_err(|e| format!("the value is neither a JSON string nor UTF-8 text: {e}"))
}

impl Definition {
    /// Parses and checks `text` (from `key`) against the engine's connectors. Environment
    /// variables are interpolated as in `sluice run`.
    pub fn parse(key: &str, text: String, engine: &Engine) -> Result<Definition, String> {
        let file = config::parse(key, &text, |name| std::env::var(name).ok())
            .map_err(|e| e.to_string())?;
        let problems = check(&file, engine);
        if !problems.is_empty() {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(lines.join("\n"));
        }
        let configs = file
            .pipelines
            .into_iter()
            .filter(|p| p.status == Status::Running)
            .map(|p| p.config)
            .collect();
        Ok(Definition { text, configs })
    }
}

/// The pipelines of one definition, running.
pub struct Running {
    /// Which start this is (tells an old run's end from the current one's).
    pub generation: u64,
    /// The definition's text, to tell a changed definition from the same one written again.
    pub text: String,
    controllers: Vec<(String, PipelineController)>,
    waiter: JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.controllers.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Running").field("pipelines", &ids).finish()
    }
}

impl Running {
    /// Starts every pipeline of `def`; if one fails to start, those started are stopped. When
    /// they have all ended (by themselves or stopped), `(name, generation)` is sent on `ended`.
    pub async fn start(
        name: &str,
        generation: u64,
        def: Definition,
        engine: &Engine,
        ended: mpsc::Sender<(String, u64)>,
    ) -> Result<Running, EngineError> {
        let mut handles = Vec::new();
        for config in def.configs {
            match engine.start(config).await {
                Ok(h) => handles.push(h),
                Err(e) => {
                    for h in &handles {
                        h.controller().stop();
                    }
                    for h in handles {
                        if let Err(e) = h.wait().await {
                            tracing::warn!(
                                definition = name,
                                "while stopping after a failed start: {e}"
                            );
                        }
                    }
                    return Err(e);
                }
            }
        }
        let controllers = handles
            .iter()
            .map(|h| (h.id().to_string(), h.controller()))
            .collect();
        let owner = name.to_string();
        let waiter = tokio::spawn(async move {
            for h in handles {
                let id = h.id().to_string();
                match h.wait().await {
                    Ok(summary) => tracing::info!(
                        definition = owner.as_str(),
                        pipeline = id.as_str(),
                        records = summary.metrics.acked,
                        "declarative pipeline ended"
                    ),
                    Err(e) => tracing::error!(
                        definition = owner.as_str(),
                        pipeline = id.as_str(),
                        error = %e,
                        "declarative pipeline failed"
                    ),
                }
            }
            let _ = ended.send((owner, generation)).await;
        });
        Ok(Running {
            generation,
            text: def.text,
            controllers,
            waiter,
        })
    }

    /// The ids of the pipelines.
    pub fn pipeline_ids(&self) -> Vec<&str> {
        self.controllers.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Stops gracefully (everything read is written, checkpointed and acked), hard after
    /// [`STOP_GRACE`]; returns once every pipeline ended.
    pub async fn stop(mut self) {
        for (_, c) in &self.controllers {
            c.stop();
        }
        match tokio::time::timeout(STOP_GRACE, &mut self.waiter).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    pipelines = ?self.pipeline_ids(),
                    "declarative pipelines did not stop within {STOP_GRACE:?}; stopping them hard"
                );
                for (_, c) in &self.controllers {
                    c.kill();
                }
                let _ = self.waiter.await;
            }
        }
    }
}
