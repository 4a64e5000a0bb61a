//! The gate: what a new lease passes before it may run, when the pipeline
//! asks for it (a pipeline that asks for neither skips the gate).
//!
//! - **FIFO group order** (DESIGN rule 8). Of each message group, one lease
//!   runs at a time, in the order received; the next starts only when the
//!   one before is settled (deleted or dead-lettered). When a group's running
//!   job fails, is given back or is lost, the group's waiting leases are
//!   released too, so the queue hands them out again after it, in order.
//! - **Idempotency claims** (DESIGN rule 10). Each lease about to run claims
//!   its job in the [`crate::idempotency::IdempotencyStore`]: a job already
//!   completed is deleted unprocessed; one claimed by another worker is given
//!   back until that claim would expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use crate::idempotency::{ClaimOutcome, RecordStatus};
use crate::lease::{Ending, Lease, LeaseState, Move};
use crate::pipeline::messages::{Admit, Arrived, Restart};
use crate::pipeline::next::{Next, Routes};
use crate::pipeline::shared::Shared;
use crate::stats::Stats;

pub(crate) struct Gate {
    shared: Arc<Shared>,
    /// Where what its steps hand on goes.
    routes: Routes,
}

impl Gate {
    pub(crate) fn new(shared: Arc<Shared>, routes: Routes) -> Self {
        Self { shared, routes }
    }

    /// Sends leases cleared to run on: redeliveries, and jobs whose claim
    /// was taken over from an unfinished one (`look`), with a result store
    /// to the uploader's probe; the rest to the processors.
    fn route(&self, leases: Vec<(Arc<Lease>, bool)>) {
        let s = &self.shared;
        let (mut probes, mut fresh) = (Vec::new(), Vec::new());
        for (l, look) in leases {
            if (look || l.job.receive_count > 1) && s.sinks.results.is_some() {
                if l.step(Move::ProbeGated).is_some() {
                    probes.push(l);
                }
            } else if l.step(Move::Admit).is_some() {
                fresh.push(l);
            }
        }
        self.routes.send(Next {
            run: fresh,
            probe: probes,
            ..Next::none()
        });
    }

    /// Claims each lease's job, then routes, skips or defers it.
    fn claim_then_route(&mut self, leases: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        if self.shared.sinks.store.is_none() {
            self.route(leases.into_iter().map(|l| (l, false)).collect());
            return;
        }
        let s = &self.shared;
        let hold = s.config.claim_hold();
        // A claim holds from when it was sent, however late the answer.
        let until = tokio::time::Instant::now() + hold;
        let store = s.sinks.store.clone().expect("checked");
        // A redelivery may be of a message another worker dead-lettered
        // (its delete came back): then it is deleted, not run again.
        let calls = futures_util::future::join_all(leases.iter().map(|l| {
            let mark = (l.job.receive_count > 1).then(|| s.dead_letter_mark(l));
            let (store, key, owner) = (store.clone(), s.claim_key(l), s.owner(l));
            async move {
                if let Some(Ok(Some(r))) = match &mark {
                    Some(m) => Some(store.record(m).await),
                    None => None,
                } {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis();
                    if u128::from(r.expires_at_ms) > now {
                        if r.status == RecordStatus::Completed {
                            return Ok(None);
                        }
                        // Being dead-lettered by another worker now: look
                        // again once that is done (or has lapsed).
                        let until = SystemTime::UNIX_EPOCH + Duration::from_millis(r.expires_at_ms);
                        return Ok(Some(ClaimOutcome::HeldElsewhere { until }));
                    }
                }
                store.claim(&key, &owner, hold).await.map(Some)
            }
        }));
        ctx.spawn(
            calls
                .into_actor(self)
                .map(move |results, act, _| act.claimed(leases, results, until)),
        );
    }

