//! Fault injection and call counting shared by every embedded resource.
//!
//! Faults are seeded so a run can be repeated: duplicate deliveries (a copy
//! handed to the next — possibly concurrent — receive with a newer receipt
//! handle), redelivery after delete (a replica that missed the delete), calls
//! that fail transiently at a rate, calls that panic (at a rate, or the next
//! call of one operation), calls slowed by a random delay, receipt handles
//! refused for good by deletes and visibility changes, latency per call,
//! throttling and expired credentials (at a rate, or for every call in a
//! window of time, aimed at chosen operations), and gates that hold every
//! call of one operation until opened (to freeze a worker between two
//! steps).
//!
//! The idempotency store a backend hands out
//! ([`super::LocalBackend::idempotency_store`]) shares the same state, so its
//! calls are counted, gated and failed like the queues'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::infra::InfraFaults;
use super::op::{Op, OPS};
use crate::error::BackendError;

/// What to inject. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Seed for every random choice.
    pub seed: u64,
    /// Chance that a delivered message is handed out again at once, to the
    /// next receive (which may run concurrently), with a newer receipt handle.
    pub duplicate_rate: f64,
    /// Chance that a deleted message comes back once, shortly after.
    pub redeliver_after_delete_rate: f64,
    /// Chance that any call fails with a transient error.
    pub fail_rate: f64,
    /// Latency added to every call.
    pub latency: Duration,
    /// Chance that any call panics (`injected backend panic: …`), as a bug
    /// in a client library would. No lock of the backend is held when it
    /// does. See also [`super::LocalBackend::panic_next`].
    pub panic_rate: f64,
    /// Chance that a call is slowed: it first sleeps a delay drawn
    /// uniformly from `[0, slow_max)` (on top of `latency`), and only then
    /// does its work, so a caller that gives up during the delay leaves no
    /// effect behind.
    pub slow_rate: f64,
    /// The longest delay of a slowed call.
    pub slow_max: Duration,
    /// Chance that a receipt handle is refused for good by
    /// `delete_batch` and `change_visibility_batch`: the entry fails with
    /// [`BackendError::Invalid`] on this call and every later one, while the
    /// batch's other entries go through. The choice is made once per handle
    /// (a function of the seed, the queue and the handle), so a new delivery
    /// of the same message, with a new handle, is refused only if it draws
    /// that too.
    pub refuse_rate: f64,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// A mix used by demos and soak tests: some duplicates of both kinds and
    /// a few failing calls.
    pub fn chaos(seed: u64) -> Self {
        Self {
            seed,
            duplicate_rate: 0.05,
            redeliver_after_delete_rate: 0.05,
            fail_rate: 0.02,
            ..Self::default()
        }
    }

    fn is_quiet(&self) -> bool {
        self.duplicate_rate <= 0.0
            && self.redeliver_after_delete_rate <= 0.0
            && self.fail_rate <= 0.0
            && self.latency.is_zero()
            && self.panic_rate <= 0.0
            && (self.slow_rate <= 0.0 || self.slow_max.is_zero())
            && self.refuse_rate <= 0.0
    }
}

/// Calls per operation, counted whether they succeeded or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    counts: [u64; OPS],
}

impl CallCounts {
    /// Calls of one operation.
    pub fn get(&self, op: Op) -> u64 {
        self.counts[op.index()]
    }

    /// Calls to one service (`sqs`, `sns`, `s3`, `store`).
    pub fn service(&self, service: &str) -> u64 {
        Op::ALL
            .iter()
            .filter(|op| op.service() == service)
            .map(|op| self.get(*op))
            .sum()
    }

    /// The counts since an earlier snapshot.
    pub fn since(&self, earlier: &CallCounts) -> CallCounts {
        let mut counts = [0; OPS];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = self.counts[i].saturating_sub(earlier.counts[i]);
        }
        CallCounts { counts }
    }
}

/// A gate that holds every call of one operation while closed.
#[derive(Debug, Clone)]
pub struct CallGate {
    tx: Arc<watch::Sender<bool>>,
}

impl CallGate {
    /// Lets held and future calls through.
    pub fn open(&self) {
        self.tx.send_replace(true);
    }

    /// Holds future calls again.
    pub fn close(&self) {
        self.tx.send_replace(false);
    }
}

/// The state behind every embedded resource of one backend.
#[derive(Debug)]
pub(crate) struct FaultState {
    active: AtomicBool,
    faults: RwLock<Faults>,
    rng: Mutex<StdRng>,
    calls: [AtomicU64; OPS],
    gates: RwLock<HashMap<Op, watch::Receiver<bool>>>,
    gated: AtomicBool,
    /// One-shot panics armed per operation ([`FaultState::panic_next`]).
    armed: [AtomicBool; OPS],
    /// Throttling and expired credentials, with when they were set
    /// (their windows count from there); `None` when quiet.
    infra: RwLock<Option<(InfraFaults, tokio::time::Instant)>>,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> Self {
        let state = Self {
            active: AtomicBool::new(false),
            faults: RwLock::new(Faults::none()),
            rng: Mutex::new(StdRng::seed_from_u64(0)),
            calls: Default::default(),
            gates: RwLock::new(HashMap::new()),
            gated: AtomicBool::new(false),
            armed: Default::default(),
            infra: RwLock::new(None),
        };
        state.set(faults);
        state
    }

    pub(crate) fn set(&self, faults: Faults) {
        *self.rng.lock().expect("rng lock") = StdRng::seed_from_u64(faults.seed);
        *self.faults.write().expect("faults lock") = faults;
        self.refresh_active();
    }

