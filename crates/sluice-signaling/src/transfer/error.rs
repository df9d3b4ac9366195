//! Why transfers could not be set up or carried out.

/// Errors of the transfer half of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The configuration is invalid; names the dataset or destination and the field.
    #[error("transfers: {what}: {message}")]
    Config {
        /// What is at fault, e.g. `datasets.orders.settings.path`.
        what: String,
        /// Why.
        message: String,
    },
    /// A pipeline could not be built or failed.
    #[error("data flow {flow}: {message}")]
    Pipeline {
        /// The flow.
        flow: String,
        /// What failed.
        message: String,
    },
    /// The state store failed.
    #[error("transfers: state store: {0}")]
    Store(#[from] sluice_state::StateError),
}

impl TransferError {
    /// A configuration problem at `what`.
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        TransferError::Config {
            what: what.into(),
            message: message.into(),
        }
    }
}
