//! Human-facing output on stderr that cooperates with live progress bars: while bars are drawn,
//! notes and log lines are printed above them instead of tearing them.

use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::MultiProgress;

use crate::cli::LogFormat;

/// The progress bars currently drawn, if any.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

fn bars() -> Option<MultiProgress> {
    BARS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Registers (or, with `None`, unregisters) the progress bars output must be printed around.
pub fn set_bars(bars: Option<MultiProgress>) {
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = bars;
}

/// Runs `f` with the progress bars (if any) hidden, so that it can write to stderr.
fn with_bars_hidden<R>(f: impl FnOnce() -> R) -> R {
    match bars() {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// Prints one line to stderr, above any progress bars. Output errors are ignored: a closed stderr
/// must not stop a pipeline.
pub fn note(line: &str) {
    with_bars_hidden(|| {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "{line}");
    });
}

/// A stderr writer for log output that prints above any progress bars.
#[derive(Debug, Default, Clone, Copy)]
pub struct StderrAboveBars;

impl Write for StderrAboveBars {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        with_bars_hidden(|| io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Sets up logging to stderr: `RUST_LOG` if set, else `level` (a level or a filter directive);
/// as text lines or, with [`LogFormat::Json`], one JSON object per line.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG={v:?}: {e}"))?
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| StderrAboveBars);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()))
            .try_init()
            .map_err(|e| e.to_string()),
    }
}
