//! [`Pipeline`]: one source queue, one processor, and the sinks it feeds.

use std::sync::Arc;

use crate::backend::{BlobStore, IntoBackend, OutgoingMessage, Queue, Topic};
use crate::config::PipelineConfig;
use crate::error::FerryError;
use crate::error::ProcessError;
use crate::idempotency::IdempotencyStore;
use crate::job::{Job, JobId};
use crate::processor::{
    AsyncProcessor, BatchOptions, BatchProcessor, Context, Output, Processor, ProcessorFactory,
    ProcessorKind, TaskContext,
};

/// A pipeline's job-id function (see [`Pipeline::job_id`]).
pub(crate) type JobIdFn = Arc<dyn Fn(&Job) -> Option<JobId> + Send + Sync>;
/// A pipeline's split function (see [`Pipeline::split`]).
pub(crate) type SplitFn = Arc<dyn Fn(&Job) -> Option<Vec<OutgoingMessage>> + Send + Sync>;

/// Where a pipeline stores its results: `s3://{bucket}/{prefix}{job-id}.{extension}`.
#[derive(Debug, Clone)]
pub struct ResultStore {
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) extension: String,
}

impl ResultStore {
    /// The key of a job's result: a pure function of the job id.
    pub fn key(&self, job: &crate::job::JobId) -> String {
        format!("{}{}.{}", self.prefix, job.key_safe(), self.extension)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// One stage: a source queue, a processor, and optionally a result store, a
/// topic to announce results on, and a dead-letter queue (required).
///
/// A stage whose sink is absent skips that step: no result store, no upload;
/// no topic, no publish.
pub struct Pipeline {
    pub(crate) name: String,
    pub(crate) source: Option<Arc<dyn Queue>>,
    pub(crate) dead_letter: Option<Arc<dyn Queue>>,
    pub(crate) topic: Option<Arc<dyn Topic>>,
    pub(crate) results: Option<ResultStore>,
    pub(crate) blobs: Option<Arc<dyn BlobStore>>,
    pub(crate) processor: Option<ProcessorKind>,
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    pub(crate) config: PipelineConfig,
    pub(crate) store: Option<Arc<dyn IdempotencyStore>>,
    pub(crate) payloads: Option<crate::payload::LargePayloads>,
    pub(crate) reads: Vec<String>,
    pub(crate) job_id: Option<JobIdFn>,
    pub(crate) split: Option<SplitFn>,
    pub(crate) layers: crate::processor::Layers,
    pub(crate) on_dead_letter: Vec<crate::processor::DeadLetterHook>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("source", &self.source.as_ref().map(|q| q.name().to_owned()))
            .field("topic", &self.topic.as_ref().map(|t| t.name().to_owned()))
            .field("results", &self.results)
            .field("config", &self.config)
            .field("idempotency", &self.store)
            .field("job_id", &self.job_id.is_some())
            .field("split", &self.split.is_some())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline with this name (used in logs, keys' dedup ids and stats).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: None,
            dead_letter: None,
            topic: None,
            results: None,
            blobs: None,
            processor: None,
            runtime: None,
            config: PipelineConfig::default(),
            store: None,
            payloads: None,
            reads: Vec::new(),
            job_id: None,
            split: None,
            layers: Default::default(),
            on_dead_letter: Vec::new(),
        }
    }

    /// Adds a layer around the processor, whatever its kind (see
    /// [`Layer`](crate::Layer)); the first added is outermost.
    pub fn layer(mut self, layer: impl crate::Layer) -> Self {
        self.layers.layers.push(Arc::new(layer));
        self
    }

    /// Calls `hook` with each job whose run failed (an error it returned, a
    /// panic, a layer's refusal or time limit) and why, where the job ran.
    pub fn on_failure(
        mut self,
        hook: impl Fn(&Job, &ProcessError) + Send + Sync + 'static,
    ) -> Self {
        self.layers.on_failure.push(Arc::new(hook));
        self
    }

    /// Calls `hook` with each job sent to the dead-letter queue and the
    /// entry's reason, once the entry is sent (on ferry's I/O thread: keep
    /// it quick).
    pub fn on_dead_letter(mut self, hook: impl Fn(&Job, &str) + Send + Sync + 'static) -> Self {
        self.on_dead_letter.push(Arc::new(hook));
        self
    }

    /// The queue to consume.
    pub fn source(mut self, queue: impl IntoBackend<dyn Queue>) -> Self {
        self.source = Some(queue.into_backend());
        self
    }

    /// The dead-letter queue for bad input and exhausted retries.
    pub fn dead_letter(mut self, queue: impl IntoBackend<dyn Queue>) -> Self {
        self.dead_letter = Some(queue.into_backend());
        self
    }

    /// The topic to announce each result on.
    pub fn topic(mut self, topic: impl IntoBackend<dyn Topic>) -> Self {
        self.topic = Some(topic.into_backend());
        self
    }

    /// Stores each result at `s3://{bucket}/{prefix}{job-id}.{extension}`;
    /// the same store serves [`crate::Context::fetch`] unless
    /// [`Pipeline::blobs`] names another, and the processor may read the
    /// result bucket.
    pub fn results(
        mut self,
        blobs: impl IntoBackend<dyn BlobStore>,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
        extension: impl Into<String>,
    ) -> Self {
        let blobs = blobs.into_backend();
        self.blobs.get_or_insert_with(|| blobs.clone());
        self.results = Some(ResultStore {
            blobs,
            bucket: bucket.into(),
            prefix: prefix.into(),
            extension: extension.into(),
        });
        self
    }

    /// The blob store processors read inputs from.
    pub fn blobs(mut self, blobs: impl IntoBackend<dyn BlobStore>) -> Self {
        self.blobs = Some(blobs.into_backend());
        self
    }

    /// A bucket the processor may read through [`crate::Context::fetch`].
    /// Messages are untrusted: a body can name any bucket, so a read is
    /// refused (as bad input) unless its bucket was named here, is the
    /// pipeline's result bucket or is its large-payload bucket.
    pub fn reads_from(mut self, bucket: impl Into<String>) -> Self {
        self.reads.push(bucket.into());
        self
    }

    /// A synchronous processor, for CPU-bound work: `factory` builds one
    /// per worker thread (`PipelineConfig::workers`), and a fresh one after
    /// a panic.
    pub fn processor<P, F>(mut self, factory: F) -> Self
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let factory: ProcessorFactory = Arc::new(move || Box::new(factory()) as Box<dyn Processor>);
        self.processor = Some(ProcessorKind::Sync(factory));
        self
    }

