//! # sluice-signaling
//!
//! The Data Plane Signaling side of Sluice, usable as an SDK for writing data planes: the
//! [`DataFlow`] entity and its [`state`] machine (same-state no-ops, a counter and timestamp on
//! real transitions, final states), the RC3 [`messages`] with RC2 leniency, deduplication
//! (the same `messageId` replays the stored response, another one is a conflict; check-and-create is
//! one store transaction), and a [`DataPlane`] built with extension points (`on_prepare`,
//! `on_start`, `on_started`, `on_suspend`, `on_resume`, `on_terminate`, `on_complete`,
//! `on_recover`) whose store writes commit together with the transition they belong to, including
//! the outbox entries of callbacks to the control plane.

pub mod dataplane;
pub mod error;
pub mod flow;
pub mod http;
pub mod lease;
pub mod messages;
pub mod outbox;
pub mod repository;
pub mod state;
pub mod transfer;

pub use dataplane::{Completion, DataPlane, DataPlaneBuilder, HookError, HookOutput, OutboxEntry};
pub use error::SignalingError;
pub use flow::{DataFlow, Side};
pub use messages::{
    AddressMessage, DataAddress, FlowStatus, PrepareMessage, ReasonMessage, StartMessage,
    StatusMessage, TransferMode,
};
pub use state::FlowState;
