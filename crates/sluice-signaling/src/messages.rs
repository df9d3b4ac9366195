//! The Data Plane Signaling messages (RC3, camelCase JSON), lenient toward RC2 control planes.
//!
//! Unknown fields are ignored. Required fields are checked by [`PrepareMessage::validate`] /
//! [`StartMessage::validate`], which name every missing field, so a malformed message is a 400
//! that says what is wrong rather than a generic parse error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::state::FlowState;

/// One property of a [`DataAddress`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointProperty {
    /// Always `EndpointProperty` when emitted; optional when read.
    #[serde(rename = "@type", default = "endpoint_property_type")]
    pub kind: String,
    /// Property name (`authorization`, `authType`, `refreshToken`, `expiresIn`, ...).
    pub name: String,
    /// Property value.
    pub value: String,
}

fn endpoint_property_type() -> String {
    "EndpointProperty".into()
}

fn data_address_type() -> String {
    "DataAddress".into()
}

/// Where data is sent or fetched, and how to authenticate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataAddress {
    /// Always `DataAddress` when emitted; accepted when missing.
    #[serde(rename = "@type", default = "data_address_type")]
    pub kind: String,
    /// The kind of endpoint (an HTTP profile URI, `HttpData`, ...).
    #[serde(default)]
    pub endpoint_type: String,
    /// The endpoint itself (a URL for HTTP).
    #[serde(default)]
    pub endpoint: String,
    /// Named properties.
    #[serde(default)]
    pub endpoint_properties: Vec<EndpointProperty>,
}

impl DataAddress {
    /// An address of `endpoint_type` at `endpoint`, without properties.
    pub fn new(endpoint_type: impl Into<String>, endpoint: impl Into<String>) -> Self {
        DataAddress {
            kind: data_address_type(),
            endpoint_type: endpoint_type.into(),
            endpoint: endpoint.into(),
            endpoint_properties: Vec::new(),
        }
    }

    /// Adds a property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.endpoint_properties.push(EndpointProperty {
            kind: endpoint_property_type(),
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// The value of a property, if present.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.endpoint_properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }
}

/// Push or pull, from the profile (or RC2 `transferType`) suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMode {
    /// The provider sends to the consumer's address.
    Push,
    /// The consumer fetches from the provider's address.
    Pull,
}

impl TransferMode {
    /// Reads `-push` / `-pull` (any case) at the end of a profile or transfer type.
    pub fn from_profile(profile: &str) -> Option<Self> {
        let p = profile.to_ascii_lowercase();
        if p.ends_with("-push") {
            Some(TransferMode::Push)
        } else if p.ends_with("-pull") {
            Some(TransferMode::Pull)
        } else {
            None
        }
    }
}

/// The fields prepare and start share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowMessage {
    /// Unique per message; the deduplication key together with `processId`.
    #[serde(default)]
    pub message_id: String,
    /// The participant this data plane acts for.
    #[serde(default)]
    pub participant_id: String,
    /// The other participant.
    #[serde(default)]
    pub counter_party_id: String,
    /// The dataspace context.
    #[serde(default)]
    pub dataspace_context: String,
    /// The control plane's transfer process id.
    #[serde(default)]
    pub process_id: String,
    /// The contract agreement.
    #[serde(default)]
    pub agreement_id: String,
    /// The dataset to transfer.
    #[serde(default)]
    pub dataset_id: String,
    /// The transfer profile (RC3); its suffix says push or pull.
    #[serde(default)]
    pub profile: String,
    /// RC2 spelling of the profile, e.g. `HttpData-PULL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_type: Option<String>,
    /// RC2: the control plane's base URL for callbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_address: Option<String>,
    /// What to send in `Authorization` on callbacks; filled in by the HTTP layer from the caller's
    /// registration, never read from the message.
    #[serde(skip)]
    pub callback_authorization: Option<String>,
    /// Claims of the counter-party (required in RC3, optional in RC2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Map<String, Value>>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Start only: where to push (provider push); absent for provider pull. A prepare's is
    /// ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_address: Option<DataAddress>,
}

impl FlowMessage {
    /// The profile, falling back to the RC2 `transferType`.
    pub fn effective_profile(&self) -> &str {
        if self.profile.is_empty() {
            self.transfer_type.as_deref().unwrap_or("")
        } else {
            &self.profile
        }
    }

    /// Every required field that is missing or empty, by its JSON name.
    pub fn missing_fields(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        for (name, value) in [
            ("messageId", &self.message_id),
            ("participantId", &self.participant_id),
            ("counterPartyId", &self.counter_party_id),
            ("dataspaceContext", &self.dataspace_context),
            ("processId", &self.process_id),
            ("agreementId", &self.agreement_id),
            ("datasetId", &self.dataset_id),
        ] {
            if value.trim().is_empty() {
                missing.push(name);
            }
        }
        if self.effective_profile().trim().is_empty() {
            missing.push("profile");
        }
        missing
    }

