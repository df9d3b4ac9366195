//! The engine: checks pipelines against the connector registry, starts them, and hands back handles.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sluice_sdk::host::{GuardedDestination, GuardedSource};
use sluice_sdk::registry::normalize_plugin_name;
use sluice_sdk::spec::validate_settings;
use sluice_sdk::{Destination, Parameter, Registry, Settings, Source};
use sluice_state::Store;
use tokio::task::JoinHandle;

use crate::checkpoint::{ConnectorRecord, PipelineState as StoredState};
use crate::config::{ConnectorConfig, PipelineConfig, ProcessorConfig};
use crate::error::{ConfigProblem, EngineError};
use crate::metrics::{MetricsSnapshot, PipelineMetrics, PipelineState};
use crate::nack_window::NackWindow;
use crate::runtime::{self, Chain, DeadLetter, Shared, Signals};

/// Runs pipelines with connectors from a registry and state in a store.
#[derive(Clone)]
pub struct Engine {
    registry: Registry,
    store: Arc<dyn Store>,
}

/// Which side of a plugin a connector uses.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

impl Engine {
    /// An engine over these connectors and this store.
    pub fn new(registry: Registry, store: Arc<dyn Store>) -> Self {
        Engine { registry, store }
    }

    /// The connector registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Checks a pipeline without running it; returns every problem found.
    pub fn validate(&self, p: &PipelineConfig) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let pipeline_problem = |message: String| ConfigProblem {
            connector: format!("pipeline {}", p.id),
            parameter: None,
            message,
        };
        if p.id.is_empty() {
            problems.push(pipeline_problem("the pipeline id must not be empty".into()));
        }
        if p.destinations.is_empty() {
            problems.push(pipeline_problem(
                "a pipeline needs at least one destination".into(),
            ));
        }
        if p.options.batch_size == 0 {
            problems.push(pipeline_problem("batch size must be at least 1".into()));
        }
        let mut ids = HashSet::new();
        let all = std::iter::once(&p.source).chain(&p.destinations);
        for c in all {
            if c.id.is_empty() || c.id.contains('/') {
                problems.push(pipeline_problem(format!(
                    "connector id {:?} must be non-empty and contain no '/'",
                    c.id
                )));
            }
            if !ids.insert(c.id.as_str()) {
                problems.push(pipeline_problem(format!(
                    "duplicate connector id {:?}",
                    c.id
                )));
            }
        }
        self.check_connector(&p.source, Side::Source, &mut problems);
        for d in &p.destinations {
            self.check_connector(d, Side::Destination, &mut problems);
        }
        let dlq = ConnectorConfig {
            id: "dlq".into(),
            plugin: p.dlq.plugin.clone(),
            settings: p.dlq.settings.clone(),
        };
        self.check_connector(&dlq, Side::Destination, &mut problems);
        for proc in &p.processors {
            if !ids.insert(proc.id.as_str()) {
                problems.push(pipeline_problem(format!(
                    "duplicate processor id {:?}",
                    proc.id
                )));
            }
            self.check_processor(proc, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn check_processor(&self, proc: &ProcessorConfig, problems: &mut Vec<ConfigProblem>) {
        let problem = |parameter: Option<String>, message: String| ConfigProblem {
            connector: proc.id.clone(),
            parameter,
            message,
        };
        if proc
            .condition
            .as_deref()
            .is_some_and(|c| !c.trim().is_empty())
        {
            problems.push(problem(
                None,
                "processor conditions are not supported yet: remove `condition` or filter inside the processor".into(),
            ));
        }
        match self.registry.processor(&proc.plugin) {
            Err(e) => problems.push(problem(None, e.to_string())),
            Ok(plugin) => {
                if let Err(errs) =
                    validate_settings(&plugin.specification().parameters, &proc.settings)
                {
                    problems.extend(
                        errs.0
                            .into_iter()
                            .map(|v| problem(Some(v.parameter), v.message)),
                    );
                }
            }
        }
    }

    /// Configures and opens the processor chain, in order.
    async fn processors(&self, p: &PipelineConfig) -> Result<Chain, EngineError> {
        let mut chain = Vec::with_capacity(p.processors.len());
        for proc in &p.processors {
            let err = |action: &'static str| {
                let pipeline = p.id.clone();
                let connector = proc.id.clone();
                move |source| EngineError::Connector {
                    pipeline,
                    connector,
                    action,
                    source: Box::new(source),
                }
            };
            let plugin = self
                .registry
                .processor(&proc.plugin)
                .map_err(|e| invalid(&p.id, &proc.id, e.to_string()))?;
            let settings = validate_settings(&plugin.specification().parameters, &proc.settings)
                .map_err(|e| invalid(&p.id, &proc.id, e.to_string()))?;
            let mut processor = plugin.new_processor();
            processor
                .configure(&settings)
                .await
                .map_err(err("configure"))?;
            processor.open().await.map_err(err("open"))?;
            chain.push((proc.id.clone(), processor));
        }
        Ok(chain)
    }

    fn params(
        &self,
        c: &ConnectorConfig,
        side: Side,
    ) -> Result<BTreeMap<String, Parameter>, ConfigProblem> {
        let problem = |message: String| ConfigProblem {
            connector: c.id.clone(),
            parameter: None,
            message,
        };
        let plugin = self
            .registry
            .get(&c.plugin)
            .map_err(|e| problem(e.to_string()))?;
        let spec = plugin.specification();
        let params = match side {
            Side::Source => spec.source_params,
            Side::Destination => spec.destination_params,
        };
        let has_side = match side {
            Side::Source => plugin.new_source().is_some(),
            Side::Destination => plugin.new_destination().is_some(),
        };
        if !has_side {
            return Err(problem(format!(
                "connector plugin {:?} cannot be used as a {}",
                c.plugin,
                side.name()
            )));
        }
        Ok(params)
    }

    fn check_connector(&self, c: &ConnectorConfig, side: Side, problems: &mut Vec<ConfigProblem>) {
        match self.params(c, side) {
            Err(p) => problems.push(p),
            Ok(params) => {
                if let Err(errs) = validate_settings(&params, &c.settings) {
                    problems.extend(errs.0.into_iter().map(|v| ConfigProblem {
                        connector: c.id.clone(),
                        parameter: Some(v.parameter),
                        message: v.message,
                    }));
                }
            }
        }
    }

    fn resolved(
        &self,
        c: &ConnectorConfig,
        side: Side,
        pipeline: &str,
    ) -> Result<Settings, EngineError> {
        let invalid = |problems| EngineError::Invalid {
            pipeline: pipeline.to_string(),
            problems,
        };
        let params = self.params(c, side).map_err(|p| invalid(vec![p]))?;
        validate_settings(&params, &c.settings).map_err(|errs| {
            invalid(
                errs.0
                    .into_iter()
                    .map(|v| ConfigProblem {
                        connector: c.id.clone(),
                        parameter: Some(v.parameter),
                        message: v.message,
                    })
                    .collect(),
            )
        })
    }

    /// Configures and opens every connector (calling the right lifecycle hook), resumes the source
    /// from its checkpoint and starts moving records.
    pub async fn start(&self, p: PipelineConfig) -> Result<PipelineHandle, EngineError> {
        self.validate(&p).map_err(|problems| EngineError::Invalid {
            pipeline: p.id.clone(),
            problems,
        })?;
        let metrics = Arc::new(PipelineMetrics::default());
        metrics.set_state(PipelineState::Starting);
        let state = StoredState::new(self.store.clone(), &p.id);
        let state_err = |action: &'static str| {
            let pipeline = p.id.clone();
            move |source| EngineError::State {
                pipeline,
                action,
                source,
            }
        };
        let conn_err = |id: &str, action: &'static str| {
            let pipeline = p.id.clone();
            let connector = id.to_string();
            move |source| EngineError::Connector {
                pipeline,
                connector,
                action,
                source: Box::new(source),
            }
        };

