//! What every actor of one pipeline shares, in four rooms: its sinks, the
//! lease lifecycle, flow control and supervision; beside them its name,
//! settings and processor. Nothing an actor must not lose lives in the
//! actor. The rooms' behaviour lives with the actor or step that owns it
//! (`lifecycle`, `deadline`, `supervisor`). The lease lifecycle's room
//! (`lifecycle::Life`) keeps its parts private to the steps that change it;
//! this module holds the other rooms' state.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::builder::{self, Pipeline, ResultStore};
use super::health::HealthState;
use super::lifecycle::life::Life;
use crate::backend::dependencies::Dependencies;
use crate::backend::guard::Guard;
use crate::backend::{Queue, Topic};
use crate::config::PipelineConfig;
use crate::idempotency::IdempotencyStore;
use crate::lease::Lease;
use crate::processor::ProcessorKind;
use crate::stats::Stats;

/// What every actor of one pipeline shares, in four rooms: its sinks, the
/// lease lifecycle, flow control and supervision; beside them its name,
/// settings and processor. Nothing an actor must not lose lives in the
/// actor.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) processor: ProcessorKind,
    /// Told of each dead-letter entry sent (`Pipeline::on_dead_letter`).
    pub(crate) on_dead_letter: Vec<crate::processor::DeadLetterHook>,
    /// Where async and batch jobs run, when not on the I/O runtime.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Derives a received job's id from its content (`Pipeline::job_id`).
    pub(crate) job_id: Option<builder::JobIdFn>,
    /// Splits a message into parts (`Pipeline::split`).
    pub(crate) split: Option<builder::SplitFn>,
    pub(crate) config: PipelineConfig,
    pub(crate) stats: Arc<Stats>,
    pub(crate) sinks: Sinks,
    pub(crate) life: Life,
    pub(crate) flow: Flow,
    pub(crate) care: Care,
}

/// Where a pipeline's effects go; every call to them is guarded (see
/// `guard`).
pub(crate) struct Sinks {
    pub(crate) source: Arc<dyn Queue>,
    pub(crate) dead_letter: Arc<dyn Queue>,
    pub(crate) topic: Option<Arc<dyn Topic>>,
    pub(crate) results: Option<ResultStore>,
    pub(crate) payloads: Option<Arc<crate::payload::LargePayloads>>,
    /// What the processor may read (see `Pipeline::reads_from`).
    pub(crate) reader: Arc<crate::processor::Reader>,
    /// The idempotency store, when the pipeline has one.
    pub(crate) store: Option<Arc<dyn IdempotencyStore>>,
}

/// Flow control between the poller and the processors.
pub(crate) struct Flow {
    /// Signalled whenever leases are removed, so a full poller resumes.
    pub(crate) capacity: Notify,
    pub(crate) receives_in_flight: AtomicUsize,
    /// Jobs started so far (the poller's rate estimate reads it).
    pub(crate) started: std::sync::atomic::AtomicU64,
    /// The poller's prefetch limit now; workers wake it when a batch fits.
    pub(crate) prefetch_now: AtomicUsize,
}

/// Supervision: the pipeline's health and the escalation signal its
/// supervisor waits on.
pub(crate) struct Care {
    pub(crate) health: HealthState,
    /// The dependencies failing now.
    pub(crate) dependencies: Arc<Dependencies>,
    /// Woken by an escalation; the supervisor waits on it.
    pub(crate) escalation: Notify,
    /// Set when the runtime drains: restarts and resumes stop.
    stopping: std::sync::atomic::AtomicBool,
    /// Set when the runtime was dropped without a shutdown (a crash): the
    /// worker threads left behind start no further job.
    halted: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn new(p: Pipeline) -> Arc<Self> {
        let config = p.config;
        let stats = Arc::new(Stats::new(&p.name));
        let deps = Arc::new(Dependencies::new(
            config.retry_backoff_base,
            config.retry_backoff_max,
        ));
        let g = Guard::new(stats.clone(), config.call_timeout, deps.clone());
        let mut readable = p.reads.clone();
        readable.extend(p.results.as_ref().map(|r| r.bucket.clone()));
        readable.extend(p.payloads.as_ref().map(|l| l.bucket().to_owned()));
        readable.sort();
        readable.dedup();
        let blobs = p.blobs.map(|b| g.blobs(b));
        let results = p.results.map(|r| ResultStore {
            blobs: g.blobs(r.blobs),
            ..r
        });
        let fifo = p.source.as_ref().is_some_and(|q| q.is_fifo());
        Arc::new(Self {
            name: Arc::from(p.name.as_str()),
            processor: p.layers.wrap(p.processor.expect("checked")),
            on_dead_letter: p.on_dead_letter,
            runtime: p.runtime,
            job_id: p.job_id,
            split: p.split,
            sinks: Sinks {
                source: g.queue(p.source.expect("checked")),
                dead_letter: g.queue(p.dead_letter.expect("checked")),
                topic: p.topic.map(|t| g.topic(t)),
                results,
                payloads: p.payloads.map(|l| Arc::new(l.guarded(&g))),
                reader: Arc::new(crate::processor::Reader {
                    pipeline: Arc::from(p.name.as_str()),
                    blobs,
                    max_fetch_bytes: config.max_fetch_bytes,
                    readable: readable.into(),
                }),
                store: p.store.map(|s| g.store(s)),
            },
            life: Life::new(&config, fifo),
            flow: Flow {
                capacity: Notify::new(),
                receives_in_flight: AtomicUsize::new(0),
                started: std::sync::atomic::AtomicU64::new(0),
                prefetch_now: AtomicUsize::new(0),
            },
            care: Care {
                health: HealthState::default(),
                dependencies: deps,
                escalation: Notify::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                halted: std::sync::atomic::AtomicBool::new(false),
            },
            stats,
            config,
        })
    }

