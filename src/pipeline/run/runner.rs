//! The async runner: jobs of an [`AsyncProcessor`] or a [`BatchProcessor`]
//! as tasks on a tokio runtime (a multi-thread runtime the `Runtime` owns,
//! [`jobs_runtime`], unless the pipeline was handed one; never the I/O
//! thread that keeps the leases), at most `PipelineConfig::concurrency`
//! jobs at once.
//!
//! A task holds nothing a restart would lose: it owns its lease, which is
//! Pending until the task has a permit and Running while it works. A lost
//! lease drops the job's future before any effect (a batch's, once every
//! lease in it is lost); a panic anywhere in the task retries the jobs it
//! started, a task dropped unfinished (its runtime shut down) gives them
//! back uncharged, and either gives back, uncharged, those it had not
//! started.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::outcome::{finish, finish_split, split, step, Outbox, Outcome, Step};
use super::split::Split;
use crate::backend::guard::panic_message;
use crate::error::ProcessError;
use crate::job::Job;
use crate::lease::{Ending, Lease, LeaseState};
use crate::pipeline::lifecycle::Start;
use crate::pipeline::messages::{Leased, Restart};
use crate::pipeline::next::Routes;
use crate::pipeline::shared::Shared;
use crate::processor::{AsyncProcessor, BatchProcessor, ProcessorKind, TaskContext};

