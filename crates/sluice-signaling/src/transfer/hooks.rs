//! The data plane's extension points, as transfers implement them.

use std::sync::Arc;
use std::time::Duration;

use sluice_engine::{
    ConnectorConfig, DlqConfig, PipelineConfig, PipelineOptions, StoredPipelineState,
};
use sluice_sdk::Settings;
use sluice_state::TxOperation;

use super::address::{checked_endpoint, pull_address, push_address};
use super::inbound::{BYTE_OFFSET, INBOUND_PLUGIN, POSITION_KIND_HEADER};
use super::jobs::{JobSpec, Ready};
use super::pull_source::{bearer, PULL_PLUGIN};
use super::tokens::Tokens;
use super::Transfers;
use crate::dataplane::{Completion, HookError, HookOutput};
use crate::flow::{DataFlow, Side};
use crate::messages::TransferMode;
use crate::state::FlowState;

const RUNNING: &[FlowState] = &[FlowState::Started, FlowState::Starting];
const RECEIVING: &[FlowState] = &[
    FlowState::Prepared,
    FlowState::Preparing,
    FlowState::Started,
];
const STARTED: &[FlowState] = &[FlowState::Started];

/// The engine pipeline id of a flow (keys its checkpoint).
pub(super) fn pipeline_id(flow_id: &str) -> String {
    format!("dps-{flow_id}")
}

fn pipeline(
    flow_id: &str,
    source: (String, Settings),
    destination: (String, Settings),
    ack_interval: Duration,
) -> PipelineConfig {
    PipelineConfig {
        id: pipeline_id(flow_id),
        source: ConnectorConfig {
            id: "source".into(),
            plugin: source.0,
            settings: source.1,
        },
        destinations: vec![ConnectorConfig {
            id: "destination".into(),
            plugin: destination.0,
            settings: destination.1,
        }],
        processors: Vec::new(),
        dlq: DlqConfig::default(),
        options: PipelineOptions {
            batch_size: 8192,
            max_in_flight_batches: 16,
            ack_interval,
        },
    }
}

fn internal(e: impl std::fmt::Display) -> HookError {
    HookError::failed(e.to_string())
}

impl Transfers {
    fn dataset(&self, flow: &DataFlow) -> Result<(String, Settings), HookError> {
        let ds = self.config.datasets.get(&flow.dataset_id).ok_or_else(|| {
            HookError::bad_request(format!(
                "datasetId {:?} is not a dataset this data plane offers",
                flow.dataset_id
            ))
        })?;
        Ok((ds.plugin.clone(), ds.settings.clone()))
    }

    fn destination(&self, flow: &DataFlow) -> Result<(String, Settings, bool), HookError> {
        let d = self
            .config
            .destination_for(&flow.dataset_id, &flow.profile)
            .ok_or_else(|| {
                HookError::bad_request(format!(
                    "no destination is configured for datasetId {:?} or profile {:?}",
                    flow.dataset_id, flow.profile
                ))
            })?;
        Ok((d.plugin.clone(), d.settings.clone(), d.asynchronous))
    }

    fn completion(asynchronous: bool) -> Completion {
        if asynchronous {
            Completion::Async
        } else {
            Completion::Sync
        }
    }

    /// The provider push pipeline: dataset → `http` destination (raw) at the consumer's address.
    fn push_job(&self, flow: &DataFlow, ready: Option<Ready>) -> Result<JobSpec, HookError> {
        let address = flow.source_address.as_ref().ok_or_else(|| {
            HookError::bad_request("dataAddress is required to start a push transfer")
        })?;
        let endpoint =
            checked_endpoint(address, self.config.require_https).map_err(HookError::bad_request)?;
        let mut settings = Settings::new();
        settings.insert("url".into(), endpoint);
        settings.insert("format".into(), "raw".into());
        settings.insert("batch.size".into(), "8192".into());
        settings.insert("retry.maxAttempts".into(), "8".into());
        let (plugin, source) = self.dataset(flow)?;
        if super::is_file_plugin(&plugin) && source.get("format").is_none_or(|f| f == "lines") {
            // The file source's positions are byte offsets: the receiver can deduplicate by them.
            settings.insert(
                format!("headers.{POSITION_KIND_HEADER}"),
                BYTE_OFFSET.into(),
            );
        }
        if let Some(token) = address.property("authorization").filter(|t| !t.is_empty()) {
            settings.insert("headers.Authorization".into(), bearer(token));
        }
        Ok(JobSpec {
            flow_id: flow.id.clone(),
            pipeline: pipeline(
                &flow.id,
                (plugin, source),
                ("http".into(), settings),
                // The http destination sends when a request is full; this only bounds the wait
                // of a trickle.
                Duration::from_millis(50),
            ),
            run_in: RUNNING,
            ready,
            finite: true,
        })
    }

