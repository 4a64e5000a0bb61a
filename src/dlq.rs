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
#[non_exhaustive]
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
    /// Entries the dead-letter queue held when the redrive ended that it
    /// never looked at (its depth less the entries it saw and left): on a
    /// FIFO queue those behind ten kept entries of their group, entries in
    /// flight elsewhere, entries past [`RedriveOptions::max`]. `None` when
    /// the depth could not be read.
    pub unseen: Option<usize>,
}

/// A listing: the entries, and how many it left out.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The entries seen, at most the limit asked for.
    pub entries: Vec<DeadLetter>,
    /// Entries the queue held when the listing ended that are not in
    /// `entries`: past the limit, in flight elsewhere, or — on a FIFO
    /// queue — behind the first ten of their group, which SQS hands out
    /// only once those are deleted. `None` when the depth could not be read.
    pub unlisted: Option<usize>,
}

/// Makes `entries` (message id, receipt handle) visible again at once.
async fn give_back(queue: &dyn Queue, entries: &[(String, String)]) {
    for chunk in entries.chunks(MAX_BATCH) {
        let batch: Vec<(String, Duration)> = chunk
            .iter()
            .map(|(_, h)| (h.clone(), Duration::ZERO))
            .collect();
        if let Err(e) = queue.change_visibility_batch(&batch).await {
            tracing::warn!(queue = queue.name(), error = %e,
                "could not give back scanned dead letters; they return after 60 s");
        }
    }
}

/// Scans `queue`: receives until nothing new comes (or `enough` says
/// stop), handing each batch of new messages to `each`, which returns the
/// message ids it deleted; every other message is left in the queue and
/// given back (made visible) by the end. Returns how many messages the
/// queue held at the end that the scan never saw.
///
/// What the scan looks at stays hidden until the end, so that a receive
/// brings new messages — except on a FIFO queue, where a message in flight
/// locks its group: there, once `each` deleted some of a group's messages,
/// the group's kept ones are given back before the next receive, so that
/// its later messages come after them.
async fn scan(
    queue: &dyn Queue,
    mut each: impl AsyncFnMut(Vec<ReceivedMessage>) -> Result<Vec<String>, BackendError>,
    mut enough: impl FnMut() -> bool,
) -> Result<Option<usize>, BackendError> {
    let fifo = queue.is_fifo();
    let mut seen = HashSet::new();
    // Seen and not deleted: still in the queue.
    let mut present: HashSet<String> = HashSet::new();
    // Held by this scan: message id to its newest handle and its group.
    let mut held: HashMap<String, (String, Option<String>)> = HashMap::new();
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
        let mut fresh = Vec::new();
        for m in got {
            // A message seen before and received again has a new handle:
            // only that one gives it back.
            held.insert(
                m.message_id.clone(),
                (m.receipt_handle.clone(), m.group_id.clone()),
            );
            if seen.insert(m.message_id.clone()) {
                present.insert(m.message_id.clone());
                fresh.push(m);
            }
        }
        if fresh.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        let deleted = match each(fresh).await {
            Ok(deleted) => deleted,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let mut moved_groups = HashSet::new();
        for id in deleted {
            present.remove(&id);
            if let Some((_, group)) = held.remove(&id) {
                moved_groups.insert(group);
            }
        }
        if fifo && !moved_groups.is_empty() {
            let back: Vec<(String, String)> = held
                .iter()
                .filter(|(_, (_, g))| moved_groups.contains(g))
                .map(|(id, (h, _))| (id.clone(), h.clone()))
                .collect();
            for (id, _) in &back {
                held.remove(id);
            }
            give_back(queue, &back).await;
        }
    }
    // Counted while this scan still holds what it kept, so none of it is
    // taken for another's.
    let unseen = match queue.depth().await {
        Ok(d) => Some(d.total().saturating_sub(present.len())),
        Err(e) => {
            tracing::warn!(queue = queue.name(), error = %e, "could not read the queue's depth");
            None
        }
    };
    // Whatever was looked at and left is visible again at once.
    let back: Vec<(String, String)> = held.into_iter().map(|(id, (h, _))| (id, h)).collect();
    give_back(queue, &back).await;
    result.map(|()| unseen)
}

/// Lists up to `limit` entries of a dead-letter queue without consuming
/// them (each is hidden while the scan runs, then made visible again).
/// On a FIFO queue it sees at most the first ten entries of each group
/// (SQS hands out no more of a group while any is in flight);
/// [`listing`] says how many it left out.
pub async fn list(dead_letter: &dyn Queue, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
    Ok(listing(dead_letter, limit).await?.entries)
}

/// [`list`], with the count of entries the listing left out.
pub async fn listing(dead_letter: &dyn Queue, limit: usize) -> Result<Listing, BackendError> {
    let mut out = Vec::new();
    let out_ref = &mut out;
    let listed = std::sync::atomic::AtomicUsize::new(0);
    let listed_ref = &listed;
    let unseen = scan(
        dead_letter,
        async |batch: Vec<ReceivedMessage>| {
            out_ref.extend(batch.iter().map(DeadLetter::of));
            listed_ref.store(out_ref.len(), std::sync::atomic::Ordering::Relaxed);
            Ok(Vec::new())
        },
        || listed_ref.load(std::sync::atomic::Ordering::Relaxed) >= limit,
    )
    .await?;
    // Seen past the limit counts as left out too.
    let cut = out.len().saturating_sub(limit);
    out.truncate(limit);
    Ok(Listing {
        entries: out,
        unlisted: unseen.map(|n| n + cut),
    })
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
/// truncated, stay where they are. On a FIFO dead-letter queue the entries
/// kept of a group are handed back as soon as some of the group moved, so
/// the group's later entries come to the next receive; a group whose first
/// ten entries are all kept hides the rest, which
/// [`RedriveReport::unseen`] counts.
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
    let unseen = scan(
        dead_letter,
        async |batch: Vec<ReceivedMessage>| {
            report_ref.scanned += batch.len();
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
                }
            }
            if chosen.is_empty() {
                return Ok(Vec::new());
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
            let mut sent = Vec::new();
            for (m, r) in chosen.into_iter().zip(results) {
                match r {
                    Ok(_) => sent.push(m),
                    Err(e) => {
                        tracing::warn!(message_id = %m.message_id, error = %e, "redrive send failed");
                        report_ref.failed += 1;
                    }
                }
            }
            let mut deleted_ids = Vec::new();
            if !sent.is_empty() {
                let n = sent.len();
                let handles: Vec<String> = sent.iter().map(|m| m.receipt_handle.clone()).collect();
                let deleted = dead_letter.delete_batch(&handles).await?;
                deleted_ids.extend(
                    sent.iter()
                        .zip(&deleted)
                        .filter(|(_, r)| r.is_ok())
                        .map(|(m, _)| m.message_id.clone()),
                );
                if deleted_ids.len() < n {
                    // Sent but not deleted: the entry stays, and a later
                    // redrive sends a copy the job id dedupes.
                    tracing::warn!(failed = n - deleted_ids.len(),
                        "redriven entries not deleted from the dead-letter queue");
                }
                report_ref.moved += n;
                moved_ref.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(deleted_ids)
        },
        || moved_ref.load(std::sync::atomic::Ordering::Relaxed) >= max,
    )
    .await?;
    report.unseen = unseen;
    tracing::info!(
        queue = dead_letter.name(),
        to = to.name(),
        scanned = report.scanned,
        moved = report.moved,
        skipped = report.skipped,
        failed = report.failed,
        unseen = report.unseen,
        "redrive done"
    );
    Ok(report)
}