    fn claimed(
        &mut self,
        leases: Vec<Arc<Lease>>,
        results: Vec<Result<Option<ClaimOutcome>, crate::BackendError>>,
        until: tokio::time::Instant,
    ) {
        let s = &self.shared;
        let (mut go, mut settle) = (Vec::new(), Vec::new());
        for (lease, r) in leases.into_iter().zip(results) {
            if lease.state() != LeaseState::Gated {
                // Given back or lost meanwhile: a claim it took is released.
                if matches!(r, Ok(Some(ClaimOutcome::Claimed | ClaimOutcome::TakenOver))) {
                    lease.set_claimed(until);
                    s.release_claim(&lease);
                }
                continue;
            }
            match r {
                Ok(None) => {
                    // Its entry is in the dead-letter queue already.
                    s.jobs_started(1);
                    s.life.mark_dead_lettered(&lease.job.message_id);
                    Stats::inc(&s.stats.duplicates_dropped);
                    tracing::info!(pipeline = %s.name, job_id = %lease.job.id,
                        "message dead-lettered by another worker: deleting unprocessed");
                    settle.push((
                        lease,
                        Ending::Delete {
                            dead_lettered: true,
                        },
                    ));
                }
                Ok(Some(ClaimOutcome::Claimed)) => {
                    lease.set_claimed(until);
                    go.push((lease, false));
                }
                Ok(Some(ClaimOutcome::TakenOver)) => {
                    // Its last holder may have stored the result before its
                    // claim lapsed: look for it before running the job.
                    lease.set_claimed(until);
                    go.push((lease, true));
                }
                Ok(Some(ClaimOutcome::Completed))
                    if crate::sabotage::on(crate::sabotage::Sabotage::RunCompleted) =>
                {
                    go.push((lease, false));
                }
                Ok(Some(ClaimOutcome::Completed)) => {
                    s.jobs_started(1);
                    Stats::inc(&s.stats.skipped_completed);
                    tracing::info!(pipeline = %s.name, job_id = %lease.job.id,
                        "job already completed (idempotency store): deleting unprocessed");
                    settle.push((
                        lease,
                        Ending::Delete {
                            dead_lettered: false,
                        },
                    ));
                }
                Ok(Some(ClaimOutcome::HeldElsewhere { until })) => {
                    // Look again when that claim would lapse, at the latest
                    // one visibility timeout from now.
                    let most = s.config.visibility_timeout;
                    let after = until
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .clamp(most.min(Duration::from_secs(1)), most);
                    Stats::inc(&s.stats.claims_deferred);
                    tracing::debug!(pipeline = %s.name, job_id = %lease.job.id,
                        "job claimed by another worker: given back");
                    settle.push((lease, Ending::Defer { after }));
                }
                Err(e) => {
                    tracing::warn!(pipeline = %s.name, job_id = %lease.job.id, error = %e,
                        "claiming the job failed: given back");
                    let after = s.config.visibility_timeout.min(Duration::from_secs(1));
                    settle.push((lease, Ending::Defer { after }));
                }
            }
        }
        self.route(go);
        self.routes.send(s.settle(settle));
    }

    /// Takes in Gated leases (once each) and admits them to their groups;
    /// returns those cleared to be claimed and routed now.
    fn admit(&self, leases: Vec<Arc<Lease>>) -> Vec<Arc<Lease>> {
        let leases: Vec<_> = leases
            .into_iter()
            .filter(|l| l.state() == LeaseState::Gated && l.take_in())
            .collect();
        match self.shared.life.groups() {
            Some(groups) => groups.admit(leases),
            None => leases,
        }
    }
}

impl Actor for Gate {
    type Context = Context<Self>;
}

impl actix::Supervised for Gate {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Claims in flight were dropped. A group's running lease is claimed
        // again; one its group does not know yet (its `Arrived` not handled)
        // is admitted as it would have been; a waiting one stays waiting.
        let s = self.shared.clone();
        let mut again = Vec::new();
        let mut fresh = Vec::new();
        for l in s.life.restart_owner(&[LeaseState::Gated]) {
            match s.life.groups() {
                Some(g) if g.is_waiting(&l) => {
                    l.take_in();
                }
                Some(g) if g.is_running(&l) => {
                    l.take_in();
                    again.push(l);
                }
                _ => fresh.push(l),
            }
        }
        again.extend(self.admit(fresh));
        self.claim_then_route(again, ctx);
    }
}

impl Handler<Restart> for Gate {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for Gate {
    const NAME: &'static str = "gate";
    const OWNS: Option<crate::lease::Owner> = Some(crate::lease::Owner::Gate);
}

impl Handler<Arrived> for Gate {
    type Result = ();

    fn handle(&mut self, msg: Arrived, ctx: &mut Context<Self>) {
        let leases = self.admit(msg.0);
        self.claim_then_route(leases, ctx);
    }
}

impl Handler<Admit> for Gate {
    type Result = ();

    fn handle(&mut self, msg: Admit, ctx: &mut Context<Self>) {
        self.claim_then_route(msg.0, ctx);
    }
}

#[cfg(test)]
mod tests;
