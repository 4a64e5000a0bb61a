//! One pipeline's actors and the state they share.
//!
//! ```text
//! Poller ──Leased──▶ ProcessorPool ──Processed──▶ Uploader ──Uploaded──▶ Publisher ──Settle──▶ Acker
//!   │  └──Probe (redeliveries)──▶ Uploader ──(result exists)──▶ Publisher                        │
//!   └────────── leases ──────────▶ LeaseTable ◀── LeaseKeeper (extends)    settles, releases ◀───┘
//! ```
//!
//! All actors of a pipeline run on the runtime's I/O thread; processors run
//! on worker threads of their own. Leases and the seen-ID cache live in
//! [`Shared`], outside every actor, so no restart loses them.

mod acker;
mod builder;
mod deadline;
mod dependencies;
mod gate;
mod guard;
mod lease_keeper;
mod lifecycle;
mod messages;
mod outcome;
mod poller;
mod pool;
mod publisher;
mod runner;
mod split;
mod stuck;
mod supervisor;
mod uploader;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::{Addr, AsyncContext, Recipient};
use tokio::sync::Notify;

pub(crate) use builder::JobIdFn;
pub use builder::{IntoShared, Pipeline, ResultStore};

use crate::backend::{Queue, Topic};
use crate::config::PipelineConfig;
use crate::error::BackendError;
use crate::idempotency::IdempotencyStore;
use crate::lease::SeenCache;
use crate::lease::{Ending, Lease, LeaseState, LeaseTable};
use crate::processor::ProcessorKind;
use crate::stats::Stats;

pub use dependencies::DegradedDependency;
pub(crate) use guard::{panic_message, Guard};
pub(crate) use lifecycle::Ended;
use messages::{DropCopies, Leased, Probe, Processed, Settle, Uploaded};
pub(crate) use messages::{Flush, StopPolling};
pub(crate) use runner::jobs_runtime;
pub use supervisor::PipelineHealth;

/// The addresses the lifecycle and the actors send to, known by the
/// messages they accept rather than by the actors' types.
pub(crate) struct Addrs {
    pub(crate) settle: Recipient<Settle>,
    pub(crate) publish: Recipient<Uploaded>,
    pub(crate) admit: Recipient<gate::Admit>,
    pub(crate) store: Recipient<Processed>,
    pub(crate) probe: Recipient<Probe>,
    pub(crate) run: Recipient<Leased>,
    pub(crate) drop_copies: Recipient<DropCopies>,
}

/// What every actor of one pipeline shares, in four rooms: its sinks, the
/// lease lifecycle, flow control and supervision; beside them its name,
/// settings and processor. Nothing an actor must not lose lives in the
/// actor.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) processor: ProcessorKind,
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

/// The lease lifecycle's state (changed through `lifecycle`).
pub(crate) struct Life {
    pub(crate) leases: LeaseTable,
    pub(crate) seen: SeenCache,
    /// FIFO sources: each message group's running and waiting leases.
    pub(crate) groups: Option<crate::lease::Groups>,
    /// Leases in the Settling state.
    pub(crate) settling: AtomicUsize,
    /// This process's claim owner prefix (host, pid, random).
    owner: String,
    /// Each job's own failed attempts in this process.
    pub(crate) attempts: crate::attempts::Attempts,
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

/// Supervision: the pipeline's health, its supervisor and the actors'
/// addresses.
pub(crate) struct Care {
    pub(crate) health: supervisor::HealthState,
    /// The dependencies failing now.
    pub(crate) dependencies: Arc<dependencies::Dependencies>,
    pub(crate) supervisor: OnceLock<Addr<supervisor::PipelineSupervisor>>,
    /// Set when the runtime drains: restarts and resumes stop.
    stopping: std::sync::atomic::AtomicBool,
    addrs: OnceLock<Addrs>,
}

impl Shared {
    pub(crate) fn new(p: Pipeline) -> Arc<Self> {
        let config = p.config;
        let stats = Arc::new(Stats::new(&p.name));
        let deps = Arc::new(dependencies::Dependencies::new(
            config.retry_backoff_base,
            config.retry_backoff_max,
        ));
        let g = guard::Guard::new(stats.clone(), config.call_timeout, deps.clone());
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
        let groups = p
            .source
            .as_ref()
            .is_some_and(|q| q.is_fifo())
            .then(crate::lease::Groups::default);
        Arc::new(Self {
            name: Arc::from(p.name.as_str()),
            processor: p.processor.expect("checked"),
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
            life: Life {
                leases: LeaseTable::default(),
                seen: SeenCache::new(config.seen_ttl, config.seen_capacity),
                groups,
                settling: AtomicUsize::new(0),
                owner: owner_prefix(),
                attempts: crate::attempts::Attempts::new(
                    config.seen_capacity,
                    config
                        .seen_ttl
                        .max(config.retry_backoff_max * (config.max_receives + 1)),
                ),
            },
            flow: Flow {
                capacity: Notify::new(),
                receives_in_flight: AtomicUsize::new(0),
                started: std::sync::atomic::AtomicU64::new(0),
                prefetch_now: AtomicUsize::new(0),
            },
            care: Care {
                health: supervisor::HealthState::default(),
                dependencies: deps,
                supervisor: OnceLock::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                addrs: OnceLock::new(),
            },
            stats,
            config,
        })
    }

