//! The lease lifecycle's room: every lease held, the seen-ID cache, the
//! FIFO groups and each job's failed attempts. Its parts are private to the
//! lifecycle's steps (the parent module), which alone add to or end what it
//! holds; everyone else reads it, and takes in, cancels or finds leases,
//! through the methods here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use crate::attempts::Attempts;
use crate::cancel::CancelHandle;
use crate::config::PipelineConfig;
use crate::job::{Job, JobId, JobKey};
use crate::lease::{Arrival, Groups, Lease, LeaseState, LeaseTable, SeenCache};

/// The lease lifecycle's room: every lease held, the seen-ID cache, the
/// FIFO groups and each job's failed attempts. What it holds changes only
/// through the steps of this module.
pub(crate) struct Life {
    pub(super) leases: LeaseTable,
    pub(super) seen: SeenCache,
    /// FIFO sources: each message group's running and waiting leases.
    pub(super) groups: Option<Groups>,
    /// Leases in the Settling state.
    pub(super) settling: AtomicUsize,
    /// This process's claim owner prefix (host, pid, random).
    owner: String,
    /// Each job's own failed attempts in this process.
    pub(super) attempts: Attempts,
}

impl Life {
    pub(crate) fn new(config: &PipelineConfig, fifo: bool) -> Self {
        Self {
            leases: LeaseTable::default(),
            seen: SeenCache::new(config.seen_ttl, config.seen_capacity),
            groups: fifo.then(Groups::default),
            settling: AtomicUsize::new(0),
            owner: owner_prefix(),
            attempts: Attempts::new(
                config.seen_capacity,
                config
                    .seen_ttl
                    .max(config.retry_backoff_max * (config.max_receives + 1)),
            ),
        }
    }

    /// Classifies a delivery of the job keyed `key` by the seen cache: a
    /// new job is leased (`make` gives its job and receipt handle), a copy
    /// of one held names that lease, a copy of one completed is done.
    pub(crate) fn arrive(
        &self,
        key: JobKey,
        visible_until: Instant,
        received_at: Instant,
        make: impl FnOnce() -> (Job, String),
    ) -> Arrival {
        self.seen.arrive_key(key, || {
            let (job, handle) = make();
            self.leases
                .insert_at(job, handle, visible_until, received_at, key)
        })
    }

    /// Leases held now.
    pub(crate) fn held(&self) -> usize {
        self.leases.len()
    }

    /// Every lease held.
    pub(crate) fn all(&self) -> Vec<Arc<Lease>> {
        self.leases.all()
    }

    /// The leases in one state, oldest first.
    pub(crate) fn in_state(&self, state: LeaseState) -> Vec<Arc<Lease>> {
        self.leases.in_state(state)
    }

    /// A restarted actor's leases: those in its states, each let out so the
    /// actor takes it in again exactly once.
    pub(crate) fn restart_owner(&self, states: &[LeaseState]) -> Vec<Arc<Lease>> {
        self.leases.restart_owner(states)
    }

    /// Cancels a lease's job (its code sees it; effects check it).
    pub(crate) fn cancel(&self, lease: &Lease) {
        self.leases.cancel(lease);
    }

    /// The cancellation a lease's job sees.
    pub(crate) fn cancel_handle(&self, lease: &Lease) -> CancelHandle {
        self.leases.cancel_handle(lease)
    }

    /// Signalled whenever a lease is cancelled.
    pub(crate) fn cancel_signal(&self) -> Arc<tokio::sync::Notify> {
        self.leases.cancel_signal()
    }

    /// Moves the stall watch's clock on.
    pub(crate) fn tick(&self) {
        self.leases.tick();
    }

    /// The FIFO groups, for a FIFO source.
    pub(crate) fn groups(&self) -> Option<&Groups> {
        self.groups.as_ref()
    }

    /// Leases received but not able to start yet: pending, less those
    /// waiting behind their FIFO group's running job.
    pub(crate) fn ready_pending(&self) -> usize {
        let waiting = self.groups.as_ref().map_or(0, |g| g.waiting());
        self.leases.pending().saturating_sub(waiting)
    }

    /// Leases in the acker's hands now.
    pub(crate) fn settling(&self) -> usize {
        self.settling.load(Ordering::Acquire)
    }

    /// Remembers that a message's dead-letter entry was sent.
    pub(crate) fn mark_dead_lettered(&self, message_id: &str) {
        self.seen.dead_lettered(message_id);
    }

    /// Whether a message's dead-letter entry was sent already.
    pub(crate) fn was_dead_lettered(&self, message_id: &str) -> bool {
        self.seen.was_dead_lettered(message_id)
    }

    /// A job's own failed attempts in this process.
    pub(crate) fn attempts_of(&self, job: &JobId) -> u32 {
        self.attempts.of(job)
    }

    /// The claim owner of one attempt: this process and the lease.
    pub(crate) fn owner(&self, lease: &Lease) -> String {
        format!("{}/{}", self.owner, lease.id)
    }

    /// The lease table itself, for unit tests that set a scene.
    #[cfg(test)]
    pub(crate) fn table(&self) -> &LeaseTable {
        &self.leases
    }

    /// The attempts record itself, for unit tests that set a scene.
    #[cfg(test)]
    pub(crate) fn attempts(&self) -> &Attempts {
        &self.attempts
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
