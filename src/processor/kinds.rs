//! The three kinds of processor a service writes — [`Processor`] (sync,
//! on worker threads), [`AsyncProcessor`] and [`BatchProcessor`] (as
//! tasks) — and how a pipeline holds the one it runs.

use std::sync::Arc;

use super::context::{Context, TaskContext};
use super::output::Output;
use crate::error::ProcessError;
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
