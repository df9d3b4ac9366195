//! What can go wrong talking to an MQTT broker, each error naming the connector and, where a
//! setting is to blame, the setting.

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use rumqttc::v5::ConnectionError;
use sluice_sdk::ConnectorError;

/// An MQTT connector failure.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// `open` was called before a successful `configure`.
    #[error("mqtt: opened before it was configured")]
    NotConfigured,
    /// The broker could not be reached within the allowed time.
    #[error(
        "mqtt: cannot reach the broker at {endpoint} (setting `url`) after trying for {waited:?}: \
         {last}"
    )]
    Unreachable {
        /// `host:port`.
        endpoint: String,
        /// How long it was tried.
        waited: std::time::Duration,
        /// The last error.
        last: String,
    },
    /// The broker refused the connection for a reason a setting explains.
    #[error("mqtt: the broker at {endpoint} refused the connection: {reason} (check setting `{setting}`)")]
    Refused {
        /// `host:port`.
        endpoint: String,
        /// The broker's return code, in words.
        reason: &'static str,
        /// The setting to check.
        setting: &'static str,
    },
    /// The broker refused the subscription.
    #[error("mqtt: the broker refused the subscription to {topic:?} (setting `topic`)")]
    SubscriptionRefused {
        /// The topic filter.
        topic: String,
    },
    /// The broker lost the session while publishes were unacknowledged.
    #[error(
        "mqtt: the broker at {endpoint} no longer has the session of client {client_id:?} \
         (it restarted without persistence, or the session expired) while {unacked} publishes \
         awaited their PUBACK; they may be lost, so the destination stops and the pipeline \
         resends them from its checkpoint"
    )]
    SessionLost {
        /// `host:port`.
        endpoint: String,
        /// The client id.
        client_id: String,
        /// Publishes that were waiting.
        unacked: usize,
    },
    /// The connection's request queue is gone (the event loop ended).
    #[error("mqtt: the connection to the broker is closed")]
    Closed,
}

impl From<MqttError> for ConnectorError {
    fn from(e: MqttError) -> Self {
        let transient = matches!(e, MqttError::Unreachable { .. } | MqttError::Closed);
        ConnectorError::System {
            message: e.to_string(),
            transient,
        }
    }
}

/// A refusal that retrying cannot fix, as (reason, setting to check); `None` for errors a new
/// attempt may overcome (network, broker busy).
pub(crate) fn refusal(e: &ConnectionError) -> Option<(&'static str, &'static str)> {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            use ConnectReturnCode as C;
            match code {
                C::BadUserNamePassword | C::BadAuthenticationMethod => {
                    Some(("bad user name or password", "username` / `password` / `url"))
                }
                C::NotAuthorized | C::Banned => {
                    Some(("not authorized", "username` / `password` / `url"))
                }
                C::BadClientId | C::ClientIdentifierNotValid => {
                    Some(("client id rejected", "clientId"))
                }
                C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
                    Some(("MQTT 5 is not supported by this broker", "url"))
                }
                _ => None,
            }
        }
        _ => None,
    }
}
