//! The running pipeline: five kinds of task joined by bounded channels.
//!
//! ```text
//! source ──batch──▶ collector ◀──settled── destination (one task each)
//!   │                  │ completed, in order
//!   └──records──▶ destinations           ▼
//!   ▲                            checkpointer ── saves the position durably
//!   └──────────────── acks ─────────────┘        then forwards the acks
//! ```
//! A batch holds a semaphore permit from the moment it is read until the source has acked it, so
//! memory is bounded by `max_in_flight_batches` whatever the speed of each side.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sluice_sdk::{ConnectorError, Destination, Position, Processed, Processor, Record, Source};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::PipelineState as StoredState;
use crate::config::PipelineOptions;
use crate::error::EngineError;
use crate::metrics::{lock, PipelineMetrics, PipelineState};
use crate::nack_window::NackWindow;

/// Tokens that stop a pipeline: `stop` drains gracefully, `halt` ends every task at once.
#[derive(Clone, Default)]
pub(crate) struct Signals {
    pub stop: CancellationToken,
    pub halt: CancellationToken,
}

/// A batch read from the source, tracked until every destination settled it.
struct Batch {
    seq: u64,
    positions: Vec<Position>,
    records: Arc<Vec<Record>>,
    /// Records a processor rejected: (record, processor id, reason).
    failed: Vec<(Record, String, String)>,
    permit: OwnedSemaphorePermit,
}

/// The processor chain, each with its id.
pub(crate) type Chain = Vec<(String, Box<dyn Processor>)>;

/// A settled batch on its way to the checkpoint and the source's ack.
struct Completed {
    positions: Vec<Position>,
    _permit: OwnedSemaphorePermit,
}

/// A destination's report to the collector.
enum Report {
    /// Every batch up to `up_to` is settled; these (batch seq, index, reason) failed.
    Settled {
        dest: usize,
        up_to: u64,
        nacks: Vec<(u64, usize, String)>,
    },
    /// The destination wrote and settled everything and shut down.
    Done { dest: usize },
}

/// Everything the tasks share.
pub(crate) struct Shared {
    pub pipeline: String,
    pub source_id: String,
    pub destination_ids: Vec<String>,
    pub options: PipelineOptions,
    pub metrics: Arc<PipelineMetrics>,
    pub signals: Signals,
    pub state: StoredState,
}

impl Shared {
    fn connector_error(
        &self,
        connector: &str,
        action: &'static str,
        e: ConnectorError,
    ) -> EngineError {
        EngineError::Connector {
            pipeline: self.pipeline.clone(),
            connector: connector.to_string(),
            action,
            source: Box::new(e),
        }
    }

    fn internal(&self, message: impl Into<String>) -> EngineError {
        EngineError::Internal {
            pipeline: self.pipeline.clone(),
            message: message.into(),
        }
    }
}

/// The dead-letter queue as the collector sees it.
pub(crate) struct DeadLetter {
    pub destination: Box<dyn Destination>,
    pub window: NackWindow,
    pub window_size: usize,
    pub threshold: usize,
}

/// Runs the pipeline to its end; returns the first error any task hit.
pub(crate) async fn run(
    shared: Arc<Shared>,
    source: Box<dyn Source>,
    processors: Chain,
    destinations: Vec<Box<dyn Destination>>,
    dlq: DeadLetter,
) -> Result<(), EngineError> {
    let in_flight = shared.options.max_in_flight_batches.max(1);
    let semaphore = Arc::new(Semaphore::new(in_flight));
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(in_flight);
    let (report_tx, report_rx) = mpsc::channel::<Report>(in_flight + destinations.len());
    let (done_tx, done_rx) = mpsc::channel::<Completed>(in_flight);
    let (ack_tx, ack_rx) = mpsc::channel::<Vec<Completed>>(in_flight);

    let mut tasks = tokio::task::JoinSet::new();
    let mut record_txs = Vec::with_capacity(destinations.len());
    for (i, dest) in destinations.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<(u64, Arc<Vec<Record>>)>(in_flight);
        record_txs.push(tx);
        tasks.spawn(destination_task(
            shared.clone(),
            i,
            dest,
            rx,
            report_tx.clone(),
        ));
    }
    drop(report_tx);
    tasks.spawn(collector_task(
        shared.clone(),
        batch_rx,
        report_rx,
        done_tx,
        dlq,
    ));
    tasks.spawn(checkpoint_task(shared.clone(), done_rx, ack_tx));
    tasks.spawn(source_task(
        shared.clone(),
        source,
        processors,
        semaphore,
        batch_tx,
        record_txs,
        ack_rx,
    ));
    shared.metrics.set_state(PipelineState::Running);

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| Err(shared.internal(format!("a task failed: {e}"))));
        if let Err(e) = result {
            if first_error.is_none() {
                tracing::error!(pipeline = %shared.pipeline, error = %e, "pipeline failed");
                first_error = Some(e);
            }
            shared.signals.halt.cancel();
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if shared.signals.halt.is_cancelled() => Err(EngineError::Killed {
            pipeline: shared.pipeline.clone(),
        }),
        None => Ok(()),
    }
}

