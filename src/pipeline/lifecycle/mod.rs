//! The lease lifecycle's side effects, in one place. A lease moves only by
//! the lease module's table (`Lease::step`); the steps that end a lease or
//! hand it to the acker go through here, so the seen-ID cache, the lease
//! table, the FIFO group, the idempotency claim, the cancel flag and the
//! counters change together and nowhere else. Each returns what must happen
//! next ([`Next`]) for its caller to route; none sends.
//!
//! The room these steps change ([`Life`], in `life`) keeps its parts
//! private to this module: the other actors read it, and take in, cancel or
//! find leases, through its methods; only the steps here add to or end
//! what it holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::next::Next;
use super::shared::Shared;
use crate::lease::{Ending, Lease, LeaseState, Move};
use crate::stats::Stats;

pub(crate) mod life;

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Deleted after its effects (or as a completed job's copy).
    Deleted,
    /// Sent to the dead-letter queue, then deleted.
    DeadLettered,
    /// Sent to the dead-letter queue, but its delete was refused or never
    /// made (the lease let go): the message comes back, and is deleted then
    /// without a second entry. Until it has, its FIFO group's later
    /// messages must not run: they are given back behind it.
    DeadLetteredUndeleted,
    /// Given back to the queue (released, retried, deferred): it comes back.
    Released,
    /// Lost: its deadline passed unconfirmed or its receipt was refused.
    Lost,
}

/// How a lease whose effect failed with `e` ends: the infrastructure's
/// failure waits without charging the job; a refusal of what the job
/// produced (a notice or result the service will not take) is its own
/// failed attempt.
pub(crate) fn effect_failed(what: &str, e: &crate::error::BackendError) -> Ending {
    let reason = format!("{what}: {e}");
    if crate::sabotage::on(crate::sabotage::Sabotage::DeadLetterRetries) {
        return Ending::DeadLetter { reason };
    }
    let charge = crate::sabotage::on(crate::sabotage::Sabotage::ChargeInfrastructure);
    if crate::backend::dependencies::degrades(e) && !charge {
        Ending::Wait {
            reason,
            after: None,
        }
    } else {
        Ending::Retry {
            reason,
            after: None,
        }
    }
}

/// Whether a job started ([`Shared::start_job`]).
#[must_use]
pub(crate) enum Start {
    Started,
    /// It did not; what that hands on.
    Not(Next),
}

impl Shared {
    /// Releases every lease of a pipeline: those not started yet, or all
    /// (cancelling started jobs; leases already settling are left to the
    /// acker). Returns how many were released.
    pub(crate) fn release_leases(&self, started_too: bool) -> (usize, Next) {
        // An unstarted lease goes from the state seen: one a worker starts
        // meanwhile is the worker's, unless started ones go too (then it is
        // cancelled first, as they are).
        let (mut out, mut started) = (Vec::new(), Vec::new());
        for lease in self.life.leases.all() {
            let mut state = lease.state();
            let released = loop {
                if !state.unstarted() {
                    break false;
                }
                if self.to_acker(&lease, Some(state), Ending::Release) {
                    break true;
                }
                state = lease.state();
            };
            if released {
                out.push(lease);
            } else if started_too && state != LeaseState::Settling {
                self.life.leases.cancel(&lease);
                started.push((lease, Ending::Release));
            }
        }
        let mut next = Next::settle(out);
        next.add(self.settle(started));
        (next.settle.len(), next)
    }

    /// Moves on every FIFO group whose running lease is no longer held (it
    /// ended on a path that did not reach its group): the stall watch's
    /// repair. The group's waiting leases are given back.
    pub(crate) fn repair_groups(&self) -> Next {
        let mut next = Next::none();
        let Some(groups) = &self.life.groups else {
            return next;
        };
        for (group, id, waiting) in groups.repair(|id| self.life.leases.contains(id)) {
            tracing::error!(pipeline = %self.name, group, lease = id,
                "FIFO group held by a lease that is gone: moving it on");
            next.add(self.settle(waiting.into_iter().map(|l| (l, Ending::Release)).collect()));
        }
        next
    }