        let previous = state
            .connectors()
            .await
            .map_err(state_err("read connector records"))?;
        let mut records = Vec::new();

        // Source.
        let src_settings = self.resolved(&p.source, Side::Source, &p.id)?;
        let mut source: Box<dyn Source> = self
            .registry
            .new_source(&p.source.plugin)
            .map_err(|e| invalid(&p.id, &p.source.id, e.to_string()))?;
        source
            .configure(&src_settings)
            .await
            .map_err(conn_err(&p.source.id, "configure"))?;
        source.set_health(metrics.reporter(&p.id, &p.source.id));
        let src_record = record(&p.source, Side::Source, &src_settings);
        match lifecycle(&previous, &src_record) {
            Hook::Created => {
                if previous.iter().any(|r| r.id == src_record.id) {
                    // Same id, different plugin: the old position means nothing to the new plugin.
                    state
                        .clear_position(&src_record.id)
                        .await
                        .map_err(state_err("clear checkpoint"))?;
                }
                source
                    .on_created(&src_settings)
                    .await
                    .map_err(conn_err(&p.source.id, "on_created"))?
            }
            Hook::Updated(before) => source
                .on_updated(&before, &src_settings)
                .await
                .map_err(conn_err(&p.source.id, "on_updated"))?,
            Hook::None => {}
        }
        records.push(src_record);

