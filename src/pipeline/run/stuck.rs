//! Stuck user code: worker threads whose job runs on past its cancellation.
//! A sync processor cannot be stopped from outside; once its job has been
//! cancelled for longer than `hang_grace` the pool gives its thread up (it
//! is left, detached, to finish or hang) and starts another in its place,
//! so one hung job never stalls a pipeline. Abandoned threads alive at once
//! are capped (`max_abandoned_workers`); past the cap a stuck worker is not
//! replaced and the pipeline reports itself degraded. Counted in
//! `workers_replaced`; `health()` shows what is abandoned or stuck now.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::job::JobId;
use crate::lease::Lease;

/// One worker thread's place in the pool: the job it runs now, and whether
/// the pool gave the thread up.
#[derive(Default)]
pub(crate) struct Slot {
    busy: Mutex<Busy>,
}

#[derive(Default)]
struct Busy {
    /// The lease whose job runs now.
    lease: Option<Arc<Lease>>,
    /// When the pool first saw that lease cancelled.
    cancelled_seen: Option<Instant>,
    /// The pool gave this thread up: whatever its job returns is dropped.
    abandoned: bool,
}

/// What a look at a slot found.
pub(crate) enum Look {
    /// Nothing to do.
    Fine,
    /// Its job ran past its cancellation by more than the grace, but no
    /// more threads may be abandoned: it stays.
    Stuck,
    /// Given up: a new thread must take its place.
    Abandoned {
        /// The job it was running.
        job: JobId,
        /// How long it had run on since its cancellation was seen.
        past: Duration,
    },
}

impl Slot {
    /// The thread starts a job.
    pub(crate) fn begin(&self, lease: &Arc<Lease>) {
        let mut b = self.busy.lock().expect("slot lock");
        b.lease = Some(lease.clone());
        b.cancelled_seen = None;
    }

    /// The thread's job returned: false when the thread was given up
    /// meanwhile, and must then leave the job alone and end.
    pub(crate) fn end(&self) -> bool {
        let mut b = self.busy.lock().expect("slot lock");
        b.lease = None;
        !b.abandoned
    }

    /// Whether the pool gave this thread up.
    pub(crate) fn abandoned(&self) -> bool {
        self.busy.lock().expect("slot lock").abandoned
    }

    /// Looks at the job running now: cancelled for longer than `grace`, the
    /// thread is given up if `permit` allows one more.
    pub(crate) fn look(&self, grace: Duration, permit: impl FnOnce() -> bool) -> Look {
        let mut b = self.busy.lock().expect("slot lock");
        let Some(lease) = b.lease.clone().filter(|l| l.is_cancelled()) else {
            b.cancelled_seen = None;
            return Look::Fine;
        };
        let now = Instant::now();
        let past = now.duration_since(*b.cancelled_seen.get_or_insert(now));
        if past < grace || b.abandoned {
            return Look::Fine;
        }
        if !permit() {
            return Look::Stuck;
        }
        b.abandoned = true;
        Look::Abandoned {
            job: lease.job.id.clone(),
            past,
        }
    }
}

/// A pipeline's abandoned and stuck workers, for the pool and `health()`.
#[derive(Debug, Default)]
pub(crate) struct Workers {
    /// Abandoned threads still running their job.
    abandoned: AtomicUsize,
    /// Threads stuck past the grace and not replaced (the cap was reached).
    stuck: AtomicUsize,
}

impl Workers {
    /// Takes one of `cap` places for an abandoned thread; false when all
    /// are taken.
    pub(crate) fn abandon_one(&self, cap: usize) -> bool {
        self.abandoned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// An abandoned thread's job returned: the thread ends.
    pub(crate) fn abandoned_ended(&self) {
        self.abandoned.fetch_sub(1, Ordering::AcqRel);
    }

    /// Abandoned threads still running now.
    pub(crate) fn abandoned_now(&self) -> usize {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Sets how many workers are stuck and not replaced now.
    pub(crate) fn set_stuck(&self, n: usize) {
        self.stuck.store(n, Ordering::Release);
    }

    /// What is wrong now, in words (empty when nothing is); `replaced`
    /// counts threads replaced so far.
    pub(crate) fn problems(&self, replaced: u64, cap: usize) -> Vec<String> {
        let mut out = Vec::new();
        let abandoned = self.abandoned_now();
        if abandoned > 0 {
            out.push(format!(
                "{replaced} worker thread(s) replaced after their job ran past its \
                 cancellation; {abandoned} abandoned thread(s) still running"
            ));
        }
        let stuck = self.stuck.load(Ordering::Acquire);
        if stuck > 0 {
            out.push(format!(
                "{stuck} worker thread(s) stuck in a cancelled job and not replaced: \
                 {abandoned} abandoned threads already, the cap is {cap}"
            ));
        }
        out
    }
}
