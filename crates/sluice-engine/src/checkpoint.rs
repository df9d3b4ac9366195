//! Where the engine keeps a pipeline's state in the store: checkpointed source positions and each
//! connector's last-run settings (which decide the lifecycle hook to call).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_sdk::{Position, Settings};
use sluice_state::{DeleteRequest, SetRequest, StateError, Store};

/// Store keys of one pipeline.
#[derive(Clone)]
pub struct PipelineState {
    store: Arc<dyn Store>,
    pipeline: String,
}

/// What the engine remembers about a connector from its last run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnectorRecord {
    /// The connector id.
    pub id: String,
    /// `source` or `destination`.
    pub kind: String,
    /// The plugin name, normalised.
    pub plugin: String,
    /// The settings it last ran with.
    pub settings: Settings,
}

fn position_key(pipeline: &str, connector: &str) -> String {
    format!("sluice/pipelines/{pipeline}/connectors/{connector}/position")
}

fn connectors_key(pipeline: &str) -> String {
    format!("sluice/pipelines/{pipeline}/connectors")
}

impl PipelineState {
    /// State of the pipeline `pipeline` in `store`.
    pub fn new(store: Arc<dyn Store>, pipeline: &str) -> Self {
        PipelineState {
            store,
            pipeline: pipeline.to_string(),
        }
    }

    fn position_key(&self, connector: &str) -> String {
        position_key(&self.pipeline, connector)
    }

    fn connectors_key(&self) -> String {
        connectors_key(&self.pipeline)
    }

    /// The checkpointed position of a source connector, if any.
    pub async fn position(&self, connector: &str) -> Result<Option<Position>, StateError> {
        let item = self.store.get(&self.position_key(connector)).await?;
        Ok(item
            .map(|i| Position::new(&i.value))
            .filter(|p| !p.is_empty()))
    }

    /// Saves a source connector's position durably. Empty positions are never saved.
    pub async fn save_position(&self, connector: &str, p: &Position) -> Result<(), StateError> {
        if p.is_empty() {
            return Ok(());
        }
        let req = SetRequest::new(
            self.position_key(connector),
            Bytes::copy_from_slice(p.as_bytes()),
        );
        self.store.set(req).await.map(|_| ())
    }

    /// Forgets a connector's position (its plugin changed, so the old position means nothing).
    pub async fn clear_position(&self, connector: &str) -> Result<(), StateError> {
        self.store
            .delete(DeleteRequest::new(self.position_key(connector)))
            .await
    }

    /// The connectors of the pipeline's last run.
    pub async fn connectors(&self) -> Result<Vec<ConnectorRecord>, StateError> {
        let Some(item) = self.store.get(&self.connectors_key()).await? else {
            return Ok(Vec::new());
        };
        serde_json::from_slice(&item.value).map_err(|e| {
            StateError::backend(
                self.store.name(),
                format!(
                    "connector records of pipeline {:?} are corrupt: {e}",
                    self.pipeline
                ),
            )
        })
    }

    /// The deletes that forget pipeline `pipeline`: the positions of `connectors` and the record
    /// of its last run. For a pipeline that will never run again (its owner commits them together
    /// with its own end, so nothing of it is left in the store).
    pub fn removal(pipeline: &str, connectors: &[&str]) -> Vec<DeleteRequest> {
        connectors
            .iter()
            .map(|c| DeleteRequest::new(position_key(pipeline, c)))
            .chain(std::iter::once(DeleteRequest::new(connectors_key(
                pipeline,
            ))))
            .collect()
    }

    /// Remembers the connectors of this run.
    pub async fn save_connectors(&self, records: &[ConnectorRecord]) -> Result<(), StateError> {
        let value = serde_json::to_vec(records).map_err(|e| StateError::backend("engine", e))?;
        self.store
            .set(SetRequest::new(self.connectors_key(), value))
            .await
            .map(|_| ())
    }
}
