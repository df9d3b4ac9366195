//! Self-describing connectors: specifications, parameters, validations, and settings checked against them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Connector settings as written in a pipeline file: parameter name → text value.
pub type Settings = BTreeMap<String, String>;

/// Settings under this prefix are generic SDK settings (batching etc.), accepted by every connector.
pub const SDK_SETTINGS_PREFIX: &str = "sdk.";

/// What a connector says about itself.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Specification {
    /// Unique name, e.g. `file`.
    pub name: String,
    /// One line saying what it does.
    pub summary: String,
    /// Longer, README-like text.
    pub description: String,
    /// Semantic version with a leading `v`, e.g. `v0.1.0`.
    pub version: String,
    /// Who maintains it.
    pub author: String,
    /// Parameters of the source side (empty if it has no source).
    pub source_params: BTreeMap<String, Parameter>,
    /// Parameters of the destination side (empty if it has no destination).
    pub destination_params: BTreeMap<String, Parameter>,
}

/// The type of a parameter's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    /// Any text.
    String,
    /// A signed 64-bit integer.
    Int,
    /// A floating point number.
    Float,
    /// `true` or `false`.
    Bool,
    /// A path to a file.
    File,
    /// A duration such as `30ms`, `5s` or `1m30s`.
    Duration,
}

/// A rule a parameter's value must satisfy.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "kebab-case")]
pub enum Validation {
    /// The parameter must be set (a default satisfies this).
    Required,
    /// The numeric value must be greater than this.
    GreaterThan(f64),
    /// The numeric value must be less than this.
    LessThan(f64),
    /// The value must be one of these.
    Inclusion(Vec<String>),
    /// The value must not be one of these.
    Exclusion(Vec<String>),
    /// The value must match this regular expression.
    Regex(String),
}

/// One configurable parameter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Parameter {
    /// Value type.
    #[serde(rename = "type")]
    pub kind: ParameterType,
    /// Default used when the parameter is not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What it controls.
    pub description: String,
    /// Rules the value must satisfy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<Validation>,
}

impl Parameter {
    /// A parameter of this type with this description, no default and no validations.
    pub fn new(kind: ParameterType, description: impl Into<String>) -> Self {
        Parameter {
            kind,
            default: None,
            description: description.into(),
            validations: Vec::new(),
        }
    }

    /// Sets the default.
    pub fn default_value(mut self, v: impl Into<String>) -> Self {
        self.default = Some(v.into());
        self
    }

    /// Marks the parameter required.
    pub fn required(mut self) -> Self {
        self.validations.push(Validation::Required);
        self
    }

    /// Adds a validation.
    pub fn validate(mut self, v: Validation) -> Self {
        self.validations.push(v);
        self
    }

    /// True if the parameter carries the `Required` validation.
    pub fn is_required(&self) -> bool {
        self.validations.contains(&Validation::Required)
    }
}

/// One setting that broke a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// The parameter's name.
    pub parameter: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.parameter, self.message)
    }
}

/// Every violation found in one set of settings.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<Violation>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join("; "))
    }
}

/// Checks `settings` against `params`, returning the settings with defaults filled in, or every
/// violation found (unknown parameters included, except generic `sdk.*` settings).
pub fn validate_settings(
    params: &BTreeMap<String, Parameter>,
    settings: &Settings,
) -> Result<Settings, ValidationErrors> {
    let mut violations = Vec::new();
    let mut resolved = Settings::new();
    for (name, value) in settings {
        if params.contains_key(name) {
            continue;
        }
        if name.starts_with(SDK_SETTINGS_PREFIX) {
            resolved.insert(name.clone(), value.clone());
            continue;
        }
        // A `*` in a parameter name stands for any non-empty text (e.g. `format.options.*`).
        let wildcard = params
            .iter()
            .find(|(pattern, _)| pattern.contains('*') && wildcard_match(pattern, name));
        match wildcard {
            Some((_, param)) => {
                check_value(name, param, value, &mut violations);
                resolved.insert(name.clone(), value.clone());
            }
            None => {
                let known: Vec<&str> = params.keys().map(String::as_str).collect();
                violations.push(Violation {
                    parameter: name.clone(),
                    message: format!("unknown parameter (known: {})", known.join(", ")),
                });
            }
        }
    }
    for (name, param) in params.iter().filter(|(n, _)| !n.contains('*')) {
        let value = settings
            .get(name)
            .filter(|v| !v.is_empty())
            .or(param.default.as_ref());
        let Some(value) = value else {
            if param.is_required() {
                violations.push(Violation {
                    parameter: name.clone(),
                    message: "is required".into(),
                });
            }
            continue;
        };
        check_value(name, param, value, &mut violations);
        resolved.insert(name.clone(), value.clone());
    }
    if violations.is_empty() {
        Ok(resolved)
    } else {
        Err(ValidationErrors(violations))
    }
}

