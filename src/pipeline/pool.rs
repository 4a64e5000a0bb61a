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

use std::panic::{catch_unwind, AssertUnwindSafe};

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender};

use super::messages::{Leased, Restart};
use super::outcome::{finish, finish_split, input_blocking, Outbox, Outcome};
use super::split::Split;
use super::{panic_message, Shared};
use crate::lease::{Ending, Lease, LeaseState};
use crate::processor::{run_blocking, Context as JobContext, Processor, ProcessorKind, WorkerInfo};
use crate::stats::Stats;

pub(crate) struct ProcessorPool {
    shared: Arc<Shared>,
    tx: Sender<Arc<Lease>>,
    rx: Receiver<Arc<Lease>>,
    io: tokio::runtime::Handle,
    outbox: Arc<Outbox>,
    spawned: bool,
}

impl ProcessorPool {
    pub(crate) fn new(shared: Arc<Shared>, io: tokio::runtime::Handle) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            shared,
            tx,
            rx,
            io,
            outbox: Arc::default(),
            spawned: false,
        }
    }
}

impl Actor for ProcessorPool {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if std::mem::replace(&mut self.spawned, true) {
            return;
        }
        for index in 0..self.shared.config.workers {
            let worker = Worker {
                shared: self.shared.clone(),
                rx: self.rx.clone(),
                io: self.io.clone(),
                outbox: self.outbox.clone(),
                info: WorkerInfo {
                    pipeline: self.shared.name.to_string(),
                    index,
                },
            };
            std::thread::Builder::new()
                .name(format!("ferry-{}-{index}", self.shared.name))
                .spawn(move || worker.run())
                .expect("spawn a processor thread");
        }
    }
}

impl actix::Supervised for ProcessorPool {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // A handler that died mid-batch may not have queued every lease:
        // queue every pending one again (a worker skips one already taken).
        for lease in self.shared.life.leases.in_state(LeaseState::Pending) {
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

impl super::supervisor::Child for ProcessorPool {
    const NAME: &'static str = "pool";
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

    /// Runs one job; returns the panic message if the processor panicked.
    fn run_one(
        &self,
        lease: Arc<Lease>,
        processor: &mut Option<Box<dyn Processor>>,
    ) -> Option<String> {
        let s = &self.shared;
        if !lease.try_start() {
            return None;
        }
        let job = &lease.job;
        let span = crate::trace::job_span(&s.name, job);
        let _entered = span.enter();
        let ctx = JobContext {
            reader: s.sinks.reader.clone(),
            io: self.io.clone(),
            cancelled: lease.cancel_arc(),
        };
        let began = Instant::now();
        let prepared = input_blocking(s, &self.io, job);
        if let Ok(r) = &prepared {
            if let Some(parts) = s.parts_of(r.as_ref().unwrap_or(job)) {
                let split = match parts {
                    Err(message) => Split::Panicked(message),
                    Ok(parts) => {
                        run_blocking(&self.io, s.clone().send_split(parts, lease.cancel_arc()))
                            .unwrap_or(Split::Failed(Ending::Retry {
                                reason: "the runtime stopped while the parts were sent".into(),
                                after: None,
                            }))
                    }
                };
                let now = self.rx.is_empty();
                finish_split(s, &self.outbox, &self.io, lease, split, now, &span);
                return None;
            }
        }
        let outcome = match (prepared, processor.as_mut()) {
            (Err(outcome), _) => outcome,
            (Ok(r), Some(p)) => {
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
            (Ok(_), None) => Outcome::Panicked("processor could not be built".into()),
        };
        s.stats.processing.record(began.elapsed());
        let panicked = match &outcome {
            Outcome::Panicked(m) => Some(m.clone()),
            _ => None,
        };
        let now = self.rx.is_empty() || panicked.is_some();
        finish(s, &self.outbox, &self.io, lease, outcome, now, &span);
        panicked
    }

    /// Serves jobs until the pool is gone. `current` names the job in hand,
    /// so a panic that escapes is charged to it.
    fn serve(&self, current: &mut Option<Arc<Lease>>) {
        let s = self.shared.clone();
        let mut processor = self.build();
        let mut consecutive = 0u32;
        while let Ok(lease) = self.rx.recv() {
            *current = Some(lease.clone());
            let panicked = self.run_one(lease, &mut processor);
            *current = None;
            if let Some(message) = panicked {
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
                            let done = s.begin_settle(vec![(lease, ending)]);
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
    }
}
