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

use std::sync::Arc;

use crate::error::ProcessError;
use crate::job::Job;

mod closures;
mod context;
mod layer;
mod output;

pub(crate) use closures::{FnAsyncProcessor, FnProcessor};
pub(crate) use context::{blocking, fetch_limited, run_blocking, Reader};
pub use context::{Context, TaskContext};
pub(crate) use layer::{call_hook, Layers};
pub use layer::{ConcurrencyLimit, DeadLetterHook, FailureHook, Held, Layer, Outcome, Timeout};
pub use output::Output;

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

/// A processor whose work awaits: a database, an HTTP API, another AWS
/// service. Jobs run as tasks on a tokio runtime — one the `Runtime` owns,
/// never the I/O thread that keeps the leases, or one handed in with
/// [`Pipeline::runtime`](crate::Pipeline::runtime) —
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
