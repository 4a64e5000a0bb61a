//! The one way a job runs, for every kind of processor: the checks and its
//! input ([`input`], or [`input_blocking`] on a worker thread), then what it
//! calls for ([`step`]: an outcome already, a split, or the processor),
//! then the lease transition its outcome calls for ([`finish`],
//! [`finish_split`]) and the outbox that carries outcomes to the I/O side
//! (at once when no other job is queued, else within [`OUTCOME_WAIT`],
//! whatever the worker or task does next). The pool, the async runner and
//! the batch runner only call the processor their own way in between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::split::Split;
use crate::backend::{OutgoingMessage, MAX_RECEIVED_BYTES};
use crate::error::ProcessError;
use crate::job::{Job, RESULT_JOB_TAG};
use crate::lease::{Ending, Lease, LeaseState, Move};
use crate::payload::{LargePayloads, PayloadPointer};
use crate::pipeline::next::{Next, Routes};
use crate::pipeline::shared::Shared;
use crate::processor::{blocking, Output};
use crate::stats::Stats;

/// Longest an outcome waits for others to share its message.
const OUTCOME_WAIT: Duration = Duration::from_millis(1);
/// Outcomes sent at once, without waiting, when this many are waiting.
const OUTCOME_BATCH: usize = 64;

/// How a processor run ended.
pub(crate) enum Outcome {
    /// It returned.
    Done(Result<Output, ProcessError>),
    /// It panicked, with this message.
    Panicked(String),
    /// It never ran: its large payload is gone and its result is stored,
    /// so another delivery finished it (a late duplicate). It resumes at
    /// publish, as a redelivery whose result the probe found.
    Resumed,
}

/// The checks before a job runs: a body no queue delivers is bad input, and
/// a large-payload pointer is checked (untrusted, or declared too large:
/// bad input). Returns the pointer to read, if any.
pub(crate) fn prepare(
    s: &Shared,
    job: &Job,
) -> Result<Option<(Arc<LargePayloads>, PayloadPointer)>, ProcessError> {
    if job.body.len() > MAX_RECEIVED_BYTES {
        // No queue or topic delivers this: whatever did is not trusted.
        return Err(ProcessError::bad_input(format!(
            "a message body of {} bytes, over SQS's limit of {MAX_RECEIVED_BYTES}",
            job.body.len()
        )));
    }
    let Some(payloads) = &s.sinks.payloads else {
        return Ok(None);
    };
    Ok(payloads
        .pointer(job, s.config.max_fetch_bytes)?
        .map(|p| (payloads.clone(), p)))
}

/// What a job runs on once its checks pass and its large payload, if it
/// has one, is read: `None` for the lease's own job; else the outcome it
/// has without running.
pub(crate) async fn input(s: &Arc<Shared>, job: &Job) -> Result<Option<Job>, Outcome> {
    match prepare(s, job) {
        Err(e) => Err(Outcome::Done(Err(e))),
        Ok(None) => Ok(None),
        Ok(Some((payloads, p))) => resolve(s.clone(), job.clone(), payloads, p).await.map(Some),
    }
}

/// What a started job calls for once its input is known.
pub(crate) enum Step {
    /// It has its outcome without running (bad input, a payload gone).
    Done(Outcome),
    /// It splits: its parts go to the queue instead of the processor (or
    /// the split function panicked, with this message); see [`split`].
    Split(Result<Vec<OutgoingMessage>, String>),
    /// The processor runs it: the lease's own job (`None`), or this one
    /// with its large payload in place.
    Process(Option<Job>),
}

/// The step after [`input`]: its outcome, a split, or the processor.
pub(crate) fn step(s: &Shared, lease: &Lease, input: Result<Option<Job>, Outcome>) -> Step {
    let resolved = match input {
        Ok(r) => r,
        Err(outcome) => return Step::Done(outcome),
    };
    match s.parts_of(resolved.as_ref().unwrap_or(&lease.job)) {
        Some(parts) => Step::Split(parts),
        None => Step::Process(resolved),
    }
}

/// Carries out a [`Step::Split`]: sends the parts (the lease keeper extends
/// the lease meanwhile), or reports the split function's panic.
pub(crate) async fn split(
    s: Arc<Shared>,
    lease: Arc<Lease>,
    parts: Result<Vec<OutgoingMessage>, String>,
) -> Split {
    match parts {
        Err(message) => Split::Panicked(message),
        Ok(parts) => s.send_split(parts, lease).await,
    }
}

/// [`input`] from a worker thread: the reads run on the I/O runtime.
pub(crate) fn input_blocking(
    s: &Arc<Shared>,
    io: &tokio::runtime::Handle,
    job: &Job,
) -> Result<Option<Job>, Outcome> {
    match prepare(s, job) {
        Err(e) => Err(Outcome::Done(Err(e))),
        Ok(None) => Ok(None),
        Ok(Some((payloads, p))) => {
            let read = resolve(s.clone(), job.clone(), payloads, p);
            blocking(io, async move { Ok(read.await) })
                .unwrap_or_else(|e| Err(Outcome::Done(Err(e))))
                .map(Some)
        }
    }
}

