//! Checks a loaded pipeline file against the connectors the engine has (plugins exist and have the
//! needed side, settings satisfy each specification), pointing every problem at its place in the
//! file.

use sluice_engine::{ConfigProblem, DlqConfig, Engine, PipelineConfig};

use crate::config::{Diagnostic, Field, FilePipeline, Part, PipelineFile};

/// Every problem the engine finds in every pipeline of the file (`running` and `stopped` alike).
/// Problems come in file order (by line, then column).
pub fn check(file: &PipelineFile, engine: &Engine) -> Vec<Diagnostic> {
    let mut all: Vec<Diagnostic> = file
        .pipelines
        .iter()
        .flat_map(|p| check_pipeline(file, p, engine))
        .collect();
    // A stable sort keeps the engine's order for problems on the same line.
    all.sort_by_key(|d| d.position.unwrap_or((usize::MAX, 0)));
    all
}

/// The problems of one pipeline, each attributed to the connector, processor or dead-letter queue
/// it is about.
pub fn check_pipeline(file: &PipelineFile, p: &FilePipeline, engine: &Engine) -> Vec<Diagnostic> {
    let full = problems(engine, &p.config);
    if full.is_empty() {
        return Vec::new();
    }
    // The engine names parts by id, and a processor or the dead-letter queue ("dlq") may share
    // an id with a connector. Validating without processors, then also without the dead-letter
    // queue, tells whose problems are whose.
    let without_processors = PipelineConfig {
        processors: Vec::new(),
        ..p.config.clone()
    };
    let base = problems(engine, &without_processors);
    let without_dlq = PipelineConfig {
        dlq: DlqConfig::default(),
        ..without_processors
    };
    let connectors = problems(engine, &without_dlq);
    let processor_problems = difference(&full, &base);
    let dlq_problems = difference(&base, &connectors);

    let mut out = Vec::new();
    for problem in &connectors {
        let is_connector = p.config.source.id == problem.connector
            || p.config
                .destinations
                .iter()
                .any(|d| d.id == problem.connector);
        let part = if is_connector {
            Part::Connector(&problem.connector)
        } else {
            Part::Pipeline
        };
        out.push(diagnostic(file, p, part, problem));
    }
    for problem in &processor_problems {
        out.push(diagnostic(
            file,
            p,
            Part::Processor(&problem.connector),
            problem,
        ));
    }
    for problem in &dlq_problems {
        out.push(diagnostic(file, p, Part::DeadLetterQueue, problem));
    }
    out
}

fn problems(engine: &Engine, config: &PipelineConfig) -> Vec<ConfigProblem> {
    engine.validate(config).err().unwrap_or_default()
}

/// The problems in `a` that are not in `b` (as multisets).
fn difference(a: &[ConfigProblem], b: &[ConfigProblem]) -> Vec<ConfigProblem> {
    let mut rest: Vec<&ConfigProblem> = b.iter().collect();
    let mut out = Vec::new();
    for problem in a {
        match rest.iter().position(|r| *r == problem) {
            Some(i) => {
                rest.swap_remove(i);
            }
            None => out.push(problem.clone()),
        }
    }
    out
}

fn diagnostic(
    file: &PipelineFile,
    p: &FilePipeline,
    part: Part<'_>,
    problem: &ConfigProblem,
) -> Diagnostic {
    let field = match &problem.parameter {
        Some(name) => Field::Setting(name),
        None if is_plugin_problem(&problem.message) => Field::Plugin,
        None => Field::Whole,
    };
    file.diagnostic(p, part, field, problem.message.clone())
}

/// Whether a problem is about the plugin reference itself (unknown, or lacking the needed side).
fn is_plugin_problem(message: &str) -> bool {
    message.starts_with("unknown connector plugin")
        || message.contains("cannot be used as a")
        || message.starts_with("processor plugin")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(connector: &str, message: &str) -> ConfigProblem {
        ConfigProblem {
            connector: connector.into(),
            parameter: None,
            message: message.into(),
        }
    }

    #[test]
    fn difference_is_a_multiset_difference() {
        let a = vec![problem("x", "m"), problem("x", "m"), problem("y", "n")];
        let b = vec![problem("x", "m")];
        assert_eq!(
            difference(&a, &b),
            vec![problem("x", "m"), problem("y", "n")]
        );
        assert!(difference(&b, &a).is_empty());
    }

    #[test]
    fn plugin_problems_are_recognised() {
        assert!(is_plugin_problem(
            "unknown connector plugin \"x\" (available: file)"
        ));
        assert!(is_plugin_problem(
            "connector plugin \"blackhole\" cannot be used as a source"
        ));
        assert!(!is_plugin_problem("is required"));
    }
}
