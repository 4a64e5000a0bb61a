//! The processor pool: user processors on worker threads of their own,
//! supervised one-for-one. A panic is caught where the processor runs; the
//! processor is rebuilt from its factory after a backoff, its job is retried,
//! and restarts past the policy's limit escalate to the pipeline supervisor.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::acker::Acker;
use super::messages::{Announce, Leased, Processed, Settle, Settlement, Uploaded};
use super::publisher::Publisher;
use super::supervisor::{Escalate, PipelineSupervisor};
use super::uploader::Uploader;
use super::Shared;
use crate::error::ProcessError;
use crate::lease::Lease;
use crate::processor::{Context as JobContext, Output, Processor, WorkerInfo};
use crate::stats::Stats;

pub(crate) struct ProcessorPool {
    shared: Arc<Shared>,
    tx: Sender<Arc<Lease>>,
    rx: Receiver<Arc<Lease>>,
    uploader: Addr<Uploader>,
    publisher: Addr<Publisher>,
    acker: Addr<Acker>,
    supervisor: Addr<PipelineSupervisor>,
    io: tokio::runtime::Handle,
}

impl ProcessorPool {
    pub(crate) fn new(
        shared: Arc<Shared>,
        uploader: Addr<Uploader>,
        publisher: Addr<Publisher>,
        acker: Addr<Acker>,
        supervisor: Addr<PipelineSupervisor>,
        io: tokio::runtime::Handle,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            shared,
            tx,
            rx,
            uploader,
            publisher,
            acker,
            supervisor,
            io,
        }
    }
}

impl Actor for ProcessorPool {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        for index in 0..self.shared.config.workers {
            let worker = Worker {
                shared: self.shared.clone(),
                rx: self.rx.clone(),
                uploader: self.uploader.clone(),
                publisher: self.publisher.clone(),
                acker: self.acker.clone(),
                supervisor: self.supervisor.clone(),
                io: self.io.clone(),
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

impl Handler<Leased> for ProcessorPool {
    type Result = ();

    fn handle(&mut self, msg: Leased, _: &mut Context<Self>) {
        for lease in msg.0 {
            // The receiver lives as long as this actor: sending cannot fail.
            let _ = self.tx.send(lease);
        }
    }
}

/// Outcomes a worker has not yet sent on.
#[derive(Default)]
struct Outcomes {
    processed: Vec<(Arc<Lease>, Output)>,
    settle: Vec<Settlement>,
    since: Option<Instant>,
    /// Jobs started and processed successfully since the last flush.
    started: u64,
    ok: u64,
}

impl Outcomes {
    fn len(&self) -> usize {
        self.processed.len() + self.settle.len()
    }
}

/// Most outcomes sent in one message.
const OUTCOME_BATCH: usize = 64;
/// Longest an outcome waits for others to share its message.
const OUTCOME_WAIT: Duration = Duration::from_millis(1);

struct Worker {
    shared: Arc<Shared>,
    rx: Receiver<Arc<Lease>>,
    uploader: Addr<Uploader>,
    publisher: Addr<Publisher>,
    acker: Addr<Acker>,
    supervisor: Addr<PipelineSupervisor>,
    io: tokio::runtime::Handle,
    info: WorkerInfo,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
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

    /// Sends a batch of outcomes on, skipping stages whose sink is absent.
    fn flush(&self, out: &mut Outcomes) {
        let s = &self.shared;
        s.stats.add(&s.stats.processed, std::mem::take(&mut out.ok));
        let started = std::mem::take(&mut out.started);
        if started > 0 {
            s.jobs_started(started);
        }
        if !out.processed.is_empty() {
            let processed = std::mem::take(&mut out.processed);
            if s.results.is_some() {
                self.uploader.do_send(Processed(processed));
            } else if s.topic.is_some() {
                let inline = processed
                    .into_iter()
                    .map(|(l, o)| (l, Announce::Inline(o)))
                    .collect();
                self.publisher.do_send(Uploaded(inline));
            } else {
                let done = processed
                    .into_iter()
                    .map(|(l, _)| Settlement::Done(l))
                    .collect();
                self.acker.do_send(Settle(done));
            }
        }
        if !out.settle.is_empty() {
            self.acker.do_send(Settle(std::mem::take(&mut out.settle)));
        }
        out.since = None;
    }

    /// Runs one job; returns whether the processor panicked.
    fn run_one(
        &self,
        lease: Arc<Lease>,
        processor: &mut Option<Box<dyn Processor>>,
        out: &mut Outcomes,
    ) -> Option<String> {
        let s = &self.shared;
        if !lease.try_start() {
            return None;
        }
        out.started += 1;
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
        let outcome = match (resolved, processor.as_mut()) {
            (Err(e), _) => Ok(Err(e)),
            (Ok(r), Some(p)) => {
                let job = r.as_ref().unwrap_or(job);
                catch_unwind(AssertUnwindSafe(|| p.process(job, &ctx)))
            }
            (Ok(_), None) => Err(Box::new("processor could not be built") as Box<_>),
        };
        s.stats.processing.record(began.elapsed());
        out.since.get_or_insert_with(Instant::now);
        match outcome {
            Ok(Ok(output)) => {
                out.ok += 1;
                span.record("outcome", "processed");
                tracing::debug!("processed");
                out.processed.push((lease, output));
                None
            }
            Ok(Err(err)) => {
                Stats::inc(&s.stats.failed);
                span.record("outcome", crate::trace::outcome_of(&err));
                tracing::info!(error = %err, "processor failed");
                out.settle.push(match err {
                    ProcessError::Retry { reason, after } => Settlement::Retry {
                        lease,
                        reason,
                        after,
                    },
                    ProcessError::BadInput { reason } => Settlement::DeadLetter { lease, reason },
                });
                None
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                Stats::inc(&s.stats.panics);
                span.record("outcome", "panicked");
                tracing::warn!(panic = %message, "processor panicked; rebuilding it");
                out.settle.push(Settlement::Retry {
                    lease,
                    reason: format!("processor panicked: {message}"),
                    after: None,
                });
                Some(message)
            }
        }
    }

    fn run(self) {
        let s = self.shared.clone();
        let mut processor = self.build();
        let mut consecutive = 0u32;
        let mut out = Outcomes::default();
        loop {
            // Outcomes wait only while more work is at hand, and briefly.
            let lease = match self.rx.try_recv() {
                Ok(lease) => lease,
                Err(TryRecvError::Empty) => {
                    self.flush(&mut out);
                    match self.rx.recv() {
                        Ok(lease) => lease,
                        Err(_) => break,
                    }
                }
                // The pool actor (and with it the sender) is gone.
                Err(TryRecvError::Disconnected) => break,
            };
            match self.run_one(lease, &mut processor, &mut out) {
                None => consecutive = 0,
                Some(message) => {
                    self.flush(&mut out);
                    drop(processor.take());
                    consecutive += 1;
                    if s.record_restart() {
                        self.supervisor.do_send(Escalate {
                            reason: format!("processor restarts passed the limit: {message}"),
                        });
                    }
                    std::thread::sleep(s.config.restart.backoff(consecutive));
                    processor = self.build();
                    Stats::inc(&s.stats.restarts);
                }
            }
            if out.len() >= OUTCOME_BATCH || out.since.is_some_and(|t| t.elapsed() >= OUTCOME_WAIT)
            {
                self.flush(&mut out);
            }
        }
        self.flush(&mut out);
        if let Some(mut p) = processor {
            let _ = catch_unwind(AssertUnwindSafe(|| p.stopping()));
        }
    }
}
