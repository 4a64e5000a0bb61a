//! Supervision: every actor of a pipeline runs under a restarting
//! supervisor, and the pipeline supervisor watches the whole.
//!
//! - **One-for-one restarts.** Each actor's future is polled inside
//!   `catch_unwind`. An actor that panics (or is told to restart because it
//!   looks stalled) is restarted in place after a doubling backoff: its
//!   address and mailbox survive, the calls it had in flight are dropped,
//!   and its `restarting` hook re-derives its work from the leases in the
//!   states it owns (see [`crate::lease::LeaseState`]). Processor worker
//!   threads are supervised by the pool in the same spirit.
//! - **Escalation measures the worker, not the work.** A job that panics is
//!   that job's fault: it is retried, then dead-lettered. The pipeline
//!   escalates only when restarts (processor rebuilds, actor restarts) keep
//!   happening with no job succeeding in between — more than
//!   [`crate::RestartPolicy::max_restarts`] in a row. It then stops polling,
//!   gives back every lease, reports itself escalated (with the reason) in
//!   [`crate::RuntimeHandle::health`], and resumes after a doubling pause;
//!   `run_until` returns an error so a service can exit and be replaced.
//! - **Stall watch.** A lease that stays in a state owned by an actor (gate,
//!   uploader, publisher, acker) past `stall_timeout` means that actor lost
//!   track of it: the actor is restarted and re-derives. A FIFO group whose
//!   running lease is gone is moved on.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::dev::ContextFut;
use actix::prelude::*;
use serde::Serialize;

use super::messages::{Restart, ResumePolling, StopPolling};
use super::poller::Poller;
use super::{panic_message, release_leases, Shared};
use crate::lease::LeaseState;
use crate::stats::Stats;

/// A pipeline's health, as [`crate::RuntimeHandle::health`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PipelineHealth {
    /// The pipeline's name.
    pub name: String,
    /// `running`, `escalated`, `blocked` (ferry's I/O thread has not run
    /// for a while: see `io_blocked_ms`), `stalled` or `degraded` (a
    /// dependency is failing: see `degraded`; or worker threads are
    /// abandoned or stuck: see `problems`).
    pub status: &'static str,
    /// Why it escalated (the last escalation), if it ever did.
    pub reason: Option<String>,
    /// Times it escalated so far.
    pub escalations: u64,
    /// Leases held now.
    pub leases: usize,
    /// Leases that have not changed state past the stall timeout while an
    /// actor owns their next step (a restarted actor picks them up).
    pub stalled_leases: usize,
    /// Leases per lifecycle state, by state name.
    pub states: Vec<(&'static str, usize)>,
    /// The dependencies failing now (throttled, down, refusing the
    /// pipeline's credentials), since when: the pipeline waits them out
    /// without charging its jobs.
    pub degraded: Vec<super::DegradedDependency>,
    /// Worker threads replaced so far because their job ran past its
    /// cancellation by more than `hang_grace`.
    pub workers_replaced: u64,
    /// Replaced worker threads still running their abandoned job now.
    pub abandoned_workers: usize,
    /// How long ferry's I/O thread (every pipeline's actors, lease keeping
    /// included) has not run, when longer than the watchdog's bound: it is
    /// blocked now.
    pub io_blocked_ms: Option<u64>,
    /// What is wrong now, in words: a blocked I/O thread, worker threads
    /// abandoned or stuck.
    pub problems: Vec<String>,
}

/// The supervision state of one pipeline, kept in [`Shared`].
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    escalated: AtomicBool,
    escalations: AtomicU64,
    reason: Mutex<Option<String>>,
    /// Restarts since the last job that succeeded.
    failing: AtomicU32,
    stalled: AtomicU64,
    /// Worker threads abandoned or stuck in a job past its cancellation.
    pub(crate) workers: super::stuck::Workers,
}

impl HealthState {
    pub(crate) fn is_escalated(&self) -> bool {
        self.escalated.load(Ordering::Acquire)
    }

    /// Times the pipeline escalated.
    pub(crate) fn escalations(&self) -> u64 {
        self.escalations.load(Ordering::Acquire)
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.lock().expect("health lock").clone()
    }

    /// A job succeeded: the worker works.
    pub(crate) fn success(&self) {
        if self.failing.load(Ordering::Relaxed) != 0 {
            self.failing.store(0, Ordering::Relaxed);
        }
    }

    /// Something was restarted; true when restarts in a row, with no job
    /// succeeding in between, passed `limit`.
    pub(crate) fn restarted(&self, limit: u32) -> bool {
        self.failing.fetch_add(1, Ordering::AcqRel) + 1 > limit
    }
}