    /// A closure as the synchronous processor, shared by every worker
    /// thread: the smallest service.
    ///
    /// ```
    /// use ferry::prelude::*;
    ///
    /// let _ = Pipeline::new("upper").handler(|job: &Job, _ctx: &Context| {
    ///     let n: u64 = job.body.trim().parse().or_bad_input()?;
    ///     Ok(Output::text((n * 2).to_string()))
    /// });
    /// ```
    pub fn handler<F>(self, f: F) -> Self
    where
        F: Fn(&Job, &Context) -> Result<Output, ProcessError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.processor(move || crate::processor::FnProcessor(f.clone()))
    }

    /// An async closure as the processor, for I/O-bound work: each run gets
    /// its own copy of the job and context (see [`AsyncProcessor`]).
    ///
    /// ```
    /// use ferry::prelude::*;
    ///
    /// let _ = Pipeline::new("lookup").async_handler(|job: Job, _ctx: TaskContext| async move {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///     Ok(Output::text(format!("looked up {}", job.body)))
    /// });
    /// ```
    pub fn async_handler<F, Fut>(self, f: F) -> Self
    where
        F: Fn(Job, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Output, ProcessError>> + Send + 'static,
    {
        self.async_processor(crate::processor::FnAsyncProcessor(f))
    }

    /// An async processor, for I/O-bound work: jobs run as tasks, up to
    /// `PipelineConfig::concurrency` at a time (see [`AsyncProcessor`]).
    pub fn async_processor(mut self, processor: impl AsyncProcessor) -> Self {
        self.processor = Some(ProcessorKind::Async(Arc::new(processor)));
        self
    }

    /// A batch processor: jobs in batches filled as `options` say, an
    /// outcome per job (see [`BatchProcessor`]).
    pub fn batch_processor(
        mut self,
        processor: impl BatchProcessor,
        options: BatchOptions,
    ) -> Self {
        self.processor = Some(ProcessorKind::Batch(Arc::new(processor), options));
        self
    }

    /// The tokio runtime async and batch processors run on (default: a
    /// multi-thread runtime the [`crate::Runtime`] owns and shuts down with
    /// itself, one thread per core, shared by its pipelines; never ferry's
    /// I/O thread, which keeps the leases).
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Claims every job in this idempotency store before running it, for
    /// exactly-once runs across processes and beyond the queue's
    /// deduplication window (see [`crate::idempotency`]). Off by default:
    /// it costs a conditional write per job, plus one per renewal and one at
    /// completion.
    pub fn idempotency(mut self, store: impl IntoBackend<dyn IdempotencyStore>) -> Self {
        self.store = Some(store.into_backend());
        self
    }

    /// Large payloads (see [`crate::payload`]): notifications over the
    /// threshold are offloaded to the blob store, and pointers received are
    /// resolved before the processor sees the job, their objects deleted
    /// after the message is.
    pub fn large_payloads(mut self, payloads: crate::payload::LargePayloads) -> Self {
        self.payloads = Some(payloads);
        self
    }

    /// Derives a job's id from its content. `f` runs once per received
    /// message, on the I/O thread (keep it cheap), before anything else
    /// looks at the job: `Some(id)` replaces the default id (the
    /// `ferry-job-id` attribute, else the FIFO deduplication id, else the
    /// message id), `None` (or an empty id) keeps it. The seen-ID cache, the
    /// result key, deduplication ids, idempotency claims, notices and trace
    /// spans all use the id it gives, so two messages with the same content
    /// (a producer's duplicate, S3 delivering an event twice) are one job. `f`
    /// sees the body after SNS unwrapping, before a large-payload pointer is
    /// resolved. A panic in `f` is caught and logged; the job keeps its
    /// default id.
    ///
    /// ```
    /// # use ferry::prelude::*;
    /// // Jobs named by an `"order"` field: a re-sent order is the same job.
    /// let p = Pipeline::new("orders").job_id(|job: &Job| {
    ///     let v: serde_json::Value = serde_json::from_str(&job.body).ok()?;
    ///     Some(JobId::new(format!("order-{}", v.get("order")?.as_u64()?)))
    /// });
    /// # let _ = p;
    /// ```
    pub fn job_id<F>(mut self, f: F) -> Self
    where
        F: Fn(&Job) -> Option<JobId> + Send + Sync + 'static,
    {
        self.job_id = Some(Arc::new(f));
        self
    }

    /// Splits a message that holds several jobs. `f` runs on a worker
    /// thread before the processor; when it returns more than one part,
    /// ferry sends the parts to this pipeline's source queue (in batches of
    /// ten) and only then deletes the original, which is not processed. Each
    /// part carries its own job id in `ferry-job-id`: what
    /// [`Pipeline::job_id`] derives from the part, else a `ferry-job-id`
    /// the part already has, else `<original id>#<index>` — so a crash
    /// between the send and the delete only leaves duplicate parts, which
    /// their ids deduplicate. Parts carry the original delivery's
    /// `traceparent` (unless they set one); on a FIFO source they keep the
    /// original's message group (unless they set one) and get a
    /// deduplication id derived from their job id, and they join the end of
    /// their group. A failed send retries the original later (a refused
    /// part dead-letters it); it is never deleted before every part is
    /// sent. `None`, no part or one part: the job is processed as it is. A
    /// panic in `f` counts as a processor panic (the job is retried).
    /// Counted in `split_messages`.
    pub fn split<F>(mut self, f: F) -> Self
    where
        F: Fn(&Job) -> Option<Vec<OutgoingMessage>> + Send + Sync + 'static,
    {
        self.split = Some(Arc::new(f));
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut PipelineConfig)) -> Self {
        f(&mut self.config);
        self
    }

    pub(crate) fn check(&self) -> Result<(), FerryError> {
        let fail = |message: &str| {
            Err(FerryError::Config {
                pipeline: self.name.clone(),
                message: message.to_owned(),
            })
        };
        if self.source.is_none() {
            return fail("no source queue");
        }
        match &self.processor {
            None => return fail("no processor"),
            Some(ProcessorKind::Batch(_, o)) if o.max_jobs == 0 => {
                return fail("a batch needs max_jobs of at least 1")
            }
            _ => {}
        }
        let Some(dlq) = &self.dead_letter else {
            return fail("no dead-letter queue: bad input would have nowhere to go");
        };
        if self.source.as_ref().is_some_and(|q| q.is_fifo()) && !dlq.is_fifo() {
            return fail("a FIFO source needs a FIFO dead-letter queue");
        }
        self.config
            .validate()
            .or_else(|e| fail(&format!("configuration: {e}")))
    }
}
