//! The processor pool: user processors on worker threads of their own,
//! supervised one-for-one. A panic is caught where the processor runs; the
//! processor is rebuilt from its factory after a backoff, its job is retried,
//! and restarts past the policy's limit escalate to the pipeline supervisor.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender};

use super::acker::Acker;
use super::messages::{Leased, Processed, Settle, Settlement};
use super::supervisor::{Escalate, PipelineSupervisor};
use super::uploader::Uploader;
use super::Shared;
use crate::error::ProcessError;
use crate::lease::Lease;
use crate::processor::{Context as JobContext, Processor, WorkerInfo};
use crate::stats::Stats;

pub(crate) struct ProcessorPool {
    shared: Arc<Shared>,
    tx: Sender<Arc<Lease>>,
    rx: Receiver<Arc<Lease>>,
    uploader: Addr<Uploader>,
    acker: Addr<Acker>,
    supervisor: Addr<PipelineSupervisor>,
    io: tokio::runtime::Handle,
}

impl ProcessorPool {
    pub(crate) fn new(
        shared: Arc<Shared>,
        uploader: Addr<Uploader>,
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

struct Worker {
    shared: Arc<Shared>,
    rx: Receiver<Arc<Lease>>,
    uploader: Addr<Uploader>,
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

    fn run(self) {
        let s = self.shared.clone();
        let mut processor = self.build();
        let mut consecutive = 0u32;
        // Ends when the pool actor (and with it the sender) is gone.
        while let Ok(lease) = self.rx.recv() {
            if !lease.try_start() {
                continue;
            }
            let job = &lease.job;
            let span = tracing::info_span!("job", pipeline = %s.name, job_id = %job.id,
                message_id = %job.message_id, receive_count = job.receive_count);
            let _entered = span.enter();
            let ctx = JobContext {
                pipeline: s.name.clone(),
                blobs: s.blobs.clone(),
                io: self.io.clone(),
                cancelled: lease.cancel_arc(),
                max_fetch_bytes: s.config.max_fetch_bytes,
            };
            let outcome = match processor.as_mut() {
                Some(p) => catch_unwind(AssertUnwindSafe(|| p.process(job, &ctx))),
                None => Err(Box::new("processor could not be built") as Box<_>),
            };
            match outcome {
                Ok(Ok(output)) => {
                    consecutive = 0;
                    Stats::inc(&s.stats.processed);
                    tracing::debug!("processed");
                    self.uploader.do_send(Processed(vec![(lease, output)]));
                }
                Ok(Err(err)) => {
                    consecutive = 0;
                    Stats::inc(&s.stats.failed);
                    tracing::info!(error = %err, "processor failed");
                    let settle = match err {
                        ProcessError::Retry { reason, after } => Settlement::Retry {
                            lease,
                            reason,
                            after,
                        },
                        ProcessError::BadInput { reason } => {
                            Settlement::DeadLetter { lease, reason }
                        }
                    };
                    self.acker.do_send(Settle(vec![settle]));
                }
                Err(payload) => {
                    let message = panic_message(&*payload);
                    Stats::inc(&s.stats.panics);
                    tracing::warn!(panic = %message, "processor panicked; rebuilding it");
                    self.acker.do_send(Settle(vec![Settlement::Retry {
                        lease,
                        reason: format!("processor panicked: {message}"),
                        after: None,
                    }]));
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
        }
        if let Some(mut p) = processor {
            let _ = catch_unwind(AssertUnwindSafe(|| p.stopping()));
        }
    }
}
