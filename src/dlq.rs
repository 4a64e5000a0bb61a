//! The dead-letter queue, for operators: list what is in it and why, and
//! redrive — move messages back to their source queue once the cause is
//! fixed. A redriven job runs again: ferry does not remember a dead-lettered
//! job as done (neither the seen-ID cache nor the idempotency store).
//!
//! ```
//! use ferry::backend::local::{LocalBackend, QueueOptions};
//! use ferry::backend::{OutgoingMessage, Queue};
//! use ferry::dlq::{self, RedriveOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ferry::BackendError> {
//! let local = LocalBackend::new();
//! let jobs = local.create_queue("jobs", QueueOptions::default());
//! let dead = local.create_queue("jobs-dlq", QueueOptions::default());
//! // What the acker writes for a job it dead-letters:
//! dead.send_batch(vec![OutgoingMessage::new("{\"key\":\"a.png\"}")
//!     .attribute(ferry::JOB_ID_ATTRIBUTE, "a")
//!     .attribute(ferry::DLQ_REASON_ATTRIBUTE, "missing object s3://in/a.png")
//!     .attribute(ferry::DLQ_SOURCE_ATTRIBUTE, "jobs")])
//!     .await?;
//! for entry in dlq::list(dead.as_ref(), 100).await? {
//!     println!("{}: {}", entry.job_id.as_deref().unwrap_or("?"), entry.reason.as_deref().unwrap_or(""));
//! }
//! // … upload the missing object, then:
//! let options = RedriveOptions { reason_contains: Some("missing object".into()), ..Default::default() };
//! let report = dlq::redrive(dead.as_ref(), jobs.as_ref(), &options).await?;
//! assert_eq!(report.moved, 1);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::backend::{OutgoingMessage, Queue, ReceivedMessage, MAX_BATCH};
use crate::error::BackendError;
use crate::job::{
    JobId, DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE,
    DLQ_TRUNCATED_ATTRIBUTE, JOB_ID_ATTRIBUTE,
};

/// How long a scan hides what it has seen (given back at its end).
const HOLD: Duration = Duration::from_secs(60);
/// How long one receive of a scan waits for messages.
const WAIT: Duration = Duration::from_millis(500);
/// Receives in a row that bring nothing new before a scan ends.
const EMPTY_RECEIVES: usize = 2;
/// Most receives in one scan, whatever the queue holds.
const MAX_RECEIVES: usize = 2_000;
/// Characters of the body a listing shows.
const PREVIEW: usize = 200;

/// One dead-letter entry, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The entry's message id.
    pub message_id: String,
    /// The job's id (`ferry-job-id`).
    pub job_id: Option<String>,
    /// Why it was dead-lettered (`ferry-dlq-reason`).
    pub reason: Option<String>,
    /// The queue it came from (`ferry-source-queue`).
    pub source: Option<String>,
    /// How many times it had been received (`ferry-receive-count`).
    pub receive_count: Option<u32>,
    /// The body's first 200 characters.
    pub body_preview: String,
    /// The body's length in bytes.
    pub body_len: usize,
    /// The body was cut to fit the queue's limit (`ferry-dlq-truncated`):
    /// it cannot be redriven as it is.
    pub truncated: bool,
}

impl DeadLetter {
    fn of(m: &ReceivedMessage) -> Self {
        let a = |k: &str| m.attributes.get(k).cloned();
        Self {
            message_id: m.message_id.clone(),
            job_id: a(JOB_ID_ATTRIBUTE),
            reason: a(DLQ_REASON_ATTRIBUTE),
            source: a(DLQ_SOURCE_ATTRIBUTE),
            receive_count: a(DLQ_RECEIVES_ATTRIBUTE).and_then(|v| v.parse().ok()),
            body_preview: m.body.chars().take(PREVIEW).collect(),
            body_len: m.body.len(),
            truncated: m.attributes.contains_key(DLQ_TRUNCATED_ATTRIBUTE),
        }
    }
}

