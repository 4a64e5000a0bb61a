//! The processor pool: user processors on worker threads of their own,
//! supervised one-for-one. A processor panic is caught where the processor
//! runs; the processor is rebuilt from its factory after a backoff and its
//! job retried. A panic anywhere else on a worker thread (a processor's
//! `drop`, a tracing layer) is caught too: the job in hand is retried and
//! the thread goes on with a fresh processor, so no worker dies for good.
//!
//! A job's outcome reaches the I/O side when the job ends: at once when no
//! other job is queued, else within [`OUTCOME_WAIT`] (a timer on the I/O
//! thread flushes the shared outbox), whatever the worker does next.
//!
//! A job still running past its cancellation by more than `hang_grace` has
//! its thread given up and replaced (see [`super::stuck`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender};

use super::outcome::{finish, finish_split, input_blocking, split, step, Outbox, Outcome, Step};
use super::split::Split;
use super::stuck::{Look, Slot};
use crate::backend::guard::panic_message;
use crate::lease::{Ending, Lease, LeaseState};
use crate::pipeline::lifecycle::Start;
use crate::pipeline::messages::{Leased, Restart};
use crate::pipeline::next::Routes;
use crate::pipeline::shared::Shared;
use crate::processor::{run_blocking, Context as JobContext, Processor, ProcessorKind, WorkerInfo};
use crate::stats::Stats;

pub(crate) struct ProcessorPool {
    shared: Arc<Shared>,
    tx: Sender<Arc<Lease>>,
    rx: Receiver<Arc<Lease>>,
    io: tokio::runtime::Handle,
    outbox: Arc<Outbox>,
    spawned: bool,
    /// Each worker thread's place, by index (a replaced thread's place is
    /// a new one).
    slots: Vec<Arc<Slot>>,
}

impl ProcessorPool {
    pub(crate) fn new(shared: Arc<Shared>, io: tokio::runtime::Handle, routes: Routes) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            shared,
            tx,
            rx,
            io,
            outbox: Arc::new(Outbox::new(routes)),
            spawned: false,
            slots: Vec::new(),
        }
    }

    /// Starts worker thread `index` in a place of its own.
    fn spawn_worker(&self, index: usize) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let worker = Worker {
            shared: self.shared.clone(),
            rx: self.rx.clone(),
            io: self.io.clone(),
            outbox: self.outbox.clone(),
            info: WorkerInfo {
                pipeline: self.shared.name.to_string(),
                index,
            },
            slot: slot.clone(),
        };
        std::thread::Builder::new()
            .name(format!("ferry-{}-{index}", self.shared.name))
            .spawn(move || worker.run())
            .expect("spawn a processor thread");
        slot
    }

    /// Gives up each worker thread whose job has run on past its
    /// cancellation by more than `hang_grace`, and starts another in its
    /// place (at most `max_abandoned_workers` given up at once).
    fn watch_hangs(&mut self) {
        let s = self.shared.clone();
        let (grace, cap) = (s.config.hang_grace, s.config.max_abandoned_workers);
        let workers = &s.care.health.workers;
        let mut stuck = 0;
        for index in 0..self.slots.len() {
            match self.slots[index].look(grace, || workers.abandon_one(cap)) {
                Look::Fine => {}
                Look::Stuck => stuck += 1,
                Look::Abandoned { job, past } => {
                    tracing::error!(pipeline = %s.name, worker = index, job_id = %job,
                        past_ms = past.as_millis() as u64,
                        "job still running past its cancellation: worker thread abandoned \
                         and replaced");
                    Stats::inc(&s.stats.workers_replaced);
                    self.slots[index] = self.spawn_worker(index);
                }
            }
        }
        workers.set_stuck(stuck);
    }
}

impl Actor for ProcessorPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = (self.shared.config.hang_grace / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        ctx.run_interval(every, |act, _| act.watch_hangs());
        if std::mem::replace(&mut self.spawned, true) {
            return;
        }
        self.slots = (0..self.shared.config.workers)
            .map(|index| self.spawn_worker(index))
            .collect();
    }
}