/// Sends on a bounded channel unless the pipeline is halted; false if halted or closed.
async fn send<T>(tx: &mpsc::Sender<T>, value: T, halt: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = halt.cancelled() => false,
        r = tx.send(value) => r.is_ok(),
    }
}

async fn source_task(
    shared: Arc<Shared>,
    mut source: Box<dyn Source>,
    mut processors: Chain,
    semaphore: Arc<Semaphore>,
    batch_tx: mpsc::Sender<Batch>,
    record_txs: Vec<mpsc::Sender<(u64, Arc<Vec<Record>>)>>,
    mut ack_rx: mpsc::Receiver<Vec<Completed>>,
) -> Result<(), EngineError> {
    let id = shared.source_id.as_str();
    let halt = &shared.signals.halt;
    let stop = &shared.signals.stop;
    let m = &shared.metrics;
    let mut seq = 0u64;
    let mut ended = false;

    'read: while !ended && !stop.is_cancelled() {
        while let Ok(acks) = ack_rx.try_recv() {
            deliver_acks(&shared, &mut source, acks).await?;
        }
        let permit = loop {
            tokio::select! {
                biased;
                _ = halt.cancelled() => return Ok(()),
                _ = stop.cancelled() => break 'read,
                Some(acks) = ack_rx.recv() => deliver_acks(&shared, &mut source, acks).await?,
                p = semaphore.clone().acquire_owned() => {
                    break p.map_err(|_| shared.internal("in-flight semaphore closed"))?;
                }
            }
        };
        let batch = tokio::select! {
            biased;
            _ = halt.cancelled() => return Ok(()),
            _ = stop.cancelled() => break 'read,
            r = source.read(shared.options.batch_size) => {
                r.map_err(|e| shared.connector_error(id, "read", e))?
            }
        };
        ended = batch.end_of_stream;
        if let Some(p) = source.progress() {
            *lock(&m.progress) = Some(p);
        }
        if batch.records.is_empty() {
            continue;
        }
        let records = batch.records;
        let bytes: usize = records.iter().map(Record::size).sum();
        m.records_in.fetch_add(records.len() as u64, Relaxed);
        m.bytes_in.fetch_add(bytes as u64, Relaxed);
        let positions: Vec<Position> = records.iter().map(|r| r.position.clone()).collect();
        let (records, failed) = if processors.is_empty() {
            (records, Vec::new())
        } else {
            tokio::select! {
                biased;
                _ = halt.cancelled() => return Ok(()),
                r = run_chain(&shared, &mut processors, records) => r?,
            }
        };
        let records = Arc::new(records);
        let batch = Batch {
            seq,
            positions,
            records: records.clone(),
            failed,
            permit,
        };
        if !send(&batch_tx, batch, halt).await {
            return Ok(());
        }
        for tx in &record_txs {
            if !send(tx, (seq, records.clone()), halt).await {
                return Ok(());
            }
        }
        seq += 1;
    }

    if !ended {
        shared.metrics.set_state(PipelineState::Stopping);
    }
    let last = source
        .stop()
        .await
        .map_err(|e| shared.connector_error(id, "stop", e))?;
    tracing::debug!(pipeline = %shared.pipeline, last = ?last, "source stopped");
    drop(batch_tx);
    drop(record_txs);
    loop {
        tokio::select! {
            biased;
            _ = halt.cancelled() => return Ok(()),
            acks = ack_rx.recv() => match acks {
                Some(acks) => deliver_acks(&shared, &mut source, acks).await?,
                None => break,
            },
        }
    }
    source
        .teardown()
        .await
        .map_err(|e| shared.connector_error(id, "teardown", e))?;
    for (pid, p) in &mut processors {
        p.teardown()
            .await
            .map_err(|e| shared.connector_error(pid, "teardown", e))?;
    }
    Ok(())
}

