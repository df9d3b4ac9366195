//! The data plane: carries out signaling calls on data flows, with extension points around every
//! transition and a transaction that commits each transition together with its side effects.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use sluice_state::{DeleteRequest, Page, SetRequest, Store, TxOperation};

use crate::error::SignalingError;
use crate::flow::{now_ms, DataFlow, IllegalTransition, Side};
use crate::messages::{
    AddressMessage, DataAddress, FlowStatus, PrepareMessage, ReasonMessage, StartMessage,
    StatusMessage,
};
use crate::repository::{Created, FlowRepository};
use crate::state::{check, FlowState, Move};

/// How a prepare or start finishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Completion {
    /// Now: the response carries PREPARED / STARTED.
    #[default]
    Sync,
    /// Later: the response is 202 with PREPARING / STARTING; the data plane calls
    /// [`DataPlane::finish_prepare`] / [`DataPlane::finish_start`] when done.
    Async,
}

/// What an extension point decided.
#[derive(Clone, Debug, Default)]
pub struct HookOutput {
    /// An address to hand out (pull endpoint, push receiver), replacing the flow's.
    pub issued_address: Option<DataAddress>,
    /// Sync or async (prepare and start only).
    pub completion: Completion,
    /// Store writes that commit together with the transition (the transaction context).
    pub writes: Vec<TxOperation>,
}

impl HookOutput {
    /// Nothing to add: finish synchronously.
    pub fn done() -> Self {
        Self::default()
    }
}

/// Why an extension point refused.
#[derive(Clone, Debug, PartialEq)]
pub struct HookError {
    /// What went wrong.
    pub message: String,
    /// True if the request is at fault.
    pub client_error: bool,
}

impl HookError {
    /// The request is at fault (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        HookError {
            message: message.into(),
            client_error: true,
        }
    }

    /// The data plane failed (500).
    pub fn failed(message: impl Into<String>) -> Self {
        HookError {
            message: message.into(),
            client_error: false,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An extension point: sees the flow as it will be stored (already in its new state) and decides.
pub type Hook = Arc<dyn Fn(DataFlow) -> BoxFuture<Result<HookOutput, HookError>> + Send + Sync>;

/// The extension points, one per transition.
#[derive(Clone, Default)]
struct Hooks {
    on_prepare: Option<Hook>,
    on_start: Option<Hook>,
    on_started: Option<Hook>,
    on_suspend: Option<Hook>,
    on_resume: Option<Hook>,
    on_terminate: Option<Hook>,
    on_complete: Option<Hook>,
    on_recover: Option<Hook>,
}

/// Builds a [`DataPlane`] over a store, with optional extension points.
pub struct DataPlaneBuilder {
    store: Arc<dyn Store>,
    hooks: Hooks,
}

macro_rules! hook_setter {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {
        $(
            #[$doc]
            pub fn $name<F, Fut>(mut self, f: F) -> Self
            where
                F: Fn(DataFlow) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<HookOutput, HookError>> + Send + 'static,
            {
                self.hooks.$name = Some(Arc::new(move |flow| Box::pin(f(flow))));
                self
            }
        )*
    };
}

impl DataPlaneBuilder {
    hook_setter!(
        /// Called on a new consumer flow (prepare); may hand out an address or finish async.
        on_prepare,
        /// Called on a new provider flow (start); may hand out an address or finish async.
        on_start,
        /// Called when a consumer flow is told the provider started (with its address).
        on_started,
        /// Called when a flow is suspended (stop moving data, revoke access).
        on_suspend,
        /// Called when a flow resumes (continue from the checkpoint, new access).
        on_resume,
        /// Called when a flow is terminated (stop, revoke, release).
        on_terminate,
        /// Called when a flow completes.
        on_complete,
        /// Called by [`DataPlane::recover`] for every flow that may have work to resume.
        on_recover,
    );

    /// The data plane.
    pub fn build(self) -> DataPlane {
        DataPlane {
            repo: FlowRepository::new(self.store),
            hooks: Arc::new(self.hooks),
        }
    }
}

/// Carries out signaling calls on data flows kept in a store. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    repo: FlowRepository,
    hooks: Arc<Hooks>,
}

/// A callback to the control plane, kept durably in the outbox until the control plane answered
/// 2xx; only then is the transition it reports committed (together with the entry's removal).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// The flow.
    pub flow_id: String,
    /// The control plane's base URL.
    pub callback_address: String,
    /// What to send in `Authorization`, if the control plane registered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// The transfer process id.
    pub process_id: String,
    /// `prepared`, `started`, `completed` or `errored`.
    pub event: String,
    /// The state the flow moves to once the callback is answered (none for `errored`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<FlowState>,
    /// The status message to send.
    pub message: StatusMessage,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
}

