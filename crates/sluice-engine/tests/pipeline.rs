//! The engine's delivery guarantees, shown with mock connectors and the in-memory store.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sluice_engine::{
    ConnectorConfig, DlqConfig, Engine, EngineError, PipelineConfig, PipelineOptions,
    PipelineState, ProcessorConfig,
};
use sluice_sdk::{Registry, Settings};
use sluice_state::{MemoryStore, Store};
use support::{Journal, MockPlugin};

const CHECKPOINT_KEY: &str = "sluice/pipelines/p1/connectors/src/position";

struct Fixture {
    journal: Arc<Journal>,
    store: Arc<dyn Store>,
    engine: Engine,
}

fn fixture() -> Fixture {
    let journal = Arc::new(Journal::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut registry = Registry::new();
    registry.register(Arc::new(MockPlugin {
        journal: journal.clone(),
        store: store.clone(),
    }));
    registry.register_processor(Arc::new(support::MockProcessorPlugin));
    let engine = Engine::new(registry, store.clone());
    Fixture {
        journal,
        store,
        engine,
    }
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn dest(id: &str, extra: &[(&str, &str)]) -> ConnectorConfig {
    let mut s = settings(extra);
    s.insert("name".into(), id.into());
    ConnectorConfig {
        id: id.into(),
        plugin: "mock".into(),
        settings: s,
    }
}

fn pipeline(count: u64, destinations: Vec<ConnectorConfig>) -> PipelineConfig {
    PipelineConfig {
        id: "p1".into(),
        source: ConnectorConfig {
            id: "src".into(),
            plugin: "builtin:mock".into(),
            settings: settings(&[
                ("count", &count.to_string()),
                ("checkpoint-key", CHECKPOINT_KEY),
            ]),
        },
        destinations,
        processors: vec![],
        dlq: DlqConfig {
            plugin: "mock".into(),
            settings: settings(&[("name", "dlq")]),
            ..DlqConfig::default()
        },
        options: PipelineOptions {
            batch_size: 16,
            max_in_flight_batches: 4,
            ack_interval: Duration::from_millis(5),
        },
    }
}

async fn checkpoint(store: &Arc<dyn Store>) -> Option<u64> {
    let item = store.get(CHECKPOINT_KEY).await.expect("store get")?;
    std::str::from_utf8(&item.value).ok()?.parse().ok()
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

fn no_violations(j: &Journal) {
    let v: Vec<String> = j
        .events()
        .into_iter()
        .filter(|e| e.starts_with("VIOLATION"))
        .collect();
    assert!(v.is_empty(), "{v:?}");
}

#[tokio::test]
async fn delivers_everything_in_order_to_every_destination_and_checkpoints() {
    let f = fixture();
    let h = f
        .engine
        .start(pipeline(1000, vec![dest("a", &[]), dest("b", &[])]))
        .await
        .expect("start");
    let summary = h.wait().await.expect("pipeline ends cleanly");
    assert_eq!(f.journal.written("a"), range(1, 1000));
    assert_eq!(f.journal.written("b"), range(1, 1000));
    assert_eq!(f.journal.acked(), range(1, 1000));
    assert_eq!(checkpoint(&f.store).await, Some(1000));
    no_violations(&f.journal);
    let m = summary.metrics;
    assert_eq!((m.records_in, m.acked, m.lag, m.nacked), (1000, 1000, 0, 0));
    assert_eq!(m.records_out, 2000);
    assert_eq!(m.state, PipelineState::Stopped);
    let events = f.journal.events();
    assert!(events.contains(&"source.teardown".to_string()));
    assert!(events.contains(&"a.teardown".to_string()));
}

#[tokio::test]
async fn resumes_after_the_checkpoint_and_calls_the_right_lifecycle_hooks() {
    let f = fixture();
    f.engine
        .start(pipeline(100, vec![dest("a", &[]), dest("b", &[])]))
        .await
        .expect("start")
        .wait()
        .await
        .expect("run 1");
    let first = f.journal.events();
    assert!(
        first.contains(&"source.on_created".to_string()),
        "{first:?}"
    );
    assert!(first.contains(&"a.on_created".to_string()));
    assert!(first.contains(&"source.open None".to_string()));

    // Same settings: no hook, and nothing new to read.
    f.journal.events.lock().expect("j").clear();
    f.engine
        .start(pipeline(100, vec![dest("a", &[]), dest("b", &[])]))
        .await
        .expect("start")
        .wait()
        .await
        .expect("run 2");
    let second = f.journal.events();
    assert!(second.iter().all(|e| !e.contains("on_")), "{second:?}");
    assert!(second.contains(&"source.open Some(100)".to_string()));
    assert_eq!(f.journal.written("a"), range(1, 100));

    // Changed settings and a removed destination.
    f.journal.events.lock().expect("j").clear();
    f.engine
        .start(pipeline(150, vec![dest("a", &[])]))
        .await
        .expect("start")
        .wait()
        .await
        .expect("run 3");
    let third = f.journal.events();
    assert!(
        third.contains(&"source.on_updated".to_string()),
        "{third:?}"
    );
    assert!(third.contains(&"b.on_deleted".to_string()), "{third:?}");
    assert_eq!(f.journal.written("a"), range(1, 150));
    assert_eq!(f.journal.written("b"), range(1, 100));
    assert_eq!(checkpoint(&f.store).await, Some(150));
    no_violations(&f.journal);
}

#[tokio::test]
async fn nacked_records_go_to_the_dead_letter_queue_and_count_as_acked() {
    let f = fixture();
    let mut p = pipeline(200, vec![dest("a", &[("nack-every", "10")])]);
    p.dlq.window_size = 0;
    let summary = f
        .engine
        .start(p)
        .await
        .expect("start")
        .wait()
        .await
        .expect("ends cleanly");
    let nacked: Vec<u64> = (1..=20).map(|i| i * 10).collect();
    assert_eq!(f.journal.written("dlq"), nacked);
    assert_eq!(f.journal.acked(), range(1, 200));
    assert_eq!(summary.metrics.nacked, 20);
    assert_eq!(summary.metrics.dead_lettered, 20);
    assert_eq!(checkpoint(&f.store).await, Some(200));
}

#[tokio::test]
async fn the_default_window_stops_on_the_first_nack_without_acking_it() {
    let f = fixture();
    let p = pipeline(200, vec![dest("a", &[("nack-every", "50")])]);
    let err = f
        .engine
        .start(p)
        .await
        .expect("start")
        .wait()
        .await
        .expect_err("stops");
    match &err {
        EngineError::NackThreshold {
            connector,
            position,
            ..
        } => {
            assert_eq!(connector, "a");
            assert_eq!(position, "50");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("record 50 refused"), "{err}");
    assert!(checkpoint(&f.store).await.unwrap_or(0) < 50);
    assert!(f.journal.acked().iter().all(|&n| n < 50));
    assert!(f.journal.written("dlq").is_empty());
}

#[tokio::test]
async fn a_window_allows_some_nacks_then_stops() {
    let f = fixture();
    let mut p = pipeline(1000, vec![dest("a", &[("nack-every", "2")])]);
    p.dlq.window_size = 10;
    p.dlq.window_nack_threshold = 4;
    let err = f
        .engine
        .start(p)
        .await
        .expect("start")
        .wait()
        .await
        .expect_err("stops");
    // Every second record is nacked: the window of 10 holds 5 nacks by record 10.
    assert!(
        matches!(err, EngineError::NackThreshold { ref position, .. } if position == "10"),
        "{err}"
    );
    assert_eq!(f.journal.written("dlq"), vec![2, 4, 6, 8]);
}

#[tokio::test]
async fn a_destination_error_fails_the_pipeline_naming_the_connector() {
    let f = fixture();
    let err = f
        .engine
        .start(pipeline(
            500,
            vec![dest("a", &[]), dest("b", &[("fail-at", "300")])],
        ))
        .await
        .expect("start")
        .wait()
        .await
        .expect_err("fails");
    let text = err.to_string();
    assert!(
        text.contains("\"b\"") && text.contains("write") && text.contains("300"),
        "{text}"
    );
    assert!(checkpoint(&f.store).await.unwrap_or(0) < 300);
    no_violations(&f.journal);
}

#[tokio::test]
async fn graceful_stop_drains_everything_read_and_checkpoints_it() {
    let f = fixture();
    let h = f
        .engine
        .start(pipeline(0, vec![dest("a", &[])]))
        .await
        .expect("start");
    let c = h.controller();
    while c.metrics().acked < 100 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.stop();
    let summary = h.wait().await.expect("graceful stop is clean");
    let read = summary.metrics.records_in;
    assert!(read >= 100);
    assert_eq!(summary.metrics.acked, read);
    assert_eq!(f.journal.written("a"), range(1, read));
    assert_eq!(f.journal.acked(), range(1, read));
    assert_eq!(checkpoint(&f.store).await, Some(read));
    assert!(f.journal.events().contains(&"source.stop".to_string()));
    no_violations(&f.journal);

    // The next run continues right after.
    let h = f
        .engine
        .start(pipeline(read + 10, vec![dest("a", &[])]))
        .await
        .expect("start");
    h.wait().await.expect("run 2");
    assert_eq!(f.journal.written("a"), range(1, read + 10));
}

#[tokio::test]
async fn kill_stops_at_once_and_the_next_run_loses_nothing() {
    let f = fixture();
    let h = f
        .engine
        .start(pipeline(0, vec![dest("a", &[])]))
        .await
        .expect("start");
    let c = h.controller();
    while c.metrics().acked < 50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.kill();
    let err = h.wait().await.expect_err("killed");
    assert!(matches!(err, EngineError::Killed { .. }), "{err}");
    let saved = checkpoint(&f.store).await.expect("some checkpoint");
    let written = f.journal.written("a");
    assert!(saved <= written.len() as u64);

    let h = f
        .engine
        .start(pipeline(saved + 100, vec![dest("a", &[])]))
        .await
        .expect("start");
    h.wait().await.expect("run 2");
    let all = f.journal.written("a");
    // Every record up to the end is there; duplicates only after the checkpoint.
    let mut seen: Vec<u64> = all.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, range(1, saved + 100));
    assert!(all[written.len()..].first() == Some(&(saved + 1)));
}

#[tokio::test]
async fn invalid_pipelines_report_every_problem() {
    let f = fixture();
    let mut p = pipeline(
        10,
        vec![dest("a", &[("nack-every", "often")]), dest("a", &[])],
    );
    p.source.settings.insert("colour".into(), "red".into());
    p.dlq.plugin = "builtin:nowhere".into();
    p.processors.push(ProcessorConfig {
        id: "proc1".into(),
        plugin: "builtin:field.set".into(),
        settings: Settings::new(),
        condition: None,
        workers: None,
    });
    let problems = f.engine.validate(&p).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let joined = text.join("\n");
    for needle in [
        "duplicate connector id \"a\"",
        "\"colour\"",
        "\"nack-every\"",
        "nowhere",
        "proc1",
    ] {
        assert!(joined.contains(needle), "{needle} missing in:\n{joined}");
    }
    let err = f.engine.start(p).await.err().expect("start refuses");
    assert!(matches!(err, EngineError::Invalid { .. }));
    assert!(f.journal.events().is_empty(), "nothing was configured");
}

fn processor(settings_: &[(&str, &str)]) -> ProcessorConfig {
    ProcessorConfig {
        id: "proc".into(),
        plugin: "builtin:mockproc".into(),
        settings: settings(settings_),
        condition: None,
        workers: None,
    }
}

#[tokio::test]
async fn processors_filter_and_reject_records_and_everything_is_still_acked() {
    let f = fixture();
    let mut p = pipeline(100, vec![dest("a", &[])]);
    p.processors
        .push(processor(&[("filter-every", "10"), ("fail-every", "7")]));
    p.dlq.window_size = 0;
    let summary = f
        .engine
        .start(p)
        .await
        .expect("start")
        .wait()
        .await
        .expect("ends cleanly");
    let kept: Vec<u64> = (1..=100).filter(|n| n % 10 != 0 && n % 7 != 0).collect();
    let rejected: Vec<u64> = (1..=100).filter(|n| n % 10 != 0 && n % 7 == 0).collect();
    assert_eq!(f.journal.written("a"), kept);
    assert_eq!(f.journal.written("dlq"), rejected);
    assert_eq!(f.journal.acked(), range(1, 100));
    assert_eq!(checkpoint(&f.store).await, Some(100));
    assert_eq!(summary.metrics.nacked, rejected.len() as u64);
}

#[tokio::test]
async fn a_processor_rejection_stops_the_pipeline_under_the_default_window() {
    let f = fixture();
    let mut p = pipeline(100, vec![dest("a", &[])]);
    p.processors.push(processor(&[("fail-every", "30")]));
    let err = f
        .engine
        .start(p)
        .await
        .expect("start")
        .wait()
        .await
        .expect_err("stops");
    assert!(
        matches!(&err, EngineError::NackThreshold { connector, position, .. } if connector == "proc" && position == "30"),
        "{err}"
    );
    assert!(checkpoint(&f.store).await.unwrap_or(0) < 30);
}

#[tokio::test]
async fn processor_problems_are_reported_before_anything_runs() {
    let f = fixture();
    let mut p = pipeline(10, vec![dest("a", &[])]);
    let mut bad = processor(&[("fail-every", "often")]);
    bad.condition = Some("{{ eq .Operation \"create\" }}".into());
    p.processors.push(bad);
    let problems = f.engine.validate(&p).expect_err("invalid");
    let joined: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let joined = joined.join("\n");
    assert!(joined.contains("\"fail-every\""), "{joined}");
    assert!(joined.contains("conditions are not supported"), "{joined}");
}
