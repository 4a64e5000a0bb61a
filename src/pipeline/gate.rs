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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use super::messages::{Leased, Probe, Restart};
use super::Shared;
use crate::idempotency::{ClaimOutcome, RecordStatus};
use crate::lease::{Ending, Lease, LeaseState};
use crate::stats::Stats;

/// One message group's leases: the one running, and those waiting behind it.
#[derive(Default)]
struct Group {
    running: Option<u64>,
    waiting: VecDeque<Arc<Lease>>,
}

/// The FIFO groups of one pipeline, held in [`Shared`] so that whoever
/// settles a lease can move its group on.
#[derive(Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<String, Group>>,
    /// Leases waiting behind their group's running one.
    waiting: AtomicUsize,
}

/// What settling a group's lease lets happen.
#[derive(Default)]
pub(crate) struct Next {
    /// The next lease of the group, to run now.
    pub(crate) go: Vec<Arc<Lease>>,
    /// Waiting leases to give back (their group's head failed).
    pub(crate) release: Vec<Arc<Lease>>,
}

impl Groups {
    /// Leases waiting behind a running one of their group.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Takes new leases in receive order; returns those that may run now.
    pub(crate) fn admit(&self, leases: Vec<Arc<Lease>>) -> Vec<Arc<Lease>> {
        let mut map = self.map.lock().expect("groups lock");
        let mut go = Vec::new();
        for lease in leases {
            let key = lease.job.group_id.clone().unwrap_or_default();
            let g = map.entry(key).or_default();
            if g.running.is_none() || crate::sabotage::on(crate::sabotage::Sabotage::LoseFifoOrder)
            {
                g.running = Some(lease.id);
                go.push(lease);
            } else {
                g.waiting.push_back(lease);
                self.waiting.fetch_add(1, Ordering::AcqRel);
            }
        }
        go
    }

    /// Whether a lease is its group's running one.
    pub(crate) fn is_running(&self, lease: &Lease) -> bool {
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let map = self.map.lock().expect("groups lock");
        map.get(key).is_some_and(|g| g.running == Some(lease.id))
    }

    /// Whether a lease waits behind its group's running one.
    pub(crate) fn is_waiting(&self, lease: &Lease) -> bool {
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let map = self.map.lock().expect("groups lock");
        map.get(key)
            .is_some_and(|g| g.waiting.iter().any(|l| l.id == lease.id))
    }

    /// Moves on every group whose running lease is no longer held (it ended
    /// on a path that did not reach its group): the stall watch's repair.
    pub(crate) fn repair(&self, shared: &Shared) {
        let gone: Vec<(String, u64)> = {
            let map = self.map.lock().expect("groups lock");
            map.iter()
                .filter_map(|(k, g)| g.running.map(|id| (k.clone(), id)))
                .filter(|(_, id)| !shared.life.leases.contains(*id))
                .collect()
        };
        for (group, id) in gone {
            tracing::error!(pipeline = %shared.name, group, lease = id,
                "FIFO group held by a lease that is gone: moving it on");
            let next = {
                let mut map = self.map.lock().expect("groups lock");
                let Some(g) = map.get_mut(&group) else {
                    continue;
                };
                if g.running != Some(id) {
                    continue;
                }
                g.running = None;
                self.waiting.fetch_sub(g.waiting.len(), Ordering::AcqRel);
                let release: Vec<_> = g.waiting.drain(..).collect();
                map.remove(&group);
                release
            };
            shared.settle(next.into_iter().map(|l| (l, Ending::Release)).collect());
        }
    }

