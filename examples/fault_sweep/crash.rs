//! A worker killed between two steps, as SIGKILL on a spot instance kills
//! one: the seed names a worker, an operation and a count, and the worker's
//! recording wrappers stop it right before its nth call of that operation.
//! From then on none of its calls reaches the backend; the seed's runner
//! drops its runtime at once (no shutdown, no flush, worker threads left to
//! themselves) and starts a fresh worker in its place on the same backend
//! and store. For the audit, each delivery the dead worker held and never
//! ended was lost at the crash, and a run of it that returns later was
//! cancelled: its output can no longer go anywhere. Without the idempotency
//! store nothing outlives a process: the fresh worker may repeat what the
//! dead one did but could not confirm (a job announced again runs again at
//! stage 2; a bad input dead-lettered but not yet deleted is dead-lettered
//! again), which the checks allow after a crash and only then.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use ferry::backend::local::Op;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::record::{End, Log};

/// Where a seed kills a worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crash {
    pub(crate) worker: u8,
    pub(crate) op: Op,
    pub(crate) nth: u32,
}

impl Crash {
    /// In 35 % of seeds, drawn apart so the seed's other choices stay.
    pub(crate) fn draw(seed: u64, workers: u8, jobs: usize) -> Option<Self> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6372_6173);
        if !rng.gen_bool(0.35) {
            return None;
        }
        // Any call: the queues', the topic's, the result store's, the
        // idempotency store's.
        let op = Op::ALL[rng.gen_range(0..Op::ALL.len())];
        let most = if op == Op::Receive {
            8
        } else {
            jobs.max(2) as u32
        };
        Some(Self {
            worker: rng.gen_range(0..workers),
            op,
            nth: rng.gen_range(1..=most),
        })
    }
}

impl Crash {
    /// A crash early in the seed (before a job's first result is stored),
    /// while jobs are queued for the worker's threads.
    pub(crate) fn early(seed: u64, workers: u8) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6561_726c);
        Self {
            worker: rng.gen_range(0..workers),
            op: Op::Put,
            nth: 1,
        }
    }
}

/// One worker's kill switch, shared by its wrappers and processors.
#[derive(Debug)]
pub(crate) struct CrashPoint {
    crash: Crash,
    calls: AtomicU32,
    fired: AtomicBool,
    /// The stamp of the moment it fired: the worker's death.
    fired_at: std::sync::atomic::AtomicU64,
    /// Its runtime has been dropped: nothing of it may start a job now.
    dropped: AtomicBool,
    log: Arc<Log>,
}

impl CrashPoint {
    pub(crate) fn new(crash: Crash, log: Arc<Log>) -> Arc<Self> {
        Arc::new(Self {
            crash,
            calls: AtomicU32::new(0),
            fired: AtomicBool::new(false),
            fired_at: std::sync::atomic::AtomicU64::new(0),
            dropped: AtomicBool::new(false),
            log,
        })
    }

    /// The worker's runtime has been dropped.
    pub(crate) fn set_dropped(&self) {
        self.dropped.store(true, Ordering::Release);
    }

    /// Whether the worker's runtime has been dropped: a job that starts
    /// now started in a dead process.
    pub(crate) fn dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// The stamp of the worker's death (0 before it).
    pub(crate) fn fired_at(&self) -> u64 {
        self.fired_at.load(Ordering::Acquire)
    }

    /// Whether the worker is dead.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Before a call of `op`: once the worker is dead (this call may be the
    /// one that kills it) the call never happens: it waits until the
    /// runtime that made it is dropped.
    pub(crate) async fn step(&self, op: Op) {
        if !self.fired()
            && op == self.crash.op
            && self.calls.fetch_add(1, Ordering::AcqRel) + 1 >= self.crash.nth
        {
            self.fired_at.store(self.log.tick(), Ordering::Release);
            self.fired.store(true, Ordering::Release);
        }
        if self.fired() {
            std::future::pending::<()>().await;
        }
    }
}

/// Before a call through a wrapper that may carry a kill switch.
pub(crate) async fn step(point: &Option<Arc<CrashPoint>>, op: Op) {
    if let Some(p) = point {
        p.step(op).await;
    }
}

/// Records the crash of `worker` at stamp `at`: every delivery it received
/// and never ended was lost then (ending `crash`, which excuses only runs
/// that started after it).
pub(crate) fn lost_at_crash(log: &Log, worker: u8, at: u64) {
    log.with(|r| {
        let mut lost: Vec<End> = Vec::new();
        for d in r.received.iter().filter(|d| d.worker == worker) {
            let same = |e: &End| {
                e.stage == d.stage && e.message == d.message && e.receive_count == d.receive_count
            };
            if !r.ends.iter().any(same) && !lost.iter().any(same) {
                lost.push(End {
                    at,
                    stage: d.stage,
                    job: d.job.clone(),
                    message: d.message.clone(),
                    how: "Lost".into(),
                    ending: "crash".into(),
                    receive_count: d.receive_count,
                });
            }
        }
        r.ends.extend(lost);
        r.crashes.push((worker, at));
    });
}
