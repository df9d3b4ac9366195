//! What can go wrong talking to RabbitMQ, each error naming the connector and, where a setting is
//! to blame, the setting.

use sluice_sdk::ConnectorError;

/// An AMQP connector failure.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// `open` was called before a successful `configure`.
    #[error("amqp: opened before it was configured")]
    NotConfigured,
    /// The broker could not be reached within the allowed time.
    #[error(
        "amqp: cannot reach the broker at {endpoint} (setting `url`) after trying for {waited:?}: \
         {last}"
    )]
    Unreachable {
        /// `host:port/vhost`.
        endpoint: String,
        /// How long it was tried.
        waited: std::time::Duration,
        /// The last error.
        last: String,
    },
    /// The broker refused the credentials or the virtual host.
    #[error("amqp: the broker at {endpoint} refused the login (check the user, password and virtual host in setting `url`): {detail}")]
    Refused {
        /// `host:port/vhost`.
        endpoint: String,
        /// The broker's reason.
        detail: String,
    },
    /// Declaring or checking the queue or exchange failed.
    #[error("amqp: {what} (setting `{setting}`): {detail}")]
    Topology {
        /// What was being done.
        what: String,
        /// The setting naming the object.
        setting: &'static str,
        /// The broker's reason.
        detail: String,
    },
    /// Any other broker or protocol failure.
    #[error("amqp: {doing}: {detail}")]
    Broker {
        /// What was being done.
        doing: String,
        /// The error.
        detail: String,
        /// Whether a new connection may help.
        transient: bool,
    },
}

impl AmqpError {
    /// A broker failure while `doing`, transient if a reconnection may help.
    pub(crate) fn broker(doing: impl Into<String>, e: &lapin::Error) -> Self {
        AmqpError::Broker {
            doing: doing.into(),
            detail: e.to_string(),
            transient: is_connection_error(e),
        }
    }
}

/// True when the error means the connection or channel is gone (a reconnection may help), false
/// when the broker refused the request itself.
pub(crate) fn is_connection_error(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_)
        | K::RuntimeShutdownError(_)
        | K::MissingHeartbeatError
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::InvalidChannel(_) => true,
        K::ProtocolError(p) => {
            // 320 CONNECTION_FORCED (broker shutting down), 541 INTERNAL_ERROR, 320-class closes.
            matches!(p.get_id(), 320 | 541 | 504 | 505 | 506)
        }
        _ => false,
    }
}

/// True when the error is the broker refusing the login (403 ACCESS_REFUSED, 530 NOT_ALLOWED for
/// a virtual host).
pub(crate) fn is_refusal(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => matches!(p.get_id(), 403 | 530),
        lapin::ErrorKind::AuthProviderError(_) => true,
        _ => false,
    }
}

impl From<AmqpError> for ConnectorError {
    fn from(e: AmqpError) -> Self {
        let transient = matches!(
            e,
            AmqpError::Unreachable { .. }
                | AmqpError::Broker {
                    transient: true,
                    ..
                }
        );
        ConnectorError::System {
            message: e.to_string(),
            transient,
        }
    }
}