impl Shared {
    /// Counts a restart (a processor rebuilt, an actor restarted, a worker
    /// thread respawned) and escalates when the worker looks broken.
    pub(crate) fn restarted(&self, what: &str) {
        if self.care.health.restarted(self.config.restart.max_restarts) {
            self.escalate(format!(
                "more than {} restarts in a row with no job succeeding; last: {what}",
                self.config.restart.max_restarts
            ));
        }
    }

    /// Escalates: stops polling, gives back every lease, records why. The
    /// supervisor resumes polling after a pause.
    pub(crate) fn escalate(&self, reason: String) {
        if self.care.health.escalated.swap(true, Ordering::AcqRel) {
            return;
        }
        self.care.health.escalations.fetch_add(1, Ordering::AcqRel);
        *self.care.health.reason.lock().expect("health lock") = Some(reason.clone());
        Stats::inc(&self.stats.escalations);
        tracing::error!(pipeline = %self.name, reason = %reason,
            "pipeline escalated: polling paused, every lease given back");
        if let Some(sup) = self.care.supervisor.get() {
            sup.do_send(Escalated);
        }
    }

    /// The pipeline's health now.
    pub(crate) fn health_report(&self) -> PipelineHealth {
        let mut counts: HashMap<LeaseState, usize> = HashMap::new();
        for l in self.life.leases.all() {
            *counts.entry(l.state()).or_default() += 1;
        }
        let mut states: Vec<_> = counts.into_iter().collect();
        states.sort();
        let stalled = self.care.health.stalled.load(Ordering::Acquire) as usize;
        let escalated = self.is_escalated();
        let degraded = self.care.dependencies.degraded();
        let workers = &self.care.health.workers;
        let replaced = self.stats.snapshot().workers_replaced;
        let problems = workers.problems(replaced, self.config.max_abandoned_workers);
        PipelineHealth {
            name: self.name.to_string(),
            status: if escalated {
                "escalated"
            } else if stalled > 0 {
                "stalled"
            } else if !degraded.is_empty() || !problems.is_empty() {
                "degraded"
            } else {
                "running"
            },
            reason: self.care.health.reason(),
            escalations: self.care.health.escalations(),
            leases: self.life.leases.len(),
            stalled_leases: stalled,
            states: states.into_iter().map(|(s, n)| (s.name(), n)).collect(),
            degraded,
            workers_replaced: replaced,
            abandoned_workers: workers.abandoned_now(),
            io_blocked_ms: None,
            problems,
        }
    }
}

/// An actor ferry supervises: it can be told to restart, and re-derives its
/// work in `restarting`.
pub(crate) trait Child:
    Actor<Context = Context<Self>> + actix::Supervised + Handler<Restart>
{
    /// The actor's name, for logs and the stall watch.
    const NAME: &'static str;
}

/// Starts supervised actors and remembers how to restart them.
pub(crate) struct Supervision {
    shared: Arc<Shared>,
    restarters: Mutex<HashMap<&'static str, Recipient<Restart>>>,
}

impl Supervision {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            restarters: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `act` in `ctx` under a restarting supervisor.
    pub(crate) fn start<A: Child>(&self, ctx: Context<A>, act: A) -> Addr<A> {
        let addr = ctx.address();
        self.restarters
            .lock()
            .expect("restarters lock")
            .insert(A::NAME, addr.clone().recipient());
        actix::spawn(Supervised {
            fut: ctx.into_future(act),
            shared: self.shared.clone(),
            name: A::NAME,
            crashes: 0,
            pause: None,
        });
        addr
    }

    /// Every actor's restart address, by name.
    pub(crate) fn restarters(&self) -> HashMap<&'static str, Recipient<Restart>> {
        self.restarters.lock().expect("restarters lock").clone()
    }
}