impl OutboxEntry {
    /// The URL the callback is POSTed to.
    pub fn url(&self) -> String {
        format!(
            "{}/transfers/{}/dataflow/{}",
            self.callback_address.trim_end_matches('/'),
            self.process_id,
            self.event
        )
    }
}

/// Store key prefix of outbox entries; entries sort by creation time.
pub const OUTBOX_PREFIX: &str = "sluice/outbox/";

const MAX_RETRIES: usize = 16;

impl DataPlane {
    /// A builder over `store`.
    pub fn builder(store: Arc<dyn Store>) -> DataPlaneBuilder {
        DataPlaneBuilder {
            store,
            hooks: Hooks::default(),
        }
    }

    /// The flow repository.
    pub fn flows(&self) -> &FlowRepository {
        &self.repo
    }

    async fn run_hook(hook: &Option<Hook>, flow: &DataFlow) -> Result<HookOutput, SignalingError> {
        match hook {
            None => Ok(HookOutput::done()),
            Some(h) => h(flow.clone()).await.map_err(|e| SignalingError::Hook {
                message: e.message,
                client_error: e.client_error,
            }),
        }
    }

    /// Consumer side: prepare to receive. Returns the status and whether it finished async (202).
    pub async fn prepare(
        &self,
        msg: PrepareMessage,
    ) -> Result<(StatusMessage, bool), SignalingError> {
        let mode = msg.flow.validate().map_err(SignalingError::BadRequest)?;
        let flow = DataFlow::from_message(
            new_flow_id(),
            Side::Consumer,
            mode,
            msg.flow,
            FlowState::Prepared,
            now_ms(),
        );
        self.create(flow, &self.hooks.on_prepare, FlowState::Preparing)
            .await
    }

    /// Provider side: start sending (push) or serving (pull). Returns the status and whether it
    /// finished async (202).
    pub async fn start(&self, msg: StartMessage) -> Result<(StatusMessage, bool), SignalingError> {
        let mode = msg.flow.validate().map_err(SignalingError::BadRequest)?;
        let mut message = msg.flow;
        let address = message.data_address.take();
        let mut flow = DataFlow::from_message(
            new_flow_id(),
            Side::Provider,
            mode,
            message,
            FlowState::Started,
            now_ms(),
        );
        flow.source_address = address;
        self.create(flow, &self.hooks.on_start, FlowState::Starting)
            .await
    }

    /// Stores a new flow (deduplicated by its process and creating message) and runs its hook.
    async fn create(
        &self,
        mut flow: DataFlow,
        hook: &Option<Hook>,
        async_state: FlowState,
    ) -> Result<(StatusMessage, bool), SignalingError> {
        if let Some((existing, _)) = self.repo.by_process(&flow.process_id).await? {
            return replay(existing, &flow.created_by);
        }
        let out = Self::run_hook(hook, &flow).await?;
        let is_async = out.completion == Completion::Async;
        if is_async {
            flow.state = async_state;
        }
        flow.issued_address = out.issued_address;
        flow.created_response = flow.status(flow.created_by.clone());
        match self.repo.create(&flow, out.writes).await? {
            Created::New => Ok((flow.created_response, is_async)),
            Created::Existing(existing, _) => replay(*existing, &flow.created_by),
        }
    }

