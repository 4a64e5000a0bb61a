//! Content-derived job ids ([`crate::pipeline::builder::Pipeline::job_id`]) and messages split
//! into parts ([`crate::pipeline::builder::Pipeline::split`]).
//!
//! A split sends every part to the pipeline's own source queue first and
//! deletes the original last, through the lease lifecycle like any job: the
//! lease is Running while its worker sends (the lease keeper extends it),
//! then it settles as a delete. A failed send gives the original back for a
//! later retry. Each part carries a job id derived from its content, so a
//! crash between the send and the delete leaves only duplicate parts, which
//! the seen-ID cache (and the idempotency store, or a FIFO queue's
//! deduplication) drop.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::backend::guard::panic_message;
use crate::backend::OutgoingMessage;
use crate::backoff::with_retries;
use crate::error::BackendError;
use crate::job::{Job, JobId, JOB_ID_ATTRIBUTE};
use crate::lease::{Ending, Lease};
use crate::pipeline::next::Next;
use crate::pipeline::shared::Shared;
use crate::trace::TRACEPARENT_ATTRIBUTE;

/// What became of a job offered to the split function.
#[derive(Debug)]
pub(crate) enum Split {
    /// This many parts were sent: the original is to be deleted.
    Sent(usize),
    /// The lease was lost or given up while the parts were sent: nothing
    /// more may happen to it (what losing it handed on, to route).
    Cancelled(Next),
    /// The split function panicked (with this message).
    Panicked(String),
    /// The parts could not all be sent: the original ends this way (a
    /// retry, or the dead-letter queue for a part the queue refuses).
    Failed(Ending),
}

impl Shared {
    /// The id the pipeline's job-id function derives for `job`, if any. A
    /// panic in the function is caught and logged; the job keeps its id.
    pub(crate) fn derived_id(&self, job: &Job) -> Option<JobId> {
        let f = self.job_id.as_ref()?;
        match catch_unwind(AssertUnwindSafe(|| f(job))) {
            Ok(Some(id)) if !id.as_str().is_empty() => Some(id),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(pipeline = %self.name, job_id = %job.id,
                    message_id = %job.message_id, panic = panic_message(&*e),
                    "job id function panicked: the job keeps its default id");
                None
            }
        }
    }

    /// The parts `job` splits into, ready to send, when the pipeline's
    /// split function gives more than one; `Err` with the panic message
    /// when it panicked. `job` is the job as the processor would see it (a
    /// large payload resolved).
    pub(crate) fn parts_of(&self, job: &Job) -> Option<Result<Vec<OutgoingMessage>, String>> {
        let f = self.split.as_ref()?;
        match catch_unwind(AssertUnwindSafe(|| f(job))) {
            Ok(Some(parts)) if parts.len() > 1 => Some(Ok(self.prepare_parts(job, parts))),
            Ok(_) => None,
            Err(e) => Some(Err(panic_message(&*e))),
        }
    }

    /// Sends a running job's parts to the source queue (the lease keeper
    /// extends the lease meanwhile) and says how the original ends.
    pub(crate) async fn send_split(
        self: Arc<Self>,
        parts: Vec<OutgoingMessage>,
        lease: Arc<Lease>,
    ) -> Split {
        let n = parts.len();
        // Before each batch: the lease still held, within its deadline.
        let lost = std::sync::Mutex::new(Next::none());
        let sent = self
            .send_parts(parts, &lease, || {
                let mut next = lost.lock().expect("split lock");
                self.lost_before(&lease, "sending a split's parts", &mut next)
            })
            .await;
        if lease.is_cancelled() {
            return Split::Cancelled(lost.into_inner().expect("split lock"));
        }
        match sent {
            Ok(()) => Split::Sent(n),
            Err(e) if e.is_retryable() => Split::Failed(Ending::Wait {
                reason: format!("splitting into {n} parts: sending them failed: {e}"),
                after: None,
            }),
            Err(e) => Split::Failed(Ending::DeadLetter {
                reason: format!("splitting into {n} parts: the source queue refused a part: {e}"),
            }),
        }
    }

    /// Each part with its job id, trace context and (FIFO) group and
    /// deduplication id.
    fn prepare_parts(&self, job: &Job, parts: Vec<OutgoingMessage>) -> Vec<OutgoingMessage> {
        let fifo = self.sinks.source.is_fifo();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, mut m)| {
                let id = self.part_id(job, i, &m);
                m.attributes
                    .entry(TRACEPARENT_ATTRIBUTE.to_owned())
                    .or_insert_with(|| job.trace.traceparent());
                if fifo {
                    m.group_id.get_or_insert_with(|| {
                        job.group_id.clone().unwrap_or_else(|| job.id.to_string())
                    });
                    m.dedup_id.get_or_insert_with(|| id.dedup_id("split"));
                }
                m.attributes
                    .insert(JOB_ID_ATTRIBUTE.to_owned(), id.to_string());
                m
            })
            .collect()
    }

    /// A part's job id: what the job-id function derives from it as it will
    /// be received, else the `ferry-job-id` it has, else the original's id
    /// and the part's index. Each is the same every time the original is
    /// split.
    fn part_id(&self, job: &Job, index: usize, m: &OutgoingMessage) -> JobId {
        self.derived_id(&Job::as_received(m))
            .or_else(|| {
                m.attributes
                    .get(JOB_ID_ATTRIBUTE)
                    .filter(|id| !id.is_empty())
                    .map(JobId::new)
            })
            .unwrap_or_else(|| JobId::new(format!("{}#{index}", job.id)))
    }

    /// Sends the parts in batches of ten, in order; entries that fail
    /// transiently are sent again, up to `effect_attempts` times. Stops
    /// before a batch once `cancelled` says so, and drops a call in flight
    /// once `lease` lapses.
    async fn send_parts(
        &self,
        parts: Vec<OutgoingMessage>,
        lease: &Arc<Lease>,
        cancelled: impl Fn() -> bool,
    ) -> Result<(), BackendError> {
        let attempts = self.config.effect_attempts.max(1);
        let parts = match &self.sinks.payloads {
            Some(p) => with_retries(attempts, || p.offload_all(parts.clone())).await?,
            None => parts,
        };
        let lost = || BackendError::transient("the lease was lost while the parts were sent");
        let (held, signal) = (std::slice::from_ref(lease), self.life.cancel_signal());
        for range in crate::backend::batches(&parts) {
            let mut pending = parts[range].to_vec();
            let mut attempt = 1;
            loop {
                if cancelled() {
                    return Err(lost());
                }
                let results =
                    with_retries(attempts, || {
                        let (queue, batch) = (self.sinks.source.clone(), pending.clone());
                        let signal = &signal;
                        async move {
                            super::deadline::within(held, signal, queue.send_batch(batch)).await
                        }
                    })
                    .await?;
                if results.len() != pending.len() {
                    return Err(BackendError::transient(format!(
                        "{} results for a batch of {}",
                        results.len(),
                        pending.len()
                    )));
                }
                let mut failed = Vec::new();
                let mut last = None;
                for (m, r) in pending.into_iter().zip(results) {
                    if let Err(e) = r {
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        failed.push(m);
                        last = Some(e);
                    }
                }
                let Some(e) = last else {
                    break;
                };
                if attempt >= attempts {
                    return Err(e);
                }
                attempt += 1;
                pending = failed;
                tokio::time::sleep(crate::backoff::CALL_RETRIES.delay(attempt)).await;
            }
        }
        Ok(())
    }
}