/// Checks one value's type and, if the type is right, every rule of its parameter.
fn check_value(name: &str, param: &Parameter, value: &str, out: &mut Vec<Violation>) {
    let before = out.len();
    check_type(name, param.kind, value, out);
    if out.len() == before {
        for rule in &param.validations {
            check_rule(name, rule, value, out);
        }
    }
}

/// True if `name` matches `pattern`, where each `*` stands for one or more characters.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (1..=n.len()).any(|i| go(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

fn check_type(name: &str, kind: ParameterType, value: &str, out: &mut Vec<Violation>) {
    let problem = match kind {
        ParameterType::String | ParameterType::File => None,
        ParameterType::Int => value
            .parse::<i64>()
            .err()
            .map(|_| format!("{value:?} is not an integer")),
        ParameterType::Float => value
            .parse::<f64>()
            .err()
            .map(|_| format!("{value:?} is not a number")),
        ParameterType::Bool => parse_bool(value)
            .is_none()
            .then(|| format!("{value:?} is not a boolean (true or false)")),
        ParameterType::Duration => parse_duration(value)
            .err()
            .map(|e| format!("{value:?} is not a duration: {e}")),
    };
    if let Some(message) = problem {
        out.push(Violation {
            parameter: name.to_string(),
            message,
        });
    }
}

fn check_rule(name: &str, rule: &Validation, value: &str, out: &mut Vec<Violation>) {
    let number = || value.parse::<f64>().ok();
    let problem = match rule {
        Validation::Required => None,
        Validation::GreaterThan(min) => match number() {
            Some(n) if n > *min => None,
            _ => Some(format!("{value:?} must be greater than {min}")),
        },
        Validation::LessThan(max) => match number() {
            Some(n) if n < *max => None,
            _ => Some(format!("{value:?} must be less than {max}")),
        },
        Validation::Inclusion(allowed) => (!allowed.iter().any(|a| a == value))
            .then(|| format!("{value:?} must be one of: {}", allowed.join(", "))),
        Validation::Exclusion(denied) => denied
            .iter()
            .any(|d| d == value)
            .then(|| format!("{value:?} is not allowed")),
        Validation::Regex(re) => match regex::Regex::new(re) {
            Ok(r) if r.is_match(value) => None,
            Ok(_) => Some(format!("{value:?} must match /{re}/")),
            Err(e) => Some(format!("the specification's regex /{re}/ is invalid: {e}")),
        },
    };
    if let Some(message) = problem {
        out.push(Violation {
            parameter: name.to_string(),
            message,
        });
    }
}

/// Parses `true`/`false` (and `1`/`0`, `yes`/`no`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Parses a duration such as `30ms`, `5s`, `1m30s` or `1h`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| e.to_string())
}

/// Typed read access to validated settings, for a connector's `configure`.
pub struct Config<'a> {
    settings: &'a Settings,
}

impl<'a> Config<'a> {
    /// Wraps settings (normally the output of [`validate_settings`]).
    pub fn new(settings: &'a Settings) -> Self {
        Config { settings }
    }

    /// The text value, if set.
    pub fn str(&self, name: &str) -> Option<&'a str> {
        self.settings
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The text value, or a violation if it is missing.
    pub fn required_str(&self, name: &str) -> Result<&'a str, ValidationErrors> {
        self.str(name).ok_or_else(|| single(name, "is required"))
    }

    /// An integer value, if set.
    pub fn i64(&self, name: &str) -> Result<Option<i64>, ValidationErrors> {
        self.parse(name, |v| v.parse::<i64>().map_err(|e| e.to_string()))
    }

    /// A non-negative integer value, if set.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ValidationErrors> {
        self.parse(name, |v| v.parse::<u64>().map_err(|e| e.to_string()))
    }

    /// A float value, if set.
    pub fn f64(&self, name: &str) -> Result<Option<f64>, ValidationErrors> {
        self.parse(name, |v| v.parse::<f64>().map_err(|e| e.to_string()))
    }

    /// A boolean value, if set.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ValidationErrors> {
        self.parse(name, |v| {
            parse_bool(v).ok_or_else(|| "not a boolean".into())
        })
    }

    /// A duration value, if set.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ValidationErrors> {
        self.parse(name, parse_duration)
    }

    fn parse<T>(
        &self,
        name: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ValidationErrors> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => f(v)
                .map(Some)
                .map_err(|e| single(name, &format!("{v:?}: {e}"))),
        }
    }
}

