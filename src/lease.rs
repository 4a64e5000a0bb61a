//! The lease table and each lease's lifecycle state: every received
//! message's lease, kept outside any actor so an actor that restarts loses
//! none (DESIGN rules 5 and 6).
//!
//! A lease is always in exactly one [`LeaseState`], and the state names the
//! actor that owns its next step. An actor that restarts re-derives its work
//! from the leases in its states: everything it needs (the receipt handle,
//! the processor's output, the ending to carry out) is kept in the lease.
//!
//! ```text
//!             ┌──────────── Gated (FIFO group, claim) ─────────────┐
//! receive ──▶ Pending ◀──── Probing (redelivery: result exists?) ──┤
//!               │                         │ yes                    │
//!               ▼                         ▼                        │
//!            Running ──▶ Processed ──▶ Stored ──▶ Settling ──▶ Ended
//!               │ (fail, panic)            (publish)  ▲  (delete, retry,
//!               └─────────────────────────────────────┘   dead-letter, release)
//! any state ──(lost: deadline passed, receipt refused)──▶ Ended
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::cancel::CancelHandle;
use crate::job::Job;
use crate::processor::Output;

/// Where a lease's job stands, and so which actor owns its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum LeaseState {
    /// Received, waiting for a processor (the pool's channel).
    Pending = 0,
    /// At the gate: behind its FIFO group's running job, or being claimed.
    Gated = 1,
    /// A redelivery whose stored result is being looked for (uploader).
    Probing = 2,
    /// A processor runs it (a worker thread).
    Running = 3,
    /// Processed; its output, kept in the lease, is to be stored (uploader).
    Processed = 4,
    /// Its result is stored (or its output is the notice): to be announced
    /// (publisher).
    Stored = 5,
    /// Its ending, kept in the lease, is with the acker.
    Settling = 6,
    /// Deleted, released, dead-lettered or lost: nothing more may happen.
    Ended = 7,
}

impl LeaseState {
    const ALL: [LeaseState; 8] = [
        LeaseState::Pending,
        LeaseState::Gated,
        LeaseState::Probing,
        LeaseState::Running,
        LeaseState::Processed,
        LeaseState::Stored,
        LeaseState::Settling,
        LeaseState::Ended,
    ];

    fn from_u8(v: u8) -> Self {
        Self::ALL[v.min(7) as usize]
    }

    /// Not started yet: counted against the prefetch window.
    pub(crate) fn unstarted(self) -> bool {
        matches!(self, Self::Pending | Self::Gated | Self::Probing)
    }

    /// The state's name, for logs and health reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Gated => "gated",
            Self::Probing => "probing",
            Self::Running => "running",
            Self::Processed => "processed",
            Self::Stored => "stored",
            Self::Settling => "settling",
            Self::Ended => "ended",
        }
    }
}

/// How a lease ends, as the acker carries it out. Kept in the lease while
/// it is [`LeaseState::Settling`], so a restarted acker finds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ending {
    /// Effects done: mark the claim completed (if any), then delete the
    /// message with its newest handle. `dead_lettered`: its dead-letter
    /// entry is already sent.
    Delete { dead_lettered: bool },
    /// Try again later: visibility set to a backoff.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Bad input or out of attempts: to the dead-letter queue, then delete.
    DeadLetter { reason: String },
    /// Give the message back at once (visibility 0).
    Release,
    /// Give the message back for a later look without counting an attempt
    /// (another worker holds the job's claim).
    Defer { after: Duration },
    /// Try again later without counting an attempt: the infrastructure
    /// failed (an upload, a notice, a dependency the processor needs), not
    /// the job. `after` overrides the pipeline's own wait.
    Wait {
        reason: String,
        after: Option<Duration>,
    },
}