/// The runtime for the async and batch processors not handed one
/// (`Pipeline::runtime`): multi-threaded, so a job that blocks its thread
/// (a `std::thread::sleep`, a blocking client) holds up neither the I/O
/// thread that keeps every lease nor the other jobs. `None` when no
/// pipeline needs it; the `Runtime` owns it and shuts it down with itself.
pub(crate) fn jobs_runtime(
    pipelines: &mut [crate::pipeline::builder::Pipeline],
) -> std::io::Result<Option<tokio::runtime::Runtime>> {
    let needs = |p: &crate::pipeline::builder::Pipeline| {
        p.runtime.is_none()
            && matches!(
                p.processor,
                Some(ProcessorKind::Async(_) | ProcessorKind::Batch(..))
            )
    };
    if !pipelines.iter().any(needs) {
        return Ok(None);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("ferry-jobs")
        .enable_all()
        .build()?;
    for p in pipelines.iter_mut().filter(|p| needs(p)) {
        p.runtime = Some(rt.handle().clone());
    }
    Ok(Some(rt))
}

pub(crate) struct AsyncRunner {
    task: Arc<Tasks>,
    /// Batch mode: leases waiting for their batch to fill.
    waiting: Vec<Arc<Lease>>,
    timer: Option<SpawnHandle>,
}

/// What every task of one pipeline shares.
struct Tasks {
    shared: Arc<Shared>,
    /// ferry's I/O runtime (outcome timers).
    io: tokio::runtime::Handle,
    /// Where the jobs run.
    rt: tokio::runtime::Handle,
    permits: Arc<Semaphore>,
    outbox: Arc<Outbox>,
    /// Jobs running now.
    running: AtomicUsize,
}

impl AsyncRunner {
    pub(crate) fn new(shared: Arc<Shared>, io: tokio::runtime::Handle, routes: Routes) -> Self {
        let rt = shared.runtime.clone().unwrap_or_else(|| io.clone());
        let permits = Arc::new(Semaphore::new(shared.config.concurrency));
        Self {
            task: Arc::new(Tasks {
                shared,
                io,
                rt,
                permits,
                outbox: Arc::new(Outbox::new(routes)),
                running: AtomicUsize::new(0),
            }),
            waiting: Vec::new(),
            timer: None,
        }
    }

    fn accept(&mut self, leases: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        match &self.task.shared.processor {
            ProcessorKind::Async(p) => {
                for lease in leases {
                    let (t, p) = (self.task.clone(), p.clone());
                    self.task.rt.spawn(async move {
                        let Ok(_permit) = t.permits.clone().acquire_owned().await else {
                            return;
                        };
                        if t.halted() {
                            return;
                        }
                        t.guarded(vec![lease.clone()], |here| {
                            t.run_one(p, lease.clone(), here)
                        })
                        .await;
                    });
                }
            }
            ProcessorKind::Batch(_, options) => {
                // A batch never holds more jobs than may run at once.
                let max = options
                    .max_jobs
                    .min(self.task.shared.config.concurrency)
                    .max(1);
                let wait = options.max_wait;
                self.waiting.extend(leases);
                while self.waiting.len() >= max {
                    let batch: Vec<_> = self.waiting.drain(..max).collect();
                    self.dispatch(batch);
                }
                if !self.waiting.is_empty() && self.timer.is_none() {
                    self.timer = Some(ctx.run_later(wait, |act, _| {
                        act.timer = None;
                        let batch = std::mem::take(&mut act.waiting);
                        act.dispatch(batch);
                    }));
                }
            }
            ProcessorKind::Sync(_) => unreachable!("sync processors run in the pool"),
        }
    }

    fn dispatch(&self, batch: Vec<Arc<Lease>>) {
        let ProcessorKind::Batch(p, _) = &self.task.shared.processor else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        let (t, p) = (self.task.clone(), p.clone());
        // One permit per job (batches are cut to the concurrency).
        let want = batch.len().min(t.shared.config.concurrency) as u32;
        self.task.rt.spawn(async move {
            let Ok(_permits) = t.permits.clone().acquire_many_owned(want).await else {
                return;
            };
            if t.halted() {
                return;
            }
            t.guarded(batch.clone(), |here| t.run_batch(p, batch, here))
                .await;
        });
    }
}

impl Tasks {
    /// The runtime was dropped without a shutdown (a crash): the jobs'
    /// runtime may still poll a task woken just before it stopped, which
    /// must not start its job.
    fn halted(&self) -> bool {
        self.shared.halted() && !crate::sabotage::on(crate::sabotage::Sabotage::IgnoreHalt)
    }
}

/// The leases a task started itself: only those are its to retry (a lease
/// queued again after a restart may be started by another task).
#[derive(Clone, Default)]
struct StartedHere(Arc<std::sync::Mutex<Vec<u64>>>);

impl StartedHere {
    /// Starts a lease's job ([`Shared::start_job`]), noting it if it did.
    fn start(&self, s: &Shared, lease: &Arc<Lease>) -> Start {
        let start = s.start_job(lease);
        if matches!(start, Start::Started) {
            self.0.lock().expect("started lock").push(lease.id);
        }
        start
    }

    fn contains(&self, lease: &Lease) -> bool {
        self.0.lock().expect("started lock").contains(&lease.id)
    }
}

/// A task's jobs, settled when it ends without finishing them (see
/// [`Tasks::guarded`]).
struct Unfinished {
    tasks: Arc<Tasks>,
    leases: Vec<Arc<Lease>>,
    here: StartedHere,
    /// What escaped the task, if it panicked; `None`: it was dropped.
    panicked: Option<String>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        let s = &self.tasks.shared;
        // Running, started here and not handed on: its run is lost. A panic
        // outside the processor retries it, as on a worker thread; a task
        // dropped (its runtime shut down) gives it back, charging nothing.
        // Pending: never started, so given back uncharged (from Pending
        // only: a lease queued again and started by another task is that
        // task's, as is one Running that this task did not start).
        let mut skipped = crate::pipeline::next::Next::none();
        let mut endings = Vec::new();
        for l in self.leases.drain(..) {
            match l.state() {
                LeaseState::Running if self.here.contains(&l) => {
                    let ending = match &self.panicked {
                        Some(message) => Ending::Retry {
                            reason: format!("task panicked: {message}"),
                            after: None,
                        },
                        None => Ending::Release,
                    };
                    endings.push((l, ending));
                }
                LeaseState::Pending => skipped.add(s.give_back_unstarted(&l)),
                _ => {}
            }
        }
        self.tasks.outbox.hand_on(skipped);
        if endings.is_empty() {
            return;
        }
        let done = s.settle(endings).settle;
        self.tasks
            .outbox
            .add(s, &self.tasks.io, true, |o| o.settle.extend(done));
    }
}

/// What a task's run came to.
enum Ran {
    /// The processor ran (or the job could not).
    Outcome(Outcome),
    /// The job was split into parts instead.
    Split(Split),
}

