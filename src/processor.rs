//! The extension API: what a user's processor implements, and what it gets.
//!
//! Three kinds: a [`Processor`] runs on a worker thread of its own (never on
//! the async I/O thread), one job at a time — for CPU-bound work; an
//! [`AsyncProcessor`] runs each job as a task, many at once — for I/O-bound
//! work; a [`BatchProcessor`] takes jobs in batches and answers for each.
//! Each returns an [`Output`] — the result to store — or a [`ProcessError`]
//! that says whether to retry later or dead-letter the input. A panic is
//! caught and the job retried with backoff (a sync processor is rebuilt from
//! its factory first; rebuilds past the pipeline's limit with no job
//! succeeding escalate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::BlobStore;
use crate::error::{BackendError, ProcessError};
use crate::job::Job;

/// A user's processor.
///
/// ```
/// use ferry::prelude::*;
///
/// struct Upper;
///
/// impl Processor for Upper {
///     fn process(&mut self, job: &Job, _ctx: &Context) -> Result<Output, ProcessError> {
///         if job.body.is_empty() {
///             return Err(ProcessError::bad_input("empty body"));
///         }
///         Ok(Output::text(job.body.to_uppercase()))
///     }
/// }
/// ```
pub trait Processor: Send + 'static {
    /// Called on the processor's thread before its first job (and after
    /// each rebuild).
    fn started(&mut self, _info: &WorkerInfo) {}

    /// Processes one job.
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError>;

    /// Called on the processor's thread when the pipeline stops.
    fn stopping(&mut self) {}
}

/// Builds a processor; called once per worker thread and after each panic.
pub(crate) type ProcessorFactory = Arc<dyn Fn() -> Box<dyn Processor> + Send + Sync>;

/// Which worker a processor runs on.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The pipeline's name.
    pub pipeline: String,
    /// The worker's index, from 0.
    pub index: usize,
}

/// A processor's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The result's bytes (stored when the pipeline has a result store, else
    /// published as the notification's body when it has a topic).
    pub body: Bytes,
    /// The result's content type.
    pub content_type: Option<String>,
}

impl Output {
    /// No result: the job is simply acknowledged.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Bytes of a content type.
    pub fn bytes(body: impl Into<Bytes>, content_type: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            content_type: Some(content_type.into()),
        }
    }

    /// UTF-8 text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::bytes(text.into(), "text/plain; charset=utf-8")
    }

    /// A value as JSON.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, ProcessError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ProcessError::retry(format!("could not encode the result: {e}")))?;
        Ok(Self::bytes(body, "application/json"))
    }
}

/// What a processor may use while it runs.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) reader: Arc<Reader>,
    pub(crate) io: tokio::runtime::Handle,
    pub(crate) cancelled: Arc<AtomicBool>,
}

impl Context {
    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.reader.pipeline
    }

    /// Whether the job's lease was lost or given up. A long processor may
    /// check it and return early; its result would be discarded anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Reads an object from the pipeline's blob store, blocking this worker
    /// thread while the I/O thread does the call.
    ///
    /// Only the pipeline's own buckets can be read: those named with
    /// [`Pipeline::reads_from`](crate::Pipeline::reads_from), its result
    /// bucket and its large-payload bucket. A name outside them, a name S3
    /// would refuse (or one with a `.` or `..` segment), a missing object and
    /// one over `max_fetch_bytes` are bad input — the size is learnt before
    /// the body is read, so a huge object is never held in memory. A
    /// transient failure is a retry.
    pub fn fetch(&self, bucket: &str, key: &str) -> Result<Bytes, ProcessError> {
        let blobs = self.reader.check(bucket, key)?;
        blocking(
            &self.io,
            fetch_limited(blobs, bucket, key, self.reader.max_fetch_bytes),
        )
    }
}

/// What a pipeline's processors may read, and how much.
#[derive(Debug)]
pub(crate) struct Reader {
    pub(crate) pipeline: Arc<str>,
    pub(crate) blobs: Option<Arc<dyn BlobStore>>,
    pub(crate) max_fetch_bytes: usize,
    /// The buckets a fetch may read.
    pub(crate) readable: Arc<[String]>,
}

