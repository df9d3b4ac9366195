//! Checks on a connector's [`Specification`] and on how its settings are validated: the
//! specification is well-formed, valid settings pass, invalid ones fail naming the parameter, and
//! dropping any required parameter fails.

use std::collections::BTreeMap;

use crate::spec::{validate_settings, Parameter, Settings, Specification, Validation};

use super::failure::Check;

/// Which side of a connector a check looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The source side (`source_params`).
    Source,
    /// The destination side (`destination_params`).
    Destination,
}

impl Side {
    /// The parameters of this side.
    pub fn params(self, spec: &Specification) -> &BTreeMap<String, Parameter> {
        match self {
            Side::Source => &spec.source_params,
            Side::Destination => &spec.destination_params,
        }
    }

    /// `source` or `destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

const SEMVER_WITH_V: &str = r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$";

/// Everything wrong with a specification's description of itself and of one side's parameters,
/// one message per problem (empty when it is well-formed).
///
/// Checked: the name is non-empty without whitespace; the version is semver with a leading `v`;
/// summary, description and author are present; every parameter has a name and a description;
/// every default satisfies the parameter's type and validations; no required parameter has a
/// default (it could then never be missing, so "required" would mean nothing); inclusion and
/// exclusion lists are non-empty; regular expressions compile; numeric bounds leave some room.
pub fn specification_problems(spec: &Specification, side: Side) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.name.trim().is_empty() || spec.name.chars().any(char::is_whitespace) {
        problems.push(format!(
            "name {:?} must be non-empty without whitespace",
            spec.name
        ));
    }
    let semver = regex::Regex::new(SEMVER_WITH_V).map(|re| re.is_match(&spec.version));
    if !matches!(semver, Ok(true)) {
        problems.push(format!(
            "version {:?} must be a semantic version with a leading `v`, e.g. v0.1.0",
            spec.version
        ));
    }
    for (field, value) in [
        ("summary", &spec.summary),
        ("description", &spec.description),
        ("author", &spec.author),
    ] {
        if value.trim().is_empty() {
            problems.push(format!("{field} is empty"));
        }
    }
    for (name, param) in side.params(spec) {
        parameter_problems(side, name, param, &mut problems);
    }
    problems
}

fn parameter_problems(side: Side, name: &str, param: &Parameter, out: &mut Vec<String>) {
    let what = format!("{} parameter {name:?}", side.as_str());
    if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
        out.push(format!(
            "{what}: names must be non-empty without whitespace"
        ));
    }
    if param.description.trim().is_empty() {
        out.push(format!("{what} has no description"));
    }
    if param.is_required() && param.default.is_some() {
        out.push(format!(
            "{what} is required but has a default, so it can never be missing: drop the default or the required validation"
        ));
    }
    let mut lower = f64::NEG_INFINITY;
    let mut upper = f64::INFINITY;
    for rule in &param.validations {
        match rule {
            Validation::Required => {}
            Validation::GreaterThan(v) => lower = lower.max(*v),
            Validation::LessThan(v) => upper = upper.min(*v),
            Validation::Inclusion(values) | Validation::Exclusion(values) if values.is_empty() => {
                out.push(format!("{what} has an empty inclusion or exclusion list"));
            }
            Validation::Inclusion(_) | Validation::Exclusion(_) => {}
            Validation::Regex(re) => {
                if let Err(e) = regex::Regex::new(re) {
                    out.push(format!("{what} has an invalid regex /{re}/: {e}"));
                }
            }
        }
    }
    if lower >= upper {
        out.push(format!(
            "{what} must be greater than {lower} and less than {upper}: no value can satisfy both"
        ));
    }
    if param.default.is_some() {
        let mut alone = BTreeMap::new();
        alone.insert(name.to_string(), param.clone());
        if let Err(e) = validate_settings(&alone, &Settings::new()) {
            out.push(format!("{what}: its default breaks its own rules: {e}"));
        }
    }
}

/// Fails `check` unless the specification is well-formed (see [`specification_problems`]).
pub(crate) fn check_specification(check: &Check, spec: &Specification, side: Side) {
    let problems = specification_problems(spec, side);
    check.ensure(problems.is_empty(), || {
        format!(
            "the specification is not well-formed:\n  - {}",
            problems.join("\n  - ")
        )
    });
}

