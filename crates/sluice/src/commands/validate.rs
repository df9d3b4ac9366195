//! `sluice validate FILE`: loads a pipeline file and checks it against the connectors' specifications.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use sluice_engine::Engine;
use sluice_sdk::Registry;
use sluice_state::MemoryStore;

use super::CommandError;
use crate::check::check;
use crate::config::{self, PipelineFile, Status};

/// Loads `path` and checks every pipeline in it (running or stopped). Warnings and problems are
/// written to `diagnostics`; any problem makes this an error. Touches no state.
pub fn load_and_check(
    path: &Path,
    registry: &Registry,
    diagnostics: &mut dyn Write,
) -> Result<PipelineFile, CommandError> {
    let file = config::load(path)?;
    for w in &file.warnings {
        writeln!(diagnostics, "{w}")?;
    }
    // Validation reads no state: a throwaway in-memory store is enough.
    let engine = Engine::new(registry.clone(), Arc::new(MemoryStore::new()));
    let problems = check(&file, &engine);
    if problems.is_empty() {
        return Ok(file);
    }
    for p in &problems {
        writeln!(diagnostics, "{p}")?;
    }
    Err(CommandError::Problems {
        file: path.display().to_string(),
        count: problems.len(),
    })
}

/// Runs `sluice validate`: on success writes a one-line summary to `out`.
pub fn validate(
    path: &Path,
    registry: &Registry,
    out: &mut dyn Write,
    diagnostics: &mut dyn Write,
) -> Result<(), CommandError> {
    let file = load_and_check(path, registry, diagnostics)?;
    let list: Vec<String> = file
        .pipelines
        .iter()
        .map(|p| {
            let status = match p.status {
                Status::Running => "running",
                Status::Stopped => "stopped",
            };
            format!("{} ({status})", p.config.id)
        })
        .collect();
    writeln!(
        out,
        "{}: valid, {} pipeline(s): {}",
        path.display(),
        list.len(),
        list.join(", ")
    )?;
    Ok(())
}
