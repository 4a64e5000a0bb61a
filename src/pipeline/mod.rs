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
mod gate;
mod lease_keeper;
mod messages;
mod poller;
mod pool;
mod publisher;
mod supervisor;
mod uploader;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext};
use tokio::sync::Notify;

pub use builder::{IntoShared, Pipeline, ResultStore};

use crate::backend::{BlobStore, Queue, Topic};
use crate::config::PipelineConfig;
use crate::error::BackendError;
use crate::idempotency::IdempotencyStore;
use crate::lease::{Lease, LeaseTable};
use crate::processor::ProcessorFactory;
use crate::seen::SeenCache;
use crate::stats::Stats;

pub(crate) use messages::{Flush, Settle, Settlement, StopPolling};

/// What every actor of one pipeline shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) source: Arc<dyn Queue>,
    pub(crate) dead_letter: Arc<dyn Queue>,
    pub(crate) topic: Option<Arc<dyn Topic>>,
    pub(crate) results: Option<ResultStore>,
    pub(crate) blobs: Option<Arc<dyn BlobStore>>,
    pub(crate) factory: ProcessorFactory,
    pub(crate) config: PipelineConfig,
    pub(crate) payloads: Option<Arc<crate::payload::LargePayloads>>,
    pub(crate) leases: LeaseTable,
    pub(crate) seen: SeenCache,
    pub(crate) stats: Stats,
    /// Signalled whenever leases are removed, so a full poller resumes.
    pub(crate) capacity: Notify,
    pub(crate) receives_in_flight: AtomicUsize,
    /// Jobs started so far (the poller's rate estimate reads it).
    pub(crate) started: std::sync::atomic::AtomicU64,
    /// The poller's prefetch limit now; workers wake it when a batch fits.
    pub(crate) prefetch_now: AtomicUsize,
    /// Leases whose ending the acker holds (buffered or being sent).
    pub(crate) settling: AtomicUsize,
    pub(crate) escalated: AtomicBool,
    restarts: Mutex<VecDeque<std::time::Instant>>,
    /// The idempotency store, when the pipeline has one.
    pub(crate) store: Option<Arc<dyn IdempotencyStore>>,
    /// This process's claim owner prefix (host, pid, random).
    owner: String,
    /// FIFO sources: each message group's running and waiting leases.
    pub(crate) groups: Option<gate::Groups>,
    /// The gate, once started (only when there are groups or a store).
    gate: OnceLock<Addr<gate::Gate>>,
}

impl Shared {
    pub(crate) fn new(p: Pipeline) -> Arc<Self> {
        let config = p.config;
        Arc::new(Self {
            name: Arc::from(p.name.as_str()),
            dead_letter: p.dead_letter.expect("checked"),
            topic: p.topic,
            results: p.results,
            blobs: p.blobs,
            factory: p.factory.expect("checked"),
            payloads: p.payloads.map(Arc::new),
            leases: LeaseTable::default(),
            seen: SeenCache::new(config.seen_ttl, config.seen_capacity),
            stats: Stats::new(&p.name),
            capacity: Notify::new(),
            receives_in_flight: AtomicUsize::new(0),
            started: std::sync::atomic::AtomicU64::new(0),
            prefetch_now: AtomicUsize::new(0),
            settling: AtomicUsize::new(0),
            escalated: AtomicBool::new(false),
            restarts: Mutex::new(VecDeque::new()),
            groups: p
                .source
                .as_ref()
                .is_some_and(|q| q.is_fifo())
                .then(gate::Groups::default),
            store: p.store,
            owner: owner_prefix(),
            gate: OnceLock::new(),
            source: p.source.expect("checked"),
            config,
        })
    }

    /// Whether new leases pass the gate (FIFO order or claims) before running.
    pub(crate) fn gated(&self) -> bool {
        self.groups.is_some() || self.store.is_some()
    }

    /// Leases received but not able to start yet: pending, less those
    /// waiting behind their FIFO group's running job (they wait on the
    /// group, not on a processor, so they do not fill the prefetch window).
    pub(crate) fn ready_pending(&self) -> usize {
        let waiting = self.groups.as_ref().map_or(0, |g| g.waiting());
        self.leases.pending().saturating_sub(waiting)
    }

    /// The store key of a lease's job.
    pub(crate) fn claim_key(&self, lease: &Lease) -> String {
        crate::idempotency::job_key(&self.name, &lease.job.id)
    }

    /// The claim owner of one attempt: this process and the lease.
    pub(crate) fn owner(&self, lease: &Lease) -> String {
        format!("{}/{}", self.owner, lease.id)
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
        let store = self.store.clone().expect("claims only with a store");
        futures_util::future::join_all(
            leases
                .iter()
                .map(|l| call(store.clone(), self.claim_key(l), self.owner(l))),
        )
    }

