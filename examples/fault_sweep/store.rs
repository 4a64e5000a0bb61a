//! The idempotency store as one worker sees it: every job completion the
//! store accepted is recorded (with the stamp the audit orders by), and
//! every call goes through the worker's kill switch, so a crash can land
//! right before a claim, a renewal, a completion or a release.

use std::sync::Arc;
use std::time::Duration;

use ferry::backend::local::Op;
use ferry::idempotency::{ClaimOutcome, IdempotencyRecord, IdempotencyStore};
use ferry::BackendError;

use crate::crash::{step, CrashPoint};
use crate::record::Log;

/// One worker's view of the shared store.
#[derive(Debug)]
pub(crate) struct RecordedStore {
    pub(crate) inner: Arc<dyn IdempotencyStore>,
    pub(crate) log: Arc<Log>,
    pub(crate) worker: u8,
    pub(crate) crash: Option<Arc<CrashPoint>>,
}

/// The stage and job a claim key names (`s{seed}.stage{n}/{job}`); `None`
/// for a dead-letter mark.
fn job_of_key(key: &str) -> Option<(u8, String)> {
    if key.contains('\u{1f}') {
        return None;
    }
    let (pipeline, job) = key.split_once('/')?;
    let stage = pipeline.rsplit_once(".stage")?.1.parse().ok()?;
    Some((stage, job.to_owned()))
}

impl RecordedStore {
    /// Logs an answered call about a job (not a dead-letter mark), with
    /// the attempt that made it (the owner's last part, the lease).
    fn note<T: std::fmt::Debug>(
        &self,
        key: &str,
        call: &str,
        owner: &str,
        r: &Result<T, BackendError>,
    ) {
        if let Some((stage, job)) = job_of_key(key) {
            let lease = owner.rsplit('/').next().unwrap_or(owner);
            let answer = match r {
                Ok(v) => format!("{v:?}"),
                Err(e) => format!("error ({e})"),
            };
            let what = format!("{call} by worker {} (lease {lease}): {answer}", self.worker);
            self.log.store_call(stage, &job, what);
        }
    }
}

#[ferry::async_trait]
impl IdempotencyStore for RecordedStore {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        step(&self.crash, Op::Claim).await;
        let r = self.inner.claim(key, owner, hold_for).await;
        self.note(key, "claim", owner, &r);
        r
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<bool, BackendError> {
        step(&self.crash, Op::Renew).await;
        let r = self.inner.renew(key, owner, hold_for).await;
        self.note(key, "renew", owner, &r);
        r
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        keep_for: Duration,
    ) -> Result<bool, BackendError> {
        step(&self.crash, Op::Complete).await;
        let r = self.inner.complete(key, owner, keep_for).await;
        self.note(key, "complete", owner, &r);
        let done = r?;
        if let (true, Some((stage, job))) = (done, job_of_key(key)) {
            self.log.completed(stage, &job);
        }
        Ok(done)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), BackendError> {
        step(&self.crash, Op::Release).await;
        let r = self.inner.release(key, owner).await;
        self.note(key, "release", owner, &r);
        r
    }

    async fn record(&self, key: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        self.inner.record(key).await
    }
}