    /// A lease ended: `finished` (deleted or dead-lettered) lets its group
    /// go on; otherwise the group's waiting leases are given back.
    pub(crate) fn settled(&self, lease: &Lease, finished: bool) -> Next {
        let mut next = Next::default();
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let mut map = self.map.lock().expect("groups lock");
        let Some(g) = map.get_mut(key) else {
            return next;
        };
        if g.running == Some(lease.id) {
            g.running = None;
            if finished {
                while let Some(l) = g.waiting.pop_front() {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    // A waiting lease given back meanwhile (a drain) is skipped.
                    if l.state() == LeaseState::Gated {
                        g.running = Some(l.id);
                        next.go.push(l);
                        break;
                    }
                }
            } else {
                self.waiting.fetch_sub(g.waiting.len(), Ordering::AcqRel);
                next.release.extend(g.waiting.drain(..));
            }
        } else if let Some(i) = g.waiting.iter().position(|l| l.id == lease.id) {
            g.waiting.remove(i);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if !finished {
                // It comes back later (lost, given back): the leases behind
                // it would overtake it, so they go back too and the queue
                // hands the group out again in order.
                let behind: Vec<_> = g.waiting.drain(i..).collect();
                self.waiting.fetch_sub(behind.len(), Ordering::AcqRel);
                next.release.extend(behind);
            }
        }
        if g.running.is_none() && g.waiting.is_empty() {
            map.remove(key);
        }
        next
    }
}

/// Lifecycle → gate: leases cleared to run (their group moved on).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Admit(pub(crate) Vec<Arc<Lease>>);

/// Poller → gate: new Gated leases.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Arrived(pub(crate) Vec<Arc<Lease>>);

pub(crate) struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Sends leases cleared to run on: redeliveries with a result store to
    /// the uploader's probe, the rest to the processors.
    fn route(&self, leases: Vec<Arc<Lease>>) {
        let s = &self.shared;
        let (mut probes, mut fresh) = (Vec::new(), Vec::new());
        for l in leases {
            if l.job.receive_count > 1 && s.sinks.results.is_some() {
                if l.transition(&[LeaseState::Gated], LeaseState::Probing)
                    .is_some()
                {
                    probes.push(l);
                }
            } else if l
                .transition(&[LeaseState::Gated], LeaseState::Pending)
                .is_some()
            {
                fresh.push(l);
            }
        }
        if !fresh.is_empty() {
            s.addrs().run.do_send(Leased(fresh));
        }
        if !probes.is_empty() {
            s.addrs().probe.do_send(Probe(probes));
        }
    }

    /// Claims each lease's job, then routes, skips or defers it.
    fn claim_then_route(&mut self, leases: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        if self.shared.sinks.store.is_none() {
            self.route(leases);
            return;
        }
        let s = &self.shared;
        let hold = s.config.claim_hold();
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
                .map(move |results, act, _| act.claimed(leases, results)),
        );
    }

    fn claimed(
        &mut self,
        leases: Vec<Arc<Lease>>,
        results: Vec<Result<Option<ClaimOutcome>, crate::BackendError>>,
    ) {
        let s = &self.shared;
        let (mut go, mut settle) = (Vec::new(), Vec::new());
        for (lease, r) in leases.into_iter().zip(results) {
            if lease.state() != LeaseState::Gated {
                // Given back or lost meanwhile: a claim it took is released.
                if matches!(r, Ok(Some(ClaimOutcome::Claimed))) {
                    lease.set_claimed();
                    s.release_claim(&lease);
                }
                continue;
            }
            match r {
                Ok(None) => {
                    // Its entry is in the dead-letter queue already.
                    s.jobs_started(1);
                    s.life.seen.dead_lettered(&lease.job.message_id);
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
                    lease.set_claimed();
                    go.push(lease);
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
        s.settle(settle);
    }

    /// Takes in Gated leases (once each) and admits them to their groups;
    /// returns those cleared to be claimed and routed now.
    fn admit(&self, leases: Vec<Arc<Lease>>) -> Vec<Arc<Lease>> {
        let leases: Vec<_> = leases
            .into_iter()
            .filter(|l| l.state() == LeaseState::Gated && l.take_in())
            .collect();
        match &self.shared.life.groups {
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
        for l in s.life.leases.restart_owner(&[LeaseState::Gated]) {
            match &s.life.groups {
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

impl super::supervisor::Child for Gate {
    const NAME: &'static str = "gate";
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
