//! The data flow entity: what the control plane asked for and where the flow is in its life.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::messages::{DataAddress, FlowMessage, StatusMessage, TransferMode};
use crate::state::{check, FlowState, Move};

/// Which party this data plane acts for in a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Owns the dataset (got a start message).
    Provider,
    /// Receives the dataset (got a prepare message).
    Consumer,
}

/// A data flow as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataFlow {
    /// Sluice's id of the flow (returned to the control plane as `dataFlowId`).
    pub id: String,
    /// The control plane's transfer process id (unique per data plane).
    pub process_id: String,
    /// Provider or consumer.
    pub side: Side,
    /// Push or pull.
    pub mode: TransferMode,
    /// The profile (or RC2 transfer type) as given.
    pub profile: String,
    /// Participant this data plane acts for.
    pub participant_id: String,
    /// The other participant.
    pub counter_party_id: String,
    /// Dataspace context.
    pub dataspace_context: String,
    /// Contract agreement.
    pub agreement_id: String,
    /// Dataset.
    pub dataset_id: String,
    /// Where callbacks go (RC2 `callbackAddress` or the registered control plane's endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_address: Option<String>,
    /// What to send in `Authorization` on callbacks (from the control plane's registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_authorization: Option<String>,
    /// The counter-party's claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Map<String, Value>>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The current state.
    pub state: FlowState,
    /// Incremented on every real transition.
    pub state_count: u64,
    /// When the current state was entered (Unix milliseconds).
    pub state_timestamp: u64,
    /// When the flow was created (Unix milliseconds).
    pub created_at: u64,
    /// The address the control plane gave (push target, or the provider's address for a
    /// consumer pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<DataAddress>,
    /// The address Sluice handed out (pull endpoint or push receiver), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_address: Option<DataAddress>,
    /// The last error, if the flow failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The message that created the flow, and the response it got (replayed for duplicates).
    pub created_by: String,
    /// The response to the creating message.
    pub created_response: StatusMessage,
}

/// A state move that the state machine refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("data flow {flow} cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The flow id.
    pub flow: String,
    /// Its state.
    pub from: FlowState,
    /// The state asked for.
    pub to: FlowState,
}

impl DataFlow {
    /// A new flow from a prepare (consumer) or start (provider) message, in `initial` state.
    pub fn new(
        id: String,
        side: Side,
        mode: TransferMode,
        msg: &FlowMessage,
        initial: FlowState,
        now_ms: u64,
    ) -> Self {
        Self::from_message(id, side, mode, msg.clone(), initial, now_ms)
    }

    /// Like [`DataFlow::new`], taking the message's fields instead of copying them (the
    /// message's `dataAddress` is not kept: a provider's start sets `source_address` itself).
    pub fn from_message(
        id: String,
        side: Side,
        mode: TransferMode,
        msg: FlowMessage,
        initial: FlowState,
        now_ms: u64,
    ) -> Self {
        let profile = if msg.profile.is_empty() {
            msg.transfer_type.unwrap_or_default()
        } else {
            msg.profile
        };
        DataFlow {
            created_response: StatusMessage {
                message_id: msg.message_id.clone(),
                data_flow_id: id.clone(),
                state: initial,
                data_address: None,
                error: None,
            },
            id,
            process_id: msg.process_id,
            side,
            mode,
            profile,
            participant_id: msg.participant_id,
            counter_party_id: msg.counter_party_id,
            dataspace_context: msg.dataspace_context,
            agreement_id: msg.agreement_id,
            dataset_id: msg.dataset_id,
            callback_address: msg.callback_address,
            callback_authorization: msg.callback_authorization,
            claims: msg.claims,
            metadata: msg.metadata,
            labels: msg.labels,
            state: initial,
            state_count: 1,
            state_timestamp: now_ms,
            created_at: now_ms,
            source_address: None,
            issued_address: None,
            error: None,
            created_by: msg.message_id,
        }
    }

    /// Moves the flow to `to`: true if it changed, false for a same-state no-op.
    pub fn transition(&mut self, to: FlowState, now_ms: u64) -> Result<bool, IllegalTransition> {
        match check(Some(self.state), to) {
            Move::Same => Ok(false),
            Move::Illegal => Err(IllegalTransition {
                flow: self.id.clone(),
                from: self.state,
                to,
            }),
            Move::Apply => {
                self.state = to;
                self.state_count += 1;
                self.state_timestamp = now_ms;
                Ok(true)
            }
        }
    }

    /// The flow's status message for a response or callback.
    pub fn status(&self, message_id: String) -> StatusMessage {
        StatusMessage {
            message_id,
            data_flow_id: self.id.clone(),
            state: self.state,
            data_address: self.issued_address.clone(),
            error: self.error.clone(),
        }
    }
}

/// Unix time now in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A started provider pull flow `f1` of `msg`, copied from it.
    fn started(msg: &FlowMessage) -> DataFlow {
        DataFlow::new(
            "f1".into(),
            Side::Provider,
            TransferMode::Pull,
            msg,
            FlowState::Started,
            10,
        )
    }

    fn flow() -> DataFlow {
        started(&FlowMessage {
            message_id: "m1".into(),
            process_id: "p1".into(),
            profile: "x-pull".into(),
            ..FlowMessage::default()
        })
    }

    #[test]
    fn real_transitions_count_and_stamp_same_state_changes_nothing() {
        let mut f = flow();
        assert_eq!(f.transition(FlowState::Started, 20), Ok(false));
        assert_eq!((f.state_count, f.state_timestamp), (1, 10));
        assert_eq!(f.transition(FlowState::Suspended, 30), Ok(true));
        assert_eq!(
            (f.state, f.state_count, f.state_timestamp),
            (FlowState::Suspended, 2, 30)
        );
        let err = f.transition(FlowState::Completed, 40).expect_err("illegal");
        assert_eq!(err.from, FlowState::Suspended);
        assert_eq!(f.state_count, 2);
    }

    #[test]
    fn from_message_takes_the_fields_new_copies() {
        let msg = FlowMessage {
            message_id: "m1".into(),
            process_id: "p1".into(),
            participant_id: "did:web:a".into(),
            counter_party_id: "did:web:b".into(),
            dataset_id: "d1".into(),
            transfer_type: Some("HttpData-PULL".into()),
            labels: Some(vec!["l".into()]),
            ..FlowMessage::default()
        };
        let copied = started(&msg);
        let moved = DataFlow::from_message(
            "f1".into(),
            Side::Provider,
            TransferMode::Pull,
            msg,
            FlowState::Started,
            10,
        );
        assert_eq!(moved, copied);
        assert_eq!(
            moved.profile, "HttpData-PULL",
            "RC2 transfer type as the profile"
        );
        assert_eq!(moved.created_by, "m1");
        assert_eq!(moved.created_response.data_flow_id, "f1");
    }

    #[test]
    fn round_trips_as_json() {
        let f = flow();
        let back: DataFlow =
            serde_json::from_slice(&serde_json::to_vec(&f).expect("json")).expect("parse");
        assert_eq!(back, f);
    }
}
