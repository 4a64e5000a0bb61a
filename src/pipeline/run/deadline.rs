//! Effects only within a lease's deadline. The lease keeper loses a lease
//! whose deadline passed unconfirmed (DESIGN rule 5), but only when it
//! runs: after ferry's I/O thread was blocked, an effect already queued
//! could run first. So every effect (upload, publish, split, claim
//! completion, delete) checks the deadline itself, not only the cancel
//! flag, right before its call; and a job that has itself run for half of
//! its lease's age or more, still running when the lease reaches its age
//! limit, is charged an attempt ("timed out").

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::BackendError;
use crate::lease::{Ending, Lease, LeaseState};
use crate::pipeline::next::Next;
use crate::pipeline::shared::Shared;
use crate::stats::Stats;

/// Whether a lease's deadline has passed — its visibility's, or its
/// idempotency claim's: another reader may hold its message, or another
/// worker its job, now.
pub(crate) fn lapsed(lease: &Lease) -> bool {
    lease.deadline() <= Instant::now()
}

/// Whether no further effect may happen for a lease: it is cancelled, or
/// its deadline has passed.
pub(crate) fn gone(lease: &Lease) -> bool {
    lease.is_cancelled() || lapsed(lease)
}

/// Runs an effect's call only while its leases hold: the call is dropped,
/// so it cannot land later, once one of them is cancelled or past its
/// deadline. A call that started in time can be slow (seed 6932: an upload
/// landed after its lease was lost and its job dead-lettered on the next
/// delivery); a deadline checked only before the call does not bound it.
/// `cancelled` is the signal a cancel of these leases wakes.
pub(crate) async fn within<T>(
    leases: &[Arc<Lease>],
    cancelled: &Notify,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::select! {
        biased;
        () = lapse(leases, cancelled) => Err(BackendError::transient(
            "the lease lapsed while the call was in flight",
        )),
        r = call => r,
    }
}

/// Completes once one of `leases` is cancelled or past its deadline (which
/// renewals may move while it waits).
async fn lapse(leases: &[Arc<Lease>], cancelled: &Notify) {
    loop {
        let woken = cancelled.notified();
        tokio::pin!(woken);
        // Registered before the leases are read: a cancel in between wakes it.
        woken.as_mut().enable();
        if leases.iter().any(|l| gone(l)) {
            return;
        }
        let Some(until) = leases.iter().map(|l| l.deadline()).min() else {
            return std::future::pending().await;
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Splits what the acker is about to settle by one call into what may go
/// on and the leases past their deadline, which the acker lets go instead
/// (the queue hands their messages out again; a job whose effects are done
/// stays remembered, so its return here is deleted as a copy).
pub(crate) fn split_lapsed<T>(
    s: &Shared,
    items: Vec<T>,
    lease_of: impl Fn(&T) -> Option<&Arc<Lease>>,
) -> (Vec<T>, Vec<Arc<Lease>>) {
    let mut lapsed_leases = Vec::new();
    let kept = items
        .into_iter()
        .filter(|item| match lease_of(item) {
            Some(lease) if lapsed(lease) => {
                tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                    "visibility deadline passed before the lease was settled: letting it go");
                Stats::inc(&s.stats.leases_lost);
                lapsed_leases.push(lease.clone());
                false
            }
            _ => true,
        })
        .collect();
    (kept, lapsed_leases)
}

impl Shared {
    /// Before an effect: true (and the lease lost, its job cancelled, what
    /// that hands on added to `next`) when the lease is cancelled or its
    /// deadline has passed, so the effect must not happen. A lease the
    /// acker is settling is left to the acker.
    pub(crate) fn lost_before(&self, lease: &Arc<Lease>, effect: &str, next: &mut Next) -> bool {
        if lease.is_cancelled() {
            return true;
        }
        if !lapsed(lease) {
            return false;
        }
        next.add(self.lose(
            lease,
            &format!("visibility deadline passed before {effect}"),
        ));
        true
    }

    /// How a lease cancelled at its age limit (`limit` names it) ends: a
    /// job that has itself been running for at least half the lease's age
    /// ran past its limit, a failed attempt ("timed out"); any other lease
    /// is given back uncharged — it spent its age waiting (for a worker,
    /// behind other jobs), which is the pipeline's doing, not the job's.
    pub(crate) fn past_max_age(&self, lease: &Lease, limit: &str) -> Ending {
        // Half of the lease's own age at its end (which may come before
        // `max_lease_age`: the last extension that fits ends it).
        let age = Instant::now().saturating_duration_since(lease.received_at);
        let ran_long = lease.in_state_for() * 2 >= age;
        if lease.state() != LeaseState::Running || !ran_long {
            return Ending::Release;
        }
        Ending::Retry {
            reason: format!(
                "timed out: still running when its lease reached its age limit ({limit})"
            ),
            after: None,
        }
    }
}