    /// Checks the message: every missing field, and a profile that says push or pull.
    pub fn validate(&self) -> Result<TransferMode, String> {
        let missing = self.missing_fields();
        if !missing.is_empty() {
            return Err(format!("missing required field(s): {}", missing.join(", ")));
        }
        TransferMode::from_profile(self.effective_profile()).ok_or_else(|| {
            format!(
                "profile {:?} says neither push nor pull (it must end in -push or -pull)",
                self.effective_profile()
            )
        })
    }
}

// Prepare and start are the same JSON object, read straight into [`FlowMessage`]: a
// `#[serde(flatten)]` of the shared fields beside start's `dataAddress` made serde buffer every
// message before reading it (~3 % of a start+terminate pair's server instructions).

/// `POST /dataflows/prepare`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrepareMessage {
    /// The message's fields.
    pub flow: FlowMessage,
}

/// `POST /dataflows/start`; its `dataAddress` is [`FlowMessage::data_address`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StartMessage {
    /// The message's fields.
    pub flow: FlowMessage,
}

/// `POST /dataflows/{id}/started` and `/resume`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressMessage {
    /// Unique per message.
    #[serde(default)]
    pub message_id: String,
    /// The provider's address (consumer pull) or a new address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_address: Option<DataAddress>,
}

/// `POST /dataflows/{id}/suspend` and `/terminate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReasonMessage {
    /// Unique per message.
    #[serde(default)]
    pub message_id: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A flow's state, in responses and callbacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessage {
    /// Unique per message.
    pub message_id: String,
    /// The data flow.
    pub data_flow_id: String,
    /// Its state.
    pub state: FlowState,
    /// An address, when the state hands one out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_address: Option<DataAddress>,
    /// What went wrong (errored callbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /dataflows/{id}/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowStatus {
    /// The data flow.
    pub data_flow_id: String,
    /// Its state.
    pub state: FlowState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc2_start_messages_are_accepted() {
        let json = r#"{"messageId":"m1","participantId":"p","counterPartyId":"c",
            "dataspaceContext":"ctx","processId":"proc","agreementId":"a","datasetId":"d",
            "transferType":"HttpData-PULL","callbackAddress":"http://cp/api","unknown":1}"#;
        let m: StartMessage = serde_json::from_str(json).expect("parses");
        assert_eq!(m.flow.validate(), Ok(TransferMode::Pull));
        assert_eq!(m.flow.callback_address.as_deref(), Some("http://cp/api"));
        assert!(m.flow.data_address.is_none());
    }

    #[test]
    fn a_start_message_reads_and_writes_its_address_beside_the_shared_fields() {
        let json = r#"{"messageId":"m1","processId":"proc","profile":"x-push",
            "dataAddress":{"endpointType":"x-push","endpoint":"http://consumer/in"}}"#;
        let m: StartMessage = serde_json::from_str(json).expect("parses");
        assert_eq!(m.flow.message_id, "m1");
        let address = m.flow.data_address.clone().expect("address");
        assert_eq!(address.endpoint, "http://consumer/in");
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["processId"], "proc");
        assert_eq!(v["dataAddress"]["endpoint"], "http://consumer/in");
        assert!(v.get("flow").is_none(), "the fields are not nested");
    }

    #[test]
    fn missing_fields_are_all_named() {
        let m: PrepareMessage = serde_json::from_str(r#"{"messageId":"m"}"#).expect("parses");
        let err = m.flow.validate().expect_err("invalid");
        for f in ["participantId", "processId", "datasetId", "profile"] {
            assert!(err.contains(f), "{f} not in {err}");
        }
    }

    #[test]
    fn addresses_without_type_are_read_and_emitted_with_it() {
        let a: DataAddress = serde_json::from_str(
            r#"{"endpointType":"https://w3id.org/dspace-sig/profile/http-push","endpoint":"http://x",
                "endpointProperties":[{"name":"authorization","value":"t"}]}"#,
        )
        .expect("parses");
        assert_eq!(a.property("authorization"), Some("t"));
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(v["@type"], "DataAddress");
        assert_eq!(v["endpointProperties"][0]["@type"], "EndpointProperty");
    }

    #[test]
    fn profiles_say_push_or_pull_in_any_case() {
        assert_eq!(
            TransferMode::from_profile("https://w3id.org/dspace-sig/profile/http-push"),
            Some(TransferMode::Push)
        );
        assert_eq!(
            TransferMode::from_profile("HttpData-PULL"),
            Some(TransferMode::Pull)
        );
        assert_eq!(TransferMode::from_profile("HttpData"), None);
    }
}