impl Reader {
    /// The store to read `bucket`/`key` from, if the name is one this
    /// pipeline may read.
    fn check(&self, bucket: &str, key: &str) -> Result<Arc<dyn BlobStore>, ProcessError> {
        let shown = |s: &str| s.chars().take(200).collect::<String>();
        if let Some(why) = crate::backend::object_name_problem(bucket, key) {
            return Err(ProcessError::bad_input(format!(
                "will not read s3://{}/{}: {why}",
                shown(bucket),
                shown(key)
            )));
        }
        if !self.readable.iter().any(|b| b == bucket) {
            return Err(ProcessError::bad_input(format!(
                "s3://{bucket}/{} is outside the buckets pipeline `{}` reads ({})",
                shown(key),
                self.pipeline,
                if self.readable.is_empty() {
                    "none".to_owned()
                } else {
                    self.readable.join(", ")
                }
            )));
        }
        self.blobs.clone().ok_or_else(|| {
            ProcessError::bad_input(format!(
                "pipeline `{}` has no blob store to read s3://{bucket}/{key}",
                self.pipeline
            ))
        })
    }
}

/// Runs `fut` on the I/O runtime and waits for it on this (worker) thread;
/// `None` when the runtime stopped first.
pub(crate) fn run_blocking<T: Send + 'static>(
    io: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    io.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.blocking_recv().ok()
}

/// [`run_blocking`] for a fetch: a stopped runtime is a retry.
pub(crate) fn blocking<T: Send + 'static>(
    io: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = Result<T, ProcessError>> + Send + 'static,
) -> Result<T, ProcessError> {
    run_blocking(io, fut).unwrap_or_else(|| {
        Err(ProcessError::unavailable(
            "the runtime stopped during a fetch",
        ))
    })
}

/// Reads at most `limit` bytes of an object: bad input when it is missing
/// or larger, unavailable (charging the job nothing) when the call failed.
pub(crate) fn fetch_limited(
    blobs: Arc<dyn BlobStore>,
    bucket: &str,
    key: &str,
    limit: usize,
) -> impl std::future::Future<Output = Result<Bytes, ProcessError>> + Send + 'static {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    async move {
        match blobs.get_limited(&bucket, &key, limit).await {
            Ok(bytes) => Ok(bytes),
            Err(BackendError::PayloadTooLarge { actual, limit }) => Err(ProcessError::bad_input(
                format!("s3://{bucket}/{key} is {actual} bytes, over the limit of {limit}"),
            )),
            Err(BackendError::NotFound { .. }) => Err(ProcessError::bad_input(format!(
                "missing object s3://{bucket}/{key}"
            ))),
            Err(e) => Err(ProcessError::from_backend(
                &format!("reading s3://{bucket}/{key}"),
                e,
            )),
        }
    }
}

/// A processor whose work awaits: a database, an HTTP API, another AWS
/// service. Jobs run as tasks on a tokio runtime — ferry's own I/O runtime,
/// or one handed in with [`Pipeline::runtime`](crate::Pipeline::runtime) —
/// up to [`PipelineConfig::concurrency`](crate::PipelineConfig::concurrency)
/// at a time, however many messages a receive brings. One processor serves
/// every job (`&self`): keep per-job state in the future.
///
/// A lost lease cancels the job: its future is dropped before any effect
/// (and [`TaskContext::cancelled`] completes for code that wants to clean
/// up first). A panic is caught and the job retried like a failing one.
/// Every other guarantee holds as for [`Processor`].
///
/// ```
/// use ferry::prelude::*;
///
/// struct Lookup;
///
/// #[ferry::async_trait]
/// impl AsyncProcessor for Lookup {
///     async fn process(&self, job: &Job, _ctx: &TaskContext) -> Result<Output, ProcessError> {
///         // e.g. `let row = db.get(&job.body).await?;`
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         Ok(Output::text(format!("looked up {}", job.body)))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait AsyncProcessor: Send + Sync + 'static {
    /// Processes one job.
    async fn process(&self, job: &Job, ctx: &TaskContext) -> Result<Output, ProcessError>;
}

