//! Every live lease of one pipeline, and the cancel flags its jobs see.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::cancel::CancelHandle;
use crate::job::Job;

use super::held::Lease;
use super::state::LeaseState;

/// Every live lease of one pipeline.
#[derive(Debug)]
pub struct LeaseTable {
    map: DashMap<u64, Arc<Lease>, rustc_hash::FxBuildHasher>,
    next: AtomicU64,
    pending: Arc<AtomicUsize>,
    signal: Arc<tokio::sync::Notify>,
    epoch: Instant,
    /// Milliseconds since `epoch`, as of the last [`LeaseTable::tick`]: the
    /// stall watch needs no finer time, and the hot path reads no clock.
    clock: Arc<AtomicU64>,
}

impl Default for LeaseTable {
    fn default() -> Self {
        Self {
            map: DashMap::with_hasher(rustc_hash::FxBuildHasher),
            next: AtomicU64::new(0),
            pending: Arc::default(),
            signal: Arc::default(),
            epoch: Instant::now(),
            clock: Arc::default(),
        }
    }
}

impl LeaseTable {
    /// Leases a received job under its receipt handle.
    pub fn insert(&self, job: Job, handle: String, visible_until: Instant) -> Arc<Lease> {
        let k = job.id.key();
        self.insert_at(job, handle, visible_until, Instant::now(), k)
    }

    /// [`LeaseTable::insert`] with the receive time and seen key known.
    pub(crate) fn insert_at(
        &self,
        job: Job,
        handle: String,
        visible_until: Instant,
        received_at: Instant,
        seen_key: crate::job::JobKey,
    ) -> Arc<Lease> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let lease = Arc::new(Lease {
            id,
            job,
            seen_key,
            received_at,
            handle: Mutex::new((handle, visible_until)),
            others: OnceLock::new(),
            state: AtomicU8::new(LeaseState::Pending as u8),
            changed_at: AtomicU64::new(self.clock.load(Ordering::Relaxed)),
            clock: self.clock.clone(),
            pending: self.pending.clone(),
            cancelled: Arc::new(AtomicBool::new(false)),
            extending: AtomicBool::new(false),
            extensions: AtomicU32::new(0),
            claim: AtomicU32::new(0),
            output: Mutex::new(None),
            ending: Mutex::new(None),
            settle_attempts: AtomicU32::new(0),
            held: AtomicBool::new(false),
        });
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.map.insert(id, lease.clone());
        lease
    }

    /// Cancels a lease: no further side effect may happen for it, and an
    /// async job running it is woken to drop its future.
    pub(crate) fn cancel(&self, lease: &Lease) {
        lease.set_cancelled();
        self.signal.notify_waiters();
    }

    /// A lease's cancel flag with the table's signal, for a job's context.
    pub(crate) fn cancel_handle(&self, lease: &Lease) -> CancelHandle {
        CancelHandle {
            flag: lease.cancel_arc(),
            signal: self.signal.clone(),
        }
    }

    /// The signal every cancel of this table's leases wakes.
    pub(crate) fn cancel_signal(&self) -> Arc<tokio::sync::Notify> {
        self.signal.clone()
    }

    /// Moves the coarse clock lease state times are read from to now.
    pub(crate) fn tick(&self) {
        let ms = Instant::now().saturating_duration_since(self.epoch);
        self.clock.store(ms.as_millis() as u64, Ordering::Relaxed);
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

    /// The leases in one state, oldest first.
    pub(crate) fn in_state(&self, state: LeaseState) -> Vec<Arc<Lease>> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|e| e.value().state() == state)
            .map(|e| e.value().clone())
            .collect();
        v.sort_by_key(|l| l.id);
        v
    }

    /// A restarted actor's leases: those in its states, each let out so the
    /// actor takes it in again exactly once.
    pub(crate) fn restart_owner(&self, states: &[LeaseState]) -> Vec<Arc<Lease>> {
        let mut v = Vec::new();
        for s in states {
            for l in self.in_state(*s) {
                l.let_out();
                v.push(l);
            }
        }
        v
    }

    /// Whether a lease is still in the table.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.map.contains_key(&id)
    }
}
