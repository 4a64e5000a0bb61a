//! A pipeline's health: what [`crate::RuntimeHandle::health`] reports
//! ([`PipelineHealth`]) and the supervision state it is read from
//! ([`HealthState`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// A pipeline's health, as [`crate::RuntimeHandle::health`] reports it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PipelineHealth {
    /// The pipeline's name.
    pub name: String,
    /// `running`, `escalated`, `blocked` (ferry's I/O thread has not run
    /// for a while: see `io_blocked_ms`), `stalled` or `degraded` (a
    /// dependency is failing: see `degraded`; or worker threads are
    /// abandoned or stuck: see `problems`).
    pub status: &'static str,
    /// Why it escalated (the last escalation), if it ever did.
    pub reason: Option<String>,
    /// Times it escalated so far.
    pub escalations: u64,
    /// Leases held now.
    pub leases: usize,
    /// Leases that have not changed state past the stall timeout while an
    /// actor owns their next step (a restarted actor picks them up).
    pub stalled_leases: usize,
    /// Leases per lifecycle state, by state name.
    pub states: Vec<(&'static str, usize)>,
    /// The dependencies failing now (throttled, down, refusing the
    /// pipeline's credentials), since when: the pipeline waits them out
    /// without charging its jobs.
    pub degraded: Vec<crate::backend::dependencies::DegradedDependency>,
    /// Worker threads replaced so far because their job ran past its
    /// cancellation by more than `hang_grace`.
    pub workers_replaced: u64,
    /// Replaced worker threads still running their abandoned job now.
    pub abandoned_workers: usize,
    /// How long ferry's I/O thread (every pipeline's actors, lease keeping
    /// included) has not run, when longer than the watchdog's bound: it is
    /// blocked now.
    pub io_blocked_ms: Option<u64>,
    /// What is wrong now, in words: a blocked I/O thread, worker threads
    /// abandoned or stuck.
    pub problems: Vec<String>,
}

/// The supervision state of one pipeline, kept in [`Shared`].
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    pub(super) escalated: AtomicBool,
    pub(super) escalations: AtomicU64,
    pub(super) reason: Mutex<Option<String>>,
    /// Restarts since the last job that succeeded.
    pub(super) failing: AtomicU32,
    pub(super) stalled: AtomicU64,
    /// Worker threads abandoned or stuck in a job past its cancellation.
    pub(crate) workers: super::run::stuck::Workers,
}

impl HealthState {
    pub(crate) fn is_escalated(&self) -> bool {
        self.escalated.load(Ordering::Acquire)
    }

    /// Times the pipeline escalated.
    pub(crate) fn escalations(&self) -> u64 {
        self.escalations.load(Ordering::Acquire)
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.lock().expect("health lock").clone()
    }

    /// A job succeeded: the worker works.
    pub(crate) fn success(&self) {
        if self.failing.load(Ordering::Relaxed) != 0 {
            self.failing.store(0, Ordering::Relaxed);
        }
    }

    /// Something was restarted; true when restarts in a row, with no job
    /// succeeding in between, passed `limit`.
    pub(crate) fn restarted(&self, limit: u32) -> bool {
        self.failing.fetch_add(1, Ordering::AcqRel) + 1 > limit
    }
}
