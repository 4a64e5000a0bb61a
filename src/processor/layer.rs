//! Middleware: [`Layer`]s around every kind of processor — sync, async and
//! batch alike — that see each job before it runs and its outcome after,
//! and may refuse the job or change the outcome; the failure hook; and the
//! two layers services ask for most, [`Timeout`] and [`ConcurrencyLimit`].
//!
//! Layers wrap the processor in the order they were added: the first added
//! is outermost (its `before` runs first, its `after` last).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{blocking, Context, TaskContext};
use super::kinds::{AsyncProcessor, BatchProcessor, Processor, ProcessorKind, WorkerInfo};
use super::output::Output;
use crate::error::ProcessError;
use crate::job::Job;

/// What a layer keeps from `before` to `after` (a permit, a span, a start
/// time); dropped once the job's outcome is known.
pub type Held = Option<Box<dyn Any + Send>>;

/// A job's outcome as a layer sees it.
pub type Outcome = Result<Output, ProcessError>;

/// Middleware around a pipeline's processor (see the module's docs). A sync
/// processor's `before` runs on its worker thread, blocking it while the
/// future runs on ferry's I/O runtime; an async or batch processor's in its
/// task. `after` must be quick: it runs where the job ran.
///
/// ```
/// use std::time::Duration;
/// use ferry::prelude::*;
/// use ferry::{Held, Layer, Outcome};
///
/// /// Logs each job's time, and makes a slow success a retry.
/// struct Slow(Duration);
///
/// #[ferry::async_trait]
/// impl Layer for Slow {
///     fn after(&self, job: &Job, took: Duration, outcome: Outcome) -> Outcome {
///         tracing::info!(job_id = %job.id, took_ms = took.as_millis() as u64, "ran");
///         match outcome {
///             Ok(_) if took > self.0 => Err(ProcessError::retry("too slow")),
///             other => other,
///         }
///     }
/// }
///
/// let _ = Pipeline::new("p")
///     .layer(Slow(Duration::from_secs(5)))
///     .layer(ferry::ConcurrencyLimit::new(4))
///     .on_failure(|job, error| eprintln!("{} failed: {error}", job.id))
///     .on_dead_letter(|job, reason| eprintln!("{} dead-lettered: {reason}", job.id));
/// ```
#[async_trait::async_trait]
pub trait Layer: Send + Sync + 'static {
    /// Before the job runs: an error is its outcome, the job not run (and
    /// the layers inside it not asked). What it returns is kept until the
    /// outcome is known.
    async fn before(&self, _job: &Job) -> Result<Held, ProcessError> {
        Ok(None)
    }

    /// After the job ran (or a layer inside refused it): sees, and may
    /// change, its outcome; `took` counts from this layer's `before`.
    fn after(&self, _job: &Job, _took: Duration, outcome: Outcome) -> Outcome {
        outcome
    }

    /// The longest the job may run; the shortest of all layers' limits
    /// holds (see [`Timeout`]).
    fn time_limit(&self) -> Option<Duration> {
        None
    }
}

/// Called with each job whose run failed (an error, or a panic) and why.
pub type FailureHook = Arc<dyn Fn(&Job, &ProcessError) + Send + Sync>;
/// Called with each job sent to the dead-letter queue and the entry's
/// reason, on ferry's I/O thread: keep it quick.
pub type DeadLetterHook = Arc<dyn Fn(&Job, &str) + Send + Sync>;

/// A pipeline's layers and hooks.
#[derive(Clone, Default)]
pub(crate) struct Layers {
    pub(crate) layers: Vec<Arc<dyn Layer>>,
    pub(crate) on_failure: Vec<FailureHook>,
}

impl Layers {
    fn time_limit(&self) -> Option<Duration> {
        self.layers.iter().filter_map(|l| l.time_limit()).min()
    }

