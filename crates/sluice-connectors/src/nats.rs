//! NATS JetStream connector (in progress: registers nothing yet).

use sluice_sdk::Registry;

/// Registers this module's connectors.
pub fn register(_registry: &mut Registry) {}
