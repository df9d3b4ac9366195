//! Live progress of running pipelines on stderr: bars on a terminal, periodic lines otherwise, and
//! a final summary line per pipeline.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_engine::{MetricsSnapshot, PipelineController, PipelineState};
use sluice_sdk::ProgressUnit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ui;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redrawn bars, for a terminal.
    Bars,
    /// A plain line per pipeline every `every`, for logs and pipes.
    Lines {
        /// Time between lines.
        every: Duration,
    },
}

/// How often bars are redrawn.
const BAR_TICK: Duration = Duration::from_millis(200);

/// A pipeline being watched.
#[derive(Clone)]
pub struct Watched {
    /// The pipeline id.
    pub id: String,
    /// Its controller, for metrics.
    pub controller: PipelineController,
}

/// The running progress display; [`Display::finish`] ends it.
pub struct Display {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Display {
    /// Starts showing progress for `pipelines`.
    pub fn start(pipelines: Vec<Watched>, mode: Mode) -> Self {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            match mode {
                Mode::Bars => bars(pipelines, token).await,
                Mode::Lines { every } => lines(pipelines, every, token).await,
            }
        });
        Display { cancel, task }
    }

    /// Stops the display and removes any bars.
    pub async fn finish(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::debug!("progress display ended abnormally: {e}");
        }
    }
}

/// Records per second, smoothed.
#[derive(Default)]
struct Rate {
    last: Option<(Instant, u64)>,
    per_sec: f64,
}

impl Rate {
    fn update(&mut self, now: Instant, count: u64) -> f64 {
        if let Some((then, before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                let instant = count.saturating_sub(before) as f64 / secs;
                self.per_sec = if self.per_sec == 0.0 {
                    instant
                } else {
                    0.7 * self.per_sec + 0.3 * instant
                };
            }
        }
        self.last = Some((now, count));
        self.per_sec
    }
}

/// The counters as a short phrase: `1200 records · 350/s · acked 1100 · lag 100`. A pipeline that
/// ended shows no rate, and says how it ended; one with a degraded connector ends with
/// `degraded: <reason>` (the reasons of every degraded connector, `; `-separated).
pub fn counters(m: &MetricsSnapshot, rate: f64) -> String {
    let ended = matches!(m.state, PipelineState::Stopped | PipelineState::Failed);
    let mut s = if ended {
        format!(
            "{} records · acked {} · lag {}",
            m.records_in, m.acked, m.lag
        )
    } else {
        format!(
            "{} records · {:.0}/s · acked {} · lag {}",
            m.records_in, rate, m.acked, m.lag
        )
    };
    if m.nacked > 0 {
        s.push_str(&format!(" · nacked {}", m.nacked));
    }
    if m.dead_lettered > 0 {
        s.push_str(&format!(" · dead-lettered {}", m.dead_lettered));
    }
    match m.state {
        PipelineState::Starting => s.push_str(" · starting"),
        PipelineState::Stopping => s.push_str(" · stopping"),
        PipelineState::Stopped => s.push_str(" · done"),
        PipelineState::Failed => s.push_str(" · failed"),
        PipelineState::Running | PipelineState::Degraded => {}
    }
    if !ended && !m.degraded.is_empty() {
        let reasons: Vec<&str> = m.degraded.iter().map(|(_, r)| r.as_str()).collect();
        s.push_str(&format!(" · degraded: {}", reasons.join("; ")));
    }
    s
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BarKind {
    Spinner,
    Records,
    Bytes,
}

fn style(kind: BarKind) -> ProgressStyle {
    let template = match kind {
        BarKind::Spinner => "{prefix:.bold} {spinner} {msg}",
        BarKind::Records => "{prefix:.bold} [{bar:30.cyan/blue}] {percent:>3}% {msg}",
        BarKind::Bytes => "{prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} · {msg}",
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// One pipeline's bar.
struct Shown {
    watched: Watched,
    bar: ProgressBar,
    kind: BarKind,
    rate: Rate,
    /// The pipeline ended: the bar keeps its last state.
    ended: bool,
}

impl Shown {
    fn update(&mut self, now: Instant) {
        let m = self.watched.controller.metrics();
        let per_sec = self.rate.update(now, m.records_in);
        let wanted = match m.progress {
            Some(p) if p.total.is_some() => match p.unit {
                ProgressUnit::Records => BarKind::Records,
                ProgressUnit::Bytes => BarKind::Bytes,
            },
            _ => BarKind::Spinner,
        };
        if wanted != self.kind {
            self.bar.set_style(style(wanted));
            self.kind = wanted;
        }
        if let Some((done, total)) = m.progress.and_then(|p| p.total.map(|t| (p.done, t))) {
            self.bar.set_length(total);
            self.bar.set_position(done.min(total));
        }
        if self.kind == BarKind::Spinner {
            self.bar.tick();
        }
        self.ended = matches!(m.state, PipelineState::Stopped | PipelineState::Failed);
        self.bar.set_message(counters(&m, per_sec));
    }
}

async fn bars(pipelines: Vec<Watched>, cancel: CancellationToken) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    ui::set_bars(Some(multi.clone()));
    let mut shown: Vec<Shown> = pipelines
        .into_iter()
        .map(|w| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style(BarKind::Spinner));
            bar.set_prefix(w.id.clone());
            Shown {
                watched: w,
                bar,
                kind: BarKind::Spinner,
                rate: Rate::default(),
                ended: false,
            }
        })
        .collect();
    let mut tick = tokio::time::interval(BAR_TICK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for s in shown.iter_mut() {
            if !s.ended {
                s.update(now);
            }
        }
    }
    for s in &shown {
        s.bar.finish_and_clear();
    }
    ui::set_bars(None);
    let _ = multi.clear();
}