impl Tasks {
    /// Runs a task's work. Should the work end without finishing its jobs
    /// — a panic that escapes it, or the task dropped unfinished (its
    /// runtime shut down) — the jobs it had not handed on are settled (see
    /// [`Unfinished`]), so none is left Pending or Running with no one to
    /// move it.
    async fn guarded<Fut: std::future::Future<Output = ()>>(
        self: &Arc<Self>,
        leases: Vec<Arc<Lease>>,
        work: impl FnOnce(StartedHere) -> Fut,
    ) {
        let here = StartedHere::default();
        let mut guard = Unfinished {
            tasks: self.clone(),
            leases,
            here: here.clone(),
            panicked: None,
        };
        match AssertUnwindSafe(work(here)).catch_unwind().await {
            Ok(()) => guard.leases.clear(),
            Err(e) => {
                let message = panic_message(&*e);
                tracing::error!(pipeline = %self.shared.name, panic = %message,
                    "async task panicked outside the processor; its started jobs will be retried");
                guard.panicked = Some(message);
            }
        }
    }

    /// Checks and reads a job's input: the job to process (the lease's
    /// own, or with its large payload in place), or why it cannot run.
    async fn input(&self, lease: &Lease) -> Result<Option<Job>, Outcome> {
        super::outcome::input(&self.shared, &lease.job).await
    }