    /// Loads a flow, applies `change` and stores it with its side effects, retrying on concurrent
    /// changes. `change` returns the event to report to the control plane, if any.
    async fn update(
        &self,
        id: &str,
        to: FlowState,
        hook: &Option<Hook>,
        extra: &[TxOperation],
        mut change: impl FnMut(&mut DataFlow) -> Result<(), SignalingError>,
    ) -> Result<DataFlow, SignalingError> {
        for _ in 0..MAX_RETRIES {
            let (mut flow, etag) = self
                .repo
                .get_for_update(id)
                .await?
                .ok_or_else(|| SignalingError::NotFound(id.to_string()))?;
            if !flow.transition(to, now_ms())? {
                return Ok(flow);
            }
            change(&mut flow)?;
            let out = Self::run_hook(hook, &flow).await?;
            if out.issued_address.is_some() {
                flow.issued_address = out.issued_address;
            }
            let mut writes = out.writes;
            writes.extend(extra.iter().cloned());
            match self.repo.update(&flow, &etag, writes).await {
                Ok(()) => return Ok(flow),
                Err(SignalingError::Concurrent(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SignalingError::Internal(format!(
            "data flow {id} kept changing concurrently"
        )))
    }

    /// Consumer side: the provider started; `dataAddress` is where to pull from.
    pub async fn started(
        &self,
        id: &str,
        msg: AddressMessage,
    ) -> Result<StatusMessage, SignalingError> {
        let address = msg.data_address.clone();
        if let Some((f, _)) = self.repo.get(id).await? {
            if f.side != Side::Consumer {
                return Err(SignalingError::BadRequest(format!(
                    "data flow {id} is a provider flow: `started` is sent to consumers"
                )));
            }
        }
        let flow = self
            .update(id, FlowState::Started, &self.hooks.on_started, &[], |f| {
                if address.is_some() {
                    f.source_address = address.clone();
                }
                Ok(())
            })
            .await?;
        Ok(flow.status(msg.message_id))
    }

    /// Suspends a started flow.
    pub async fn suspend(
        &self,
        id: &str,
        msg: ReasonMessage,
    ) -> Result<StatusMessage, SignalingError> {
        let flow = self
            .update(id, FlowState::Suspended, &self.hooks.on_suspend, &[], |f| {
                f.issued_address = None;
                Ok(())
            })
            .await?;
        Ok(flow.status(msg.message_id))
    }

    /// Resumes a suspended flow; the status may carry a new address.
    pub async fn resume(
        &self,
        id: &str,
        msg: AddressMessage,
    ) -> Result<StatusMessage, SignalingError> {
        let address = msg.data_address.clone();
        let flow = self
            .update(id, FlowState::Started, &self.hooks.on_resume, &[], |f| {
                if address.is_some() {
                    f.source_address = address.clone();
                }
                Ok(())
            })
            .await?;
        Ok(flow.status(msg.message_id))
    }

    /// Terminates a flow (from any non-final state).
    pub async fn terminate(
        &self,
        id: &str,
        msg: ReasonMessage,
    ) -> Result<StatusMessage, SignalingError> {
        let reason = msg.reason.clone();
        let flow = self
            .update(
                id,
                FlowState::Terminated,
                &self.hooks.on_terminate,
                &[],
                |f| {
                    f.issued_address = None;
                    f.error = reason.clone();
                    Ok(())
                },
            )
            .await?;
        Ok(flow.status(msg.message_id))
    }

    /// The control plane says the flow completed.
    pub async fn completed(&self, id: &str) -> Result<StatusMessage, SignalingError> {
        let flow = self
            .update(
                id,
                FlowState::Completed,
                &self.hooks.on_complete,
                &[],
                |f| {
                    f.issued_address = None;
                    Ok(())
                },
            )
            .await?;
        Ok(flow.status(uuid::Uuid::new_v4().to_string()))
    }

    /// The data plane finished an async prepare: a `prepared` callback, then PREPARED.
    pub async fn finish_prepare(&self, id: &str) -> Result<(), SignalingError> {
        self.report(id, "prepared", Some(FlowState::Prepared), None)
            .await
    }

    /// The data plane finished an async start: a `started` callback, then STARTED.
    pub async fn finish_start(&self, id: &str) -> Result<(), SignalingError> {
        self.report(id, "started", Some(FlowState::Started), None)
            .await
    }

    /// The data plane finished a finite transfer: a `completed` callback, then COMPLETED.
    pub async fn finish_transfer(&self, id: &str) -> Result<(), SignalingError> {
        self.report(id, "completed", Some(FlowState::Completed), None)
            .await
    }

    /// A transfer failed: an `errored` callback; the state does not change.
    pub async fn fail_transfer(&self, id: &str, error: &str) -> Result<(), SignalingError> {
        self.report(id, "errored", None, Some(error.to_string()))
            .await
    }

    /// Reports an event of the data plane's own. With a callback address the event goes to the
    /// outbox and its transition commits once delivered; without one the transition commits now.
    async fn report(
        &self,
        id: &str,
        event: &str,
        to: Option<FlowState>,
        error: Option<String>,
    ) -> Result<(), SignalingError> {
        let (flow, _) = self
            .repo
            .get(id)
            .await?
            .ok_or_else(|| SignalingError::NotFound(id.to_string()))?;
        if let Some(to) = to {
            if check(Some(flow.state), to) == Move::Illegal {
                return Err(IllegalTransition {
                    flow: id.to_string(),
                    from: flow.state,
                    to,
                }
                .into());
            }
        }
        let Some(callback_address) = flow.callback_address.clone() else {
            if let Some(to) = to {
                self.apply(id, to, &[]).await?;
            }
            return Ok(());
        };
        let mut message = flow.status(uuid::Uuid::now_v7().to_string());
        if let Some(to) = to {
            message.state = to;
        }
        if to.is_some_and(FlowState::is_final) {
            message.data_address = None;
        }
        message.error = error;
        let entry = OutboxEntry {
            flow_id: flow.id.clone(),
            callback_address,
            authorization: flow.callback_authorization.clone(),
            process_id: flow.process_id.clone(),
            event: event.to_string(),
            transition: to,
            message,
            attempts: 0,
        };
        let key = format!("{OUTBOX_PREFIX}{:020}-{}", now_ms(), uuid::Uuid::new_v4());
        let value = serde_json::to_vec(&entry)
            .map_err(|e| SignalingError::Internal(format!("cannot encode callback: {e}")))?;
        self.repo
            .store()
            .set(SetRequest::new(key, Bytes::from(value)))
            .await?;
        Ok(())
    }

    /// Applies a reported transition (after its callback was answered), with `extra` writes.
    async fn apply(
        &self,
        id: &str,
        to: FlowState,
        extra: &[TxOperation],
    ) -> Result<(), SignalingError> {
        let hook = match to {
            FlowState::Completed => &self.hooks.on_complete,
            FlowState::Terminated => &self.hooks.on_terminate,
            _ => &None,
        };
        self.update(id, to, hook, extra, |f| {
            if f.state.is_final() {
                f.issued_address = None;
            }
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Records that an outbox entry was delivered: applies its transition and removes it and its
    /// delivery claim (see [`crate::outbox`]), in one transaction. A transition that is no longer
    /// legal (the flow moved on) only removes them.
    pub async fn delivered(&self, key: &str, entry: &OutboxEntry) -> Result<(), SignalingError> {
        // The entry's delivery claim (see `crate::outbox`) goes with it, after it.
        let claim = crate::outbox::claim_key(key);
        let remove = [
            TxOperation::Delete(DeleteRequest::new(key)),
            TxOperation::Delete(DeleteRequest::new(claim.clone())),
        ];
        if let Some(to) = entry.transition {
            match self.apply(&entry.flow_id, to, &remove).await {
                Ok(()) => return Ok(()),
                Err(SignalingError::IllegalTransition(_) | SignalingError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.repo.store().delete(DeleteRequest::new(key)).await?;
        // The entry is gone, so a replica claiming it now finds nothing to send; a claim left
        // behind expires by itself.
        if let Err(e) = self.repo.store().delete(DeleteRequest::new(claim)).await {
            tracing::debug!(key = %key, error = %e, "cannot remove a delivered callback's claim");
        }
        Ok(())
    }

    /// A flow's state.
    pub async fn status(&self, id: &str) -> Result<FlowStatus, SignalingError> {
        let (flow, _) = self
            .repo
            .get(id)
            .await?
            .ok_or_else(|| SignalingError::NotFound(id.to_string()))?;
        Ok(FlowStatus {
            data_flow_id: flow.id,
            state: flow.state,
        })
    }

    /// Calls `on_recover` for every flow that is not final (after a restart), returning how many.
    pub async fn recover(&self) -> Result<usize, SignalingError> {
        let Some(hook) = &self.hooks.on_recover else {
            return Ok(0);
        };
        let mut page = Page::default();
        let mut count = 0;
        loop {
            let (ids, next) = self.repo.list(page).await?;
            for id in ids {
                if let Some((flow, _)) = self.repo.get(&id).await? {
                    if !flow.state.is_final() {
                        if let Err(e) = hook(flow).await {
                            tracing::warn!(flow = %id, error = %e.message, "recovery failed");
                        }
                        count += 1;
                    }
                }
            }
            match next {
                Some(token) => {
                    page = Page {
                        limit: None,
                        token: Some(token),
                    }
                }
                None => return Ok(count),
            }
        }
    }
}

/// A new flow id: a UUIDv7, so ids sort by creation time.
fn new_flow_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The answer to a duplicate create: the stored response for the same message, 409 otherwise.
fn replay(existing: DataFlow, message_id: &str) -> Result<(StatusMessage, bool), SignalingError> {
    if existing.created_by == message_id {
        let is_async = matches!(
            existing.created_response.state,
            FlowState::Preparing | FlowState::Starting
        );
        Ok((existing.created_response, is_async))
    } else {
        Err(SignalingError::Conflict(format!(
            "process {} already has data flow {} (created by message {}); message {message_id} conflicts",
            existing.process_id, existing.id, existing.created_by
        )))
    }
}
