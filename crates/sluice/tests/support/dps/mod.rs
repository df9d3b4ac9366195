//! Support for the end-to-end Data Plane Signaling tests: a test control plane, real
//! `sluice serve` processes, and a DPS client.

#![allow(dead_code)]

pub mod client;
pub mod control_plane;
pub mod server;