    /// The consumer pull pipeline: the provider's address → the configured destination.
    fn pull_job(&self, flow: &DataFlow) -> Result<JobSpec, HookError> {
        let address = flow.source_address.as_ref().ok_or_else(|| {
            HookError::bad_request("dataAddress is required to pull from the provider")
        })?;
        let endpoint =
            checked_endpoint(address, self.config.require_https).map_err(HookError::bad_request)?;
        let mut settings = Settings::new();
        settings.insert("url".into(), endpoint);
        for name in ["authorization", "refreshToken", "refreshEndpoint"] {
            if let Some(v) = address.property(name) {
                settings.insert(name.into(), v.to_string());
            }
        }
        let (plugin, dest, _) = self.destination(flow)?;
        Ok(JobSpec {
            flow_id: flow.id.clone(),
            pipeline: pipeline(
                &flow.id,
                (PULL_PLUGIN.into(), settings),
                (plugin, dest),
                Duration::from_millis(20),
            ),
            run_in: STARTED,
            ready: None,
            finite: true,
        })
    }

    /// The consumer push pipeline: the public endpoint's POSTs → the configured destination.
    fn receive_job(&self, flow: &DataFlow, ready: Option<Ready>) -> Result<JobSpec, HookError> {
        let mut settings = Settings::new();
        settings.insert("flow".into(), flow.id.clone());
        let (plugin, dest, _) = self.destination(flow)?;
        Ok(JobSpec {
            flow_id: flow.id.clone(),
            pipeline: pipeline(
                &flow.id,
                (INBOUND_PLUGIN.into(), settings),
                (plugin, dest),
                Duration::from_millis(2),
            ),
            run_in: RECEIVING,
            ready,
            finite: false,
        })
    }

    /// Reports an async prepare/start with nothing to run, once the flow is stored.
    fn spawn_ready(self: &Arc<Self>, flow_id: String, pending: FlowState, ready: Ready) {
        let t = self.clone();
        tokio::spawn(async move {
            if t.await_state(&flow_id, &[pending], &[], Duration::from_secs(30))
                .await
            {
                t.report_ready(&flow_id, ready).await;
            }
        });
    }

    /// Ends the live pull streams of a flow.
    fn cancel_streams(&self, flow_id: &str) {
        let token = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(flow_id);
        if let Some(t) = token {
            t.cancel();
        }
    }

