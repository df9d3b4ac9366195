//! Throughput of the `file` connector without the engine.
//!
//! ```text
//! cargo run --release -p sluice-connectors --example file_bench -- gen   bench-data/lines.jsonl 1024
//! cargo run --release -p sluice-connectors --example file_bench -- read  bench-data/lines.jsonl [max]
//! cargo run --release -p sluice-connectors --example file_bench -- write bench-data/out.jsonl 1024 [always|never]
//! cargo run --release -p sluice-connectors --example file_bench -- copy  bench-data/lines.jsonl bench-data/out.jsonl [always|never]
//! ```
//!
//! `gen` writes N MiB of 200-byte JSON lines; `read` drains the source like a blackhole would;
//! `write` feeds the destination N MiB of 200-byte records, acking every 50 ms as the engine does;
//! `copy` pipes the source into the destination the same way. Each prints MiB/s, lines/s and the
//! process's peak RSS.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_connectors::file::FilePlugin;
use sluice_sdk::{Destination, Plugin, Position, Record, Settings};

const LINE: usize = 200;
const ACK_EVERY: Duration = Duration::from_millis(50);

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let runtime = tokio::runtime::Runtime::new()?;
    match (arg(0), arg(1)) {
        (Some("gen"), Some(path)) => generate(Path::new(path), mib(arg(2))?),
        (Some("read"), Some(path)) => runtime.block_on(read(path, batch(arg(2))?)),
        (Some("write"), Some(path)) => {
            runtime.block_on(write(path, mib(arg(2))?, arg(3).unwrap_or("always")))
        }
        (Some("copy"), Some(input)) => {
            let output = arg(2).ok_or("copy needs an output path")?;
            runtime.block_on(copy(input, output, arg(3).unwrap_or("always")))
        }
        _ => Err("usage: file_bench gen|read|write|copy PATH [...] (see the source)".into()),
    }
}

fn mib(arg: Option<&str>) -> Result<u64, BoxError> {
    Ok(arg.unwrap_or("1024").parse()?)
}

fn batch(arg: Option<&str>) -> Result<usize, BoxError> {
    Ok(arg.unwrap_or("4096").parse()?)
}

/// The `i`-th 200-byte JSON line, newline included.
fn line(i: u64) -> Vec<u8> {
    let mut l = format!(
        "{{\"id\":{i},\"ts\":\"2024-05-01T12:00:00.{:06}Z\",\"user\":\"user-{:05}\",\"event\":\"click\",\"data\":\"",
        i % 1_000_000,
        i % 100_000
    )
    .into_bytes();
    while l.len() < LINE - 3 {
        l.push(b'a' + (l.len() % 26) as u8);
    }
    l.extend_from_slice(b"\"}\n");
    l
}

fn generate(path: &Path, mib: u64) -> Result<(), BoxError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let lines = (mib << 20) / LINE as u64;
    for i in 0..lines {
        out.write_all(&line(i))?;
    }
    out.flush()?;
    println!("wrote {lines} lines ({mib} MiB) to {}", path.display());
    Ok(())
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn report(what: &str, bytes: u64, lines: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what}: {:.0} MiB in {secs:.2} s = {:.0} MiB/s, {:.2} M lines/s; peak RSS {}",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs,
        lines as f64 / secs / 1e6,
        peak_rss()
    );
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn read(path: &str, max: usize) -> Result<(), BoxError> {
    let mut src = FilePlugin.new_source().ok_or("no source side")?;
    src.configure(&settings(&[("path", path)])).await?;
    src.open(None).await?;
    let start = Instant::now();
    let (mut lines, mut bytes) = (0u64, 0u64);
    loop {
        let batch = src.read(max).await?;
        lines += batch.records.len() as u64;
        bytes += batch
            .records
            .iter()
            .map(|r| r.size() as u64 + 1)
            .sum::<u64>();
        if batch.end_of_stream {
            break;
        }
    }
    report("read", bytes, lines, start.elapsed());
    src.teardown().await?;
    Ok(())
}

async fn open_destination(path: &str, fsync: &str) -> Result<Box<dyn Destination>, BoxError> {
    let _ = std::fs::remove_file(path);
    let mut dst = FilePlugin.new_destination().ok_or("no destination side")?;
    dst.configure(&settings(&[("path", path), ("fsync", fsync)]))
        .await?;
    dst.open().await?;
    Ok(dst)
}

async fn write(path: &str, mib: u64, fsync: &str) -> Result<(), BoxError> {
    let mut dst = open_destination(path, fsync).await?;
    let records: Vec<Record> = (0..4096u64)
        .map(|i| {
            let mut l = line(i);
            l.pop();
            Record::new(Position::from_u64(i), Bytes::from(l))
        })
        .collect();
    let total = (mib << 20) / LINE as u64;
    let start = Instant::now();
    let mut last_ack = start;
    let (mut written, mut acked, mut acks) = (0u64, 0u64, 0u64);
    while written < total {
        let n = (total - written).min(records.len() as u64) as usize;
        dst.write(&records[..n]).await?;
        written += n as u64;
        if last_ack.elapsed() >= ACK_EVERY {
            acked += dst.ack().await?.count as u64;
            acks += 1;
            last_ack = Instant::now();
        }
    }
    acked += dst.ack().await?.count as u64;
    let elapsed = start.elapsed();
    report(
        &format!("write fsync={fsync} ({} acks)", acks + 1),
        written * LINE as u64,
        acked,
        elapsed,
    );
    dst.teardown().await?;
    Ok(())
}

async fn copy(input: &str, output: &str, fsync: &str) -> Result<(), BoxError> {
    let mut src = FilePlugin.new_source().ok_or("no source side")?;
    src.configure(&settings(&[("path", input)])).await?;
    src.open(None).await?;
    let mut dst = open_destination(output, fsync).await?;
    let start = Instant::now();
    let mut last_ack = start;
    let (mut lines, mut bytes, mut acks) = (0u64, 0u64, 0u64);
    loop {
        let batch = src.read(4096).await?;
        bytes += batch
            .records
            .iter()
            .map(|r| r.size() as u64 + 1)
            .sum::<u64>();
        dst.write(&batch.records).await?;
        if last_ack.elapsed() >= ACK_EVERY || batch.end_of_stream {
            let acked = dst.ack().await?;
            lines += acked.count as u64;
            acks += 1;
            last_ack = Instant::now();
        }
        if batch.end_of_stream {
            break;
        }
    }
    report(
        &format!("copy fsync={fsync} ({acks} acks)"),
        bytes,
        lines,
        start.elapsed(),
    );
    dst.teardown().await?;
    src.teardown().await?;
    Ok(())
}