    /// Whether new leases pass the gate (FIFO order or claims) before running.
    pub(crate) fn gated(&self) -> bool {
        self.life.groups().is_some() || self.sinks.store.is_some()
    }

    /// Leases received but not able to start yet: pending, less those
    /// waiting behind their FIFO group's running job (they wait on the
    /// group, not on a processor, so they do not fill the prefetch window).
    pub(crate) fn ready_pending(&self) -> usize {
        self.life.ready_pending()
    }

    /// The store key of a lease's job.
    pub(crate) fn claim_key(&self, lease: &Lease) -> String {
        crate::idempotency::job_key(&self.name, &lease.job.id)
    }

    /// The store key that marks a lease's message as dead-lettered, so that
    /// its return is deleted without a second entry by whichever worker
    /// receives it. Not a job's key: a job id never holds the unit
    /// separator (SQS refuses it in an attribute).
    pub(crate) fn dead_letter_mark(&self, lease: &Lease) -> String {
        format!(
            "{}\u{1f}dead-lettered\u{1f}{}",
            self.name, lease.job.message_id
        )
    }

    /// The claim owner of one attempt: this process and the lease.
    pub(crate) fn owner(&self, lease: &Lease) -> String {
        self.life.owner(lease)
    }

    /// One idempotency-store call per lease, `call(store, key, owner)`, run
    /// together; the results come in the leases' order.
    pub(crate) fn store_calls<F, Fut>(
        &self,
        leases: &[Arc<Lease>],
        call: F,
    ) -> futures_util::future::JoinAll<Fut>
    where
        F: Fn(Arc<dyn IdempotencyStore>, String, String) -> Fut,
        Fut: Future,
    {
        let store = self.sinks.store.clone().expect("claims only with a store");
        futures_util::future::join_all(
            leases
                .iter()
                .map(|l| call(store.clone(), self.claim_key(l), self.owner(l))),
        )
    }

    /// Leases held now.
    pub(crate) fn leases_held(&self) -> usize {
        self.life.held()
    }

    /// Receives under way now.
    pub(crate) fn receives_in_flight(&self) -> usize {
        self.flow.receives_in_flight.load(Ordering::Acquire)
    }

    /// Why the pipeline escalated, if it ever did (the last reason).
    pub(crate) fn escalated_for(&self) -> Option<String> {
        (self.care.health.escalations() > 0).then(|| self.care.health.reason().unwrap_or_default())
    }

    /// Sets the in-flight gauge to the leases held now.
    pub(crate) fn leases_changed(&self) {
        self.stats.in_flight.set(self.life.held() as f64);
    }

    /// `n` jobs left the prefetch window (started, or resumed without
    /// processing): wake the poller if a full batch fits again.
    pub(crate) fn jobs_started(&self, n: u64) {
        self.flow.started.fetch_add(n, Ordering::Relaxed);
        let limit = self.flow.prefetch_now.load(Ordering::Relaxed);
        if self.ready_pending() + crate::backend::MAX_BATCH <= limit {
            self.flow.capacity.notify_one();
        }
    }

    /// Whether every lease held is waiting in the acker or in `waiting`
    /// more: then no other job can join a batch, and waiting for one only
    /// adds latency.
    pub(crate) fn nothing_else_in_flight(&self, waiting: usize) -> bool {
        self.life.held() <= self.life.settling() + waiting
    }

    pub(crate) fn is_escalated(&self) -> bool {
        self.care.health.is_escalated()
    }

    /// The runtime is draining this pipeline.
    pub(crate) fn shutting_down(&self) -> bool {
        self.care.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.care.stopping.store(true, Ordering::Release);
    }

    /// The runtime stopped at once (dropped without a shutdown): nothing of
    /// this pipeline may start another job, as after a crash.
    pub(crate) fn halt(&self) {
        self.care.halted.store(true, Ordering::Release);
    }

    /// Whether the runtime stopped at once.
    pub(crate) fn halted(&self) -> bool {
        self.care.halted.load(Ordering::Acquire)
    }
}