/// Runs a batch through the processor chain: what passes, and what a processor rejected.
async fn run_chain(
    shared: &Shared,
    chain: &mut Chain,
    mut records: Vec<Record>,
) -> Result<(Vec<Record>, Vec<(Record, String, String)>), EngineError> {
    let mut failed = Vec::new();
    for (id, processor) in chain.iter_mut() {
        if records.is_empty() {
            break;
        }
        let n = records.len();
        let inputs = records.clone();
        let outcomes = processor
            .process(records)
            .await
            .map_err(|e| shared.connector_error(id, "process", e))?;
        if outcomes.len() != n {
            return Err(shared.internal(format!(
                "processor {id:?} returned {} outcomes for {n} records",
                outcomes.len()
            )));
        }
        records = Vec::with_capacity(n);
        for (outcome, input) in outcomes.into_iter().zip(inputs) {
            match outcome {
                Processed::Keep(r) => records.push(r),
                Processed::Filtered => {}
                Processed::Failed(reason) => failed.push((input, id.clone(), reason)),
            }
        }
    }
    Ok((records, failed))
}

/// Acknowledges checkpointed batches to the source, in order.
async fn deliver_acks(
    shared: &Shared,
    source: &mut Box<dyn Source>,
    acks: Vec<Completed>,
) -> Result<(), EngineError> {
    for c in acks {
        source
            .ack(&c.positions)
            .await
            .map_err(|e| shared.connector_error(&shared.source_id, "ack", e))?;
        shared
            .metrics
            .acked
            .fetch_add(c.positions.len() as u64, Relaxed);
    }
    Ok(())
}

/// Batches written to one destination and not yet settled.
#[derive(Default)]
struct Unsettled {
    batches: VecDeque<(u64, usize)>,
    records: usize,
    deadline: Option<Instant>,
}

async fn destination_task(
    shared: Arc<Shared>,
    index: usize,
    mut dest: Box<dyn Destination>,
    mut rx: mpsc::Receiver<(u64, Arc<Vec<Record>>)>,
    report_tx: mpsc::Sender<Report>,
) -> Result<(), EngineError> {
    let id = shared.destination_ids[index].clone();
    let halt = &shared.signals.halt;
    let m = &shared.metrics;
    let settle_every = (shared.options.max_in_flight_batches / 2).max(1);
    let mut pending = Unsettled::default();
    let mut last: Option<Position> = None;
    let far = Duration::from_secs(86_400);

    loop {
        let deadline = pending.deadline.unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            biased;
            _ = halt.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(deadline), if pending.deadline.is_some() => {
                if !settle(&shared, index, &id, &mut dest, &mut pending, &report_tx).await? {
                    return Ok(());
                }
            }
            msg = rx.recv() => {
                let Some((seq, records)) = msg else { break };
                tokio::select! {
                    biased;
                    _ = halt.cancelled() => return Ok(()),
                    r = dest.write(&records) => r.map_err(|e| shared.connector_error(&id, "write", e))?,
                }
                let bytes: usize = records.iter().map(Record::size).sum();
                m.records_out.fetch_add(records.len() as u64, Relaxed);
                m.bytes_out.fetch_add(bytes as u64, Relaxed);
                last = records.last().map(|r| r.position.clone());
                pending.batches.push_back((seq, records.len()));
                pending.records += records.len();
                if pending.deadline.is_none() {
                    pending.deadline = Some(Instant::now() + shared.options.ack_interval);
                }
                if pending.batches.len() >= settle_every
                    && !settle(&shared, index, &id, &mut dest, &mut pending, &report_tx).await?
                {
                    return Ok(());
                }
            }
        }
    }
    dest.stop(last.as_ref())
        .await
        .map_err(|e| shared.connector_error(&id, "stop", e))?;
    if !settle(&shared, index, &id, &mut dest, &mut pending, &report_tx).await? {
        return Ok(());
    }
    if !send(&report_tx, Report::Done { dest: index }, halt).await {
        return Ok(());
    }
    dest.teardown()
        .await
        .map_err(|e| shared.connector_error(&id, "teardown", e))
}