    pub(crate) fn get(&self) -> Faults {
        self.faults.read().expect("faults lock").clone()
    }

    pub(crate) fn set_infra(&self, infra: InfraFaults) {
        let quiet = infra.is_quiet();
        *self.infra.write().expect("infra lock") =
            (!quiet).then(|| (infra, tokio::time::Instant::now()));
        self.refresh_active();
    }

    pub(crate) fn get_infra(&self) -> InfraFaults {
        self.infra
            .read()
            .expect("infra lock")
            .as_ref()
            .map(|(f, _)| f.clone())
            .unwrap_or_default()
    }

    /// Whether any fault is on: the fast path of every call skips the rest
    /// when none is.
    fn refresh_active(&self) {
        let quiet = self.faults.read().expect("faults lock").is_quiet()
            && self.infra.read().expect("infra lock").is_none();
        self.active.store(!quiet, Ordering::Release);
    }

    pub(crate) fn calls(&self) -> CallCounts {
        let mut counts = [0; OPS];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = self.calls[i].load(Ordering::Relaxed);
        }
        CallCounts { counts }
    }

    pub(crate) fn gate(&self, op: Op) -> CallGate {
        let (tx, rx) = watch::channel(false);
        self.gates.write().expect("gates lock").insert(op, rx);
        self.gated.store(true, Ordering::Release);
        CallGate { tx: Arc::new(tx) }
    }

    /// Makes the next call of `op` panic, whatever else is configured.
    pub(crate) fn panic_next(&self, op: Op) {
        self.armed[op.index()].store(true, Ordering::Release);
    }

    /// Counts the call, then applies an armed panic, gates, latency, slow
    /// calls, panics and failures. Holds no lock when it panics or sleeps.
    pub(crate) async fn before(&self, op: Op, resource: &str) -> Result<(), BackendError> {
        self.calls[op.index()].fetch_add(1, Ordering::Relaxed);
        let armed = &self.armed[op.index()];
        if armed.load(Ordering::Relaxed) && armed.swap(false, Ordering::AcqRel) {
            panic!("injected backend panic: {op:?} on {resource}");
        }
        if self.gated.load(Ordering::Acquire) {
            let gate = self.gates.read().expect("gates lock").get(&op).cloned();
            if let Some(mut rx) = gate {
                // A dropped gate counts as open.
                let _ = rx.wait_for(|open| *open).await;
            }
        }
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        let (latency, fail_rate, panic_rate, slow_rate, slow_max) = {
            let f = self.faults.read().expect("faults lock");
            (
                f.latency,
                f.fail_rate,
                f.panic_rate,
                f.slow_rate,
                f.slow_max,
            )
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if slow_rate > 0.0 && !slow_max.is_zero() && self.roll(slow_rate) {
            let delay = self.uniform(slow_max);
            tokio::time::sleep(delay).await;
        }
        if panic_rate > 0.0 && self.roll(panic_rate) {
            panic!("injected backend panic: {op:?} on {resource}");
        }
        if fail_rate > 0.0 && self.roll(fail_rate) {
            return Err(BackendError::transient(format!(
                "injected failure of {op:?} on {resource}"
            )));
        }
        match self.infra.read().expect("infra lock").as_ref() {
            Some((f, at)) if f.hits(op) => f.check(op, resource, at.elapsed(), |p| self.roll(p)),
            _ => Ok(()),
        }
    }

    /// The permanent-refusal test for receipt handles on `resource`, while
    /// refusals are on: a function of the seed, the resource and the handle.
    pub(crate) fn refusals(&self, resource: &str) -> Option<Refusals> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let f = self.faults.read().expect("faults lock");
        (f.refuse_rate > 0.0).then(|| Refusals {
            rate: f.refuse_rate,
            seed: f.seed ^ xxhash_rust::xxh3::xxh3_64(resource.as_bytes()),
        })
    }

    /// A delay drawn uniformly from `[0, max)`.
    fn uniform(&self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.rng.lock().expect("rng lock").gen_range(0..nanos))
    }

    /// True with the given chance.
    pub(crate) fn roll(&self, chance: f64) -> bool {
        chance > 0.0 && self.rng.lock().expect("rng lock").gen_bool(chance.min(1.0))
    }

    pub(crate) fn duplicate_rate(&self) -> f64 {
        if !self.active.load(Ordering::Acquire) {
            return 0.0;
        }
        self.faults.read().expect("faults lock").duplicate_rate
    }

    pub(crate) fn redeliver_rate(&self) -> f64 {
        if !self.active.load(Ordering::Acquire) {
            return 0.0;
        }
        self.faults
            .read()
            .expect("faults lock")
            .redeliver_after_delete_rate
    }

    /// A random delay up to `max`.
    pub(crate) fn jitter(&self, max: Duration) -> Duration {
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(self.rng.lock().expect("rng lock").gen_range(0..ms))
    }
}

/// Which receipt handles of one queue are refused for good.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusals {
    rate: f64,
    seed: u64,
}

impl Refusals {
    /// `Some(error)` when this handle is refused: the same answer on every
    /// call, drawn with chance `refuse_rate` the first time.
    pub(crate) fn check(&self, resource: &str, handle: &str) -> Option<BackendError> {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(handle.as_bytes(), self.seed);
        // The top 53 bits as a uniform draw from [0, 1).
        let draw = (h >> 11) as f64 / (1u64 << 53) as f64;
        (draw < self.rate).then(|| BackendError::Invalid {
            message: format!("injected permanent refusal of receipt handle {handle} on {resource}"),
        })
    }
}