async fn lines(pipelines: Vec<Watched>, every: Duration, cancel: CancellationToken) {
    let mut rates: Vec<Rate> = pipelines.iter().map(|_| Rate::default()).collect();
    let start = Instant::now();
    for (w, rate) in pipelines.iter().zip(rates.iter_mut()) {
        rate.update(start, w.controller.metrics().records_in);
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for (w, rate) in pipelines.iter().zip(rates.iter_mut()) {
            let m = w.controller.metrics();
            let per_sec = rate.update(now, m.records_in);
            let mut line = format!("pipeline {:?}: {}", w.id, counters(&m, per_sec));
            if let Some(p) = m.progress {
                if let Some(total) = p.total.filter(|t| *t > 0) {
                    let pct = (p.done.min(total) as f64 / total as f64) * 100.0;
                    line.push_str(&format!(" · {pct:.0}% done"));
                }
            }
            ui::note(&line);
        }
    }
}

/// The final line for a pipeline that ended: counts, time and throughput, or its error.
pub fn summary(
    id: &str,
    m: &MetricsSnapshot,
    elapsed: Duration,
    error: Option<&str>,
    stopped_on_request: bool,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        m.records_in as f64 / secs
    } else {
        0.0
    };
    let counts = format!(
        "{} records read, {} written, {} acked, {} nacked, {} dead-lettered in {:.2}s ({:.0} records/s)",
        m.records_in, m.records_out, m.acked, m.nacked, m.dead_lettered, secs, rate
    );
    match error {
        Some(e) => format!("pipeline {id:?} failed: {e} ({counts})"),
        None if stopped_on_request => format!("pipeline {id:?} stopped: {counts}"),
        None => format!("pipeline {id:?} finished: {counts}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            records_in: 1200,
            bytes_in: 0,
            records_out: 1100,
            bytes_out: 0,
            acked: 1100,
            nacked: 0,
            dead_lettered: 0,
            lag: 100,
            last_checkpoint: None,
            progress: None,
            state: PipelineState::Running,
            degraded: vec![],
        }
    }

    #[test]
    fn counters_show_records_rate_acks_and_lag() {
        let mut m = snapshot();
        assert_eq!(
            counters(&m, 349.6),
            "1200 records · 350/s · acked 1100 · lag 100"
        );
        m.nacked = 3;
        m.dead_lettered = 2;
        m.state = PipelineState::Stopping;
        assert_eq!(
            counters(&m, 0.0),
            "1200 records · 0/s · acked 1100 · lag 100 · nacked 3 · dead-lettered 2 · stopping"
        );
        m.state = PipelineState::Stopped;
        m.lag = 0;
        assert_eq!(
            counters(&m, 5.0),
            "1200 records · acked 1100 · lag 0 · nacked 3 · dead-lettered 2 · done"
        );
    }

    #[test]
    fn counters_show_why_a_pipeline_is_degraded() {
        let mut m = snapshot();
        m.state = PipelineState::Degraded;
        m.degraded = vec![(
            "src".into(),
            "nats: nats://127.0.0.1:4222: connection refused, retrying in 800ms".into(),
        )];
        assert_eq!(
            counters(&m, 0.0),
            "1200 records · 0/s · acked 1100 · lag 100 · degraded: nats: nats://127.0.0.1:4222: \
             connection refused, retrying in 800ms"
        );
        m.state = PipelineState::Running;
        m.degraded.clear();
        assert_eq!(
            counters(&m, 0.0),
            "1200 records · 0/s · acked 1100 · lag 100"
        );
    }

    #[test]
    fn summaries_say_how_it_ended() {
        let m = snapshot();
        let s = summary("p", &m, Duration::from_secs(2), None, false);
        assert_eq!(
            s,
            "pipeline \"p\" finished: 1200 records read, 1100 written, 1100 acked, 0 nacked, 0 \
             dead-lettered in 2.00s (600 records/s)"
        );
        assert!(
            summary("p", &m, Duration::ZERO, None, true).starts_with("pipeline \"p\" stopped: ")
        );
        let f = summary("p", &m, Duration::from_secs(1), Some("boom"), false);
        assert!(f.starts_with("pipeline \"p\" failed: boom ("), "{f}");
    }

    #[test]
    fn rate_is_smoothed_per_second() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        assert_eq!(r.update(t0, 0), 0.0);
        let first = r.update(t0 + Duration::from_secs(1), 100);
        assert!((first - 100.0).abs() < 1e-6);
        let second = r.update(t0 + Duration::from_secs(2), 100);
        assert!((second - 70.0).abs() < 1e-6);
    }
}