/// Asks a destination to settle what it was given and reports it; false if the pipeline halted.
async fn settle(
    shared: &Shared,
    index: usize,
    id: &str,
    dest: &mut Box<dyn Destination>,
    pending: &mut Unsettled,
    report_tx: &mpsc::Sender<Report>,
) -> Result<bool, EngineError> {
    pending.deadline = None;
    let Some(&(up_to, _)) = pending.batches.back() else {
        return Ok(true);
    };
    let acks = tokio::select! {
        biased;
        _ = shared.signals.halt.cancelled() => return Ok(false),
        r = dest.ack() => r.map_err(|e| shared.connector_error(id, "ack", e))?,
    };
    if acks.count != pending.records {
        return Err(shared.internal(format!(
            "destination {id:?} settled {} records but {} were written",
            acks.count, pending.records
        )));
    }
    let mut nacks = Vec::with_capacity(acks.nacks.len());
    if !acks.nacks.is_empty() {
        let mut sorted = acks.nacks;
        sorted.sort_by_key(|n| n.index);
        let mut batches = pending.batches.iter();
        let mut base = 0usize;
        let mut current = batches.next().copied();
        for nack in sorted {
            while let Some((_, len)) = current {
                if nack.index < base + len {
                    break;
                }
                base += len;
                current = batches.next().copied();
            }
            let Some((seq, _)) = current else {
                return Err(shared.internal(format!(
                    "destination {id:?} nacked record {} of {}",
                    nack.index, pending.records
                )));
            };
            nacks.push((seq, nack.index - base, nack.reason));
        }
    }
    pending.batches.clear();
    pending.records = 0;
    Ok(send(
        report_tx,
        Report::Settled {
            dest: index,
            up_to,
            nacks,
        },
        &shared.signals.halt,
    )
    .await)
}

/// A batch waiting for every destination, with the nacks reported for it so far.
struct Tracked {
    batch: Batch,
    nacks: Vec<(usize, usize, String)>,
}

async fn collector_task(
    shared: Arc<Shared>,
    mut batch_rx: mpsc::Receiver<Batch>,
    mut report_rx: mpsc::Receiver<Report>,
    done_tx: mpsc::Sender<Completed>,
    mut dlq: DeadLetter,
) -> Result<(), EngineError> {
    let halt = &shared.signals.halt;
    let n = shared.destination_ids.len();
    let mut tracked: VecDeque<Tracked> = VecDeque::new();
    let mut settled: Vec<Option<u64>> = vec![None; n];
    let mut finished = vec![false; n];
    let mut source_done = false;

    loop {
        if source_done && finished.iter().all(|f| *f) {
            if !tracked.is_empty() {
                return Err(shared.internal(format!(
                    "{} batches were never settled by the destinations",
                    tracked.len()
                )));
            }
            break;
        }
        tokio::select! {
            biased;
            _ = halt.cancelled() => return Ok(()),
            report = report_rx.recv(), if !finished.iter().all(|f| *f) => {
                // A report can only name batches already sent to the collector: take them first.
                while let Ok(b) = batch_rx.try_recv() {
                    tracked.push_back(Tracked { batch: b, nacks: Vec::new() });
                }
                match report {
                    Some(Report::Settled { dest, up_to, nacks }) => {
                        settled[dest] = Some(up_to);
                        for (seq, idx, reason) in nacks {
                            let front = tracked.front().map_or(0, |t| t.batch.seq);
                            match tracked.get_mut(seq.wrapping_sub(front) as usize) {
                                Some(t) if t.batch.seq == seq => t.nacks.push((idx, dest, reason)),
                                _ => return Err(shared.internal(format!("nack for unknown batch {seq}"))),
                            }
                        }
                    }
                    Some(Report::Done { dest }) => finished[dest] = true,
                    None => return Err(shared.internal("every destination task ended early")),
                }
            }
            batch = batch_rx.recv(), if !source_done => match batch {
                Some(b) => tracked.push_back(Tracked { batch: b, nacks: Vec::new() }),
                None => source_done = true,
            },
        }
        let Some(all) = settled.iter().copied().min().flatten() else {
            continue;
        };
        while tracked.front().is_some_and(|t| t.batch.seq <= all) {
            let Some(t) = tracked.pop_front() else { break };
            let completed = complete(&shared, t, &mut dlq).await?;
            if !send(&done_tx, completed, halt).await {
                return Ok(());
            }
        }
    }
    drop(done_tx);
    dlq.destination
        .teardown()
        .await
        .map_err(|e| shared.connector_error("dlq", "teardown", e))
}

