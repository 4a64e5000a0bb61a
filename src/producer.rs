//! Producing jobs: [`Producer`] sends jobs to a pipeline's source queue with
//! the rules the pipeline reads them by — the job id, the FIFO group and
//! deduplication id, large-payload offload, SQS's limits — so a service
//! does not rebuild them by hand.
//!
//! ```
//! use ferry::backend::local::{LocalBackend, QueueOptions};
//! use ferry::producer::{NewJob, Producer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ferry::producer::ProduceError> {
//! let local = LocalBackend::new();
//! let queue = local.create_queue("resize.fifo", QueueOptions { fifo: true, ..Default::default() });
//! let producer = Producer::new(queue);
//! let sent = producer
//!     .send(NewJob::json(&serde_json::json!({"key": "a.png"}))?.id("resize-a").group("tenant-7"))
//!     .await?;
//! assert_eq!(sent.job_id.as_str(), "resize-a");
//! // The same job again within five minutes: the FIFO queue drops it.
//! producer.send(NewJob::json(&serde_json::json!({"key": "a.png"}))?.id("resize-a").group("tenant-7")).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::backend::IntoBackend;
use crate::backend::{
    attribute_name_problem, fifo_id_problem, sqs_allows, OutgoingMessage, Queue,
    MAX_MESSAGE_ATTRIBUTES,
};
use crate::error::BackendError;
use crate::job::{job_id_problem, JobId, JOB_ID_ATTRIBUTE};
use crate::payload::{LargePayloads, LEGACY_PAYLOAD_SIZE_ATTRIBUTE, PAYLOAD_SIZE_ATTRIBUTE};

/// Why a job was not sent.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The job breaks a rule of the queue (said why); nothing was sent.
    #[error("job not sent: {0}")]
    Invalid(String),
    /// The queue refused it, or kept failing past the attempts.
    #[error("job not sent: {0}")]
    Backend(#[from] BackendError),
}

/// A job to send.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    body: String,
    id: Option<JobId>,
    group: Option<String>,
    dedup: Option<String>,
    delay: Option<Duration>,
    attributes: HashMap<String, String>,
}

impl NewJob {
    /// A job with this body.
    pub fn new(body: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// A job whose body is `value` as JSON (what a typed processor reads).
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, ProduceError> {
        serde_json::to_string(value)
            .map(Self::new)
            .map_err(|e| ProduceError::Invalid(format!("the body does not encode: {e}")))
    }

    /// The job's id: every stage's result key and deduplication derive from
    /// it (sent as the `ferry-job-id` attribute).
    pub fn id(mut self, id: impl AsRef<str>) -> Self {
        self.id = Some(JobId::new(id));
        self
    }

    /// The FIFO message group (FIFO queues only).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The FIFO deduplication id (FIFO queues only).
    pub fn dedup(mut self, dedup: impl Into<String>) -> Self {
        self.dedup = Some(dedup.into());
        self
    }

    /// Delay before the job becomes visible (standard queues only).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// An attribute of the service's own.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }
}

/// A job sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The id the pipeline will see for the job.
    pub job_id: JobId,
    /// The queue's id for the message.
    pub message_id: String,
}

/// What a [`Producer::send_all`] did, beside each job's result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProduceReport {
    /// Send calls made (batches of up to ten, retries included).
    pub calls: usize,
    /// Entries sent again after a retryable failure.
    pub retried: usize,
    /// Bodies offloaded to the blob store.
    pub offloaded: usize,
}