        // Destinations.
        let mut destinations: Vec<Box<dyn Destination>> = Vec::new();
        for d in &p.destinations {
            let settings = self.resolved(d, Side::Destination, &p.id)?;
            let mut dest = self
                .registry
                .new_destination(&d.plugin)
                .map_err(|e| invalid(&p.id, &d.id, e.to_string()))?;
            dest.configure(&settings)
                .await
                .map_err(conn_err(&d.id, "configure"))?;
            dest.set_health(metrics.reporter(&p.id, &d.id));
            let rec = record(d, Side::Destination, &settings);
            match lifecycle(&previous, &rec) {
                Hook::Created => dest
                    .on_created(&settings)
                    .await
                    .map_err(conn_err(&d.id, "on_created"))?,
                Hook::Updated(before) => dest
                    .on_updated(&before, &settings)
                    .await
                    .map_err(conn_err(&d.id, "on_updated"))?,
                Hook::None => {}
            }
            records.push(rec);
            destinations.push(Box::new(GuardedDestination::new(dest)));
        }

        // Connectors removed since the last run get on_deleted, and nothing else.
        for gone in previous
            .iter()
            .filter(|r| !records.iter().any(|n| n.id == r.id))
        {
            self.delete_connector(&state, gone, &p.id).await?;
        }

        // Dead-letter queue.
        let dlq_cfg = ConnectorConfig {
            id: "dlq".into(),
            plugin: p.dlq.plugin.clone(),
            settings: p.dlq.settings.clone(),
        };
        let dlq_settings = self.resolved(&dlq_cfg, Side::Destination, &p.id)?;
        let mut dlq = self
            .registry
            .new_destination(&dlq_cfg.plugin)
            .map_err(|e| invalid(&p.id, "dlq", e.to_string()))?;
        dlq.configure(&dlq_settings)
            .await
            .map_err(conn_err("dlq", "configure"))?;
        dlq.set_health(metrics.reporter(&p.id, "dlq"));

        let processors = self.processors(&p).await?;

        // Open everything, source last, at its checkpoint.
        dlq.open().await.map_err(conn_err("dlq", "open"))?;
        for (d, cfg) in destinations.iter_mut().zip(&p.destinations) {
            d.open().await.map_err(conn_err(&cfg.id, "open"))?;
        }
        let position = state
            .position(&p.source.id)
            .await
            .map_err(state_err("read checkpoint"))?;
        tracing::info!(pipeline = %p.id, position = ?position, "opening source");
        let mut source: Box<dyn Source> = Box::new(GuardedSource::new(source));
        source
            .open(position.as_ref())
            .await
            .map_err(conn_err(&p.source.id, "open"))?;
        *crate::metrics::lock(&metrics.last_checkpoint) = position;
        state
            .save_connectors(&records)
            .await
            .map_err(state_err("save connector records"))?;