    /// Runs the layers' `before`s in order; the first refusal stops them.
    /// Returns what each kept, and the refusal if any.
    async fn before(&self, job: &Job) -> (Vec<(Instant, Held)>, Option<ProcessError>) {
        let mut kept = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let at = Instant::now();
            match layer.before(job).await {
                Ok(held) => kept.push((at, held)),
                Err(e) => return (kept, Some(e)),
            }
        }
        (kept, None)
    }

    /// Runs the `after`s of the layers that ran `before`, innermost first,
    /// then the failure hooks.
    fn after(&self, job: &Job, kept: Vec<(Instant, Held)>, mut outcome: Outcome) -> Outcome {
        for (layer, (at, held)) in self.layers.iter().zip(kept).rev() {
            outcome = layer.after(job, at.elapsed(), outcome);
            drop(held);
        }
        if let Err(e) = &outcome {
            self.failed(job, e);
        }
        outcome
    }

    fn failed(&self, job: &Job, e: &ProcessError) {
        for hook in &self.on_failure {
            call_hook("on_failure", job, || hook(job, e));
        }
    }

    fn timed_out(limit: Duration) -> ProcessError {
        ProcessError::retry(format!("timed out after {} ms", limit.as_millis()))
    }

    /// A panic as the failure hooks see it.
    fn panicked(&self, job: &Job, payload: &(dyn Any + Send)) {
        let message = crate::backend::guard::panic_message(payload);
        self.failed(job, &ProcessError::retry(format!("panicked: {message}")));
    }

    /// `kind` wrapped in these layers (as it is when there are none).
    pub(crate) fn wrap(self, kind: ProcessorKind) -> ProcessorKind {
        if self.layers.is_empty() && self.on_failure.is_empty() {
            return kind;
        }
        let layers = Arc::new(self);
        match kind {
            ProcessorKind::Sync(factory) => ProcessorKind::Sync(Arc::new(move || {
                Box::new(LayeredSync {
                    inner: factory(),
                    layers: layers.clone(),
                }) as Box<dyn Processor>
            })),
            ProcessorKind::Async(inner) => {
                ProcessorKind::Async(Arc::new(LayeredAsync { inner, layers }))
            }
            ProcessorKind::Batch(inner, options) => {
                ProcessorKind::Batch(Arc::new(LayeredBatch { inner, layers }), options)
            }
        }
    }
}

/// Runs a user's hook; a panic in it is logged, never the job's failure.
pub(crate) fn call_hook(which: &str, job: &Job, hook: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(hook)) {
        let panic = crate::backend::guard::panic_message(&*payload);
        tracing::error!(job_id = %job.id, hook = which, panic = %panic, "a hook panicked");
    }
}

struct LayeredSync {
    inner: Box<dyn Processor>,
    layers: Arc<Layers>,
}

impl Processor for LayeredSync {
    fn started(&mut self, info: &WorkerInfo) {
        self.inner.started(info);
    }

    fn process(&mut self, job: &Job, ctx: &Context) -> Outcome {
        let layers = self.layers.clone();
        let owned = job.clone();
        let (kept, refused) = blocking(&ctx.io, async move {
            Ok::<_, ProcessError>(layers.before(&owned).await)
        })
        .unwrap_or_else(|e| (Vec::new(), Some(e)));
        let outcome = match refused {
            Some(e) => Err(e),
            None => {
                let limit = self.layers.time_limit();
                // A sync job cannot be stopped: past its limit it is told
                // (`Context::is_cancelled`), and its outcome is a retry.
                let ctx = ctx.with_deadline(limit.map(|l| Instant::now() + l));
                let started = Instant::now();
                let run = catch_unwind(AssertUnwindSafe(|| self.inner.process(job, &ctx)));
                match run {
                    Err(payload) => {
                        self.layers.panicked(job, &*payload);
                        resume_unwind(payload)
                    }
                    Ok(_) if limit.is_some_and(|l| started.elapsed() > l) => {
                        Err(Layers::timed_out(limit.unwrap_or_default()))
                    }
                    Ok(outcome) => outcome,
                }
            }
        };
        self.layers.after(job, kept, outcome)
    }

    fn stopping(&mut self) {
        self.inner.stopping();
    }
}

struct LayeredAsync {
    inner: Arc<dyn AsyncProcessor>,
    layers: Arc<Layers>,
}

#[async_trait::async_trait]
impl AsyncProcessor for LayeredAsync {
    async fn process(&self, job: &Job, ctx: &TaskContext) -> Outcome {
        let (kept, refused) = self.layers.before(job).await;
        let outcome = match refused {
            Some(e) => Err(e),
            None => self.run(self.inner.process(job, ctx)).await,
        };
        self.layers.after(job, kept, outcome)
    }
}