fn single(name: &str, message: &str) -> ValidationErrors {
    ValidationErrors(vec![Violation {
        parameter: name.to_string(),
        message: message.to_string(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BTreeMap<String, Parameter> {
        let mut p = BTreeMap::new();
        p.insert(
            "path".into(),
            Parameter::new(ParameterType::File, "file").required(),
        );
        p.insert(
            "count".into(),
            Parameter::new(ParameterType::Int, "n")
                .default_value("10")
                .validate(Validation::GreaterThan(0.0)),
        );
        p.insert(
            "format".into(),
            Parameter::new(ParameterType::String, "fmt")
                .default_value("raw")
                .validate(Validation::Inclusion(vec!["raw".into(), "json".into()])),
        );
        p.insert(
            "name".into(),
            Parameter::new(ParameterType::String, "name")
                .validate(Validation::Regex("^[a-z]+$".into())),
        );
        p.insert(
            "delay".into(),
            Parameter::new(ParameterType::Duration, "d")
                .validate(Validation::Exclusion(vec!["0s".into()])),
        );
        p
    }

    #[test]
    fn fills_defaults_and_keeps_sdk_settings() {
        let mut s = Settings::new();
        s.insert("path".into(), "/tmp/x".into());
        s.insert("sdk.batch.size".into(), "10".into());
        let out = validate_settings(&params(), &s).expect("valid");
        assert_eq!(out["count"], "10");
        assert_eq!(out["format"], "raw");
        assert_eq!(out["sdk.batch.size"], "10");
        assert!(!out.contains_key("name"));
    }

    #[test]
    fn reports_every_violation_by_name() {
        let mut s = Settings::new();
        s.insert("count".into(), "-3".into());
        s.insert("format".into(), "xml".into());
        s.insert("name".into(), "Bad1".into());
        s.insert("delay".into(), "0s".into());
        s.insert("colour".into(), "red".into());
        let err = validate_settings(&params(), &s).expect_err("invalid");
        let names: Vec<&str> = err.0.iter().map(|v| v.parameter.as_str()).collect();
        for n in ["path", "count", "format", "name", "delay", "colour"] {
            assert!(names.contains(&n), "{n} missing from {err}");
        }
        assert_eq!(err.0.len(), 6, "{err}");
    }

    #[test]
    fn type_errors_name_the_parameter() {
        let mut s = Settings::new();
        s.insert("path".into(), "/x".into());
        s.insert("count".into(), "ten".into());
        s.insert("delay".into(), "soon".into());
        let err = validate_settings(&params(), &s).expect_err("invalid");
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err
            .to_string()
            .contains("\"count\": \"ten\" is not an integer"));
        assert!(err.to_string().contains("\"delay\""));
    }

    #[test]
    fn wildcard_parameters_accept_matching_names_and_check_them() {
        let mut p = BTreeMap::new();
        p.insert(
            "format.options.*".into(),
            Parameter::new(ParameterType::String, "field")
                .validate(Validation::Inclusion(vec!["int".into(), "string".into()])),
        );
        p.insert(
            "collections.*.format.type".into(),
            Parameter::new(ParameterType::String, "type"),
        );
        let mut s = Settings::new();
        s.insert("format.options.id".into(), "int".into());
        s.insert("collections.users.format.type".into(), "raw".into());
        let out = validate_settings(&p, &s).expect("valid");
        assert_eq!(out["format.options.id"], "int");
        s.insert("format.options.name".into(), "blob".into());
        s.insert("format.options.".into(), "int".into());
        let err = validate_settings(&p, &s).expect_err("invalid");
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(wildcard_match("a.*.b.*", "a.x.b.y"));
        assert!(!wildcard_match("a.*.b", "a..b"));
    }

    #[test]
    fn config_reads_typed_values() {
        let mut s = Settings::new();
        s.insert("n".into(), "5".into());
        s.insert("b".into(), "true".into());
        s.insert("d".into(), "1m30s".into());
        let c = Config::new(&s);
        assert_eq!(c.u64("n").expect("n"), Some(5));
        assert_eq!(c.bool("b").expect("b"), Some(true));
        assert_eq!(c.duration("d").expect("d"), Some(Duration::from_secs(90)));
        assert_eq!(c.u64("missing").expect("missing"), None);
        assert!(c.required_str("missing").is_err());
        assert!(c.u64("b").is_err());
    }
}
