//! One message's lease: its job, its receipt handles and deadline, its
//! state, its cancel flag, and what its next owner needs.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::job::Job;
use crate::processor::Output;

use super::state::{Ending, LeaseState, Move};

/// One message's lease.
#[derive(Debug)]
pub struct Lease {
    pub(crate) id: u64,
    pub(crate) job: Job,
    /// The job id's key in the seen-ID cache, hashed once.
    pub(crate) seen_key: crate::job::JobKey,
    pub(crate) received_at: Instant,
    /// The newest receipt handle and the time its visibility lapses.
    pub(super) handle: Mutex<(String, Instant)>,
    /// Other messages with the same job id merged into this lease (a
    /// producer that sent the job twice): each one's newest handle and
    /// deadline, extended with the lease's own and deleted or given back
    /// when the lease ends.
    pub(super) others: OnceLock<Box<Mutex<Vec<Delivery>>>>,
    pub(super) state: AtomicU8,
    /// When the state last changed, in ms since the table's epoch, read
    /// from the table's coarse clock.
    pub(super) changed_at: AtomicU64,
    pub(super) clock: Arc<AtomicU64>,
    /// The table's count of leases not started yet, shared.
    pub(super) pending: Arc<AtomicUsize>,
    pub(super) cancelled: Arc<AtomicBool>,
    pub(super) extending: AtomicBool,
    pub(super) extensions: AtomicU32,
    /// The claim this attempt holds in the idempotency store: when it
    /// lapses unless renewed, in whole milliseconds after `received_at`,
    /// rounded down (a lease lives at most 12 hours; 0: no claim held).
    pub(super) claim: AtomicU32,
    /// The processor's output, from Processed until it is announced (boxed:
    /// most leases never hold one, and a lease stays small).
    pub(super) output: Mutex<Option<Box<Output>>>,
    /// The ending the acker is carrying out (while Settling).
    pub(super) ending: Mutex<Option<Ending>>,
    /// Failed attempts at carrying out the ending (bounded).
    pub(super) settle_attempts: AtomicU32,
    /// The actor that owns the state has taken the lease in (buffered it or
    /// called for it); cleared by every transition and by that actor's
    /// restart, so a lease is never taken in twice.
    pub(super) held: AtomicBool,
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

    /// Makes a move of the table ([`Move::edge`]): from one of its states
    /// to its target, returning the state it left; `None` (nothing changed)
    /// when the lease is in none of them. The only way a state changes
    /// outside the lease module.
    pub(crate) fn step(&self, m: Move) -> Option<LeaseState> {
        let (from, to) = m.edge();
        self.transition(from, to)
    }

    /// Moves from one of `from` to `to`, returning the state it left;
    /// `None` (nothing changed) when the lease is in none of `from`. Private
    /// to the lease module: everyone else makes a [`Move`].
    pub(super) fn transition(&self, from: &[LeaseState], to: LeaseState) -> Option<LeaseState> {
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
    /// cancelled, or past its deadline (its visibility's or its claim's: a
    /// claim answered late, or not renewed in time, may be another
    /// worker's now); `Shared::start_job` then gives it back.
    pub(crate) fn try_start(&self) -> bool {
        let now = Instant::now();
        !self.is_cancelled()
            && self.handle.lock().expect("lease lock").1 > now
            && !self.claim_lapsed(now)
            && self.step(Move::Start).is_some()
    }

    /// The lease is lost or given up: no further side effect may happen.
    /// Use [`LeaseTable::cancel`], which also wakes async jobs.
    pub(super) fn set_cancelled(&self) {
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

    /// This attempt now holds the job's claim in the idempotency store,
    /// until `until` unless renewed (counted from when the claim was sent).
    pub(crate) fn set_claimed(&self, until: Instant) {
        self.claim.store(self.claim_mark(until), Ordering::Release);
    }

    /// A renewal (sent before `until` less the hold) was confirmed: the
    /// claim, if still held, holds until then.
    pub(crate) fn claim_renewed(&self, until: Instant) {
        let n = self.claim_mark(until);
        let _ = self
            .claim
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v != 0 && v < n).then_some(n)
            });
    }

    /// `until` as the claim field counts it (never 0, which means none).
    fn claim_mark(&self, until: Instant) -> u32 {
        let ms = until
            .saturating_duration_since(self.received_at)
            .as_millis();
        u32::try_from(ms).unwrap_or(u32::MAX).max(1)
    }

    /// Whether the claim this attempt holds may have lapsed by `now` (no
    /// renewal confirmed in time): another worker may hold the job now.
    pub(crate) fn claim_lapsed(&self, now: Instant) -> bool {
        let n = self.claim.load(Ordering::Acquire);
        n != 0 && self.received_at + Duration::from_millis(u64::from(n)) <= now
    }

    /// The earliest of this lease's deadlines: its visibility's and, while
    /// it holds one, its claim's.
    pub(crate) fn deadline(&self) -> Instant {
        let visible = self.handle.lock().expect("lease lock").1;
        match self.claim.load(Ordering::Acquire) {
            0 => visible,
            n => visible.min(self.received_at + Duration::from_millis(u64::from(n))),
        }
    }

    pub(crate) fn is_claimed(&self) -> bool {
        self.claim.load(Ordering::Acquire) != 0
    }

    /// Gives up the claim once; true if it was held.
    pub(crate) fn take_claim(&self) -> bool {
        self.claim.swap(0, Ordering::AcqRel) != 0
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

    /// Moves to Settling with this ending only from `from`, a state the
    /// caller saw and one [`Move::Settle`] leaves: a lease that moved on
    /// meanwhile (started by another worker, say) is left to its new owner.
    pub(crate) fn begin_settling_from(&self, from: LeaseState, ending: Ending) -> bool {
        Move::Settle.edge().0.contains(&from) && self.settling_from(&[from], ending)
    }

    /// Moves to Settling ([`Move::Settle`]) with this ending, atomically
    /// with the ending's record: of two racing endings, the one that moves
    /// the lease is the one kept.
    pub(crate) fn begin_settling(&self, ending: Ending) -> bool {
        self.settling_from(Move::Settle.edge().0, ending)
    }

    /// Makes the settle move from one of `from`, recording the ending
    /// under its lock.
    fn settling_from(&self, from: &[LeaseState], ending: Ending) -> bool {
        let mut slot = self.ending.lock().expect("lease lock");
        let moved = self.transition(from, Move::Settle.edge().1).is_some();
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

    /// Puts the lease in `to` whatever the table allows: for tests that
    /// need a lease in a given state.
    #[cfg(test)]
    pub(crate) fn put_in(&self, to: LeaseState) {
        self.transition(&[self.state()], to);
    }

    /// Counts a failed attempt at the ending; returns the count so far.
    pub(crate) fn settle_failed(&self) -> u32 {
        self.settle_attempts.fetch_add(1, Ordering::AcqRel) + 1
    }
}