/// A processor that takes jobs in batches (a bulk insert, one model call
/// for many inputs) and answers for each: successes are stored, announced
/// and deleted; each failure is retried or dead-lettered on its own.
///
/// A batch is up to [`BatchOptions::max_jobs`] jobs, sent when full or when
/// its first job has waited [`BatchOptions::max_wait`]. It runs on the same
/// runtime as an [`AsyncProcessor`], with the pipeline's concurrency
/// counting jobs, not batches. An answer of the wrong length fails the
/// whole batch (retried); a panic too. A job whose lease is lost meanwhile
/// has its answer discarded.
///
/// ```
/// use ferry::prelude::*;
///
/// struct Lengths;
///
/// #[ferry::async_trait]
/// impl BatchProcessor for Lengths {
///     async fn process_batch(
///         &self,
///         jobs: &[Job],
///         _ctx: &TaskContext,
///     ) -> Vec<Result<Output, ProcessError>> {
///         jobs.iter()
///             .map(|j| match j.body.len() {
///                 0 => Err(ProcessError::bad_input("empty body")),
///                 n => Ok(Output::text(n.to_string())),
///             })
///             .collect()
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait BatchProcessor: Send + Sync + 'static {
    /// Processes a batch; answers with one outcome per job, in order.
    async fn process_batch(
        &self,
        jobs: &[Job],
        ctx: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>>;
}

/// How a [`BatchProcessor`]'s batches are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Most jobs in one batch.
    pub max_jobs: usize,
    /// Longest the first job of a batch waits for others.
    pub max_wait: std::time::Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_jobs: 10,
            max_wait: std::time::Duration::from_millis(20),
        }
    }
}

/// What an [`AsyncProcessor`] or [`BatchProcessor`] may use while it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) reader: Arc<Reader>,
    /// One per job of the batch (one for an async processor's job).
    pub(crate) cancels: Arc<[crate::cancel::CancelHandle]>,
}

impl TaskContext {
    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.reader.pipeline
    }

    /// Whether the job's lease was lost or given up (for a batch: every
    /// job's). Its result would be discarded anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancels.iter().all(|c| c.is_cancelled())
    }

    /// Whether the `index`th job of the batch was cancelled.
    pub fn is_job_cancelled(&self, index: usize) -> bool {
        self.cancels.get(index).is_some_and(|c| c.is_cancelled())
    }

    /// Completes when [`TaskContext::is_cancelled`] becomes true.
    pub async fn cancelled(&self) {
        for c in self.cancels.iter() {
            c.cancelled().await;
        }
    }

    /// Reads an object, as [`Context::fetch`] does, without blocking.
    pub async fn fetch(&self, bucket: &str, key: &str) -> Result<Bytes, ProcessError> {
        let blobs = self.reader.check(bucket, key)?;
        fetch_limited(blobs, bucket, key, self.reader.max_fetch_bytes).await
    }
}

/// Which kind of processor a pipeline runs.
#[derive(Clone)]
pub(crate) enum ProcessorKind {
    /// On worker threads, one processor each.
    Sync(ProcessorFactory),
    /// As tasks on a runtime.
    Async(Arc<dyn AsyncProcessor>),
    /// In batches, as tasks on a runtime.
    Batch(Arc<dyn BatchProcessor>, BatchOptions),
}