/// Reads a checked pointer's payload into the job. A payload that cannot
/// be read as the job's input (a missing object, most often) is bad input
/// only if the job is not done: a job whose result is stored was finished
/// by another delivery, which deleted the payload after its delete, and it
/// resumes at publish instead of being dead-lettered. The result is looked
/// for only then, so a first delivery still makes no call for it (DESIGN
/// rule 3).
async fn resolve(
    s: Arc<Shared>,
    job: Job,
    payloads: Arc<LargePayloads>,
    p: PayloadPointer,
) -> Result<Job, Outcome> {
    let unreadable = match payloads.fetch(&p, s.config.max_fetch_bytes).await {
        Ok(bytes) => {
            return LargePayloads::with_payload(&job, &p, bytes).map_err(|e| Outcome::Done(Err(e)))
        }
        Err(e @ ProcessError::BadInput { .. }) => e,
        Err(e) => return Err(Outcome::Done(Err(e))),
    };
    let Some(store) = s.sinks.results.clone() else {
        return Err(Outcome::Done(Err(unreadable)));
    };
    let key = store.key(&job.id);
    match store.blobs.head(&store.bucket, &key).await {
        Ok(Some(meta))
            if meta.metadata.get(RESULT_JOB_TAG).map(String::as_str) == Some(job.id.as_str()) =>
        {
            Err(Outcome::Resumed)
        }
        Ok(_) => Err(Outcome::Done(Err(unreadable))),
        // Whether the job is done is unknown: not bad input yet.
        Err(e) => Err(Outcome::Done(Err(ProcessError::retry(format!(
            "{unreadable}; looking for its stored result failed: {e}"
        ))))),
    }
}

/// A job offered to the split function ends by what became of its parts:
/// sent, the original is deleted; otherwise a retry or the dead-letter
/// queue (nothing at all for a lease lost meanwhile).
pub(crate) fn finish_split(
    s: &Arc<Shared>,
    outbox: &Arc<Outbox>,
    io: &tokio::runtime::Handle,
    lease: Arc<Lease>,
    split: Split,
    now: bool,
    span: &tracing::Span,
) {
    let ending = match split {
        Split::Sent(parts) => {
            span.record("outcome", "split");
            tracing::debug!(parent: span, parts, "split: parts sent, original to be deleted");
            Stats::inc(&s.stats.split_messages);
            s.care.health.success();
            Some(Ending::Delete {
                dead_lettered: false,
            })
        }
        Split::Cancelled(next) => {
            outbox.hand_on(next);
            None
        }
        Split::Panicked(message) => {
            Stats::inc(&s.stats.panics);
            span.record("outcome", "panicked");
            tracing::warn!(parent: span, panic = %message, "split function panicked");
            Some(Ending::Retry {
                reason: format!("split function panicked: {message}"),
                after: None,
            })
        }
        Split::Failed(ending) => {
            let outcome = match ending {
                Ending::DeadLetter { .. } => "bad_input",
                _ => "retry",
            };
            span.record("outcome", outcome);
            tracing::warn!(parent: span, ?ending, "split: the parts could not be sent");
            Some(ending)
        }
    };
    let done = match ending {
        Some(ending) => s.settle_one(lease, ending).settle,
        None => Vec::new(),
    };
    outbox.add(s, io, now, |o| {
        o.started += 1;
        o.settle.extend(done);
    });
}

