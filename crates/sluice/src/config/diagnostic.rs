//! Problems found in a pipeline file, each naming the file, line, column and YAML path.

use std::fmt;
use std::path::PathBuf;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file works, but something in it is likely not what was meant.
    Warning,
}

/// One problem, displayed like `pipeline.yaml:12:7: pipelines[0].connectors[1]: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file as named by the user.
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The YAML path of the offending node (`pipelines[0].connectors[1].settings`), when known.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if self.severity == Severity::Warning {
            write!(f, ": warning")?;
        }
        if let Some(path) = &self.path {
            write!(f, ": {path}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a pipeline file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read pipeline file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file has problems; every one found is listed, one per line.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The individual problems (one for a read error).
    pub fn diagnostics(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
        }
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_file_line_column_path_and_message() {
        let d = Diagnostic {
            severity: Severity::Error,
            file: "pipeline.yaml".into(),
            position: Some((12, 7)),
            path: Some("pipelines[0].connectors[1].settings".into()),
            message: "unknown parameter \"pth\"".into(),
        };
        assert_eq!(
            d.to_string(),
            "pipeline.yaml:12:7: pipelines[0].connectors[1].settings: unknown parameter \"pth\""
        );
        let w = Diagnostic {
            severity: Severity::Warning,
            position: None,
            path: None,
            ..d
        };
        assert_eq!(
            w.to_string(),
            "pipeline.yaml: warning: unknown parameter \"pth\""
        );
    }
}
