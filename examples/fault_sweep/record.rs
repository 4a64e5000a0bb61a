//! What happened in one seed, job by job: every processor run (recorded by
//! the sweep's processor), every result write, notice, delete and
//! dead-letter entry (recorded by wrappers around the embedded backend's
//! queues, topic and blob store, as the backend accepted them), and every
//! lease's end (ferry's `ferry::lease` events). Each record carries a
//! stamp from one counter, so the checks can order records of different
//! threads: a record made after a call returned has a larger stamp than
//! one made before a call that the first one's caller made later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ferry::backend::local::Op;
use ferry::backend::{
    EntryResult, Notification, ObjectMeta, OutgoingMessage, QueueDepth, ReceivedMessage,
};
use ferry::{BackendError, BlobStore, Job, Queue, Topic, JOB_ID_ATTRIBUTE};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::crash::{step, CrashPoint};

/// How a processor run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// It returned an output.
    Ok,
    /// It returned an error (a retry request or bad input).
    Failed,
    /// It met an unavailable dependency (`ProcessError::Unavailable`): not
    /// the job's own failure.
    Unavailable,
    /// It panicked.
    Panicked,
    /// It hung, ignoring its cancellation (recorded when it began to hang).
    Hung,
    /// Its future was dropped before it returned (an async or batch run
    /// cancelled, or timed out).
    Dropped,
}

/// One processor run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) stage: u8,
    pub(crate) worker: u8,
    pub(crate) job: String,
    pub(crate) message: String,
    pub(crate) receive_count: u32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) how: RunEnd,
    /// The job was cancelled (its lease lost) by the time the run ended.
    pub(crate) cancelled: bool,
}

/// One lease's end, as ferry reported it.
#[derive(Debug, Clone)]
pub(crate) struct End {
    pub(crate) at: u64,
    pub(crate) stage: u8,
    pub(crate) job: String,
    pub(crate) message: String,
    /// `Deleted`, `DeadLettered`, `DeadLetteredUndeleted`, `Released` or
    /// `Lost`.
    pub(crate) how: String,
    /// The ending it was settled with: `delete`, `retry`, `dead-letter`,
    /// `release`, `defer`, `wait`, or `none` (lost before settling).
    pub(crate) ending: String,
    /// The receive count of the delivery the lease was made from.
    pub(crate) receive_count: u32,
}

/// A record of one effect on a job: a result written, a notice published,
/// a message deleted or dead-lettered.
#[derive(Debug, Clone)]
pub(crate) struct Effect {
    pub(crate) at: u64,
    pub(crate) stage: u8,
    pub(crate) job: String,
    /// The notice's deduplication id, or the deleted message's id.
    pub(crate) detail: Option<String>,
}

/// One delivery a worker received from a stage's source queue.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) worker: u8,
    pub(crate) stage: u8,
    pub(crate) job: String,
    pub(crate) message: String,
    pub(crate) receive_count: u32,
}

/// A message as its queue handed it out.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) job: String,
    pub(crate) group: Option<String>,
}

/// Everything recorded for one seed.
#[derive(Default)]
pub(crate) struct Records {
    pub(crate) runs: Vec<Run>,
    pub(crate) ends: Vec<End>,
    /// Result writes (`job` is the result's key, `detail` its bucket).
    pub(crate) puts: Vec<Effect>,
    pub(crate) notices: Vec<Effect>,
    pub(crate) deletes: Vec<Effect>,
    pub(crate) dead_letters: Vec<Effect>,
    /// Every delivery of a source queue, with the worker that received it.
    pub(crate) received: Vec<Delivery>,
    /// Workers killed, with the stamp of their death.
    pub(crate) crashes: Vec<(u8, u64)>,
    /// Jobs the idempotency store marked completed: stage, job, stamp.
    pub(crate) completions: Vec<(u8, String, u64)>,
    /// Every answered call to the idempotency store about a job, for a
    /// job's history: stage, job, stamp, what (call, worker, answer).
    pub(crate) store_calls: Vec<(u8, String, u64, String)>,
    /// Failures the sweep's processors injected, per stage and job (across
    /// every message and worker), so a good job's own failures stay under
    /// the dead-letter limit whatever copies it has.
    pub(crate) injected: HashMap<(u8, String), u32>,
    /// Every message received, by stage and message id.
    pub(crate) messages: HashMap<(u8, String), Message>,
    /// Receipt handles, by stage: the message id and job id they stand for.
    handles: HashMap<(u8, String), (String, String)>,
    /// What the processors found wrong with their inputs.
    pub(crate) anomalies: Vec<String>,
}