    pub(super) async fn on_prepare(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        let (_, _, asynchronous) = self.destination(&flow)?;
        let completion = Self::completion(asynchronous);
        let mut out = HookOutput {
            completion,
            ..HookOutput::default()
        };
        match flow.mode {
            TransferMode::Push => {
                let (grant, write) = self.tokens.push_grant(&flow.id).map_err(internal)?;
                out.issued_address = Some(push_address(&self.public_base, &grant));
                out.writes.push(write);
                let ready = asynchronous.then_some(Ready::Prepared);
                let job = self.receive_job(&flow, ready)?;
                self.spawn_job(job);
            }
            TransferMode::Pull => {
                if asynchronous {
                    self.spawn_ready(flow.id.clone(), FlowState::Preparing, Ready::Prepared);
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn on_start(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        let asynchronous = self
            .config
            .datasets
            .get(&flow.dataset_id)
            .is_some_and(|d| d.asynchronous);
        let mut out = HookOutput {
            completion: Self::completion(asynchronous),
            ..HookOutput::default()
        };
        self.dataset(&flow)?;
        match flow.mode {
            TransferMode::Push => {
                let job = self.push_job(&flow, asynchronous.then_some(Ready::Started))?;
                self.spawn_job(job);
            }
            TransferMode::Pull => {
                let (grant, write) = self.tokens.pull_grant(&flow.id).map_err(internal)?;
                out.issued_address = Some(pull_address(
                    &self.public_base,
                    &grant,
                    self.tokens.ttl().as_secs(),
                ));
                out.writes.push(write);
                if asynchronous {
                    self.spawn_ready(flow.id.clone(), FlowState::Starting, Ready::Started);
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn on_started(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        if flow.side == Side::Consumer && flow.mode == TransferMode::Pull {
            let job = self.pull_job(&flow)?;
            self.spawn_job(job);
        }
        Ok(HookOutput::done())
    }

    /// Stops what a flow has running and revokes its access: its live pull streams and job, the
    /// lease of a job (a job on another replica stops at its next heartbeat), and its tokens.
    /// Only flows that run jobs have leases and only pull providers and push consumers have
    /// tokens; the others skip those writes. When the flow `ends` (terminated, completed), its
    /// job's checkpoint is deleted with the transition; a suspended flow keeps it to resume from.
    async fn stop_moving(
        self: &Arc<Self>,
        flow: &DataFlow,
        ends: bool,
    ) -> Result<HookOutput, HookError> {
        self.cancel_streams(&flow.id);
        self.jobs.stop(&flow.id).await;
        let (runs_job, has_tokens) = match (flow.side, flow.mode) {
            (Side::Provider, TransferMode::Pull) => (false, true),
            (Side::Consumer, TransferMode::Push) => (true, true),
            (Side::Provider, TransferMode::Push) | (Side::Consumer, TransferMode::Pull) => {
                (true, false)
            }
        };
        if runs_job {
            self.forget_lease(&flow.id).await;
        }
        let mut out = HookOutput::done();
        if has_tokens {
            out.writes.push(Tokens::revoke(&flow.id));
        }
        if runs_job && ends {
            out.writes.extend(
                StoredPipelineState::removal(&pipeline_id(&flow.id), &["source", "destination"])
                    .into_iter()
                    .map(TxOperation::Delete),
            );
        }
        Ok(out)
    }

    pub(super) async fn on_suspend(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        self.stop_moving(&flow, false).await
    }

    pub(super) async fn on_resume(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        let mut out = HookOutput::done();
        match (flow.side, flow.mode) {
            (Side::Provider, TransferMode::Push) => {
                let job = self.push_job(&flow, None)?;
                self.spawn_job(job);
            }
            (Side::Provider, TransferMode::Pull) => {
                let (grant, write) = self.tokens.pull_grant(&flow.id).map_err(internal)?;
                out.issued_address = Some(pull_address(
                    &self.public_base,
                    &grant,
                    self.tokens.ttl().as_secs(),
                ));
                out.writes.push(write);
            }
            (Side::Consumer, TransferMode::Push) => {
                let (grant, write) = self.tokens.push_grant(&flow.id).map_err(internal)?;
                out.issued_address = Some(push_address(&self.public_base, &grant));
                out.writes.push(write);
                let job = self.receive_job(&flow, None)?;
                self.spawn_job(job);
            }
            (Side::Consumer, TransferMode::Pull) => {
                if flow.source_address.is_some() {
                    let job = self.pull_job(&flow)?;
                    self.spawn_job(job);
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn on_terminate(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        self.stop_moving(&flow, true).await
    }

    pub(super) async fn on_complete(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        self.on_terminate(flow).await
    }

    /// After a restart: resume the pipelines of flows that were moving data.
    pub(super) async fn on_recover(
        self: &Arc<Self>,
        flow: DataFlow,
    ) -> Result<HookOutput, HookError> {
        match (flow.side, flow.mode, flow.state) {
            (Side::Provider, TransferMode::Push, FlowState::Started) => {
                let job = self.push_job(&flow, None)?;
                self.spawn_job(job);
            }
            (Side::Provider, TransferMode::Push, FlowState::Starting) => {
                let job = self.push_job(&flow, Some(Ready::Started))?;
                self.spawn_job(job);
            }
            (Side::Provider, TransferMode::Pull, FlowState::Starting) => {
                self.spawn_ready(flow.id.clone(), FlowState::Starting, Ready::Started);
            }
            (Side::Consumer, TransferMode::Push, FlowState::Preparing) => {
                let job = self.receive_job(&flow, Some(Ready::Prepared))?;
                self.spawn_job(job);
            }
            (Side::Consumer, TransferMode::Push, FlowState::Prepared | FlowState::Started) => {
                let job = self.receive_job(&flow, None)?;
                self.spawn_job(job);
            }
            (Side::Consumer, TransferMode::Pull, FlowState::Preparing) => {
                self.spawn_ready(flow.id.clone(), FlowState::Preparing, Ready::Prepared);
            }
            (Side::Consumer, TransferMode::Pull, FlowState::Started)
                if flow.source_address.is_some() =>
            {
                let job = self.pull_job(&flow)?;
                self.spawn_job(job);
            }
            _ => {}
        }
        Ok(HookOutput::done())
    }
}