    /// The actors' addresses (set when the pipeline starts).
    pub(crate) fn addrs(&self) -> &Addrs {
        self.care
            .addrs
            .get()
            .expect("the pipeline's actors are started")
    }

    /// Whether new leases pass the gate (FIFO order or claims) before running.
    pub(crate) fn gated(&self) -> bool {
        self.life.groups.is_some() || self.sinks.store.is_some()
    }

    /// Leases received but not able to start yet: pending, less those
    /// waiting behind their FIFO group's running job (they wait on the
    /// group, not on a processor, so they do not fill the prefetch window).
    pub(crate) fn ready_pending(&self) -> usize {
        let waiting = self.life.groups.as_ref().map_or(0, |g| g.waiting());
        self.life.leases.pending().saturating_sub(waiting)
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
        format!("{}/{}", self.life.owner, lease.id)
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

    /// Sets the in-flight gauge to the leases held now.
    pub(crate) fn leases_changed(&self) {
        self.stats.in_flight.set(self.life.leases.len() as f64);
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
        self.life.leases.len() <= self.life.settling.load(Ordering::Acquire) + waiting
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
}

/// The other actors' addresses: the pool or the async runner, the gate
/// when there is one.
type Others = (
    Addr<publisher::Publisher>,
    Addr<uploader::Uploader>,
    Option<Addr<pool::ProcessorPool>>,
    Option<Addr<runner::AsyncRunner>>,
    Option<Addr<gate::Gate>>,
);

/// A started pipeline's addresses.
pub(crate) struct Running {
    pub(crate) shared: Arc<Shared>,
    pub(crate) poller: Addr<poller::Poller>,
    pub(crate) acker: Addr<acker::Acker>,
    /// Held so these actors live exactly as long as the runtime.
    _keeper: Addr<lease_keeper::LeaseKeeper>,
    _supervisor: Addr<supervisor::PipelineSupervisor>,
    _others: Others,
}

/// Starts one pipeline's actors, each under a restarting supervisor; must
/// run inside the actix system. Actors know each other only through
/// [`Addrs`], set before any of them starts.
pub(crate) fn start(shared: Arc<Shared>) -> Running {
    let io = tokio::runtime::Handle::current();
    let acker_ctx = actix::Context::<acker::Acker>::new();
    let publisher_ctx = actix::Context::<publisher::Publisher>::new();
    let uploader_ctx = actix::Context::<uploader::Uploader>::new();
    let pool_ctx = actix::Context::<pool::ProcessorPool>::new();
    let runner_ctx = actix::Context::<runner::AsyncRunner>::new();
    let gate_ctx = actix::Context::<gate::Gate>::new();
    let (acker, publisher, uploader, pool, runner, gate) = (
        acker_ctx.address(),
        publisher_ctx.address(),
        uploader_ctx.address(),
        pool_ctx.address(),
        runner_ctx.address(),
        gate_ctx.address(),
    );
    let sync = matches!(shared.processor, ProcessorKind::Sync(_));
    let _ = shared.care.addrs.set(Addrs {
        settle: acker.clone().recipient(),
        publish: publisher.clone().recipient(),
        admit: gate.clone().recipient(),
        store: uploader.clone().recipient(),
        probe: uploader.clone().recipient(),
        run: if sync {
            pool.clone().recipient()
        } else {
            runner.clone().recipient()
        },
        drop_copies: acker.clone().recipient(),
    });
    let sup = supervisor::Supervision::new(shared.clone());
    sup.start(acker_ctx, acker::Acker::new(shared.clone()));
    sup.start(publisher_ctx, publisher::Publisher::new(shared.clone()));
    sup.start(uploader_ctx, uploader::Uploader::new(shared.clone()));
    let (pool, runner) = if sync {
        sup.start(pool_ctx, pool::ProcessorPool::new(shared.clone(), io));
        (Some(pool), None)
    } else {
        sup.start(runner_ctx, runner::AsyncRunner::new(shared.clone(), io));
        (None, Some(runner))
    };
    let gate = shared.gated().then(|| {
        sup.start(gate_ctx, gate::Gate::new(shared.clone()));
        gate
    });
    let poller = sup.start(
        actix::Context::new(),
        poller::Poller::new(shared.clone(), gate.clone()),
    );
    let keeper = sup.start(
        actix::Context::new(),
        lease_keeper::LeaseKeeper::new(shared.clone()),
    );
    let supervisor = sup.start(
        actix::Context::new(),
        supervisor::PipelineSupervisor::new(shared.clone(), poller.clone(), sup.restarters()),
    );
    Running {
        shared,
        poller,
        acker: acker.clone(),
        _keeper: keeper,
        _supervisor: supervisor,
        _others: (publisher, uploader, pool, runner, gate),
    }
}

/// Starts only the acker and the lease keeper (the other actors' addresses
/// lead nowhere): for the lease keeper's own tests.
#[cfg(test)]
pub(crate) fn start_keeper_only(shared: Arc<Shared>) {
    let acker_ctx = actix::Context::<acker::Acker>::new();
    let acker = acker_ctx.address();
    let (p, u, r, g) = (
        actix::Context::<publisher::Publisher>::new(),
        actix::Context::<uploader::Uploader>::new(),
        actix::Context::<pool::ProcessorPool>::new(),
        actix::Context::<gate::Gate>::new(),
    );
    let _ = shared.care.addrs.set(Addrs {
        settle: acker.clone().recipient(),
        publish: p.address().recipient(),
        admit: g.address().recipient(),
        store: u.address().recipient(),
        probe: u.address().recipient(),
        run: r.address().recipient(),
        drop_copies: acker.clone().recipient(),
    });
    let sup = supervisor::Supervision::new(shared.clone());
    sup.start(acker_ctx, acker::Acker::new(shared.clone()));
    sup.start(
        actix::Context::new(),
        lease_keeper::LeaseKeeper::new(shared),
    );
}

/// A claim owner prefix unique to this process: host, pid and a random part
/// (a pid is reused across instances and restarts).
fn owner_prefix() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Runs `call` up to `attempts` times while it fails with a retryable error,
/// waiting a doubling backoff from 20 ms between tries.
pub(crate) async fn with_retries<T, F, Fut>(attempts: u32, mut call: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut delay = Duration::from_millis(20);
    let mut n = 1;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && n < attempts => {
                tracing::debug!(error = %e, attempt = n, "retrying backend call");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                n += 1;
            }
            other => return other,
        }
    }
}

/// Releases every lease of a pipeline: those not started yet, or all
/// (cancelling started jobs; leases already settling are left to the
/// acker). Returns how many were released.
pub(crate) fn release_leases(shared: &Shared, started_too: bool) -> usize {
    let mut out = Vec::new();
    for lease in shared.life.leases.all() {
        let state = lease.state();
        if state.unstarted() || (started_too && state != LeaseState::Settling) {
            if !state.unstarted() {
                shared.life.leases.cancel(&lease);
            }
            out.push((lease, Ending::Release));
        }
    }
    let n = out.len();
    shared.settle(out);
    n
}