    /// Hands leases to the acker with their endings: each records its
    /// ending and moves to Settling (those already settling or ended are
    /// skipped); those that moved are for the acker.
    pub(crate) fn settle(&self, endings: Vec<(Arc<Lease>, Ending)>) -> Next {
        let out = endings
            .into_iter()
            .filter_map(|(lease, ending)| self.to_acker(&lease, None, ending).then_some(lease))
            .collect();
        Next::settle(out)
    }

    /// Moves one lease to Settling with its ending — from any state the
    /// settle move leaves, or only from `from` — and counts it; true if it
    /// moved.
    fn to_acker(&self, lease: &Arc<Lease>, from: Option<LeaseState>, ending: Ending) -> bool {
        // A retry is the job's own failure: one attempt charged.
        let charged = matches!(ending, Ending::Retry { .. });
        let moved = match from {
            Some(state) => lease.begin_settling_from(state, ending),
            None => lease.begin_settling(ending),
        };
        if moved {
            if charged {
                let job = &lease.job;
                self.life
                    .attempts
                    .failed(&job.id, &job.message_id, job.receive_count);
            }
            self.life.settling.fetch_add(1, Ordering::AcqRel);
        }
        moved
    }

    /// One lease, one ending.
    pub(crate) fn settle_one(&self, lease: Arc<Lease>, ending: Ending) -> Next {
        self.settle(vec![(lease, ending)])
    }

    /// Starts a Pending lease's job (Pending → Running), or says it did
    /// not, with what that hands on. A lease whose deadline or claim
    /// passed while it waited for a worker is given back now, uncharged:
    /// left Pending for the keeper to lose, it would be nobody's should an
    /// extension sent before the deadline land after it (seed 6785: a FIFO
    /// group held for good). One cancelled, taken by another worker or no
    /// longer Pending is someone else's to end.
    pub(crate) fn start_job(&self, lease: &Arc<Lease>) -> Start {
        if lease.try_start() {
            return Start::Started;
        }
        if lease.is_cancelled() {
            return Start::Not(Next::none());
        }
        let next = self.give_back_unstarted(lease);
        if !next.settle.is_empty() {
            tracing::debug!(pipeline = %self.name, job_id = %lease.job.id,
                "lease past its deadline before its job started: given back");
        }
        Start::Not(next)
    }

    /// Gives a lease whose job never started back to the queue, charging
    /// the job nothing: it did not run. From Pending only, so a lease a
    /// worker started meanwhile stays that worker's.
    pub(crate) fn give_back_unstarted(&self, lease: &Arc<Lease>) -> Next {
        if self.to_acker(lease, Some(LeaseState::Pending), Ending::Release) {
            Next::settle(vec![lease.clone()])
        } else {
            Next::none()
        }
    }

    /// Stored leases go to the publisher, or are settled as done when the
    /// pipeline has no topic.
    pub(crate) fn announce(&self, leases: Vec<Arc<Lease>>) -> Next {
        if leases.is_empty() {
            return Next::none();
        }
        if self.sinks.topic.is_some() {
            Next {
                publish: leases,
                ..Next::none()
            }
        } else {
            self.settle(
                leases
                    .into_iter()
                    .map(|l| {
                        (
                            l,
                            Ending::Delete {
                                dead_lettered: false,
                            },
                        )
                    })
                    .collect(),
            )
        }
    }