/// Which entries a redrive moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveOptions {
    /// Only entries whose reason contains this text.
    pub reason_contains: Option<String>,
    /// Also entries that name another source queue, or none (by default
    /// only those whose `ferry-source-queue` is the target's name).
    pub any_source: bool,
    /// Move at most this many.
    pub max: Option<usize>,
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Entries looked at.
    pub scanned: usize,
    /// Sent back to the source queue and deleted from the dead-letter queue.
    pub moved: usize,
    /// Left in place: not matching the options, or truncated.
    pub skipped: usize,
    /// Left in place: the send back failed.
    pub failed: usize,
}

/// Scans `queue`: receives until nothing new comes (or `enough` says
/// stop), handing each new message to `each`; every message `each` keeps
/// (returns its handle for) is given back at the end.
async fn scan(
    queue: &dyn Queue,
    mut each: impl AsyncFnMut(Vec<ReceivedMessage>) -> Result<Vec<String>, BackendError>,
    mut enough: impl FnMut() -> bool,
) -> Result<(), BackendError> {
    let mut seen = HashSet::new();
    let mut kept: Vec<String> = Vec::new();
    let mut empty = 0;
    let mut result = Ok(());
    for _ in 0..MAX_RECEIVES {
        if enough() || empty >= EMPTY_RECEIVES {
            break;
        }
        let got = match queue.receive(MAX_BATCH, WAIT, HOLD).await {
            Ok(got) => got,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let fresh: Vec<ReceivedMessage> = got
            .into_iter()
            .filter(|m| seen.insert(m.message_id.clone()))
            .collect();
        if fresh.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        match each(fresh).await {
            Ok(handles) => kept.extend(handles),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Whatever was looked at and left is visible again at once.
    for chunk in kept.chunks(MAX_BATCH) {
        let entries: Vec<(String, Duration)> =
            chunk.iter().map(|h| (h.clone(), Duration::ZERO)).collect();
        if let Err(e) = queue.change_visibility_batch(&entries).await {
            tracing::warn!(queue = queue.name(), error = %e,
                "could not give back scanned dead letters; they return after 60 s");
        }
    }
    result
}

/// Lists up to `limit` entries of a dead-letter queue without consuming
/// them (each is hidden while the scan runs, then made visible again).
pub async fn list(dead_letter: &dyn Queue, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
    let mut out = Vec::new();
    let out_ref = &mut out;
    scan(
        dead_letter,
        async |batch: Vec<ReceivedMessage>| {
            let handles = batch.iter().map(|m| m.receipt_handle.clone()).collect();
            out_ref.extend(batch.iter().map(DeadLetter::of));
            Ok(handles)
        },
        || false,
    )
    .await?;
    out.truncate(limit);
    Ok(out)
}

/// The message to send back for a dead-letter entry: its body and
/// attributes, less ferry's dead-letter ones; on a FIFO target, its group
/// and a deduplication id of its own (a redrive is a new send, not a copy
/// SQS should drop).
fn redriven(m: &ReceivedMessage, fifo: bool) -> OutgoingMessage {
    let attributes: HashMap<String, String> = m
        .attributes
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("ferry-dlq-")
                && k.as_str() != DLQ_SOURCE_ATTRIBUTE
                && k.as_str() != DLQ_RECEIVES_ATTRIBUTE
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let job = attributes
        .get(JOB_ID_ATTRIBUTE)
        .cloned()
        .unwrap_or_else(|| m.message_id.clone());
    OutgoingMessage {
        body: m.body.clone(),
        attributes,
        group_id: fifo.then(|| m.group_id.clone().unwrap_or_else(|| job.clone())),
        // Per entry: an entry sent again (its delete from the dead-letter
        // queue lost) is deduplicated, another entry of the same job is not.
        dedup_id: fifo.then(|| JobId::new(&m.message_id).dedup_id("redrive")),
        delay: None,
    }
}

/// Moves entries of `dead_letter` back to `to`: each is sent first and
/// deleted from the dead-letter queue only once the send succeeded (a crash
/// in between leaves a duplicate, which the job id dedupes — never a
/// loss). Entries that do not match `options`, and entries whose body was
/// truncated, stay where they are.
pub async fn redrive(
    dead_letter: &dyn Queue,
    to: &dyn Queue,
    options: &RedriveOptions,
) -> Result<RedriveReport, BackendError> {
    let mut report = RedriveReport::default();
    let fifo = to.is_fifo();
    let max = options.max.unwrap_or(usize::MAX);
    let report_ref = &mut report;
    let moved_so_far = std::sync::atomic::AtomicUsize::new(0);
    let moved_ref = &moved_so_far;
    // A job moved once in this redrive is not moved again: an entry for it
    // that turns up during the scan is the job failing anew (moved, it
    // would bounce between the queues for as long as the scan runs).
    let moved_jobs = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
    let moved_jobs = &moved_jobs;
    scan(
        dead_letter,
        async |batch: Vec<ReceivedMessage>| {
            report_ref.scanned += batch.len();
            let mut keep = Vec::new();
            let mut chosen = Vec::new();
            for m in batch {
                let e = DeadLetter::of(&m);
                let source_ok = options.any_source || e.source.as_deref() == Some(to.name());
                let reason_ok = options
                    .reason_contains
                    .as_deref()
                    .is_none_or(|want| e.reason.as_deref().unwrap_or("").contains(want));
                let room = moved_ref.load(std::sync::atomic::Ordering::Relaxed) + chosen.len() < max;
                if e.truncated {
                    tracing::warn!(message_id = %e.message_id,
                        "dead letter with a truncated body: not redriven");
                }
                let job = e.job_id.clone().unwrap_or_else(|| e.message_id.clone());
                let again = moved_jobs.lock().expect("moved jobs").contains(&job);
                if source_ok && reason_ok && room && !e.truncated && !again {
                    moved_jobs.lock().expect("moved jobs").insert(job);
                    chosen.push(m);
                } else {
                    report_ref.skipped += 1;
                    keep.push(m.receipt_handle);
                }
            }
            if chosen.is_empty() {
                return Ok(keep);
            }
            let outgoing: Vec<OutgoingMessage> =
                chosen.iter().map(|m| redriven(m, fifo)).collect();
            let mut results: Vec<Result<String, BackendError>> = Vec::with_capacity(chosen.len());
            // Entries can be as large as a message: cut to the request's limit.
            for range in crate::backend::batches(&outgoing) {
                let n = range.len();
                match to.send_batch(outgoing[range].to_vec()).await {
                    Ok(r) if r.len() == n => results.extend(r),
                    Ok(r) => {
                        let e = BackendError::transient(format!("{} answers for {n}", r.len()));
                        results.extend((0..n).map(|_| Err(e.clone())));
                    }
                    Err(e) => results.extend((0..n).map(|_| Err(e.clone()))),
                }
            }
            let mut delete = Vec::new();
            for (m, r) in chosen.into_iter().zip(results) {
                match r {
                    Ok(_) => delete.push(m.receipt_handle),
                    Err(e) => {
                        tracing::warn!(message_id = %m.message_id, error = %e, "redrive send failed");
                        report_ref.failed += 1;
                        keep.push(m.receipt_handle);
                    }
                }
            }
            if !delete.is_empty() {
                let n = delete.len();
                let deleted = dead_letter.delete_batch(&delete).await?;
                let ok = deleted.iter().filter(|r| r.is_ok()).count();
                if ok < n {
                    // Sent but not deleted: the entry stays, and a later
                    // redrive sends a copy the job id dedupes.
                    tracing::warn!(failed = n - ok, "redriven entries not deleted from the dead-letter queue");
                }
                report_ref.moved += n;
                moved_ref.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(keep)
        },
        || moved_ref.load(std::sync::atomic::Ordering::Relaxed) >= max,
    )
    .await?;
    tracing::info!(
        queue = dead_letter.name(),
        to = to.name(),
        scanned = report.scanned,
        moved = report.moved,
        skipped = report.skipped,
        failed = report.failed,
        "redrive done"
    );
    Ok(report)
}