/// Validates the fixture's valid settings against the specification, failing `check` if they are
/// rejected; returns them with defaults filled in, as the runtime hands them to `configure`.
pub(crate) fn resolve_valid(
    check: &Check,
    spec: &Specification,
    side: Side,
    settings: &Settings,
) -> Settings {
    match validate_settings(side.params(spec), settings) {
        Ok(resolved) => resolved,
        Err(e) => check.fail(format!(
            "the fixture's valid settings {settings:?} were rejected by the specification: {e}"
        )),
    }
}

/// How one set of settings was turned down.
pub(crate) enum Rejection {
    /// The specification's validation rejected them, with this message.
    Validation(String),
    /// `configure` rejected them, with this message.
    Configure(String),
}

/// Fails `check` unless `rejection` exists and names `parameter`.
pub(crate) fn check_rejection(
    check: &Check,
    settings: &Settings,
    parameter: &str,
    rejection: Option<Rejection>,
) {
    match rejection {
        None => check.fail(format!(
            "settings {settings:?} were accepted, but they are invalid because of parameter {parameter:?}"
        )),
        Some(Rejection::Validation(message)) | Some(Rejection::Configure(message)) => {
            check.ensure(message.contains(parameter), || {
                format!(
                    "settings {settings:?} were rejected, but the error does not name parameter {parameter:?}: {message}"
                )
            });
        }
    }
}

/// The fixture's valid settings without each required parameter in turn, paired with that
/// parameter's name. Parameters the valid settings don't mention are still listed (they would be
/// missing already, which `resolve_valid` has ruled out unless a default fills them).
pub(crate) fn without_each_required(
    spec: &Specification,
    side: Side,
    valid: &Settings,
) -> Vec<(Settings, String)> {
    side.params(spec)
        .iter()
        .filter(|(_, p)| p.is_required())
        .map(|(name, _)| {
            let mut s = valid.clone();
            s.remove(name);
            (s, name.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ParameterType;

    fn spec() -> Specification {
        let mut source_params = BTreeMap::new();
        source_params.insert(
            "path".to_string(),
            Parameter::new(ParameterType::File, "where").required(),
        );
        Specification {
            name: "demo".into(),
            summary: "s".into(),
            description: "d".into(),
            version: "v0.1.0-rc.1+build.5".into(),
            author: "a".into(),
            source_params,
            destination_params: BTreeMap::new(),
        }
    }

    #[test]
    fn a_good_specification_has_no_problems() {
        assert_eq!(
            specification_problems(&spec(), Side::Source),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = spec();
        s.name = "my connector".into();
        s.version = "0.1.0".into();
        s.author = " ".into();
        s.source_params.insert(
            "count".into(),
            Parameter::new(ParameterType::Int, "")
                .default_value("-1")
                .validate(Validation::GreaterThan(0.0)),
        );
        s.source_params.insert(
            "mode".into(),
            Parameter::new(ParameterType::String, "m")
                .default_value("a")
                .required()
                .validate(Validation::Regex("(".into())),
        );
        s.source_params.insert(
            "range".into(),
            Parameter::new(ParameterType::Int, "r")
                .validate(Validation::GreaterThan(5.0))
                .validate(Validation::LessThan(5.0))
                .validate(Validation::Inclusion(vec![])),
        );
        let problems = specification_problems(&s, Side::Source).join("\n");
        for needle in [
            "name \"my connector\"",
            "version \"0.1.0\"",
            "author is empty",
            "\"count\" has no description",
            "\"count\": its default breaks its own rules",
            "\"mode\" is required but has a default",
            "\"mode\" has an invalid regex",
            "\"range\" must be greater than 5 and less than 5",
            "\"range\" has an empty inclusion",
        ] {
            assert!(
                problems.contains(needle),
                "{needle} missing from:\n{problems}"
            );
        }
    }

    #[test]
    fn removing_required_parameters_lists_each() {
        let mut valid = Settings::new();
        valid.insert("path".into(), "/x".into());
        valid.insert("other".into(), "1".into());
        let cases = without_each_required(&spec(), Side::Source, &valid);
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].1, "path");
        assert!(!cases[0].0.contains_key("path"));
        assert!(cases[0].0.contains_key("other"));
    }
}