/// A processor that declares its job type: the body is parsed as JSON into
/// `Input` before `process` is called, and a body that does not parse is
/// bad input with the parser's error as the reason. Register it wrapped in
/// [`Typed`]: `.processor(|| Typed(Resize::default()))`.
///
/// ```
/// use ferry::prelude::*;
///
/// #[derive(serde::Deserialize)]
/// struct Resize {
///     key: String,
///     width: u32,
/// }
///
/// struct Resizer;
///
/// impl TypedProcessor for Resizer {
///     type Input = Resize;
///
///     fn process(&mut self, r: Resize, _job: &Job, _ctx: &Context) -> Result<Output, ProcessError> {
///         Ok(Output::text(format!("{} at {} px", r.key, r.width)))
///     }
/// }
///
/// let _ = Pipeline::new("resize").processor(|| Typed(Resizer));
/// ```
pub trait TypedProcessor: Send + 'static {
    /// The job's type, read from the body as JSON.
    type Input: serde::de::DeserializeOwned;

    /// Processes one job, its body already parsed.
    fn process(
        &mut self,
        input: Self::Input,
        job: &Job,
        ctx: &Context,
    ) -> Result<Output, ProcessError>;
}

/// [`TypedProcessor`] for async work: `.async_processor(Typed(Lookup))`.
#[async_trait::async_trait]
pub trait TypedAsyncProcessor: Send + Sync + 'static {
    /// The job's type, read from the body as JSON.
    type Input: serde::de::DeserializeOwned + Send;

    /// Processes one job, its body already parsed.
    async fn process(
        &self,
        input: Self::Input,
        job: &Job,
        ctx: &TaskContext,
    ) -> Result<Output, ProcessError>;
}

/// Runs a [`TypedProcessor`] or [`TypedAsyncProcessor`] as a processor.
#[derive(Debug, Clone, Default)]
pub struct Typed<P>(pub P);

impl<P: TypedProcessor> Processor for Typed<P> {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        let input = job.parse::<P::Input>()?;
        self.0.process(input, job, ctx)
    }
}

#[async_trait::async_trait]
impl<P: TypedAsyncProcessor> AsyncProcessor for Typed<P> {
    async fn process(&self, job: &Job, ctx: &TaskContext) -> Result<Output, ProcessError> {
        let input = job.parse::<P::Input>()?;
        self.0.process(input, job, ctx).await
    }
}

/// The message an actor processor handles (see [`ActorProcessor`]); it
/// answers with the job's outcome.
#[derive(Debug, Clone)]
pub struct ProcessJob {
    /// The job.
    pub job: Job,
    /// The job's context: cancellation, reads.
    pub ctx: TaskContext,
}

impl actix::Message for ProcessJob {
    type Result = Result<Output, ProcessError>;
}

/// A service's own actor as a pipeline's processor: each job is sent to the
/// actor as a [`ProcessJob`], and its answer is the job's outcome. The
/// actor may live in any actix system; a stopped actor (its mailbox closed)
/// is a retry, and so is a panic in its handler (the actor's own supervisor
/// decides whether it restarts).
///
/// ```
/// use actix::prelude::*;
/// use ferry::{ActorProcessor, Output, ProcessError, ProcessJob};
///
/// struct Thumbnailer;
/// impl Actor for Thumbnailer {
///     type Context = actix::Context<Self>;
/// }
/// impl Handler<ProcessJob> for Thumbnailer {
///     type Result = Result<Output, ProcessError>;
///     fn handle(&mut self, msg: ProcessJob, _: &mut Self::Context) -> Self::Result {
///         Ok(Output::text(msg.job.body.to_uppercase()))
///     }
/// }
///
/// # actix::System::new().block_on(async {
/// let addr = Thumbnailer.start();
/// let _ = ferry::Pipeline::new("thumbs").async_processor(ActorProcessor::new(addr.recipient()));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ActorProcessor {
    recipient: actix::Recipient<ProcessJob>,
}

impl ActorProcessor {
    /// Sends every job to `recipient`.
    pub fn new(recipient: actix::Recipient<ProcessJob>) -> Self {
        Self { recipient }
    }
}

#[async_trait::async_trait]
impl AsyncProcessor for ActorProcessor {
    async fn process(&self, job: &Job, ctx: &TaskContext) -> Result<Output, ProcessError> {
        let msg = ProcessJob {
            job: job.clone(),
            ctx: ctx.clone(),
        };
        match self.recipient.send(msg).await {
            Ok(answer) => answer,
            Err(e) => Err(ProcessError::retry(format!(
                "the processor actor did not answer: {e}"
            ))),
        }
    }
}