/// Moves a lease on by its run's outcome: a result to the uploader (or the
/// publisher, or straight to the acker), a failure or panic to the acker
/// with its ending. `now`: send at once rather than within
/// [`OUTCOME_WAIT`].
pub(crate) fn finish(
    s: &Arc<Shared>,
    outbox: &Arc<Outbox>,
    io: &tokio::runtime::Handle,
    lease: Arc<Lease>,
    outcome: Outcome,
    now: bool,
    span: &tracing::Span,
) {
    let ending = match outcome {
        Outcome::Done(Ok(output)) => {
            span.record("outcome", "processed");
            tracing::debug!(parent: span, "processed");
            s.care.health.success();
            s.care
                .dependencies
                .succeeded(crate::backend::dependencies::PROCESSOR);
            let to = if s.sinks.results.is_some() {
                LeaseState::Processed
            } else if s.sinks.topic.is_some() {
                LeaseState::Stored
            } else {
                LeaseState::Settling
            };
            if to == LeaseState::Settling {
                let done = s
                    .settle_one(
                        lease,
                        Ending::Delete {
                            dead_lettered: false,
                        },
                    )
                    .settle;
                outbox.add(s, io, now, |o| {
                    o.started += 1;
                    o.ok += 1;
                    o.settle.extend(done);
                });
            } else {
                lease.set_output(Some(output));
                let m = if to == LeaseState::Processed {
                    Move::Process
                } else {
                    Move::ProcessUnstored
                };
                let moved = lease.step(m).is_some();
                outbox.add(s, io, now, |o| {
                    o.started += 1;
                    o.ok += 1;
                    if moved && to == LeaseState::Processed {
                        o.processed.push(lease);
                    } else if moved {
                        o.stored.push(lease);
                    }
                });
            }
            return;
        }
        Outcome::Done(Err(err)) => {
            Stats::inc(&s.stats.failed);
            span.record("outcome", crate::trace::outcome_of(&err));
            tracing::info!(parent: span, error = %err, "processor failed");
            match err {
                ProcessError::Retry { reason, .. }
                    if crate::sabotage::on(crate::sabotage::Sabotage::DeadLetterRetries) =>
                {
                    Ending::DeadLetter { reason }
                }
                ProcessError::Retry { reason, after } => Ending::Retry { reason, after },
                ProcessError::BadInput { reason } => Ending::DeadLetter { reason },
                ProcessError::Unavailable { reason, after }
                    if crate::sabotage::on(crate::sabotage::Sabotage::ChargeInfrastructure) =>
                {
                    Ending::Retry { reason, after }
                }
                ProcessError::Unavailable { reason, after } => {
                    s.care
                        .dependencies
                        .failed(crate::backend::dependencies::PROCESSOR, &reason);
                    Ending::Wait { reason, after }
                }
            }
        }
        Outcome::Resumed => {
            span.record("outcome", "resumed");
            Stats::inc(&s.stats.resumed);
            tracing::info!(parent: span,
                "large payload gone and result already stored: a duplicate of a finished job; resuming at publish");
            let moved = lease.step(Move::ProcessUnstored).is_some();
            outbox.add(s, io, now, |o| {
                o.started += 1;
                if moved {
                    o.stored.push(lease);
                }
            });
            return;
        }
        Outcome::Panicked(message) => {
            Stats::inc(&s.stats.panics);
            span.record("outcome", "panicked");
            tracing::warn!(parent: span, panic = %message, "processor panicked");
            Ending::Retry {
                reason: format!("processor panicked: {message}"),
                after: None,
            }
        }
    };
    let done = s.settle_one(lease, ending).settle;
    outbox.add(s, io, now, |o| {
        o.started += 1;
        o.settle.extend(done);
    });
}

/// Outcomes of finished jobs not yet sent to the I/O side, shared by the
/// pool's workers, with where they go.
pub(crate) struct Outbox {
    inner: Mutex<Outcomes>,
    /// A timer flush is scheduled.
    scheduled: AtomicBool,
    routes: Routes,
}

#[derive(Default)]
pub(crate) struct Outcomes {
    /// Processed leases for the uploader.
    pub(crate) processed: Vec<Arc<Lease>>,
    /// Stored leases (inline output) for the publisher.
    pub(crate) stored: Vec<Arc<Lease>>,
    /// Settling leases for the acker.
    pub(crate) settle: Vec<Arc<Lease>>,
    pub(crate) started: u64,
    pub(crate) ok: u64,
}

impl Outcomes {
    fn len(&self) -> usize {
        self.processed.len() + self.stored.len() + self.settle.len()
    }
}

impl Outbox {
    pub(crate) fn new(routes: Routes) -> Self {
        Self {
            inner: Mutex::default(),
            scheduled: AtomicBool::new(false),
            routes,
        }
    }

    /// Hands on at once what a step returned.
    pub(crate) fn hand_on(&self, next: Next) {
        self.routes.send(next);
    }

    /// Sends everything waiting on, a batch per next owner.
    pub(crate) fn flush(&self, s: &Shared) {
        let out = std::mem::take(&mut *self.inner.lock().expect("outbox lock"));
        s.stats.add(&s.stats.processed, out.ok);
        if out.started > 0 {
            s.jobs_started(out.started);
        }
        let next = Next {
            store: out.processed,
            settle: out.settle,
            ..Next::none()
        };
        self.routes.send(next.and(s.announce(out.stored)));
    }

    /// Adds one job's outcome; sends at once when `now`, or when a batch is
    /// full, else makes sure a timer sends it within [`OUTCOME_WAIT`].
    pub(crate) fn add(
        self: &Arc<Self>,
        s: &Arc<Shared>,
        io: &tokio::runtime::Handle,
        now: bool,
        f: impl FnOnce(&mut Outcomes),
    ) {
        let full = {
            let mut o = self.inner.lock().expect("outbox lock");
            f(&mut o);
            o.len() >= OUTCOME_BATCH
        };
        if now || full {
            self.flush(s);
        } else if !self.scheduled.swap(true, Ordering::AcqRel) {
            let (outbox, shared) = (self.clone(), s.clone());
            io.spawn(async move {
                tokio::time::sleep(OUTCOME_WAIT).await;
                outbox.scheduled.store(false, Ordering::Release);
                outbox.flush(&shared);
            });
        }
    }
}
