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

use crate::error::ProcessError;
use crate::job::Job;

mod closures;
mod context;
mod kinds;
mod layer;
mod output;
mod tower;

pub(crate) use closures::{FnAsyncProcessor, FnProcessor};
pub(crate) use context::{blocking, fetch_limited, run_blocking, Reader};
pub use context::{Context, TaskContext};
pub use kinds::{AsyncProcessor, BatchOptions, BatchProcessor, Processor, WorkerInfo};
pub(crate) use kinds::{ProcessorFactory, ProcessorKind};
pub(crate) use layer::{call_hook, Layers};
pub use layer::{ConcurrencyLimit, DeadLetterHook, FailureHook, Held, Layer, Outcome, Timeout};
pub use output::Output;
pub use tower::TowerProcessor;

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