/// One message's lease.
#[derive(Debug)]
pub struct Lease {
    pub(crate) id: u64,
    pub(crate) job: Job,
    /// The job id's key in the seen-ID cache, hashed once.
    pub(crate) seen_key: crate::job::JobKey,
    pub(crate) received_at: Instant,
    /// The newest receipt handle and the time its visibility lapses.
    handle: Mutex<(String, Instant)>,
    /// Other messages with the same job id merged into this lease (a
    /// producer that sent the job twice): each one's newest handle and
    /// deadline, extended with the lease's own and deleted or given back
    /// when the lease ends.
    others: OnceLock<Box<Mutex<Vec<Delivery>>>>,
    state: AtomicU8,
    /// When the state last changed, in ms since the table's epoch, read
    /// from the table's coarse clock.
    changed_at: AtomicU64,
    clock: Arc<AtomicU64>,
    /// The table's count of leases not started yet, shared.
    pending: Arc<AtomicUsize>,
    cancelled: Arc<AtomicBool>,
    extending: AtomicBool,
    extensions: AtomicU32,
    /// Whether this attempt holds a claim in the idempotency store.
    claimed: AtomicBool,
    /// The processor's output, from Processed until it is announced (boxed:
    /// most leases never hold one, and a lease stays small).
    output: Mutex<Option<Box<Output>>>,
    /// The ending the acker is carrying out (while Settling).
    ending: Mutex<Option<Ending>>,
    /// Failed attempts at carrying out the ending (bounded).
    settle_attempts: AtomicU32,
    /// The actor that owns the state has taken the lease in (buffered it or
    /// called for it); cleared by every transition and by that actor's
    /// restart, so a lease is never taken in twice.
    held: AtomicBool,
}

/// Another message merged into a lease.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) message_id: String,
    pub(crate) handle: String,
    pub(crate) until: Instant,
}

impl Lease {
    pub(crate) fn handle(&self) -> String {
        self.handle.lock().expect("lease lock").0.clone()
    }

    pub(crate) fn handle_and_deadline(&self) -> (String, Instant) {
        self.handle.lock().expect("lease lock").clone()
    }

    /// A delivery of the same job: a newer delivery of the lease's own
    /// message replaces its handle; another message's is kept beside it
    /// (its own newest), so none is left to come back while the job runs.
    pub(crate) fn merge(&self, message_id: &str, handle: String, visible_until: Instant) {
        if message_id == self.job.message_id {
            *self.handle.lock().expect("lease lock") = (handle, visible_until);
            return;
        }
        let mut others = self
            .others
            .get_or_init(Box::default)
            .lock()
            .expect("lease lock");
        match others.iter_mut().find(|d| d.message_id == message_id) {
            Some(d) => {
                d.handle = handle;
                d.until = visible_until;
            }
            None => others.push(Delivery {
                message_id: message_id.to_owned(),
                handle,
                until: visible_until,
            }),
        }
    }

