//! Pipeline files in Conduit's pipeline configuration format (version 2.2), turned into engine
//! [`PipelineConfig`]s.
//!
//! Loading a file: environment variables are interpolated ([`crate::interpolate`]), each YAML
//! document is parsed strictly (unknown keys are errors), and each pipeline is checked (ids,
//! exactly one source, at least one destination, duplicates) and converted. Every problem is
//! reported with the file, line, column and YAML path of the offending node.
//!
//! Mapping to Sluice's engine, which runs one source and one processor chain per pipeline:
//! processors of the source connector run first, then pipeline processors, then processors of the
//! destination (allowed only when there is a single destination). Relative paths in settings are
//! passed to the connectors unchanged, so they resolve against the current directory, as in
//! Conduit.

mod diagnostic;
mod model;

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sluice_engine::{ConnectorConfig, DlqConfig, PipelineConfig, PipelineOptions, ProcessorConfig};

pub use diagnostic::{ConfigError, Diagnostic, Severity};
pub use model::Status;

use crate::interpolate::{interpolate, SourceMap};
use crate::yaml_index::{YamlIndex, YamlPath};
use model::{ConnectorDoc, ConnectorType, FileDoc, PipelineDoc, ProcessorDoc, VersionProbe};

/// Longest pipeline id Conduit accepts.
const MAX_PIPELINE_ID: usize = 128;
/// Longest connector id Conduit accepts.
const MAX_CONNECTOR_ID: usize = 256;
/// Longest pipeline name Conduit accepts.
const MAX_NAME: usize = 128;
/// Longest pipeline description Conduit accepts.
const MAX_DESCRIPTION: usize = 8192;
/// The latest minor version of format 2 this parser knows.
const LATEST_MINOR: u32 = 2;

/// A loaded pipeline file: its pipelines, ready for the engine, and any warnings.
#[derive(Debug)]
pub struct PipelineFile {
    /// Every pipeline in the file, in order.
    pub pipelines: Vec<FilePipeline>,
    /// Things that work but are likely not what was meant.
    pub warnings: Vec<Diagnostic>,
    locator: Locator,
}

/// One pipeline of a file.
#[derive(Debug)]
pub struct FilePipeline {
    /// What the engine runs.
    pub config: PipelineConfig,
    /// Whether to run it (`running`) or only check it (`stopped`).
    pub status: Status,
    /// Human-readable name (the id if none was given).
    pub name: String,
    /// Human-readable description.
    pub description: Option<String>,
    origin: Origin,
}

/// Where a pipeline's parts are in the file, to point problems found later at them.
#[derive(Debug, Default)]
struct Origin {
    doc: usize,
    pipeline: YamlPath,
    connectors: HashMap<String, YamlPath>,
    processors: HashMap<String, YamlPath>,
    dlq: YamlPath,
}

/// Which part of a pipeline a problem found after loading is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    /// The pipeline itself.
    Pipeline,
    /// A connector, by id.
    Connector(&'a str),
    /// A processor, by id.
    Processor(&'a str),
    /// The dead-letter queue.
    DeadLetterQueue,
}

/// What within a [`Part`] a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// The part as a whole.
    Whole,
    /// Its `plugin` key.
    Plugin,
    /// One of its settings, by name.
    Setting(&'a str),
}

impl PipelineFile {
    /// A diagnostic pointing at a part of a pipeline, or at a field of it.
    pub fn diagnostic(
        &self,
        pipeline: &FilePipeline,
        part: Part<'_>,
        field: Field<'_>,
        message: String,
    ) -> Diagnostic {
        let o = &pipeline.origin;
        let base = match part {
            Part::Pipeline => Some(o.pipeline.clone()),
            Part::Connector(id) => o.connectors.get(id).cloned(),
            Part::Processor(id) => o.processors.get(id).cloned(),
            Part::DeadLetterQueue => Some(o.dlq.clone()),
        }
        .unwrap_or_else(|| o.pipeline.clone());
        let (shown, located, message) = match field {
            Field::Whole => (base.clone(), base, message),
            Field::Plugin => (base.key("plugin"), base.key("plugin"), message),
            Field::Setting(p) => {
                let settings = base.key("settings");
                (
                    settings.clone(),
                    settings.key(p),
                    format!("{p:?}: {message}"),
                )
            }
        };
        self.locator
            .at(Severity::Error, o.doc, &located, Some(&shown), message)
    }
}

/// Reads and loads a pipeline file, interpolating variables from the process environment.
pub fn load(path: &Path) -> Result<PipelineFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&path.display().to_string(), &text, |name| {
        std::env::var(name).ok()
    })
}