    async fn run_one(&self, p: Arc<dyn AsyncProcessor>, lease: Arc<Lease>, here: StartedHere) {
        let s = &self.shared;
        if let Start::Not(next) = here.start(s, &lease) {
            self.outbox.hand_on(next);
            return;
        }
        self.running.fetch_add(1, Ordering::AcqRel);
        let span = lease.job.span(&s.name);
        let began = Instant::now();
        let cancel = s.life.cancel_handle(&lease);
        let ctx = TaskContext {
            reader: s.sinks.reader.clone(),
            cancels: Arc::from([cancel.clone()]),
        };
        let work = async {
            let resolved = match step(s, &lease, self.input(&lease).await) {
                Step::Done(outcome) => return Ran::Outcome(outcome),
                Step::Split(parts) => {
                    return Ran::Split(split(s.clone(), lease.clone(), parts).await)
                }
                Step::Process(r) => r,
            };
            let job = resolved.as_ref().unwrap_or(&lease.job);
            if crate::sabotage::on(crate::sabotage::Sabotage::DoubleRun) {
                let _ = AssertUnwindSafe(p.process(job, &ctx)).catch_unwind().await;
            }
            match AssertUnwindSafe(p.process(job, &ctx)).catch_unwind().await {
                Ok(r) => Ran::Outcome(Outcome::Done(r)),
                Err(e) => Ran::Outcome(Outcome::Panicked(panic_message(&*e))),
            }
        }
        .instrument(span.clone());
        // A lost lease drops the job's future: nothing after this point
        // happens for it.
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            o = work => Some(o),
        };
        let left = self.running.fetch_sub(1, Ordering::AcqRel) - 1;
        s.stats.processing.record(began.elapsed());
        match outcome {
            Some(Ran::Outcome(o)) => finish(s, &self.outbox, &self.io, lease, o, left == 0, &span),
            Some(Ran::Split(split)) => {
                finish_split(s, &self.outbox, &self.io, lease, split, left == 0, &span)
            }
            None => {
                span.record("outcome", "cancelled");
                tracing::info!(parent: &span, "lease lost: job cancelled before any effect");
                self.outbox.add(s, &self.io, left == 0, |o| o.started += 1);
            }
        }
    }

    async fn run_batch(
        &self,
        p: Arc<dyn BatchProcessor>,
        batch: Vec<Arc<Lease>>,
        here: StartedHere,
    ) {
        let s = &self.shared;
        let began = Instant::now();
        let (mut leases, mut jobs) = (Vec::new(), Vec::new());
        for lease in batch {
            if let Start::Not(next) = here.start(s, &lease) {
                self.outbox.hand_on(next);
                continue;
            }
            match step(s, &lease, self.input(&lease).await) {
                Step::Process(job) => {
                    jobs.push(job.unwrap_or_else(|| lease.job.clone()));
                    leases.push(lease);
                }
                // A message that splits is not processed: its parts are.
                Step::Split(parts) => {
                    let split = split(s.clone(), lease.clone(), parts).await;
                    let span = lease.job.span(&s.name);
                    finish_split(s, &self.outbox, &self.io, lease, split, false, &span);
                }
                Step::Done(outcome) => {
                    let span = lease.job.span(&s.name);
                    finish(s, &self.outbox, &self.io, lease, outcome, false, &span);
                }
            }
        }
        if leases.is_empty() {
            return;
        }
        let n = leases.len();
        self.running.fetch_add(n, Ordering::AcqRel);
        let ctx = TaskContext {
            reader: s.sinks.reader.clone(),
            cancels: leases.iter().map(|l| s.life.cancel_handle(l)).collect(),
        };
        let span = tracing::info_span!("batch", pipeline = %s.name, jobs = n);
        // Once every lease of the batch is lost the batch's future is
        // dropped: its answer could not be used, and it holds permits.
        let all_lost = futures_util::future::join_all(ctx.cancels.iter().map(|c| c.cancelled()));
        let answer = tokio::select! {
            biased;
            _ = all_lost => None,
            a = async {
                if crate::sabotage::on(crate::sabotage::Sabotage::DoubleRun) {
                    let _ = AssertUnwindSafe(p.process_batch(&jobs, &ctx)).catch_unwind().await;
                }
                AssertUnwindSafe(p.process_batch(&jobs, &ctx)).catch_unwind().await
            }
            .instrument(span) => Some(a),
        };
        let mut outcomes: Vec<Outcome> = match answer {
            None => {
                self.running.fetch_sub(n, Ordering::AcqRel);
                tracing::info!(pipeline = %s.name, jobs = n,
                    "every lease of the batch lost: batch dropped before any effect");
                self.outbox
                    .add(s, &self.io, true, |o| o.started += n as u64);
                return;
            }
            Some(Ok(v)) if v.len() == n => v.into_iter().map(Outcome::Done).collect(),
            Some(Ok(v)) => {
                let reason = format!(
                    "the batch processor answered {} outcomes for {n} jobs",
                    v.len()
                );
                (0..n)
                    .map(|_| Outcome::Done(Err(ProcessError::retry(reason.clone()))))
                    .collect()
            }
            Some(Err(e)) => {
                let message = panic_message(&*e);
                (0..n).map(|_| Outcome::Panicked(message.clone())).collect()
            }
        };
        let left = self.running.fetch_sub(n, Ordering::AcqRel) - n;
        let elapsed = began.elapsed();
        for (i, (lease, outcome)) in leases.into_iter().zip(outcomes.drain(..)).enumerate() {
            s.stats.processing.record(elapsed);
            let span = lease.job.span(&s.name);
            // A lease lost meanwhile is over: its answer is discarded.
            if lease.is_cancelled() {
                span.record("outcome", "cancelled");
                self.outbox.add(s, &self.io, false, |o| o.started += 1);
                continue;
            }
            finish(
                s,
                &self.outbox,
                &self.io,
                lease,
                outcome,
                left == 0 && i + 1 == n,
                &span,
            );
        }
    }
}

impl Actor for AsyncRunner {
    type Context = Context<Self>;
}

impl actix::Supervised for AsyncRunner {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // A batch being filled died with the old context; a task already
        // spawned lives on (and a lease queued twice starts once).
        self.timer = None;
        self.waiting.clear();
        let pending = self.task.shared.life.in_state(LeaseState::Pending);
        self.accept(pending, ctx);
    }
}

impl Handler<Restart> for AsyncRunner {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for AsyncRunner {
    const NAME: &'static str = "runner";
    const OWNS: Option<crate::lease::Owner> = Some(crate::lease::Owner::Processors);
}

impl Handler<Leased> for AsyncRunner {
    type Result = ();

    fn handle(&mut self, msg: Leased, ctx: &mut Context<Self>) {
        self.accept(msg.0, ctx);
    }
}

#[cfg(test)]
mod tests;
