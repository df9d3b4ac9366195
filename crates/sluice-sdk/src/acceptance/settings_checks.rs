//! The settings checks both sides share: the specification is well-formed, valid settings
//! configure, invalid ones are rejected naming the parameter, removing each required parameter is
//! rejected naming it, and teardown works without open, twice.

use crate::spec::{validate_settings, Settings, Specification};

use super::call::{bounded, settled, Instance};
use super::failure::Check;
use super::spec_checks::{
    check_rejection, check_specification, resolve_valid, without_each_required, Rejection, Side,
};
use super::Report;

/// Everything the settings checks need to know about the connector under test.
pub(crate) struct Subject<'a> {
    /// Its specification.
    pub spec: &'a Specification,
    /// Which side is under test.
    pub side: Side,
    /// Valid settings from the fixture.
    pub valid: Settings,
    /// Invalid settings from the fixture, with the parameter each rejection must name.
    pub invalid: Vec<(Settings, &'static str)>,
}

/// Runs the checks `specification`, `configure`, `required-parameters` and
/// `teardown-without-open`, making instances with `make`.
pub(crate) async fn run<I: Instance>(
    subject: Subject<'_>,
    report: &mut Report,
    mut make: impl FnMut() -> I,
) {
    let name = subject.spec.name.as_str();

    let check = Check::new(name, "specification");
    check_specification(&check, subject.spec, subject.side);
    report.pass(check.name());

    let check = Check::new(name, "configure");
    let resolved = resolve_valid(&check, subject.spec, subject.side, &subject.valid);
    let mut instance = make();
    bounded(
        &check,
        "configure with valid settings",
        instance.configure(&resolved),
    )
    .await;
    bounded(&check, "teardown", instance.teardown()).await;
    for (settings, parameter) in &subject.invalid {
        let rejection = reject(&check, &subject, settings, &mut make).await;
        check_rejection(&check, settings, parameter, rejection);
    }
    report.pass(check.name());

    let check = Check::new(name, "required-parameters");
    for (settings, parameter) in without_each_required(subject.spec, subject.side, &subject.valid) {
        let rejection = reject(&check, &subject, &settings, &mut make).await;
        check_rejection(&check, &settings, &parameter, rejection);
    }
    report.pass(check.name());

    let check = Check::new(name, "teardown-without-open");
    let mut instance = make();
    bounded(&check, "configure", instance.configure(&resolved)).await;
    bounded(&check, "teardown without open", instance.teardown()).await;
    bounded(&check, "a second teardown", instance.teardown()).await;
    report.pass(check.name());
}

/// Validates `settings` as the runtime would and, if they pass, configures a new instance with
/// them; says how they were rejected, if they were.
async fn reject<I: Instance>(
    check: &Check,
    subject: &Subject<'_>,
    settings: &Settings,
    make: &mut impl FnMut() -> I,
) -> Option<Rejection> {
    match validate_settings(subject.side.params(subject.spec), settings) {
        Err(e) => Some(Rejection::Validation(e.to_string())),
        Ok(resolved) => {
            let mut instance = make();
            let outcome = settled(check, "configure", instance.configure(&resolved)).await;
            bounded(check, "teardown after configure", instance.teardown()).await;
            outcome.err().map(|e| Rejection::Configure(e.to_string()))
        }
    }
}
