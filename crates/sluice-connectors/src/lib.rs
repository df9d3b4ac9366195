//! # sluice-connectors
//!
//! Sluice's built-in connectors. Each one is a [`sluice_sdk::Plugin`] with a full specification and
//! passes the SDK's acceptance kit:
//! - [`generator`]: generates records (a count or unlimited, a rate, a record size, a format);
//! - [`file`]: reads lines or OpenCDC JSON lines from a file (byte-offset positions, optional follow)
//!   and appends records to a file with an fsync policy;
//! - [`log`]: prints records;
//! - [`blackhole`]: counts and drops records (for benchmarks).

use std::sync::Arc;

use sluice_sdk::Registry;

pub mod blackhole;
pub mod file;
pub mod generator;
pub mod log;

#[cfg(any(
    feature = "amqp",
    feature = "mqtt",
    feature = "http",
    feature = "nats",
    feature = "redis",
    feature = "postgres"
))]
mod backoff;
#[cfg(any(feature = "nats", feature = "amqp", feature = "mqtt"))]
mod body_format;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis_streams;

/// A registry holding every built-in connector.
pub fn builtin_registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(generator::GeneratorPlugin));
    r.register(Arc::new(file::FilePlugin));
    r.register(Arc::new(log::LogPlugin));
    r.register(Arc::new(blackhole::BlackholePlugin));
    #[cfg(feature = "amqp")]
    amqp::register(&mut r);
    #[cfg(feature = "http")]
    http::register(&mut r);
    #[cfg(feature = "mqtt")]
    mqtt::register(&mut r);
    #[cfg(feature = "nats")]
    nats::register(&mut r);
    #[cfg(feature = "postgres")]
    postgres::register(&mut r);
    #[cfg(feature = "redis")]
    redis_streams::register(&mut r);
    r
}