/// One seed's log.
#[derive(Default)]
pub(crate) struct Log {
    clock: AtomicU64,
    records: Mutex<Records>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

impl Log {
    /// The next stamp.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Records) -> R) -> R {
        f(&mut self.records.lock().expect("records lock"))
    }

    pub(crate) fn run(&self, run: Run) {
        self.with(|r| r.runs.push(run));
    }

    /// A call to the idempotency store about a job was answered.
    pub(crate) fn store_call(&self, stage: u8, job: &str, what: String) {
        let at = self.tick();
        self.with(|r| r.store_calls.push((stage, job.to_owned(), at, what)));
    }

    /// The store marked a job completed.
    pub(crate) fn completed(&self, stage: u8, job: &str) {
        let at = self.tick();
        self.with(|r| r.completions.push((stage, job.to_owned(), at)));
    }

    pub(crate) fn anomaly(&self, what: String) {
        self.with(|r| r.anomalies.push(what));
    }

    fn effect(
        &self,
        list: fn(&mut Records) -> &mut Vec<Effect>,
        stage: u8,
        job: &str,
        detail: Option<String>,
    ) {
        let at = self.tick();
        self.with(|r| {
            list(r).push(Effect {
                at,
                stage,
                job: job.to_owned(),
                detail,
            })
        });
    }
}

/// The job a message stands for, as ferry reads it.
pub(crate) fn job_of(m: &ReceivedMessage) -> String {
    Job::from_message(m.clone()).id.to_string()
}

/// A pipeline name that says whose log its lease events go to. Every
/// worker of a stage has the same name, as the processes of one stage
/// would: deduplication ids and claim keys are derived from it.
pub(crate) fn pipeline_name(seed: u64, stage: u8) -> String {
    format!("s{seed}.stage{stage}")
}

type Registry = Mutex<HashMap<String, (Arc<Log>, u8)>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// Sends the lease events of a pipeline to `log` until [`unregister`].
pub(crate) fn register(name: &str, log: &Arc<Log>, stage: u8) {
    let mut r = registry().lock().expect("registry lock");
    r.insert(name.to_owned(), (log.clone(), stage));
}

/// Stops recording a seed's pipelines.
pub(crate) fn unregister(seed: u64) {
    let prefix = format!("s{seed}.");
    let mut r = registry().lock().expect("registry lock");
    r.retain(|k, _| !k.starts_with(&prefix));
}

/// A tracing layer that records ferry's `ferry::lease` events in the log of
/// the seed whose pipeline sent them.
pub(crate) struct LeaseEnds;

#[derive(Default)]
struct Fields {
    pipeline: String,
    job: String,
    message: String,
    how: String,
    ending: String,
    receive_count: u32,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "pipeline" => &mut self.pipeline,
            "job_id" => &mut self.job,
            "message_id" => &mut self.message,
            "how" => &mut self.how,
            "ending" => &mut self.ending,
            _ => return,
        };
        *slot = value.to_owned();
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "receive_count" {
            self.receive_count = u32::try_from(value).unwrap_or(u32::MAX);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let slot = match field.name() {
            "pipeline" => &mut self.pipeline,
            "job_id" => &mut self.job,
            "message_id" => &mut self.message,
            "how" => &mut self.how,
            "ending" => &mut self.ending,
            _ => return,
        };
        *slot = format!("{value:?}");
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LeaseEnds {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "ferry::lease" {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let found = registry()
            .lock()
            .expect("registry lock")
            .get(&f.pipeline)
            .cloned();
        let Some((log, stage)) = found else {
            return;
        };
        let at = log.tick();
        log.with(|r| {
            r.ends.push(End {
                at,
                stage,
                job: f.job,
                message: f.message,
                how: f.how,
                ending: f.ending,
                receive_count: f.receive_count,
            })
        });
    }
}

/// What a recording queue is to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A stage's source: receives and deletes are recorded.
    Source,
    /// A stage's dead-letter queue: entries sent are recorded.
    DeadLetter,
}

/// A queue that records what the pipeline did with it.
pub(crate) struct RecordedQueue {
    pub(crate) inner: Arc<dyn Queue>,
    pub(crate) log: Arc<Log>,
    pub(crate) stage: u8,
    pub(crate) role: Role,
    pub(crate) worker: u8,
    pub(crate) crash: Option<Arc<CrashPoint>>,
}

impl std::fmt::Debug for RecordedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedQueue")
            .field("inner", &self.inner)
            .finish()
    }
}

