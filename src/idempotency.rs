//! The idempotency store: cross-process exactly-once runs (DESIGN rule 10).
//!
//! The seen-ID cache stops a job from running twice *in one process*. Across
//! processes — two workers that received the same job, or a job re-sent after
//! the FIFO queue's five-minute deduplication window — the store decides.
//! Before a job runs, its worker **claims** it: a conditional write that
//! succeeds only if no record exists or the existing record has expired. The
//! claim's expiry is renewed with every lease extension; a renewal that finds
//! the claim gone cancels the job before its effects. After the job's effects
//! (upload, publish) the record becomes **completed** and is kept for a long
//! window (days by default), and only then is the message deleted. A worker
//! that finds a job completed deletes the message without running it; one
//! that finds it claimed by another worker gives the message back until the
//! claim would expire.
//!
//! Expiry is checked in the write's condition, never left to a TTL sweeper:
//! DynamoDB deletes expired items only eventually (and some emulators never).
//!
//! Two implementations:
//! [`crate::backend::local::LocalIdempotencyStore`] (in memory, for one
//! process or tests) and, with the `aws` feature,
//! [`crate::backend::aws::DynamoIdempotencyStore`].

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;

use crate::error::BackendError;

/// What a claim found.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The job is this worker's to run; the claim holds until it expires
    /// unless renewed.
    Claimed,
    /// As [`ClaimOutcome::Claimed`], over an earlier claim that ended
    /// unfinished (given up, or lapsed: its holder died, or could not
    /// reach the store in time). That holder may have done some of the
    /// job's effects, its result included: ferry looks for the result
    /// before running the job. A store that cannot tell answers `Claimed`.
    TakenOver,
    /// The job completed within the store's window: do not run it again.
    Completed,
    /// Another worker's claim is live until this time.
    HeldElsewhere {
        /// When that claim expires unless its holder renews it.
        until: SystemTime,
    },
}

/// A record's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Claimed by a worker that is running the job.
    InProgress,
    /// The job's effects are done.
    Completed,
}

/// One job's record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdempotencyRecord {
    /// In progress or completed.
    pub status: RecordStatus,
    /// The claim's holder (the worker that completed it, once completed).
    pub owner: String,
    /// When the record stops counting, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// How many claims have succeeded on this job: 1 when it ran once.
    pub claims: u64,
}

/// The narrow interface a store offers. `key` identifies one job of one
/// pipeline; `owner` identifies one attempt (a worker process and its lease).
#[async_trait]
pub trait IdempotencyStore: Send + Sync + Debug + 'static {
    /// Claims `key` for `owner` for `hold_for`: succeeds if there is no
    /// record, or the record (in progress or completed) has expired.
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<ClaimOutcome, BackendError>;

    /// Extends `owner`'s in-progress claim; `false` if it is no longer theirs.
    async fn renew(&self, key: &str, owner: &str, hold_for: Duration)
        -> Result<bool, BackendError>;

    /// Marks the job completed, kept for `keep_for`; `false` if `owner` no
    /// longer held the claim (the record is then left alone).
    async fn complete(
        &self,
        key: &str,
        owner: &str,
        keep_for: Duration,
    ) -> Result<bool, BackendError>;

    /// Gives up `owner`'s in-progress claim, so another worker may run the
    /// job at once. Does nothing if the claim is not theirs.
    async fn release(&self, key: &str, owner: &str) -> Result<(), BackendError>;

    /// Reads a record (for reports and tests).
    async fn record(&self, key: &str) -> Result<Option<IdempotencyRecord>, BackendError>;
}

/// Wall-clock time for a store; injectable so tests can step past windows.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// A clock that runs with the system clock plus an offset that tests move
/// forward.
#[derive(Debug, Clone, Default)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicU64>,
}

impl OffsetClock {
    /// A clock at the system time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// The clock, for a store.
    pub fn clock(&self) -> Clock {
        let offset = self.offset_ms.clone();
        Arc::new(move || SystemTime::now() + Duration::from_millis(offset.load(Ordering::Relaxed)))
    }
}

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl<S: IdempotencyStore> crate::backend::IntoBackend<dyn IdempotencyStore> for Arc<S> {
    fn into_backend(self) -> Arc<dyn IdempotencyStore> {
        self
    }
}

impl crate::backend::IntoBackend<dyn IdempotencyStore> for Arc<dyn IdempotencyStore> {
    fn into_backend(self) -> Arc<dyn IdempotencyStore> {
        self
    }
}

/// The store key of one job in one pipeline.
pub fn job_key(pipeline: &str, job: &crate::job::JobId) -> String {
    format!("{pipeline}/{}", job.as_str())
}
