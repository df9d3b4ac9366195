//! The kit checked against correct and deliberately flawed in-memory connectors.

use super::mock::{settings, Behaviour, CounterFixture, MemDestinationFixture, MemSourceFixture};
use super::{destination_acceptance, sample_records, source_acceptance};

const SOURCE_CHECKS: [&str; 11] = [
    "specification",
    "configure",
    "required-parameters",
    "teardown-without-open",
    "read-before-open",
    "read",
    "stop",
    "acks",
    "teardown",
    "resume",
    "cancel",
];

#[tokio::test]
async fn a_correct_live_source_passes_every_check() {
    let report = source_acceptance(MemSourceFixture::new(Behaviour::Correct)).await;
    assert_eq!(report.connector, "memory");
    for check in SOURCE_CHECKS.iter().chain(&["snapshot-then-live"]) {
        assert!(
            report.passed.contains(check),
            "{check} did not run: {report:?}"
        );
    }
    assert!(report.skipped.is_empty(), "{report:?}");
}

#[tokio::test]
async fn a_snapshot_source_may_restart_its_snapshot_on_resume() {
    let report = source_acceptance(MemSourceFixture::new(Behaviour::Snapshot)).await;
    assert!(report.passed.contains(&"resume"), "{report:?}");
    assert!(report.passed.contains(&"snapshot-then-live"), "{report:?}");
}

#[tokio::test]
async fn a_source_that_ends_must_end_after_its_records() {
    let report = source_acceptance(MemSourceFixture::new(Behaviour::Ends)).await;
    assert!(report.passed.contains(&"read"), "{report:?}");
    assert_eq!(
        report.skipped,
        vec![(
            "snapshot-then-live",
            "the source reads no records produced after open"
        )]
    );
}

#[tokio::test]
async fn a_self_producing_source_is_checked_against_predictions() {
    let report = source_acceptance(CounterFixture::default()).await;
    for check in SOURCE_CHECKS {
        assert!(
            report.passed.contains(&check),
            "{check} did not run: {report:?}"
        );
    }
}

#[tokio::test]
#[should_panic(expected = "acceptance check `resume` failed for connector `memory`")]
async fn repeating_a_record_on_resume_is_caught() {
    source_acceptance(MemSourceFixture::new(Behaviour::RepeatsOnResume)).await;
}

#[tokio::test]
#[should_panic(
    expected = "acceptance check `stop` failed for connector `memory`: stop returned no position"
)]
async fn a_stop_without_position_is_caught() {
    source_acceptance(MemSourceFixture::new(Behaviour::StopForgets)).await;
}

#[tokio::test]
#[should_panic(expected = "acceptance check `read-before-open` failed")]
async fn reading_before_open_must_fail() {
    source_acceptance(MemSourceFixture::new(Behaviour::ReadsBeforeOpen)).await;
}

#[tokio::test]
#[should_panic(expected = "more than asked for")]
async fn ignoring_max_is_caught() {
    source_acceptance(MemSourceFixture::new(Behaviour::IgnoresMax)).await;
}

#[tokio::test]
#[should_panic(expected = "acceptance check `cancel` failed for connector `memory`")]
async fn losing_records_when_a_read_is_dropped_is_caught() {
    source_acceptance(MemSourceFixture::new(Behaviour::LosesOnDrop)).await;
}

#[tokio::test]
#[should_panic(
    expected = "acceptance check `specification` failed for connector `memory`: the specification is not well-formed"
)]
async fn a_version_without_v_is_caught() {
    source_acceptance(MemSourceFixture::new(Behaviour::BadVersion)).await;
}

#[tokio::test]
#[should_panic(expected = "were accepted, but they are invalid because of parameter \"topic\"")]
async fn invalid_settings_that_configure_accepts_are_caught() {
    let mut fixture = MemSourceFixture::new(Behaviour::Correct);
    fixture.invalid = vec![(settings(&[("topic", "not a valid name")]), "topic")];
    source_acceptance(fixture).await;
}

#[tokio::test]
#[should_panic(expected = "does not name parameter \"topic\"")]
async fn a_rejection_must_name_the_parameter() {
    let mut fixture = MemSourceFixture::new(Behaviour::Correct);
    fixture.invalid = vec![(settings(&[("topic", "t"), ("pollInterval", "x")]), "topic")];
    source_acceptance(fixture).await;
}

#[tokio::test]
async fn a_correct_destination_passes_every_check() {
    let report = destination_acceptance(MemDestinationFixture::new(Behaviour::Correct)).await;
    for check in [
        "specification",
        "configure",
        "required-parameters",
        "teardown-without-open",
        "write-before-open",
        "write",
        "read-back",
        "cancel",
    ] {
        assert!(
            report.passed.contains(&check),
            "{check} did not run: {report:?}"
        );
    }
}

#[tokio::test]
#[should_panic(
    expected = "acceptance check `write` failed for connector `memory`: 2 records were acknowledged, but only 1 were written"
)]
async fn acknowledging_more_than_written_is_caught() {
    destination_acceptance(MemDestinationFixture::new(Behaviour::OverAcks)).await;
}

#[tokio::test]
#[should_panic(expected = "acceptance check `write-before-open` failed")]
async fn writing_before_open_must_fail() {
    destination_acceptance(MemDestinationFixture::new(Behaviour::WritesBeforeOpen)).await;
}

#[tokio::test]
#[should_panic(
    expected = "acceptance check `read-back` failed for connector `memory`: the destination holds 24 records, but 25 were written"
)]
async fn a_lost_record_is_caught_on_read_back() {
    destination_acceptance(MemDestinationFixture::new(Behaviour::DropsFirst)).await;
}

#[test]
fn sample_records_are_complete_and_distinct() {
    let records = sample_records(3);
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].position.to_u64(), Some(3));
    assert_ne!(records[0].payload, records[1].payload);
    assert!(records.iter().all(|r| r.key.is_some()));
}
