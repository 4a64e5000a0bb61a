//! The lease table: every received message's lease, kept outside any actor so
//! an actor that restarts loses none (DESIGN rule 5).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::job::Job;
use crate::seen::{key, SeenKey};

/// Where a lease's job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Received, not yet picked up by a processor.
    Pending = 0,
    /// A processor (or a resume) has taken it.
    Started = 1,
    /// Given back to the queue; nothing more may happen under it.
    Released = 2,
}

/// One message's lease.
#[derive(Debug)]
pub struct Lease {
    pub(crate) id: u64,
    pub(crate) job: Job,
    /// The job id's key in the seen-ID cache, hashed once.
    pub(crate) seen_key: SeenKey,
    pub(crate) received_at: Instant,
    /// The newest receipt handle and the time its visibility lapses.
    handle: Mutex<(String, Instant)>,
    state: AtomicU8,
    /// The table's count of leases still pending, shared.
    pending: Arc<AtomicUsize>,
    cancelled: Arc<AtomicBool>,
    extending: AtomicBool,
    extensions: AtomicU32,
    /// Whether this attempt holds a claim in the idempotency store.
    claimed: AtomicBool,
}

impl Lease {
    pub(crate) fn handle(&self) -> String {
        self.handle.lock().expect("lease lock").0.clone()
    }

    pub(crate) fn handle_and_deadline(&self) -> (String, Instant) {
        self.handle.lock().expect("lease lock").clone()
    }

    /// A newer delivery of the same message: its handle replaces ours.
    pub(crate) fn merge(&self, handle: String, visible_until: Instant) {
        *self.handle.lock().expect("lease lock") = (handle, visible_until);
    }

    /// Visibility was extended for `handle`; ignored if a newer one arrived.
    pub(crate) fn extended(&self, handle: &str, visible_until: Instant) -> bool {
        let mut h = self.handle.lock().expect("lease lock");
        if h.0 == handle {
            h.1 = visible_until;
            self.extensions.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub(crate) fn state(&self) -> LeaseState {
        match self.state.load(Ordering::Acquire) {
            0 => LeaseState::Pending,
            1 => LeaseState::Started,
            _ => LeaseState::Released,
        }
    }

    fn leave_pending(&self, to: LeaseState) -> bool {
        let left = self
            .state
            .compare_exchange(0, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if left {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        left
    }

    /// Pending → Started; false if the lease was released first.
    pub(crate) fn try_start(&self) -> bool {
        self.leave_pending(LeaseState::Started) && !self.is_cancelled()
    }

    /// Pending → Released; false if a processor took it first.
    pub(crate) fn try_release_pending(&self) -> bool {
        self.leave_pending(LeaseState::Released)
    }

    pub(crate) fn mark_released(&self) {
        if !self.leave_pending(LeaseState::Released) {
            self.state
                .store(LeaseState::Released as u8, Ordering::Release);
        }
    }

    /// The lease is lost or given up: no further side effect may happen.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Claims the right to send one extension; false if one is under way.
    pub(crate) fn begin_extend(&self) -> bool {
        !self.extending.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn end_extend(&self) {
        self.extending.store(false, Ordering::Release);
    }

    /// This attempt now holds the job's claim in the idempotency store.
    pub(crate) fn set_claimed(&self) {
        self.claimed.store(true, Ordering::Release);
    }

    pub(crate) fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Gives up the claim flag once; true if it was held.
    pub(crate) fn take_claim(&self) -> bool {
        self.claimed.swap(false, Ordering::AcqRel)
    }

    /// The cancel flag, shared with the processor's context.
    pub(crate) fn cancel_arc(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }
}

/// Every live lease of one pipeline.
#[derive(Debug, Default)]
pub struct LeaseTable {
    map: DashMap<u64, Arc<Lease>, rustc_hash::FxBuildHasher>,
    next: AtomicU64,
    pending: Arc<AtomicUsize>,
}

impl LeaseTable {
    /// Leases a received job under its receipt handle.
    pub fn insert(&self, job: Job, handle: String, visible_until: Instant) -> Arc<Lease> {
        let k = key(&job.id);
        self.insert_at(job, handle, visible_until, Instant::now(), k)
    }

    /// [`LeaseTable::insert`] with the receive time and seen key known.
    pub(crate) fn insert_at(
        &self,
        job: Job,
        handle: String,
        visible_until: Instant,
        received_at: Instant,
        seen_key: SeenKey,
    ) -> Arc<Lease> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let lease = Arc::new(Lease {
            id,
            job,
            seen_key,
            received_at,
            handle: Mutex::new((handle, visible_until)),
            state: AtomicU8::new(LeaseState::Pending as u8),
            pending: self.pending.clone(),
            cancelled: Arc::new(AtomicBool::new(false)),
            extending: AtomicBool::new(false),
            extensions: AtomicU32::new(0),
            claimed: AtomicBool::new(false),
        });
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.map.insert(id, lease.clone());
        lease
    }

    /// Leases received whose job has not started.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Removes a lease; true if it was still there.
    pub fn remove(&self, lease: &Lease) -> bool {
        self.map.remove(&lease.id).is_some()
    }

    /// Leases held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn all(&self) -> Vec<Arc<Lease>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }
}
