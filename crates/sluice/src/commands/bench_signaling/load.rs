//! The load: `concurrency` connections, each a task sending start (provider pull: no
//! `dataAddress`, a unique `processId` and `messageId`) then terminate of the returned flow, one
//! pair after another, for a fixed time; pair latencies go to one histogram per connection.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Deserialize;

use super::client::{ClientError, Connection};
use super::cpu::process_cpu;
use super::server::BASE_PATH;
use super::BenchError;

/// What one measurement window produced.
#[derive(Debug)]
pub struct Outcome {
    /// Pairs completed (both answered 200) inside the window.
    pub pairs: u64,
    /// Requests that failed (a non-200 answer, a connection error, an unreadable body).
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Pair latencies in microseconds.
    pub latency: Histogram<u64>,
    /// The length of the window.
    pub elapsed: Duration,
    /// CPU time the whole process (server and load generator) used in the window, if known.
    pub cpu: Option<Duration>,
}

/// The shape of the timing: a warm-up whose pairs are not counted, then the window.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Not counted.
    pub warmup: Duration,
    /// Counted.
    pub measure: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    data_flow_id: String,
}

/// Drives `concurrency` connections against `addr` and merges what they saw.
pub async fn drive(
    addr: SocketAddr,
    concurrency: usize,
    timing: Timing,
    run_tag: &str,
) -> Result<Outcome, BenchError> {
    let start = Instant::now();
    let counted_from = start + timing.warmup;
    let deadline = counted_from + timing.measure;
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(counted_from.into()).await;
        let before = process_cpu();
        tokio::time::sleep_until(deadline.into()).await;
        Some(process_cpu()?.saturating_sub(before?))
    });
    let mut tasks = Vec::with_capacity(concurrency);
    for conn in 0..concurrency {
        let prefix = format!("{run_tag}-{conn}");
        tasks.push(tokio::spawn(connection(
            addr,
            prefix,
            counted_from,
            deadline,
        )));
    }
    let mut total = Outcome {
        pairs: 0,
        errors: 0,
        first_error: None,
        latency: new_histogram()?,
        elapsed: timing.measure,
        cpu: None,
    };
    for task in tasks {
        let one = task
            .await
            .map_err(|e| BenchError::new(format!("a load task failed: {e}")))??;
        total.pairs += one.pairs;
        total.errors += one.errors;
        if total.first_error.is_none() {
            total.first_error = one.first_error;
        }
        total
            .latency
            .add(&one.latency)
            .map_err(|e| BenchError::new(format!("merging histograms: {e}")))?;
    }
    total.cpu = cpu.await.ok().flatten();
    Ok(total)
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::new(format!("cannot make a histogram: {e}")))
}

/// One connection's loop; reconnects after a connection error.
async fn connection(
    addr: SocketAddr,
    prefix: String,
    counted_from: Instant,
    deadline: Instant,
) -> Result<Outcome, BenchError> {
    let mut out = Outcome {
        pairs: 0,
        errors: 0,
        first_error: None,
        latency: new_histogram()?,
        elapsed: Duration::ZERO,
        cpu: None,
    };
    let start_path = format!("{BASE_PATH}/dataflows/start");
    let mut conn: Option<Connection> = None;
    let mut n: u64 = 0;
    let mut body = Vec::with_capacity(512);
    let mut terminate_path = String::with_capacity(96);
    loop {
        let began = Instant::now();
        if began >= deadline {
            return Ok(out);
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match Connection::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    note(&mut out, e.to_string());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        n += 1;
        body.clear();
        start_body(&mut body, &prefix, n);
        let id = match c.post(&start_path, &body).await {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<Created>(r.body) {
                Ok(created) => created.data_flow_id,
                Err(e) => {
                    note(&mut out, format!("start answered an unreadable body: {e}"));
                    continue;
                }
            },
            Ok(r) => {
                let text = String::from_utf8_lossy(r.body).into_owned();
                note(&mut out, format!("start answered {}: {text}", r.status));
                continue;
            }
            Err(e) => {
                fail(&mut out, &mut conn, e);
                continue;
            }
        };
        terminate_path.clear();
        terminate_path.push_str(BASE_PATH);
        terminate_path.push_str("/dataflows/");
        terminate_path.push_str(&id);
        terminate_path.push_str("/terminate");
        body.clear();
        body.extend_from_slice(b"{\"messageId\":\"t-");
        body.extend_from_slice(prefix.as_bytes());
        // Writing into a Vec cannot fail.
        let _ = write!(body, "-{n}\",\"reason\":\"bench\"}}");
        match c.post(&terminate_path, &body).await {
            Ok(r) if r.status == 200 => {
                let done = Instant::now();
                if began >= counted_from && done <= deadline {
                    out.pairs += 1;
                    let us =
                        u64::try_from(done.duration_since(began).as_micros()).unwrap_or(u64::MAX);
                    out.latency.saturating_record(us.max(1));
                }
            }
            Ok(r) => {
                let text = String::from_utf8_lossy(r.body).into_owned();
                note(&mut out, format!("terminate answered {}: {text}", r.status));
            }
            Err(e) => fail(&mut out, &mut conn, e),
        }
    }
}

/// A provider-pull start message with a unique process and message id.
fn start_body(body: &mut Vec<u8>, prefix: &str, n: u64) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        body,
        "{{\"messageId\":\"m-{prefix}-{n}\",\"participantId\":\"did:web:provider\",\
         \"counterPartyId\":\"did:web:consumer\",\"dataspaceContext\":\"bench\",\
         \"processId\":\"p-{prefix}-{n}\",\"agreementId\":\"agreement-1\",\
         \"datasetId\":\"dataset-1\",\
         \"profile\":\"https://w3id.org/dspace-sig/profile/http-pull\"}}"
    );
}

fn note(out: &mut Outcome, error: String) {
    out.errors += 1;
    if out.first_error.is_none() {
        out.first_error = Some(error);
    }
}

/// A connection-level failure: counted, and the connection is replaced.
fn fail(out: &mut Outcome, conn: &mut Option<Connection>, e: ClientError) {
    note(out, e.to_string());
    *conn = None;
}