impl actix::Supervised for ProcessorPool {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // A handler that died mid-batch may not have queued every lease:
        // queue every pending one again (a worker skips one already taken).
        for lease in self.shared.life.in_state(LeaseState::Pending) {
            let _ = self.tx.send(lease);
        }
    }
}

impl Handler<Restart> for ProcessorPool {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for ProcessorPool {
    const NAME: &'static str = "pool";
    const OWNS: Option<crate::lease::Owner> = Some(crate::lease::Owner::Processors);
}

impl Handler<Leased> for ProcessorPool {
    type Result = ();

    fn handle(&mut self, msg: Leased, _: &mut Context<Self>) {
        for lease in msg.0 {
            // The receiver lives as long as this actor: sending cannot fail.
            let _ = self.tx.send(lease);
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    rx: Receiver<Arc<Lease>>,
    io: tokio::runtime::Handle,
    outbox: Arc<Outbox>,
    info: WorkerInfo,
    /// This thread's place in the pool.
    slot: Arc<Slot>,
}

/// How one job on a worker thread ended.
enum Ran {
    /// The job's outcome went on (or it never started).
    Done,
    /// The processor panicked, with this message.
    Panicked(String),
    /// The thread was given up while the job ran: it must end.
    Abandoned,
}

impl Worker {
    fn build(&self) -> Option<Box<dyn Processor>> {
        let made = catch_unwind(AssertUnwindSafe(|| {
            let ProcessorKind::Sync(factory) = &self.shared.processor else {
                unreachable!("the pool runs sync processors only")
            };
            let mut p = factory();
            p.started(&self.info);
            p
        }));
        match made {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(pipeline = %self.shared.name, panic = panic_message(&*e),
                    "processor factory panicked");
                None
            }
        }
    }

    /// Drops a processor; a panic in its `drop` is caught and logged.
    fn discard(&self, processor: Option<Box<dyn Processor>>) {
        if let Err(e) = catch_unwind(AssertUnwindSafe(move || drop(processor))) {
            tracing::error!(pipeline = %self.shared.name, panic = panic_message(&*e),
                "dropping a processor panicked");
        }
    }

    /// Runs one job.
    fn run_one(&self, lease: Arc<Lease>, processor: &mut Option<Box<dyn Processor>>) -> Ran {
        let s = &self.shared;
        if s.halted() && !crate::sabotage::on(crate::sabotage::Sabotage::IgnoreHalt) {
            return Ran::Done;
        }
        if let Start::Not(next) = s.start_job(&lease) {
            self.outbox.hand_on(next);
            return Ran::Done;
        }
        self.slot.begin(&lease);
        let job = &lease.job;
        let span = job.span(&s.name);
        let _entered = span.enter();
        let ctx = JobContext {
            reader: s.sinks.reader.clone(),
            io: self.io.clone(),
            cancelled: lease.cancel_arc(),
            deadline: None,
        };
        let began = Instant::now();
        let outcome = match (
            step(s, &lease, input_blocking(s, &self.io, job)),
            processor.as_mut(),
        ) {
            (Step::Split(parts), _) => {
                let mut split = match parts {
                    Err(message) => Split::Panicked(message),
                    Ok(parts) => run_blocking(&self.io, split(s.clone(), lease.clone(), Ok(parts)))
                        .unwrap_or(Split::Failed(Ending::Retry {
                            reason: "the runtime stopped while the parts were sent".into(),
                            after: None,
                        })),
                };
                // What losing the lease handed on goes now, even from a
                // thread given up meanwhile.
                if let Split::Cancelled(next) = &mut split {
                    self.outbox.hand_on(std::mem::take(next));
                }
                if !self.slot.end() {
                    return Ran::Abandoned;
                }
                let now = self.rx.is_empty();
                finish_split(s, &self.outbox, &self.io, lease, split, now, &span);
                return Ran::Done;
            }
            (Step::Done(outcome), _) => outcome,
            (Step::Process(r), Some(p)) => {
                let job = r.as_ref().unwrap_or(job);
                match catch_unwind(AssertUnwindSafe(|| {
                    if crate::sabotage::on(crate::sabotage::Sabotage::DoubleRun) {
                        let _ = p.process(job, &ctx);
                    }
                    p.process(job, &ctx)
                })) {
                    Ok(r) => Outcome::Done(r),
                    Err(e) => Outcome::Panicked(panic_message(&*e)),
                }
            }
            (Step::Process(_), None) => Outcome::Panicked("processor could not be built".into()),
        };
        s.stats.processing.record(began.elapsed());
        if !self.slot.end() {
            return Ran::Abandoned;
        }
        let ran = match &outcome {
            Outcome::Panicked(m) => Ran::Panicked(m.clone()),
            _ => Ran::Done,
        };
        let now = self.rx.is_empty() || matches!(ran, Ran::Panicked(_));
        finish(s, &self.outbox, &self.io, lease, outcome, now, &span);
        ran
    }

    /// Serves jobs until the pool is gone or gives this thread up. `current`
    /// names the job in hand, so a panic that escapes is charged to it.
    fn serve(&self, current: &mut Option<Arc<Lease>>) {
        let s = self.shared.clone();
        let mut processor = self.build();
        let mut consecutive = 0u32;
        while let Ok(lease) = self.rx.recv() {
            if s.halted() && !crate::sabotage::on(crate::sabotage::Sabotage::IgnoreHalt) {
                // The runtime is gone: the leases still queued here are
                // nobody's now, as after a crash.
                break;
            }
            *current = Some(lease.clone());
            let ran = self.run_one(lease, &mut processor);
            *current = None;
            if matches!(ran, Ran::Abandoned) {
                // Its processor may be in any state: dropped, not stopped.
                self.discard(processor.take());
                return;
            }
            if let Ran::Panicked(message) = ran {
                self.discard(processor.take());
                consecutive += 1;
                s.restarted(&format!("processor panicked: {message}"));
                std::thread::sleep(s.config.restart.backoff(consecutive));
                processor = self.build();
                Stats::inc(&s.stats.restarts);
            } else {
                consecutive = 0;
            }
        }
        if let Some(mut p) = processor.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| p.stopping()));
            self.discard(Some(p));
        }
    }

    fn run(self) {
        let s = self.shared.clone();
        let mut crashes = 0u32;
        loop {
            let mut current = None;
            match catch_unwind(AssertUnwindSafe(|| self.serve(&mut current))) {
                Ok(()) => break,
                // Given up while its job ran: the job is not its to end.
                Err(_) if self.slot.abandoned() => break,
                Err(payload) => {
                    let message = panic_message(&*payload);
                    crashes += 1;
                    Stats::inc(&s.stats.actor_restarts);
                    tracing::error!(pipeline = %s.name, worker = self.info.index, panic = %message,
                        "worker thread panicked outside the processor; carrying on");
                    if let Some(lease) = current.take() {
                        if lease.state() == LeaseState::Running {
                            let ending = Ending::Retry {
                                reason: format!("worker panicked: {message}"),
                                after: None,
                            };
                            let done = s.settle_one(lease, ending).settle;
                            self.outbox
                                .add(&s, &self.io, true, |o| o.settle.extend(done));
                        }
                    }
                    s.restarted(&format!("worker thread panicked: {message}"));
                    std::thread::sleep(s.config.restart.backoff(crashes));
                }
            }
        }
        self.outbox.flush(&s);
        if self.slot.abandoned() {
            s.care.health.workers.abandoned_ended();
            tracing::warn!(pipeline = %s.name, worker = self.info.index,
                "an abandoned worker thread's job returned at last: the thread ends");
        }
    }
}
