//! # sluice
//!
//! The `sluice` command line: runs the pipelines of a pipeline file (Conduit's configuration
//! format, version 2.2) on the engine with a durable state store, validates pipeline files, and
//! describes the built-in connectors.
//!
//! The library half holds everything but process setup, so that it can be tested: [`config`]
//! (loading pipeline files), [`interpolate`] and [`yaml_index`] (its helpers), [`check`]
//! (validation against connector specifications), [`cli`] (arguments), [`commands`], [`progress`]
//! (live progress and summaries) and [`ui`] (stderr output around progress bars, logging);
//! [`serve_config`] and [`server`] are `sluice serve`: named state stores behind Dapr's state HTTP
//! API.

pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod huge_pages;
pub mod interpolate;
pub mod progress;
pub mod serve_config;
pub mod server;
pub mod ui;
pub mod yaml_index;
