//! `sluice bench`: measures the engine end to end on this machine — generator→blackhole,
//! file→blackhole and file→file with checkpoints — and prints a table beside the targets.
//!
//! Each scenario runs in this process on the real engine, connectors and redb store (a fresh data
//! directory each time), exactly as `sluice run` would run it. Peak RSS is the process's high-water
//! mark, reset before each scenario.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sluice_engine::{ConnectorConfig, DlqConfig, Engine, PipelineConfig, PipelineOptions};
use sluice_sdk::{Registry, Settings};
use sluice_state::RedbStore;

use super::CommandError;
use crate::cli::BenchArgs;

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Scenario name.
    pub name: &'static str,
    /// Records moved.
    pub records: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Peak resident set size in MiB, if the platform reports it.
    pub peak_rss_mib: Option<f64>,
}

impl Measurement {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds
    }
}

/// Runs `sluice bench`.
pub async fn bench(
    args: &BenchArgs,
    registry: Registry,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    std::fs::create_dir_all(&args.dir).map_err(|source| CommandError::DataDir {
        path: args.dir.clone(),
        source,
    })?;
    let input = args.dir.join(format!("lines-{}mib.jsonl", args.size_mib));
    let wants = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    };
    let mut results = Vec::new();

    if wants("generator-blackhole") {
        let p = pipeline(
            "bench-generator-blackhole",
            connector(
                "gen",
                "builtin:generator",
                &[
                    ("recordCount", &args.records.to_string()),
                    ("recordSize", "200"),
                ],
            ),
            connector("sink", "builtin:blackhole", &[]),
        );
        results.push(measure("generator→blackhole", &args.dir, &registry, p).await?);
    }
    if wants("file-blackhole") || wants("file-file") {
        ensure_input(&input, args.size_mib).map_err(|source| CommandError::DataDir {
            path: input.clone(),
            source,
        })?;
    }
    let input_str = input.display().to_string();
    if wants("file-blackhole") {
        let p = pipeline(
            "bench-file-blackhole",
            connector("in", "builtin:file", &[("path", &input_str)]),
            connector("sink", "builtin:blackhole", &[]),
        );
        results.push(measure("file→blackhole", &args.dir, &registry, p).await?);
    }
    if wants("file-file") {
        let output = args.dir.join("output.jsonl");
        let _ = std::fs::remove_file(&output);
        let p = pipeline(
            "bench-file-file",
            connector("in", "builtin:file", &[("path", &input_str)]),
            connector(
                "out",
                "builtin:file",
                &[("path", &output.display().to_string()), ("fsync", "always")],
            ),
        );
        let m = measure("file→file (fsync, checkpoints)", &args.dir, &registry, p).await?;
        let same = std::fs::metadata(&output).map(|o| o.len()).ok()
            == std::fs::metadata(&input).map(|i| i.len()).ok();
        writeln!(out, "file→file output size matches input: {same}")?;
        let _ = std::fs::remove_file(&output);
        results.push(m);
    }
    write_table(&results, out)?;
    Ok(())
}

fn connector(id: &str, plugin: &str, settings: &[(&str, &str)]) -> ConnectorConfig {
    ConnectorConfig {
        id: id.into(),
        plugin: plugin.into(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Settings>(),
    }
}

fn pipeline(id: &str, source: ConnectorConfig, dest: ConnectorConfig) -> PipelineConfig {
    PipelineConfig {
        id: id.into(),
        source,
        destinations: vec![dest],
        processors: vec![],
        dlq: DlqConfig::default(),
        options: PipelineOptions::default(),
    }
}

/// Runs one pipeline to its end on a fresh store and measures it.
async fn measure(
    name: &'static str,
    dir: &Path,
    registry: &Registry,
    p: PipelineConfig,
) -> Result<Measurement, CommandError> {
    let data = dir.join(format!("data-{}", p.id));
    let _ = std::fs::remove_dir_all(&data);
    let store_path = data.join("state.redb");
    let store = RedbStore::open(&store_path).map_err(|source| CommandError::Store {
        path: store_path.clone(),
        source,
    })?;
    let engine = Engine::new(registry.clone(), Arc::new(store));
    reset_peak_rss();
    let started = Instant::now();
    let summary = engine
        .start(p)
        .await
        .map_err(CommandError::Start)?
        .wait()
        .await
        .map_err(CommandError::Start)?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&data);
    Ok(Measurement {
        name,
        records: summary.metrics.acked,
        bytes: summary.metrics.bytes_in,
        seconds,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Writes `size_mib` MiB of 200-byte JSON lines, unless the file is already there.
fn ensure_input(path: &PathBuf, size_mib: u64) -> std::io::Result<()> {
    let want = size_mib * 1024 * 1024;
    if std::fs::metadata(path).map(|m| m.len()).ok() == Some(want - want % 200) {
        return Ok(());
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let lines = want / 200;
    let mut line = Vec::with_capacity(200);
    for i in 0..lines {
        line.clear();
        write!(
            line,
            "{{\"id\":{i},\"user\":\"user-{}\",\"event\":\"page_view\",\"pad\":\"",
            i % 9973
        )?;
        while line.len() < 197 {
            line.push(b'x');
        }
        line.extend_from_slice(b"\"}\n");
        w.write_all(&line)?;
    }
    w.flush()
}

fn reset_peak_rss() {
    // Linux: writing 5 resets the peak RSS (VmHWM) of this process.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Targets from the foundation issue: (scenario, records/s, MiB/s).
const TARGETS: &[(&str, Option<f64>, Option<f64>)] = &[
    ("generator→blackhole", Some(2_000_000.0), None),
    ("file→blackhole", None, Some(500.0)),
    ("file→file (fsync, checkpoints)", None, Some(300.0)),
];

fn write_table(results: &[Measurement], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "| scenario | records | MiB | seconds | records/s | MiB/s | peak RSS MiB | target | of target |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---:|")?;
    for m in results {
        let (target, pct) = match TARGETS.iter().find(|t| t.0 == m.name) {
            Some((_, Some(rps), _)) => (
                format!("≥ {:.0} records/s", rps),
                m.records_per_sec() / rps * 100.0,
            ),
            Some((_, None, Some(mibs))) => {
                (format!("≥ {mibs:.0} MiB/s"), m.mib_per_sec() / mibs * 100.0)
            }
            _ => ("—".to_string(), f64::NAN),
        };
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.1} | {} | {} | {:.0} % |",
            m.name,
            m.records,
            m.bytes as f64 / (1024.0 * 1024.0),
            m.seconds,
            m.records_per_sec(),
            m.mib_per_sec(),
            m.peak_rss_mib.map_or("n/a".into(), |r| format!("{r:.0}")),
            target,
            pct,
        )?;
    }
    Ok(())
}