/// Sends jobs to one queue, ten per call, each failing entry retried on its
/// own. The rules, the same a pipeline reads by:
///
/// - **Job id, fixed before the first attempt**: what [`Producer::job_id`]
///   derives (as the pipeline does), else an explicit [`NewJob::id`], sent
///   as `ferry-job-id`, else on a FIFO queue the deduplication id, else a
///   random id (32 hex digits) given as `ferry-job-id` before the job is
///   first sent.
///   A send retried after a failure that hid a success (a timeout after the
///   queue took the message) is then the same job, which the pipeline runs
///   once — never a second job under another id. The id returned in
///   [`Sent`] is the one the pipeline will see.
/// - **What the pipeline would dead-letter is refused here**, with the
///   reason, before anything is sent: a job id the pipeline refuses (the
///   pipeline's own check: over [`MAX_JOB_ID_BYTES`](crate::MAX_JOB_ID_BYTES)
///   bytes, or a character SQS does not allow in an attribute) — the
///   explicit id, the deduplication id it falls back to, or what
///   [`Producer::job_id`] derives; a group or deduplication id SQS refuses
///   ([`fifo_id_problem`]); an attribute name SQS refuses
///   ([`attribute_name_problem`]), a value with a character it does not
///   allow, or the large-payload size attribute (only offloading sets it).
/// - **FIFO queues**: a group is required (a job without one is refused
///   before anything is sent); the deduplication id defaults to one derived
///   from the explicit job id, so a re-send of the same job within SQS's
///   five minutes is dropped by the queue, else to a hash of the group and
///   body. A per-message delay is refused (SQS refuses it).
/// - **Standard queues**: a group or deduplication id is refused.
/// - **Attributes**: at most ten in all, ferry's included; none empty.
/// - **Large payloads** ([`Producer::large_payloads`]): a job over the
///   threshold is offloaded and sent as an extended-client pointer.
#[derive(Clone)]
pub struct Producer {
    queue: Arc<dyn Queue>,
    payloads: Option<LargePayloads>,
    job_id: Option<crate::pipeline::JobIdFn>,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("queue", &self.queue.name())
            .field("payloads", &self.payloads)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// The wait before the `attempt`th retry of a send (jittered, from
    /// the producer's backoff, at most 64 times it).
    fn retry_wait(&self, attempt: u32) -> Duration {
        crate::backoff::Backoff::jittered(self.backoff, self.backoff * 64).delay(attempt)
    }

    /// A producer for `queue`: five attempts per entry, 50 ms doubling.
    pub fn new(queue: impl IntoBackend<dyn Queue>) -> Self {
        Self {
            queue: queue.into_backend(),
            payloads: None,
            job_id: None,
            attempts: 5,
            backoff: Duration::from_millis(50),
        }
    }

    /// Offloads bodies over the threshold to the blob store.
    pub fn large_payloads(mut self, payloads: LargePayloads) -> Self {
        self.payloads = Some(payloads);
        self
    }

    /// The job-id function the pipeline derives ids with
    /// ([`Pipeline::job_id`](crate::Pipeline::job_id)), so that the ids
    /// returned are the ones the pipeline will see.
    pub fn job_id(
        mut self,
        f: impl Fn(&crate::Job) -> Option<JobId> + Send + Sync + 'static,
    ) -> Self {
        self.job_id = Some(Arc::new(f));
        self
    }

    /// Attempts per entry (at least 1) for retryable failures.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Sends one job.
    pub async fn send(&self, job: NewJob) -> Result<Sent, ProduceError> {
        let (mut out, _) = self.send_all(vec![job]).await;
        out.pop()
            .unwrap_or_else(|| Err(ProduceError::Invalid("nothing to send".into())))
    }