        let signals = Signals::default();
        let shared = Arc::new(Shared {
            pipeline: p.id.clone(),
            source_id: p.source.id.clone(),
            destination_ids: p.destinations.iter().map(|d| d.id.clone()).collect(),
            options: p.options.clone(),
            metrics: metrics.clone(),
            signals: signals.clone(),
            state,
        });
        let dead_letter = DeadLetter {
            destination: dlq,
            window: NackWindow::new(p.dlq.window_size, p.dlq.window_nack_threshold),
            window_size: p.dlq.window_size,
            threshold: p.dlq.window_nack_threshold,
        };
        let task_metrics = metrics.clone();
        let join = tokio::spawn(async move {
            let result = runtime::run(shared, source, processors, destinations, dead_letter).await;
            task_metrics.set_state(match result {
                Ok(()) => PipelineState::Stopped,
                Err(_) => PipelineState::Failed,
            });
            result
        });
        Ok(PipelineHandle {
            id: p.id,
            controller: PipelineController { signals, metrics },
            join,
        })
    }

    async fn delete_connector(
        &self,
        state: &StoredState,
        gone: &ConnectorRecord,
        pipeline: &str,
    ) -> Result<(), EngineError> {
        let err = |source| EngineError::Connector {
            pipeline: pipeline.to_string(),
            connector: gone.id.clone(),
            action: "on_deleted",
            source: Box::new(source),
        };
        let plugin = match self.registry.get(&gone.plugin) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pipeline, connector = %gone.id, error = %e, "removed connector's plugin is gone; skipping on_deleted");
                return Ok(());
            }
        };
        if gone.kind == "source" {
            if let Some(mut s) = plugin.new_source() {
                s.on_deleted(&gone.settings).await.map_err(err)?;
            }
            state
                .clear_position(&gone.id)
                .await
                .map_err(|source| EngineError::State {
                    pipeline: pipeline.to_string(),
                    action: "clear checkpoint",
                    source,
                })?;
        } else if let Some(mut d) = plugin.new_destination() {
            d.on_deleted(&gone.settings).await.map_err(err)?;
        }
        Ok(())
    }
}

fn invalid(pipeline: &str, connector: &str, message: String) -> EngineError {
    EngineError::Invalid {
        pipeline: pipeline.to_string(),
        problems: vec![ConfigProblem {
            connector: connector.to_string(),
            parameter: None,
            message,
        }],
    }
}

fn record(c: &ConnectorConfig, side: Side, settings: &Settings) -> ConnectorRecord {
    ConnectorRecord {
        id: c.id.clone(),
        kind: side.name().to_string(),
        plugin: normalize_plugin_name(&c.plugin).to_string(),
        settings: settings.clone(),
    }
}

/// Which lifecycle hook a connector gets on this run.
enum Hook {
    Created,
    Updated(Settings),
    None,
}

fn lifecycle(previous: &[ConnectorRecord], now: &ConnectorRecord) -> Hook {
    match previous.iter().find(|r| r.id == now.id) {
        Some(prev) if prev.plugin == now.plugin && prev.kind == now.kind => {
            if prev.settings == now.settings {
                Hook::None
            } else {
                Hook::Updated(prev.settings.clone())
            }
        }
        _ => Hook::Created,
    }
}

/// Controls a running pipeline from anywhere (cheap to clone).
#[derive(Clone)]
pub struct PipelineController {
    signals: Signals,
    metrics: Arc<PipelineMetrics>,
}

impl PipelineController {
    /// Graceful stop: read nothing more, drain what is in flight, checkpoint, ack, tear down.
    pub fn stop(&self) {
        self.signals.stop.cancel();
    }

    /// Hard stop: end every task now. Nothing unacknowledged is lost: it is read again next run.
    pub fn kill(&self) {
        self.signals.halt.cancel();
    }

    /// The pipeline's counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }
}

/// A running pipeline.
pub struct PipelineHandle {
    id: String,
    controller: PipelineController,
    join: JoinHandle<Result<(), EngineError>>,
}

/// How a pipeline ended.
#[derive(Clone, Debug)]
pub struct PipelineSummary {
    /// The pipeline id.
    pub id: String,
    /// Its final counters.
    pub metrics: MetricsSnapshot,
}

impl PipelineHandle {
    /// The pipeline id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A controller for stopping the pipeline and reading its counters.
    pub fn controller(&self) -> PipelineController {
        self.controller.clone()
    }

    /// Waits until the pipeline ends (source finished, stopped, killed or failed).
    pub async fn wait(self) -> Result<PipelineSummary, EngineError> {
        let result = self.join.await.unwrap_or_else(|e| {
            Err(EngineError::Internal {
                pipeline: self.id.clone(),
                message: format!("the pipeline task failed: {e}"),
            })
        });
        result.map(|()| PipelineSummary {
            id: self.id,
            metrics: self.controller.metrics(),
        })
    }
}