impl LayeredAsync {
    async fn run(&self, fut: impl std::future::Future<Output = Outcome>) -> Outcome {
        match self.layers.time_limit() {
            Some(limit) => tokio::time::timeout(limit, fut)
                .await
                .unwrap_or_else(|_| Err(Layers::timed_out(limit))),
            None => fut.await,
        }
    }
}

struct LayeredBatch {
    inner: Arc<dyn BatchProcessor>,
    layers: Arc<Layers>,
}

#[async_trait::async_trait]
impl BatchProcessor for LayeredBatch {
    async fn process_batch(&self, jobs: &[Job], ctx: &TaskContext) -> Vec<Outcome> {
        // Each job passes the layers on its own; those refused are answered
        // without running. The admitted run together, in as few batches as
        // the layers allow: once some are admitted, a job whose `before`
        // would wait (a limit reached, by this batch's own jobs maybe) waits
        // until they have run, so a batch never waits on itself.
        use futures_util::FutureExt;
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(jobs.len());
        let mut next = 0;
        while next < jobs.len() {
            let mut admitted: Vec<(usize, Vec<(Instant, Held)>)> = Vec::new();
            let mut answered: Vec<(usize, Outcome)> = Vec::new();
            while next < jobs.len() {
                let job = &jobs[next];
                let (kept, refused) = if admitted.is_empty() {
                    self.layers.before(job).await
                } else {
                    match self.layers.before(job).now_or_never() {
                        Some(r) => r,
                        None => break,
                    }
                };
                match refused {
                    Some(e) => answered.push((next, self.layers.after(job, kept, Err(e)))),
                    None => admitted.push((next, kept)),
                }
                next += 1;
            }
            let indices: Vec<usize> = admitted.iter().map(|(i, _)| *i).collect();
            let ran = self.run(jobs, &indices, ctx).await;
            for ((i, kept), outcome) in admitted.into_iter().zip(ran) {
                answered.push((i, self.layers.after(&jobs[i], kept, outcome)));
            }
            answered.sort_by_key(|(i, _)| *i);
            outcomes.extend(answered.into_iter().map(|(_, o)| o));
        }
        outcomes
    }
}

impl LayeredBatch {
    /// Runs the admitted jobs as one batch, under the layers' time limit.
    async fn run(&self, jobs: &[Job], indices: &[usize], ctx: &TaskContext) -> Vec<Outcome> {
        let n = indices.len();
        if n == 0 {
            return Vec::new();
        }
        let batch: Vec<Job> = indices.iter().map(|&i| jobs[i].clone()).collect();
        let ctx = ctx.only(indices);
        let fut = self.inner.process_batch(&batch, &ctx);
        let answers = match self.layers.time_limit() {
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(answers) => answers,
                Err(_) => (0..n).map(|_| Err(Layers::timed_out(limit))).collect(),
            },
            None => fut.await,
        };
        if answers.len() == n {
            return answers;
        }
        let e = ProcessError::retry(format!(
            "the batch processor answered {} outcomes for {n} jobs",
            answers.len()
        ));
        (0..n).map(|_| Err(e.clone())).collect()
    }
}

/// A per-job time limit: a job still running after it is retried ("timed
/// out", an attempt of its own). An async or batch job is stopped there
/// (its future dropped); a sync one cannot be, so it is told
/// (`Context::is_cancelled` turns true) and its outcome, whenever it
/// returns, is the retry.
#[derive(Debug, Clone, Copy)]
pub struct Timeout(pub Duration);

#[async_trait::async_trait]
impl Layer for Timeout {
    fn time_limit(&self) -> Option<Duration> {
        Some(self.0)
    }
}

/// At most this many of the pipeline's jobs run at once inside it (a
/// database's connection limit, an API's): the others wait their turn in
/// `before`, their leases kept alive meanwhile.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    permits: Arc<tokio::sync::Semaphore>,
}

impl ConcurrencyLimit {
    /// At most `n` at once (at least one).
    pub fn new(n: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
        }
    }
}

#[async_trait::async_trait]
impl Layer for ConcurrencyLimit {
    async fn before(&self, _job: &Job) -> Result<Held, ProcessError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProcessError::unavailable("the concurrency limit was closed"))?;
        Ok(Some(Box::new(permit)))
    }
}