    /// Sends jobs in batches of ten; a result per job, in order. A job that
    /// breaks a rule, or that the queue refuses for good, fails alone.
    pub async fn send_all(
        &self,
        jobs: Vec<NewJob>,
    ) -> (Vec<Result<Sent, ProduceError>>, ProduceReport) {
        let mut report = ProduceReport::default();
        let mut results: Vec<Option<Result<Sent, ProduceError>>> = vec![None; jobs.len()];
        // (index, message, explicit or derived id if known before sending)
        let mut ready: Vec<(usize, OutgoingMessage, Option<JobId>)> = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            match self.message(job).await {
                Ok((m, id, offloaded)) => {
                    report.offloaded += usize::from(offloaded);
                    ready.push((i, m, id));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let messages: Vec<OutgoingMessage> = ready.iter().map(|(_, m, _)| m.clone()).collect();
        for range in crate::backend::batches(&messages) {
            let mut pending: Vec<&(usize, OutgoingMessage, Option<JobId>)> =
                ready[range].iter().collect();
            let mut attempt = 1;
            while !pending.is_empty() {
                report.calls += 1;
                let batch = pending.iter().map(|(_, m, _)| m.clone()).collect();
                let answers: Vec<Result<String, BackendError>> =
                    match self.queue.send_batch(batch).await {
                        Ok(a) if a.len() == pending.len() => a,
                        Ok(a) => {
                            let e = BackendError::transient(format!(
                                "{} answers for {}",
                                a.len(),
                                pending.len()
                            ));
                            pending.iter().map(|_| Err(e.clone())).collect()
                        }
                        Err(e) => pending.iter().map(|_| Err(e.clone())).collect(),
                    };
                let mut again = Vec::new();
                for (entry, answer) in pending.into_iter().zip(answers) {
                    let (i, m, id) = entry;
                    match answer {
                        Ok(message_id) => {
                            let job_id = id.clone().unwrap_or_else(|| JobId::new(&message_id));
                            results[*i] = Some(Ok(Sent { job_id, message_id }));
                        }
                        Err(e) if e.is_retryable() && attempt < self.attempts => again.push(entry),
                        Err(e) => {
                            tracing::warn!(queue = self.queue.name(), error = %e, body_len = m.body.len(),
                                "a job could not be sent");
                            results[*i] = Some(Err(ProduceError::Backend(e)));
                        }
                    }
                }
                if !again.is_empty() {
                    report.retried += again.len();
                    tokio::time::sleep(self.retry_wait(attempt)).await;
                    attempt += 1;
                }
                pending = again;
            }
        }
        let out = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ProduceError::Invalid("not sent".into()))))
            .collect();
        (out, report)
    }

    /// The message for a job, checked: the id the pipeline will see when it
    /// is known before sending, and whether the body was offloaded.
    async fn message(
        &self,
        job: NewJob,
    ) -> Result<(OutgoingMessage, Option<JobId>, bool), ProduceError> {
        let fifo = self.queue.is_fifo();
        let invalid = |why: &str| Err(ProduceError::Invalid(why.to_owned()));
        if fifo && job.group.is_none() {
            return invalid("a FIFO queue needs a message group (NewJob::group)");
        }
        if fifo && job.delay.is_some() {
            return invalid("a FIFO queue takes no per-message delay");
        }
        if !fifo && (job.group.is_some() || job.dedup.is_some()) {
            return invalid("a group or deduplication id needs a FIFO queue");
        }
        if job
            .attributes
            .iter()
            .any(|(k, v)| k.is_empty() || v.is_empty())
        {
            return invalid("attribute names and values must not be empty");
        }
        if job.attributes.contains_key(JOB_ID_ATTRIBUTE) {
            return invalid("set the job id with NewJob::id, not as an attribute");
        }
        if let Some(e) = attribute_problem(&job.attributes) {
            return Err(e);
        }
        for (what, id) in [
            ("message group id", &job.group),
            ("deduplication id", &job.dedup),
        ] {
            if let Some(why) = id.as_deref().and_then(|id| fifo_id_problem(what, id)) {
                return Err(ProduceError::Invalid(why));
            }
        }
        let mut attributes = job.attributes;
        let id = job.id;
        if let Some(id) = &id {
            if id.as_str().is_empty() {
                return invalid("an empty job id");
            }
            id_problem(id)?;
            attributes.insert(JOB_ID_ATTRIBUTE.to_owned(), id.to_string());
        }
        // Offloading adds its size attribute: room for it counts too.
        let room = MAX_MESSAGE_ATTRIBUTES - usize::from(self.payloads.is_some());
        if attributes.len() > room {
            return Err(ProduceError::Invalid(format!(
                "{} attributes, ferry's included; the queue takes at most {room} here",
                attributes.len()
            )));
        }
        let dedup = fifo.then(|| {
            job.dedup.clone().unwrap_or_else(|| match &id {
                Some(id) => id.dedup_id("produce"),
                None => {
                    let group = job.group.as_deref().unwrap_or("");
                    let h =
                        xxhash_rust::xxh3::xxh3_128(format!("{group}\n{}", job.body).as_bytes());
                    format!("{h:032x}")
                }
            })
        });
        // The id the pipeline will see: the attribute, else the dedup id.
        let id = id.or_else(|| dedup.clone().map(JobId::new));
        if let Some(id) = &id {
            id_problem(id)?;
        }
        let mut m = OutgoingMessage {
            body: job.body,
            attributes,
            group_id: job.group,
            dedup_id: dedup,
            delay: job.delay,
        };
        let mut offloaded = false;
        if let Some(p) = &self.payloads {
            let before = m.body.len();
            let mut attempt = 1;
            m = loop {
                match p.offload(m.clone()).await {
                    Ok(out) => break out,
                    Err(e) if e.is_retryable() && attempt < self.attempts => {
                        tokio::time::sleep(self.retry_wait(attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            offloaded = m.body.len() != before;
        }
        // An offload gives a message without an id one of its own.
        let id = id.or_else(|| m.attributes.get(JOB_ID_ATTRIBUTE).map(JobId::new));
        // What the pipeline derives from the message as it will receive it
        // comes first.
        let derived = self
            .job_id
            .as_ref()
            .and_then(|f| f(&crate::Job::as_received(&m)));
        if let Some(id) = &derived {
            id_problem(id)?;
        }
        let id = match derived.or(id) {
            Some(id) => id,
            // Known to the pipeline only by its message id, which each
            // attempt would make anew: fixed now, before the first attempt,
            // so that a retry sends the same job.
            None => {
                if m.attributes.len() >= MAX_MESSAGE_ATTRIBUTES {
                    return invalid(
                        "no room for the job id fixed before sending (ten attributes): give \
                         the job an id (NewJob::id) in place of one of its attributes",
                    );
                }
                let id = JobId::new(format!("{:032x}", rand::thread_rng().gen::<u128>()));
                m.attributes
                    .insert(JOB_ID_ATTRIBUTE.to_owned(), id.to_string());
                id
            }
        };
        Ok((m, Some(id), offloaded))
    }
}

/// A job id the pipeline would dead-letter, refused with the pipeline's own
/// reason ([`job_id_problem`], the check its poller makes at receive).
fn id_problem(id: &JobId) -> Result<(), ProduceError> {
    match job_id_problem(id) {
        Some(why) => Err(ProduceError::Invalid(format!(
            "job id {:?}: {why}; the pipeline would dead-letter it",
            id.as_str().chars().take(80).collect::<String>()
        ))),
        None => Ok(()),
    }
}

/// Why SQS would refuse one of a job's own attributes, if it would: its
/// name, a character of its value, or the large-payload size attribute,
/// which only offloading sets (the pipeline would read the body as a
/// pointer).
fn attribute_problem(attributes: &HashMap<String, String>) -> Option<ProduceError> {
    let mut names: Vec<&String> = attributes.keys().collect();
    // The first by name, so the error is the same every time.
    names.sort();
    for name in names {
        if let Some(why) = attribute_name_problem(name) {
            return Some(ProduceError::Invalid(why));
        }
        if name == PAYLOAD_SIZE_ATTRIBUTE || name == LEGACY_PAYLOAD_SIZE_ATTRIBUTE {
            return Some(ProduceError::Invalid(format!(
                "attribute `{name}` marks a large-payload pointer; offloading sets it \
                 (Producer::large_payloads)"
            )));
        }
        if !attributes[name].chars().all(sqs_allows) {
            return Some(ProduceError::Invalid(format!(
                "attribute `{name}` has a character SQS does not allow"
            )));
        }
    }
    None
}