#[ferry::async_trait]
impl Queue for RecordedQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        step(&self.crash, Op::Receive).await;
        let got = self.inner.receive(max, wait, visibility).await?;
        self.log.with(|r| {
            for m in &got {
                let job = job_of(m);
                if self.role == Role::Source {
                    r.received.push(Delivery {
                        worker: self.worker,
                        stage: self.stage,
                        job: job.clone(),
                        message: m.message_id.clone(),
                        receive_count: m.receive_count,
                    });
                }
                r.handles.insert(
                    (self.stage, m.receipt_handle.clone()),
                    (m.message_id.clone(), job.clone()),
                );
                r.messages
                    .entry((self.stage, m.message_id.clone()))
                    .or_insert(Message {
                        job,
                        group: m.group_id.clone(),
                    });
            }
        });
        Ok(got)
    }

    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        step(&self.crash, Op::Delete).await;
        let answers = self.inner.delete_batch(handles).await?;
        for (h, a) in handles.iter().zip(&answers) {
            let known = self
                .log
                .with(|r| r.handles.get(&(self.stage, h.clone())).cloned());
            if let (Ok(()), Some((message, job))) = (a, known) {
                self.log
                    .effect(|r| &mut r.deletes, self.stage, &job, Some(message));
            }
        }
        Ok(answers)
    }

    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        step(&self.crash, Op::ChangeVisibility).await;
        self.inner.change_visibility_batch(entries).await
    }

    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        step(&self.crash, Op::Send).await;
        let jobs: Vec<Option<String>> = messages
            .iter()
            .map(|m| m.attributes.get(JOB_ID_ATTRIBUTE).cloned())
            .collect();
        let answers = self.inner.send_batch(messages).await?;
        if self.role == Role::DeadLetter {
            for (job, a) in jobs.iter().zip(&answers) {
                if let (Some(job), Ok(_)) = (job, a) {
                    self.log.effect(
                        |r| &mut r.dead_letters,
                        self.stage,
                        job,
                        Some(self.worker.to_string()),
                    );
                }
            }
        }
        Ok(answers)
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }

    fn receive_is_cancel_safe(&self) -> bool {
        self.inner.receive_is_cancel_safe()
    }
}

/// A topic that records each notice it accepted.
pub(crate) struct RecordedTopic {
    pub(crate) inner: Arc<dyn Topic>,
    pub(crate) log: Arc<Log>,
    pub(crate) crash: Option<Arc<CrashPoint>>,
}

impl std::fmt::Debug for RecordedTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedTopic")
            .field("inner", &self.inner)
            .finish()
    }
}

#[ferry::async_trait]
impl Topic for RecordedTopic {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }

    async fn publish_batch(
        &self,
        notifications: Vec<Notification>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        step(&self.crash, Op::Publish).await;
        let sent: Vec<(Option<String>, Option<String>)> = notifications
            .iter()
            .map(|n| {
                (
                    n.attributes.get(JOB_ID_ATTRIBUTE).cloned(),
                    n.dedup_id.clone(),
                )
            })
            .collect();
        let answers = self.inner.publish_batch(notifications).await?;
        for ((job, dedup), a) in sent.into_iter().zip(&answers) {
            if let (Some(job), Ok(_)) = (job, a) {
                self.log.effect(|r| &mut r.notices, 1, &job, dedup);
            }
        }
        Ok(answers)
    }
}

/// A blob store that records each result written.
pub(crate) struct RecordedBlobs {
    pub(crate) inner: Arc<dyn BlobStore>,
    pub(crate) log: Arc<Log>,
    pub(crate) crash: Option<Arc<CrashPoint>>,
}

impl std::fmt::Debug for RecordedBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedBlobs")
            .field("inner", &self.inner)
            .finish()
    }
}

#[ferry::async_trait]
impl BlobStore for RecordedBlobs {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> Result<(), BackendError> {
        step(&self.crash, Op::Put).await;
        self.inner.put(bucket, key, body, meta).await?;
        let stage = if key.starts_with("stage1/") { 1 } else { 2 };
        self.log
            .effect(|r| &mut r.puts, stage, key, Some(bucket.to_owned()));
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        step(&self.crash, Op::Get).await;
        self.inner.get(bucket, key).await
    }

    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        step(&self.crash, Op::Get).await;
        self.inner.get_limited(bucket, key, limit).await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        step(&self.crash, Op::Head).await;
        self.inner.head(bucket, key).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.inner.list(bucket, prefix).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        step(&self.crash, Op::Delete).await;
        self.inner.delete(bucket, key).await
    }
}