    /// The other messages merged in, if any ever were (no lock otherwise).
    fn others(&self) -> Option<std::sync::MutexGuard<'_, Vec<Delivery>>> {
        self.others.get().map(|o| o.lock().expect("lease lock"))
    }

    /// The other messages' handles due for an extension by `due`; those
    /// whose deadline has passed are dropped (their messages are visible
    /// again and will be merged anew, or run as the same job elsewhere).
    pub(crate) fn others_due(&self, now: Instant, due: Instant) -> Vec<String> {
        let Some(mut others) = self.others() else {
            return Vec::new();
        };
        others.retain(|d| d.until > now);
        others
            .iter()
            .filter(|d| d.until <= due)
            .map(|d| d.handle.clone())
            .collect()
    }

    /// Another message's visibility was extended for `handle`.
    pub(crate) fn other_extended(&self, handle: &str, visible_until: Instant) {
        if let Some(mut others) = self.others() {
            if let Some(d) = others.iter_mut().find(|d| d.handle == handle) {
                d.until = d.until.max(visible_until);
            }
        }
    }

    /// Another message's handle was refused: that message is not ours.
    pub(crate) fn drop_other(&self, handle: &str) {
        if let Some(mut others) = self.others() {
            others.retain(|d| d.handle != handle);
        }
    }

    /// Takes the other messages' handles, to delete or give back with the
    /// lease's own.
    pub(crate) fn take_others(&self) -> Vec<String> {
        match self.others() {
            Some(mut others) => std::mem::take(&mut *others)
                .into_iter()
                .map(|d| d.handle)
                .collect(),
            None => Vec::new(),
        }
    }

    /// Whether other messages were ever merged in (a load, no lock).
    pub(crate) fn had_others(&self) -> bool {
        self.others.get().is_some()
    }

    /// Visibility was extended for `handle`; ignored if a newer one arrived.
    pub(crate) fn extended(&self, handle: &str, visible_until: Instant) -> bool {
        let mut h = self.handle.lock().expect("lease lock");
        if h.0 == handle {
            h.1 = h.1.max(visible_until);
            self.extensions.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub(crate) fn state(&self) -> LeaseState {
        LeaseState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// How long the lease has been in its state, as of the table's coarse
    /// clock.
    pub(crate) fn in_state_for(&self) -> Duration {
        let at = self.changed_at.load(Ordering::Relaxed);
        Duration::from_millis(self.clock.load(Ordering::Relaxed).saturating_sub(at))
    }

    /// Moves from one of `from` to `to`, returning the state it left;
    /// `None` (nothing changed) when the lease is in none of `from`. The
    /// only way a state changes.
    pub(crate) fn transition(&self, from: &[LeaseState], to: LeaseState) -> Option<LeaseState> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let s = LeaseState::from_u8(cur);
            if !from.contains(&s) {
                return None;
            }
            match self
                .state
                .compare_exchange(cur, to as u8, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if s.unstarted() && !to.unstarted() {
                        self.pending.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.changed_at
                        .store(self.clock.load(Ordering::Relaxed), Ordering::Relaxed);
                    self.held.store(false, Ordering::Release);
                    return Some(s);
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Pending → Running; false if it was taken or given back first, or
    /// cancelled.
    pub(crate) fn try_start(&self) -> bool {
        !self.is_cancelled()
            && self
                .transition(&[LeaseState::Pending], LeaseState::Running)
                .is_some()
    }

    /// The lease is lost or given up: no further side effect may happen.
    /// Use [`LeaseTable::cancel`], which also wakes async jobs.
    fn set_cancelled(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Claims the right to send one extension; false if one is under way.
    pub(crate) fn begin_extend(&self) -> bool {
        !self.extending.swap(true, Ordering::AcqRel)
    }

    /// Whether an extension is under way.
    pub(crate) fn is_extending(&self) -> bool {
        self.extending.load(Ordering::Acquire)
    }

    /// Whether the ending under way gives the message back (retry,
    /// release, defer): then the lease must not be extended any more.
    pub(crate) fn gives_back(&self) -> bool {
        matches!(
            *self.ending.lock().expect("lease lock"),
            Some(
                Ending::Retry { .. } | Ending::Release | Ending::Defer { .. } | Ending::Wait { .. }
            )
        )
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

    pub(crate) fn set_output(&self, output: Option<Output>) {
        *self.output.lock().expect("lease lock") = output.map(Box::new);
    }

    pub(crate) fn output(&self) -> Option<Output> {
        self.output.lock().expect("lease lock").as_deref().cloned()
    }

    /// Updates the ending while Settling (the acker's progress).
    pub(crate) fn set_ending(&self, ending: Ending) {
        *self.ending.lock().expect("lease lock") = Some(ending);
    }

    /// Moves from one of `from` to Settling with this ending, atomically
    /// with the ending's record: of two racing endings, the one that moves
    /// the lease is the one kept.
    pub(crate) fn begin_settling(&self, from: &[LeaseState], ending: Ending) -> bool {
        let mut slot = self.ending.lock().expect("lease lock");
        let moved = self.transition(from, LeaseState::Settling).is_some();
        if moved {
            *slot = Some(ending);
        }
        moved
    }

    pub(crate) fn ending(&self) -> Option<Ending> {
        self.ending.lock().expect("lease lock").clone()
    }

    /// The owning actor takes the lease in; false if it already has.
    pub(crate) fn take_in(&self) -> bool {
        !self.held.swap(true, Ordering::AcqRel)
    }

    /// The owning actor restarted: whatever it held is taken in again.
    pub(crate) fn let_out(&self) {
        self.held.store(false, Ordering::Release);
    }

    /// Counts a failed attempt at the ending; returns the count so far.
    pub(crate) fn settle_failed(&self) -> u32 {
        self.settle_attempts.fetch_add(1, Ordering::AcqRel) + 1
    }
}

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
            claimed: AtomicBool::new(false),
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

#[cfg(test)]
mod tests;