/// Replaces `${VAR}` in the text of `file`; each problem as a diagnostic at its line and column.
pub(crate) fn interpolate_file(
    file: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, SourceMap), Vec<Diagnostic>> {
    interpolate(text, lookup).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| Diagnostic {
                severity: Severity::Error,
                file: file.to_string(),
                position: Some((e.line, e.column)),
                path: None,
                message: e.message,
            })
            .collect()
    })
}

/// Loads a pipeline file's text; `file` names it in messages, `lookup` gives variable values.
pub fn parse(
    file: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<PipelineFile, ConfigError> {
    let (text, map) = interpolate_file(file, text, lookup).map_err(ConfigError::Invalid)?;
    let locator = Locator {
        file: file.to_string(),
        index: YamlIndex::build(&text),
        map,
    };
    let mut loader = Loader {
        locator,
        errors: Vec::new(),
        warnings: Vec::new(),
        pipelines: Vec::new(),
        seen_ids: HashMap::new(),
        seen_names: HashMap::new(),
    };
    loader.documents(&text);
    if loader.errors.is_empty() && loader.pipelines.is_empty() {
        loader.errors.push(loader.locator.at(
            Severity::Error,
            0,
            &YamlPath::root(),
            None,
            "the file defines no pipelines (expected a top-level `pipelines:` list)".into(),
        ));
    }
    if loader.errors.is_empty() {
        Ok(PipelineFile {
            pipelines: loader.pipelines,
            warnings: loader.warnings,
            locator: loader.locator,
        })
    } else {
        Err(ConfigError::Invalid(loader.errors))
    }
}

/// Turns YAML paths and parser positions into diagnostics for one file.
#[derive(Debug)]
struct Locator {
    file: String,
    index: YamlIndex,
    map: SourceMap,
}

impl Locator {
    fn at(
        &self,
        severity: Severity,
        doc: usize,
        path: &YamlPath,
        shown: Option<&YamlPath>,
        message: String,
    ) -> Diagnostic {
        let position = self
            .index
            .locate(doc, path)
            .map(|p| self.map.original(p.line, p.column));
        Diagnostic {
            severity,
            file: self.file.clone(),
            position,
            path: shown.filter(|p| !p.0.is_empty()).map(ToString::to_string),
            message,
        }
    }

    fn yaml_error(&self, err: &serde_yaml_ng::Error) -> Diagnostic {
        let mut message = err.to_string();
        let position = err.location().map(|l| {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if let Some(at) = message.find(&suffix) {
                message.replace_range(at..at + suffix.len(), "");
            }
            self.map.original(l.line(), l.column())
        });
        Diagnostic {
            severity: Severity::Error,
            file: self.file.clone(),
            position,
            path: None,
            message,
        }
    }
}

/// Loading state shared across the documents of one file.
struct Loader {
    locator: Locator,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    pipelines: Vec<FilePipeline>,
    /// Pipeline id → where it was first defined (document, path).
    seen_ids: HashMap<String, (usize, YamlPath)>,
    /// Pipeline name → where it was first defined.
    seen_names: HashMap<String, (usize, YamlPath)>,
}

impl Loader {
    fn error(&mut self, doc: usize, path: &YamlPath, message: String) {
        let d = self
            .locator
            .at(Severity::Error, doc, path, Some(path), message);
        self.errors.push(d);
    }

    fn warn(&mut self, doc: usize, path: &YamlPath, message: String) {
        let d = self
            .locator
            .at(Severity::Warning, doc, path, Some(path), message);
        self.warnings.push(d);
    }

    fn line_of(&self, doc: usize, path: &YamlPath) -> String {
        match self.locator.index.locate(doc, path) {
            Some(p) => format!("line {}", self.locator.map.original(p.line, p.column).0),
            None => path.to_string(),
        }
    }

    fn documents(&mut self, text: &str) {
        // First pass: versions only, so that a file in another format version is reported as
        // such rather than by the errors its different layout causes.
        let mut versions = Vec::new();
        for (doc, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            match Option::<VersionProbe>::deserialize(document) {
                Ok(probe) => {
                    let version = probe.and_then(|p| p.version);
                    versions.push(self.check_version(doc, version.as_deref()));
                }
                Err(e) => {
                    let d = self.locator.yaml_error(&e);
                    self.errors.push(d);
                    return;
                }
            }
        }
        if versions.iter().any(Option::is_none) {
            return;
        }
        let mut doc = 0;
        for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            match Option::<FileDoc>::deserialize(document) {
                Ok(None) => {}
                Ok(Some(file_doc)) => {
                    let minor = versions.get(i).copied().flatten().unwrap_or(LATEST_MINOR);
                    self.document(doc, minor, file_doc);
                    doc += 1;
                }
                Err(e) => {
                    let d = self.locator.yaml_error(&e);
                    self.errors.push(d);
                    doc += 1;
                }
            }
        }
    }

    /// Checks a document's version; returns its minor version, or `None` if unsupported.
    fn check_version(&mut self, doc: usize, version: Option<&str>) -> Option<u32> {
        let Some(v) = version.map(str::trim) else {
            return Some(LATEST_MINOR);
        };
        let path = YamlPath::root().key("version");
        let (major, minor) = match v.split_once('.') {
            Some((major, minor)) => (major.parse::<u32>().ok(), minor.parse::<u32>().ok()),
            None => (v.parse::<u32>().ok(), Some(0)),
        };
        match (major, minor) {
            (Some(2), Some(minor)) if minor <= LATEST_MINOR => Some(minor),
            (Some(2), Some(minor)) => {
                self.warn(
                    doc,
                    &path,
                    format!(
                        "version 2.{minor} is newer than 2.{LATEST_MINOR}, the latest this Sluice \
                         knows; reading it as 2.{LATEST_MINOR}"
                    ),
                );
                Some(LATEST_MINOR)
            }
            (Some(1), _) => {
                self.error(
                    doc,
                    &path,
                    format!(
                        "{v:?} is Conduit's deprecated 1.x format (pipelines as a map), which \
                         Sluice does not read; convert the file to version 2.2 (pipelines as a \
                         list)"
                    ),
                );
                None
            }
            _ => {
                self.error(
                    doc,
                    &path,
                    format!("unsupported version {v:?} (supported: 2.0, 2.1, 2.2)"),
                );
                None
            }
        }
    }

    fn document(&mut self, doc: usize, minor: u32, file_doc: FileDoc) {
        let root = YamlPath::root();
        let Some(pipelines) = file_doc.pipelines else {
            self.error(
                doc,
                &root,
                "the document has no `pipelines:` list".to_string(),
            );
            return;
        };
        for (i, p) in pipelines.into_iter().enumerate() {
            let path = root.key("pipelines").index(i);
            if let Some(fp) = self.pipeline(doc, minor, &path, p) {
                self.pipelines.push(fp);
            }
        }
    }

    fn pipeline(
        &mut self,
        doc: usize,
        minor: u32,
        path: &YamlPath,
        p: PipelineDoc,
    ) -> Option<FilePipeline> {
        let errors_before = self.errors.len();
        self.check_id(doc, &path.key("id"), &p.id, "pipeline", MAX_PIPELINE_ID);
        let duplicate_id = self.seen_ids.get(&p.id).cloned();
        if let Some((first_doc, first)) = &duplicate_id {
            let at = self.line_of(*first_doc, first);
            self.error(
                doc,
                &path.key("id"),
                format!("duplicate pipeline id {:?} (first defined at {at})", p.id),
            );
        } else {
            self.seen_ids.insert(p.id.clone(), (doc, path.clone()));
        }
        let name = p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| p.id.clone());
        if name.chars().count() > MAX_NAME {
            self.error(
                doc,
                &path.key("name"),
                format!("the name is longer than {MAX_NAME} characters"),
            );
        }
        if duplicate_id.is_some() {
            // Already reported; the name (often defaulting to the id) clashes for the same reason.
        } else if let Some((first_doc, first)) = self.seen_names.get(&name).cloned() {
            let at = self.line_of(first_doc, &first);
            self.error(
                doc,
                path,
                format!(
                    "duplicate pipeline name {name:?} (also used at {at}; a name defaults to the \
                     id)"
                ),
            );
        } else {
            self.seen_names.insert(name.clone(), (doc, path.clone()));
        }
        if p.description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
        {
            self.error(
                doc,
                &path.key("description"),
                format!("the description is longer than {MAX_DESCRIPTION} characters"),
            );
        }

        let mut origin = Origin {
            doc,
            pipeline: path.clone(),
            dlq: path.key("dead-letter-queue"),
            ..Origin::default()
        };
        let mut sources = Vec::new();
        let mut destinations = Vec::new();
        let mut processor_ids: HashMap<String, YamlPath> = HashMap::new();
        let connectors = p.connectors.unwrap_or_default();
        for (j, c) in connectors.into_iter().enumerate() {
            let cpath = path.key("connectors").index(j);
            self.check_id(doc, &cpath.key("id"), &c.id, "connector", MAX_CONNECTOR_ID);
            if let Some(first) = origin.connectors.get(&c.id) {
                let at = self.line_of(doc, first);
                self.error(
                    doc,
                    &cpath.key("id"),
                    format!("duplicate connector id {:?} (first defined at {at})", c.id),
                );
                continue;
            }
            if c.name
                .as_ref()
                .is_some_and(|n| n.chars().count() > MAX_CONNECTOR_ID)
            {
                self.error(
                    doc,
                    &cpath.key("name"),
                    format!("the connector name is longer than {MAX_CONNECTOR_ID} characters"),
                );
            }
            origin.connectors.insert(c.id.clone(), cpath.clone());
            match c.kind {
                ConnectorType::Source => sources.push((cpath, c)),
                ConnectorType::Destination => destinations.push((cpath, c)),
            }
        }
        if sources.is_empty() {
            self.error(
                doc,
                path,
                format!(
                    "pipeline {:?} has no source connector (a connector with `type: source`); \
                     exactly one is needed",
                    p.id
                ),
            );
        }
        if sources.len() > 1 {
            let list: Vec<String> = sources
                .iter()
                .map(|(cp, c)| format!("{:?} at {}", c.id, self.line_of(doc, cp)))
                .collect();
            let second = sources[1].0.clone();
            self.error(
                doc,
                &second,
                format!(
                    "pipeline {:?} has {} source connectors ({}); Sluice runs exactly one source \
                     per pipeline: split it into one pipeline per source",
                    p.id,
                    sources.len(),
                    list.join(", ")
                ),
            );
        }
        if destinations.is_empty() {
            self.error(
                doc,
                path,
                format!(
                    "pipeline {:?} has no destination connector (a connector with `type: \
                     destination`); at least one is needed",
                    p.id
                ),
            );
        }

        // The processor chain: source processors, pipeline processors, destination processors.
        let mut processors = Vec::new();
        if let Some((spath, s)) = sources.first_mut() {
            let list = s.processors.take().unwrap_or_default();
            self.processors(
                doc,
                minor,
                &spath.key("processors"),
                list,
                &mut processor_ids,
                &mut processors,
            );
        }
        let list = p.processors.unwrap_or_default();
        self.processors(
            doc,
            minor,
            &path.key("processors"),
            list,
            &mut processor_ids,
            &mut processors,
        );
        let single_destination = destinations.len() == 1;
        for (dpath, d) in destinations.iter_mut() {
            let list = d.processors.take().unwrap_or_default();
            if list.is_empty() {
                continue;
            }
            if !single_destination {
                self.error(
                    doc,
                    &dpath.key("processors"),
                    format!(
                        "processors on destination {:?} are not supported when the pipeline has \
                         several destinations (Sluice runs one processor chain before the \
                         destinations); move them to the pipeline's `processors`",
                        d.id
                    ),
                );
                continue;
            }
            self.processors(
                doc,
                minor,
                &dpath.key("processors"),
                list,
                &mut processor_ids,
                &mut processors,
            );
        }
        origin.processors = processor_ids;

        let dlq = match p.dead_letter_queue {
            None => DlqConfig::default(),
            Some(d) => {
                let dpath = path.key("dead-letter-queue");
                let mut dlq = DlqConfig::default();
                if let Some(plugin) = d.plugin.filter(|s| !s.is_empty()) {
                    dlq.plugin = plugin;
                }
                dlq.settings = d.settings.unwrap_or_default();
                if let Some(size) = self.non_negative(doc, &dpath.key("window-size"), d.window_size)
                {
                    dlq.window_size = size;
                }
                if let Some(t) = self.non_negative(
                    doc,
                    &dpath.key("window-nack-threshold"),
                    d.window_nack_threshold,
                ) {
                    dlq.window_nack_threshold = t;
                }
                if dlq.window_size > 0
                    && dlq.window_nack_threshold > 0
                    && dlq.window_nack_threshold >= dlq.window_size
                {
                    self.warn(
                        doc,
                        &dpath.key("window-nack-threshold"),
                        format!(
                            "the nack threshold ({}) is not below the window size ({}), so it is \
                             never exceeded and nacks never stop the pipeline",
                            dlq.window_nack_threshold, dlq.window_size
                        ),
                    );
                }
                dlq
            }
        };

        if self.errors.len() > errors_before {
            return None;
        }
        let (_, source) = sources.into_iter().next()?;
        Some(FilePipeline {
            config: PipelineConfig {
                id: p.id,
                source: connector_config(source),
                destinations: destinations
                    .into_iter()
                    .map(|(_, d)| connector_config(d))
                    .collect(),
                processors,
                dlq,
                options: PipelineOptions::default(),
            },
            status: p.status.unwrap_or_default(),
            name,
            description: p.description,
            origin,
        })
    }

    fn processors(
        &mut self,
        doc: usize,
        minor: u32,
        list_path: &YamlPath,
        list: Vec<ProcessorDoc>,
        seen: &mut HashMap<String, YamlPath>,
        out: &mut Vec<ProcessorConfig>,
    ) {
        for (k, proc) in list.into_iter().enumerate() {
            let path = list_path.index(k);
            if proc.id.is_empty() {
                self.error(
                    doc,
                    &path.key("id"),
                    "the processor id must not be empty".into(),
                );
                continue;
            }
            if let Some(first) = seen.get(&proc.id) {
                let at = self.line_of(doc, first);
                self.error(
                    doc,
                    &path.key("id"),
                    format!(
                        "duplicate processor id {:?} (first defined at {at})",
                        proc.id
                    ),
                );
                continue;
            }
            seen.insert(proc.id.clone(), path.clone());
            let plugin = match (proc.plugin, proc.kind) {
                (Some(plugin), None) => {
                    if minor < 2 {
                        self.warn(
                            doc,
                            &path.key("plugin"),
                            format!(
                                "`plugin` was introduced in version 2.2 but the file says 2.{minor}; \
                                 update its version"
                            ),
                        );
                    }
                    plugin
                }
                (None, Some(kind)) => {
                    if minor >= 2 {
                        self.warn(
                            doc,
                            &path.key("type"),
                            "`type` is deprecated since version 2.2: use `plugin`".into(),
                        );
                    }
                    kind
                }
                (Some(_), Some(_)) => {
                    self.error(
                        doc,
                        &path.key("type"),
                        "both `plugin` and the deprecated `type` are set: keep only `plugin`"
                            .into(),
                    );
                    continue;
                }
                (None, None) => {
                    self.error(
                        doc,
                        &path,
                        format!("processor {:?} has no `plugin`", proc.id),
                    );
                    continue;
                }
            };
            if proc.condition.is_some() && minor < 1 {
                self.warn(
                    doc,
                    &path.key("condition"),
                    format!(
                        "`condition` was introduced in version 2.1 but the file says 2.{minor}; \
                         update its version"
                    ),
                );
            }
            let workers = match proc.workers {
                None => None,
                Some(n) if n >= 1 => usize::try_from(n).ok(),
                Some(n) => {
                    self.error(
                        doc,
                        &path.key("workers"),
                        format!("workers must be at least 1, not {n}"),
                    );
                    continue;
                }
            };
            out.push(ProcessorConfig {
                id: proc.id,
                plugin,
                settings: proc.settings.unwrap_or_default(),
                condition: proc.condition.filter(|c| !c.is_empty()),
                workers,
            });
        }
    }

    fn non_negative(&mut self, doc: usize, path: &YamlPath, v: Option<i64>) -> Option<usize> {
        let v = v?;
        match usize::try_from(v) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(doc, path, format!("must be 0 or more, not {v}"));
                None
            }
        }
    }

    fn check_id(&mut self, doc: usize, path: &YamlPath, id: &str, what: &str, max: usize) {
        if id.is_empty() {
            self.error(doc, path, format!("the {what} id must not be empty"));
        } else if id.chars().count() > max {
            self.error(
                doc,
                path,
                format!("the {what} id is longer than {max} characters"),
            );
        } else if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.')))
        {
            self.error(
                doc,
                path,
                format!(
                    "the {what} id {id:?} contains {bad:?}; ids may contain letters, digits, \
                     '-', '_', ':' and '.'"
                ),
            );
        }
    }
}

fn connector_config(c: ConnectorDoc) -> ConnectorConfig {
    ConnectorConfig {
        id: c.id,
        plugin: c.plugin,
        settings: c.settings.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