/// An actor's future, polled under `catch_unwind`; restarted in place when
/// it panics or stops while its address is still held.
struct Supervised<A: Child> {
    fut: ContextFut<A, Context<A>>,
    shared: Arc<Shared>,
    name: &'static str,
    crashes: u32,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<A: Child> Future for Supervised<A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let why = if let Some(p) = this.pause.as_mut() {
                if p.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
                // The restart hook re-derives the actor's work; it may
                // panic too, and is supervised like the rest.
                match catch_unwind(AssertUnwindSafe(|| this.fut.restart())) {
                    Ok(true) => continue,
                    Ok(false) => return Poll::Ready(()),
                    Err(payload) => {
                        format!("panicked while restarting: {}", panic_message(&*payload))
                    }
                }
            } else {
                match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(())) => "stopped".to_owned(),
                    Err(payload) => format!("panicked: {}", panic_message(&*payload)),
                }
            };
            let s = &this.shared;
            this.crashes = if s.care.health.failing.load(Ordering::Relaxed) == 0 {
                1
            } else {
                this.crashes + 1
            };
            Stats::inc(&s.stats.actor_restarts);
            // A drain still needs every actor: restart at once then.
            let backoff = if s.shutting_down() {
                Duration::ZERO
            } else {
                s.config.restart.backoff(this.crashes)
            };
            tracing::error!(pipeline = %s.name, actor = this.name, why = %why,
                backoff_ms = backoff.as_millis() as u64, "actor restarting");
            s.restarted(&format!("actor {} {why}", this.name));
            this.pause = Some(Box::pin(tokio::time::sleep(backoff)));
        }
    }
}

/// Shared → supervisor: the pipeline escalated.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Escalated;

/// The pipeline supervisor: carries out escalations and watches for stalls.
pub(crate) struct PipelineSupervisor {
    shared: Arc<Shared>,
    poller: Addr<Poller>,
    restarters: HashMap<&'static str, Recipient<Restart>>,
    pauses: u32,
}

impl PipelineSupervisor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        poller: Addr<Poller>,
        restarters: HashMap<&'static str, Recipient<Restart>>,
    ) -> Self {
        Self {
            shared,
            poller,
            restarters,
            pauses: 0,
        }
    }

    /// Looks for leases an actor lost track of, and restarts that actor.
    fn watch(&mut self) {
        let s = &self.shared;
        s.life.leases.tick();
        if s.shutting_down() {
            return;
        }
        let limit = s.config.stall_timeout;
        let mut stalled: HashMap<&'static str, usize> = HashMap::new();
        let mut n = 0;
        for lease in s.life.leases.all() {
            let owner = match lease.state() {
                // Received but never queued for a processor (a poller that
                // died mid-batch): the pool queues every pending one again.
                LeaseState::Pending => "pool",
                LeaseState::Gated
                    if !s.life.groups.as_ref().is_some_and(|g| g.is_waiting(&lease)) =>
                {
                    "gate"
                }
                LeaseState::Probing | LeaseState::Processed => "uploader",
                LeaseState::Stored => "publisher",
                LeaseState::Settling => "acker",
                _ => continue,
            };
            if lease.in_state_for() > limit {
                n += 1;
                *stalled.entry(owner).or_default() += 1;
            }
        }
        s.care.health.stalled.store(n as u64, Ordering::Release);
        for (owner, count) in stalled {
            tracing::error!(pipeline = %s.name, actor = owner, leases = count,
                "leases stalled in an actor's care: restarting it");
            if let Some(r) = self.restarters.get(owner) {
                r.do_send(Restart);
            }
        }
        s.repair_groups();
    }
}

impl Actor for PipelineSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let _ = self.shared.care.supervisor.set(ctx.address());
        let every = (self.shared.config.stall_timeout / 8)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        ctx.run_interval(every, |act, _| act.watch());
    }
}

impl actix::Supervised for PipelineSupervisor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // An escalation's resume timer died with the old context.
        if self.shared.is_escalated() {
            self.schedule_resume(ctx);
        }
    }
}

impl Handler<Restart> for PipelineSupervisor {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Child for PipelineSupervisor {
    const NAME: &'static str = "supervisor";
}

impl Handler<Escalated> for PipelineSupervisor {
    type Result = ();

    fn handle(&mut self, _: Escalated, ctx: &mut Context<Self>) {
        self.poller.do_send(StopPolling);
        release_leases(&self.shared, true);
        self.schedule_resume(ctx);
    }
}

impl PipelineSupervisor {
    /// Polling resumes after a pause that doubles with each escalation.
    fn schedule_resume(&mut self, ctx: &mut Context<Self>) {
        let pause = self
            .shared
            .config
            .restart
            .escalation_pause
            .saturating_mul(1 << self.pauses.min(5))
            .min(Duration::from_secs(600));
        self.pauses += 1;
        ctx.run_later(pause, |act, _| {
            let s = &act.shared;
            if s.shutting_down() {
                return;
            }
            tracing::warn!(pipeline = %s.name, "resuming after an escalation's pause");
            s.care.health.failing.store(0, Ordering::Release);
            s.care.health.escalated.store(false, Ordering::Release);
            act.poller.do_send(ResumePolling);
        });
    }
}

#[cfg(test)]
mod tests;