/// Applies a settled batch's nacks (dead-letter queue and window) and releases it for checkpointing.
async fn complete(
    shared: &Shared,
    t: Tracked,
    dlq: &mut DeadLetter,
) -> Result<Completed, EngineError> {
    let Tracked { batch, mut nacks } = t;
    for (record, processor, reason) in &batch.failed {
        nack(shared, dlq, record, processor, reason).await?;
    }
    let len = batch.records.len();
    if !nacks.is_empty() {
        nacks.sort_by_key(|(idx, _, _)| *idx);
        nacks.dedup_by_key(|(idx, _, _)| *idx);
        let mut next = 0usize;
        for (idx, dest, reason) in nacks {
            dlq.window.acks(idx.saturating_sub(next) as u64);
            next = idx + 1;
            let record = batch.records.get(idx).ok_or_else(|| {
                shared.internal(format!("nack of record {idx} in a batch of {len}"))
            })?;
            nack(shared, dlq, record, &shared.destination_ids[dest], &reason).await?;
        }
        dlq.window.acks(len.saturating_sub(next) as u64);
    } else {
        dlq.window.acks(len as u64);
    }
    Ok(Completed {
        positions: batch.positions,
        _permit: batch.permit,
    })
}

/// Counts a nack in the window; stops the pipeline past the threshold, else dead-letters the record.
async fn nack(
    shared: &Shared,
    dlq: &mut DeadLetter,
    record: &Record,
    connector: &str,
    reason: &str,
) -> Result<(), EngineError> {
    shared.metrics.nacked.fetch_add(1, Relaxed);
    if !dlq.window.nack() {
        return Err(EngineError::NackThreshold {
            pipeline: shared.pipeline.clone(),
            connector: connector.to_string(),
            position: record.position.to_string(),
            reason: reason.to_string(),
            threshold: dlq.threshold,
            window: dlq.window_size,
        });
    }
    dead_letter(shared, dlq, record, connector, reason).await
}

/// Writes one nacked record to the dead-letter destination and waits until it is settled there.
async fn dead_letter(
    shared: &Shared,
    dlq: &mut DeadLetter,
    record: &Record,
    connector: &str,
    reason: &str,
) -> Result<(), EngineError> {
    let mut r = record.clone();
    r.metadata
        .insert("sluice.dlq.connector".into(), connector.to_string());
    r.metadata
        .insert("sluice.dlq.reason".into(), reason.to_string());
    r.metadata
        .insert("sluice.dlq.pipeline".into(), shared.pipeline.clone());
    let fail = |e| shared.connector_error("dlq", "write", e);
    dlq.destination
        .write(std::slice::from_ref(&r))
        .await
        .map_err(fail)?;
    let acks = dlq.destination.ack().await.map_err(fail)?;
    if let Some(n) = acks.nacks.first() {
        return Err(shared.internal(format!(
            "the dead-letter destination refused the record at position {}: {}",
            record.position, n.reason
        )));
    }
    shared.metrics.dead_lettered.fetch_add(1, Relaxed);
    Ok(())
}

async fn checkpoint_task(
    shared: Arc<Shared>,
    mut done_rx: mpsc::Receiver<Completed>,
    ack_tx: mpsc::Sender<Vec<Completed>>,
) -> Result<(), EngineError> {
    let halt = &shared.signals.halt;
    loop {
        let first = tokio::select! {
            biased;
            _ = halt.cancelled() => return Ok(()),
            c = done_rx.recv() => match c { Some(c) => c, None => break },
        };
        // Everything already settled rides on the same durable write (group commit).
        let mut group = vec![first];
        while let Ok(c) = done_rx.try_recv() {
            group.push(c);
        }
        let last = group
            .iter()
            .rev()
            .flat_map(|c| c.positions.iter().rev())
            .find(|p| !p.is_empty())
            .cloned();
        if let Some(p) = last {
            tokio::select! {
                biased;
                _ = halt.cancelled() => return Ok(()),
                r = shared.state.save_position(&shared.source_id, &p) => {
                    r.map_err(|source| EngineError::State {
                        pipeline: shared.pipeline.clone(),
                        action: "save checkpoint",
                        source,
                    })?;
                }
            }
            *lock(&shared.metrics.last_checkpoint) = Some(p);
        }
        if !send(&ack_tx, group, halt).await {
            return Ok(());
        }
    }
    Ok(())
}