    /// Ends leases: the one place a lease leaves the table. Deleted and
    /// dead-lettered jobs let their FIFO group go on; a deleted job is
    /// remembered by the seen cache (a copy is deleted unprocessed), every
    /// other is forgotten so its next delivery — a retry, a fixed re-send,
    /// a redrive — runs afresh. A claim still held is given up (a
    /// dead-lettered job's claim is never marked completed).
    pub(crate) fn end(&self, leases: &[Arc<Lease>], how: Ended) -> Next {
        let mut next = Next::none();
        let mut done_keys = Vec::new();
        let mut removed = false;
        // A lease the acker is settling is its to end, lost or not.
        let m = if how == Ended::Lost {
            Move::Lose
        } else {
            Move::End
        };
        for lease in leases {
            let Some(was) = lease.step(m) else {
                continue;
            };
            if was == LeaseState::Settling {
                self.life.settling.fetch_sub(1, Ordering::AcqRel);
            }
            // Each lease's end, for whoever audits a run job by job (the
            // fault sweep does).
            tracing::debug!(target: "ferry::lease", pipeline = %self.name,
                job_id = %lease.job.id, message_id = %lease.job.message_id,
                receive_count = lease.job.receive_count, how = ?how,
                ending = ending_kind(lease.ending().as_ref()), "lease ended");
            if matches!(
                was,
                LeaseState::Processed | LeaseState::Stored | LeaseState::Settling
            ) && (self.sinks.results.is_some() || self.sinks.topic.is_some())
            {
                lease.set_output(None);
            }
            if matches!(
                how,
                Ended::Deleted | Ended::DeadLettered | Ended::DeadLetteredUndeleted
            ) {
                self.life.attempts.forget(&lease.job.id);
            }
            match how {
                Ended::Deleted => done_keys.push(lease.seen_key),
                // Not remembered as done: a fixed re-send or a redrive of
                // the job runs it. (The message itself is remembered by its
                // id, so its own return is deleted without a second entry.)
                Ended::DeadLettered | Ended::DeadLetteredUndeleted => self.life.seen.forget(lease),
                Ended::Lost => {
                    self.life.leases.cancel(lease);
                    Stats::inc(&self.stats.leases_lost);
                    self.life.seen.forget(lease);
                }
                Ended::Released => self.life.seen.forget(lease),
            }
            self.release_claim(lease);
            removed |= self.life.leases.remove(lease);
            // A dead-lettered job's other messages are given back (one may
            // be its fixed re-send, behind it in its group): the group's
            // later messages wait for them, given back too, so the queue
            // hands all of them out again in order.
            let finished =
                how == Ended::Deleted || (how == Ended::DeadLettered && !lease.had_others());
            next.add(self.group_settled(lease, finished));
        }
        self.life.seen.complete_keys(&done_keys);
        if removed {
            self.flow.capacity.notify_one();
        }
        self.leases_changed();
        next
    }

    /// A lease is lost: cancelled before any further effect, and ended.
    pub(crate) fn lose(&self, lease: &Arc<Lease>, why: &str) -> Next {
        if matches!(lease.state(), LeaseState::Ended | LeaseState::Settling) {
            return Next::none();
        }
        tracing::warn!(pipeline = %self.name, job_id = %lease.job.id, reason = why,
            "lease lost: job cancelled before any further effect");
        self.end(std::slice::from_ref(lease), Ended::Lost)
    }

    /// Gives up a lease's claim, if it holds one, without waiting.
    pub(crate) fn release_claim(&self, lease: &Lease) {
        let Some(store) = self.sinks.store.clone() else {
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
    fn group_settled(&self, lease: &Lease, finished: bool) -> Next {
        let Some(groups) = &self.life.groups else {
            return Next::none();
        };
        let moved = groups.settled(lease, finished);
        let release = moved.release.into_iter().map(|l| (l, Ending::Release));
        Next {
            admit: moved.go,
            ..Next::none()
        }
        .and(self.settle(release.collect()))
    }
}

/// The kind of ending a lease was settled with, for the `ferry::lease` event.
fn ending_kind(ending: Option<&Ending>) -> &'static str {
    match ending {
        None => "none",
        Some(Ending::Delete { .. }) => "delete",
        Some(Ending::Retry { .. }) => "retry",
        Some(Ending::DeadLetter { .. }) => "dead-letter",
        Some(Ending::Release) => "release",
        Some(Ending::Defer { .. }) => "defer",
        Some(Ending::Wait { .. }) => "wait",
    }
}
