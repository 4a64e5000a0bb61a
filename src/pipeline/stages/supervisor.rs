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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::lease::{LeaseState, Owner};
use crate::pipeline::health::PipelineHealth;
use crate::pipeline::messages::{Restart, ResumePolling, StopPolling};
use crate::pipeline::next::Routes;
use crate::pipeline::shared::Shared;
use crate::pipeline::supervision::Child;
use crate::stats::Stats;

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
        // A permit the supervisor takes whenever it next waits.
        self.care.escalation.notify_one();
    }

    /// The pipeline's health now.
    pub(crate) fn health_report(&self) -> PipelineHealth {
        let mut counts: HashMap<LeaseState, usize> = HashMap::new();
        for l in self.life.all() {
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
            leases: self.life.held(),
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

/// The pipeline supervisor: carries out escalations and watches for stalls.
pub(crate) struct PipelineSupervisor {
    shared: Arc<Shared>,
    poller: Recipient<StopPolling>,
    resume: Recipient<ResumePolling>,
    restarters: HashMap<Owner, Recipient<Restart>>,
    /// Where the leases its repairs and escalations give back go.
    routes: Routes,
    pauses: u32,
    /// The pending resume after an escalation's pause, if any.
    resume_timer: Option<SpawnHandle>,
}

impl PipelineSupervisor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        poller: Recipient<StopPolling>,
        resume: Recipient<ResumePolling>,
        restarters: HashMap<Owner, Recipient<Restart>>,
        routes: Routes,
    ) -> Self {
        Self {
            shared,
            poller,
            resume,
            restarters,
            routes,
            pauses: 0,
            resume_timer: None,
        }
    }

    /// Looks for leases an actor lost track of, and restarts that actor.
    fn watch(&mut self) {
        let s = &self.shared;
        s.life.tick();
        if s.shutting_down() {
            return;
        }
        let limit = s.config.stall_timeout;
        let mut stalled: HashMap<Owner, usize> = HashMap::new();
        let mut n = 0;
        for lease in s.life.all() {
            let owner = lease.state().owner();
            // A running job is its thread's or task's (stuck code is the
            // pool's to watch); a lease waiting behind its FIFO group is
            // the group's, which moves on when the one ahead settles.
            let waiting =
                owner == Owner::Gate && s.life.groups().is_some_and(|g| g.is_waiting(&lease));
            if matches!(owner, Owner::Job | Owner::Nobody) || waiting {
                continue;
            }
            if lease.in_state_for() > limit {
                n += 1;
                *stalled.entry(owner).or_default() += 1;
            }
        }
        s.care.health.stalled.store(n as u64, Ordering::Release);
        for (owner, count) in stalled {
            tracing::error!(pipeline = %s.name, actor = owner.name(), leases = count,
                "leases stalled in an actor's care: restarting it");
            if let Some(r) = self.restarters.get(&owner) {
                r.do_send(Restart);
            }
        }
        self.routes.send(s.repair_groups());
    }
}

impl Actor for PipelineSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.await_escalation(ctx);
        let every = (self.shared.config.stall_timeout / 8)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        ctx.run_interval(every, |act, _| act.watch());
    }
}

impl actix::Supervised for PipelineSupervisor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // An escalation's resume timer died with the old context.
        self.resume_timer = None;
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

impl PipelineSupervisor {
    /// Waits for the next escalation (`Shared::escalate`), then carries it
    /// out and waits again.
    fn await_escalation(&mut self, ctx: &mut Context<Self>) {
        let s = self.shared.clone();
        ctx.spawn(
            async move { s.care.escalation.notified().await }
                .into_actor(self)
                .map(|(), act, ctx| {
                    act.escalated(ctx);
                    act.await_escalation(ctx);
                }),
        );
    }

    /// The pipeline escalated: polling stops, every lease is given back,
    /// polling resumes after a pause.
    fn escalated(&mut self, ctx: &mut Context<Self>) {
        self.poller.do_send(StopPolling);
        let (_, next) = self.shared.release_leases(true);
        self.routes.send(next);
        self.schedule_resume(ctx);
    }
}

impl PipelineSupervisor {
    /// Polling resumes after a pause that doubles with each escalation.
    /// Once per escalation: an escalation signalled before a restart and
    /// carried out after it finds its resume already scheduled.
    fn schedule_resume(&mut self, ctx: &mut Context<Self>) {
        if self.resume_timer.is_some() {
            return;
        }
        self.pauses += 1;
        let pause = crate::backoff::Backoff::exact(
            self.shared.config.restart.escalation_pause,
            Duration::from_secs(600),
        )
        .delay(self.pauses);
        self.resume_timer = Some(ctx.run_later(pause, |act, _| {
            act.resume_timer = None;
            let s = &act.shared;
            if s.shutting_down() {
                return;
            }
            tracing::warn!(pipeline = %s.name, "resuming after an escalation's pause");
            s.care.health.failing.store(0, Ordering::Release);
            s.care.health.escalated.store(false, Ordering::Release);
            act.resume.do_send(ResumePolling);
        }));
    }
}

#[cfg(test)]
mod tests;