    /// Gives up a lease's claim, if it holds one, without waiting.
    pub(crate) fn release_claim(&self, lease: &Lease) {
        let Some(store) = self.store.clone() else {
            return;
        };
        if !lease.take_claim() {
            return;
        }
        let (key, owner) = (self.claim_key(lease), self.owner(lease));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.release(&key, &owner).await {
                    tracing::debug!(key, error = %e, "releasing a claim failed; it will expire");
                }
            });
        }
    }

    /// A lease ended: move its FIFO group on (or give its waiting leases
    /// back).
    fn group_settled(&self, lease: &Lease, finished: bool) {
        let Some(groups) = &self.groups else {
            return;
        };
        let next = groups.settled(lease, finished);
        if next.go.is_empty() && next.release.is_empty() {
            return;
        }
        let Some(gate) = self.gate.get() else {
            return;
        };
        if !next.go.is_empty() {
            gate.do_send(gate::Admit(next.go));
        }
        if !next.release.is_empty() {
            gate.do_send(gate::GiveBack(next.release));
        }
    }

    /// The lease is gone (lost, or given back): forget it here so the next
    /// delivery is processed afresh.
    pub(crate) fn drop_lease(&self, lease: &Lease) {
        lease.mark_released();
        self.seen.forget(lease);
        self.release_claim(lease);
        if self.leases.remove(lease) {
            self.capacity.notify_one();
        }
        self.group_settled(lease, false);
        self.leases_changed();
    }

    /// These jobs are finished (deleted or dead-lettered).
    pub(crate) fn finish_leases(&self, leases: &[Arc<Lease>]) {
        if leases.is_empty() {
            return;
        }
        let keys: Vec<_> = leases.iter().map(|l| l.seen_key).collect();
        self.seen.complete_keys(&keys);
        for lease in leases {
            lease.mark_released();
            // A dead-lettered job's claim (a completed one was taken).
            self.release_claim(lease);
            self.leases.remove(lease);
            self.group_settled(lease, true);
        }
        self.capacity.notify_one();
        self.leases_changed();
    }

    /// Sets the in-flight gauge to the leases held now.
    pub(crate) fn leases_changed(&self) {
        self.stats.in_flight.set(self.leases.len() as f64);
    }

    /// Records a restart; true when the restart limit is passed.
    pub(crate) fn record_restart(&self) -> bool {
        let policy = &self.config.restart;
        let now = std::time::Instant::now();
        let mut r = self.restarts.lock().expect("restarts lock");
        r.push_back(now);
        while r
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            r.pop_front();
        }
        r.len() > policy.max_restarts as usize
    }

    /// `n` jobs left the prefetch window (started, or resumed without
    /// processing): wake the poller if a full batch fits again.
    pub(crate) fn jobs_started(&self, n: u64) {
        self.started.fetch_add(n, Ordering::Relaxed);
        let limit = self.prefetch_now.load(Ordering::Relaxed);
        if self.ready_pending() + crate::backend::MAX_BATCH <= limit {
            self.capacity.notify_one();
        }
    }

    /// Whether every lease held is waiting in the acker or in `waiting`
    /// more: then no other job can join a batch, and waiting for one only
    /// adds latency.
    pub(crate) fn nothing_else_in_flight(&self, waiting: usize) -> bool {
        self.leases.len() <= self.settling.load(Ordering::Acquire) + waiting
    }

    pub(crate) fn is_escalated(&self) -> bool {
        self.escalated.load(Ordering::Acquire)
    }
}

/// A started pipeline's addresses.
pub(crate) struct Running {
    pub(crate) shared: Arc<Shared>,
    pub(crate) poller: Addr<poller::Poller>,
    pub(crate) acker: Addr<acker::Acker>,
    /// Held so these actors live exactly as long as the runtime.
    _keeper: Addr<lease_keeper::LeaseKeeper>,
    _supervisor: Addr<supervisor::PipelineSupervisor>,
}

/// Starts one pipeline's actors; must run inside the actix system.
pub(crate) fn start(shared: Arc<Shared>) -> Running {
    let io = tokio::runtime::Handle::current();
    let acker = acker::Acker::new(shared.clone()).start();
    let publisher = publisher::Publisher::new(shared.clone(), acker.clone()).start();
    // The uploader and the pool send to each other: make the pool's address
    // first, start it after the uploader.
    let pool_ctx = actix::Context::<pool::ProcessorPool>::new();
    let pool_addr = pool_ctx.address();
    let uploader = uploader::Uploader::new(
        shared.clone(),
        pool_addr.clone(),
        publisher.clone(),
        acker.clone(),
    )
    .start();
    let sup_ctx = actix::Context::<supervisor::PipelineSupervisor>::new();
    let supervisor = sup_ctx.address();
    pool_ctx.run(pool::ProcessorPool::new(
        shared.clone(),
        uploader.clone(),
        publisher.clone(),
        acker.clone(),
        supervisor.clone(),
        io,
    ));
    let gate = shared.gated().then(|| {
        let gate = gate::Gate::new(
            shared.clone(),
            pool_addr.clone(),
            uploader.clone(),
            acker.clone(),
        )
        .start();
        let _ = shared.gate.set(gate.clone());
        gate
    });
    let poller = poller::Poller::new(
        shared.clone(),
        pool_addr.clone(),
        uploader.clone(),
        acker.clone(),
        gate,
    )
    .start();
    let keeper = lease_keeper::LeaseKeeper::new(shared.clone(), acker.clone()).start();
    sup_ctx.run(supervisor::PipelineSupervisor::new(
        shared.clone(),
        poller.clone(),
        acker.clone(),
    ));
    Running {
        shared,
        poller,
        acker,
        _keeper: keeper,
        _supervisor: supervisor,
    }
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

/// Releases every lease of a pipeline: pending ones only, or all (cancelling
/// started jobs). Returns how many were released.
pub(crate) fn release_leases(run: &Running, started_too: bool) -> usize {
    release_leases_of(&run.shared, &run.acker, started_too)
}

pub(crate) fn release_leases_of(
    shared: &Shared,
    acker: &Addr<acker::Acker>,
    started_too: bool,
) -> usize {
    let mut out = Vec::new();
    for lease in shared.leases.all() {
        if lease.try_release_pending() {
            out.push(Settlement::Release(lease));
        } else if started_too && !lease.is_cancelled() {
            lease.cancel();
            out.push(Settlement::Release(lease));
        }
    }
    let n = out.len();
    if n > 0 {
        acker.do_send(Settle(out));
    }
    n
}
