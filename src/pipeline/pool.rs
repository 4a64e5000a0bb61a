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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender};

use super::messages::{Leased, Processed, Restart, Settle};
use super::split::Split;
use super::{panic_message, Shared};
use crate::error::ProcessError;
use crate::lease::{Ending, Lease, LeaseState};
use crate::processor::{Context as JobContext, Processor, WorkerInfo};
use crate::stats::Stats;

/// Longest an outcome waits for others to share its message.
const OUTCOME_WAIT: Duration = Duration::from_millis(1);
/// Outcomes sent at once, without waiting, when this many are waiting.
const OUTCOME_BATCH: usize = 64;

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
        for lease in self.shared.leases.in_state(LeaseState::Pending) {
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

/// Outcomes of finished jobs not yet sent to the I/O side, shared by the
/// pool's workers.
#[derive(Default)]
struct Outbox {
    inner: Mutex<Outcomes>,
    /// A timer flush is scheduled.
    scheduled: AtomicBool,
}

#[derive(Default)]
struct Outcomes {
    /// Processed leases for the uploader.
    processed: Vec<Arc<Lease>>,
    /// Stored leases (inline output) for the publisher.
    stored: Vec<Arc<Lease>>,
    /// Settling leases for the acker.
    settle: Vec<Arc<Lease>>,
    started: u64,
    ok: u64,
}

impl Outcomes {
    fn len(&self) -> usize {
        self.processed.len() + self.stored.len() + self.settle.len()
    }
}

impl Outbox {
    /// Sends everything waiting on.
    fn flush(&self, s: &Shared) {
        let out = std::mem::take(&mut *self.inner.lock().expect("outbox lock"));
        s.stats.add(&s.stats.processed, out.ok);
        if out.started > 0 {
            s.jobs_started(out.started);
        }
        if !out.processed.is_empty() {
            s.addrs().store.do_send(Processed(out.processed));
        }
        s.announce(out.stored);
        if !out.settle.is_empty() {
            s.addrs().settle.do_send(Settle(out.settle));
        }
    }

    /// Adds one job's outcome; sends at once when `now`, or when a batch is
    /// full, else makes sure a timer sends it within [`OUTCOME_WAIT`].
    fn add(
        self: &Arc<Self>,
        s: &Arc<Shared>,
        io: &tokio::runtime::Handle,
        now: bool,
        f: impl FnOnce(&mut Outcomes),
    ) {
        let full = {
            let mut o = self.inner.lock().expect("outbox lock");
            f(&mut o);
            o.len() >= OUTCOME_BATCH
        };
        if now || full {
            self.flush(s);
        } else if !self.scheduled.swap(true, Ordering::AcqRel) {
            let (outbox, shared) = (self.clone(), s.clone());
            io.spawn(async move {
                tokio::time::sleep(OUTCOME_WAIT).await;
                outbox.scheduled.store(false, Ordering::Release);
                outbox.flush(&shared);
            });
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
            let mut p = (self.shared.factory)();
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
            pipeline: s.name.clone(),
            blobs: s.blobs.clone(),
            io: self.io.clone(),
            cancelled: lease.cancel_arc(),
            max_fetch_bytes: s.config.max_fetch_bytes,
        };
        let began = Instant::now();
        let resolved = match &s.payloads {
            Some(payloads) => payloads.resolve(job, &ctx),
            None => Ok(None),
        };
        if let Ok(r) = &resolved {
            let whole = r.as_ref().unwrap_or(job);
            match s.split_job(&lease, whole, &self.io) {
                Split::Whole => {}
                split => return self.split_done(lease, split, &span),
            }
        }
        let outcome = match (resolved, processor.as_mut()) {
            (Err(e), _) => Ok(Err(e)),
            (Ok(r), Some(p)) => {
                let job = r.as_ref().unwrap_or(job);
                catch_unwind(AssertUnwindSafe(|| p.process(job, &ctx)))
            }
            (Ok(_), None) => Err(Box::new("processor could not be built") as Box<_>),
        };
        s.stats.processing.record(began.elapsed());
        let idle = self.rx.is_empty();
        let (ending, panicked) = match outcome {
            Ok(Ok(output)) => {
                span.record("outcome", "processed");
                tracing::debug!("processed");
                s.health.success();
                let to = if s.results.is_some() {
                    LeaseState::Processed
                } else if s.topic.is_some() {
                    LeaseState::Stored
                } else {
                    LeaseState::Settling
                };
                if to == LeaseState::Settling {
                    let done = s.begin_settle(vec![(
                        lease,
                        Ending::Delete {
                            dead_lettered: false,
                        },
                    )]);
                    self.outbox.add(s, &self.io, idle, |o| {
                        o.started += 1;
                        o.ok += 1;
                        o.settle.extend(done);
                    });
                } else {
                    lease.set_output(Some(output));
                    let moved = lease.transition(&[LeaseState::Running], to).is_some();
                    self.outbox.add(s, &self.io, idle, |o| {
                        o.started += 1;
                        o.ok += 1;
                        if moved && to == LeaseState::Processed {
                            o.processed.push(lease);
                        } else if moved {
                            o.stored.push(lease);
                        }
                    });
                }
                return None;
            }
            Ok(Err(err)) => {
                Stats::inc(&s.stats.failed);
                span.record("outcome", crate::trace::outcome_of(&err));
                tracing::info!(error = %err, "processor failed");
                let ending = match err {
                    ProcessError::Retry { reason, after } => Ending::Retry { reason, after },
                    ProcessError::BadInput { reason } => Ending::DeadLetter { reason },
                };
                (ending, None)
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                Stats::inc(&s.stats.panics);
                span.record("outcome", "panicked");
                tracing::warn!(panic = %message, "processor panicked; rebuilding it");
                let ending = Ending::Retry {
                    reason: format!("processor panicked: {message}"),
                    after: None,
                };
                (ending, Some(message))
            }
        };
        let done = s.begin_settle(vec![(lease, ending)]);
        self.outbox
            .add(s, &self.io, idle || panicked.is_some(), |o| {
                o.started += 1;
                o.settle.extend(done);
            });
        panicked
    }

    /// A job split (or not, for a failure): the original settles.
    fn split_done(&self, lease: Arc<Lease>, split: Split, span: &tracing::Span) -> Option<String> {
        let s = &self.shared;
        let idle = self.rx.is_empty();
        let ending = match split {
            Split::Whole => unreachable!("a whole job is processed"),
            Split::Sent(parts) => {
                span.record("outcome", "split");
                tracing::debug!(parts, "split: parts sent, original to be deleted");
                Stats::inc(&s.stats.split_messages);
                s.health.success();
                Some(Ending::Delete {
                    dead_lettered: false,
                })
            }
            Split::Cancelled => None,
            Split::Panicked(message) => {
                Stats::inc(&s.stats.panics);
                span.record("outcome", "panicked");
                tracing::warn!(panic = %message, "split function panicked");
                Some(Ending::Retry {
                    reason: format!("split function panicked: {message}"),
                    after: None,
                })
            }
            Split::Failed(ending) => {
                span.record(
                    "outcome",
                    if matches!(ending, Ending::DeadLetter { .. }) {
                        "bad_input"
                    } else {
                        "retry"
                    },
                );
                tracing::warn!(?ending, "split: the parts could not be sent");
                Some(ending)
            }
        };
        let done = match ending {
            Some(ending) => s.begin_settle(vec![(lease, ending)]),
            None => Vec::new(),
        };
        self.outbox.add(s, &self.io, idle, |o| {
            o.started += 1;
            o.settle.extend(done);
        });
        None
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
