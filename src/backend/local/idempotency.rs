//! The embedded idempotency store: records in memory, for one process or
//! tests (the store's contract is in [`crate::idempotency`]).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;

use super::faults::FaultState;
use super::op::Op;
use crate::error::BackendError;
use crate::idempotency::{
    from_millis, millis, system_clock, ClaimOutcome, Clock, IdempotencyRecord, IdempotencyStore,
    RecordStatus,
};

/// How long the embedded store keeps a record after it stopped counting
/// (expired, or released) before a sweep removes it. Until then a new
/// claim of the job adds to its claim count.
pub const LOCAL_KEEP_EXPIRED: Duration = Duration::from_secs(10 * 60);

/// Claims between two sweeps at least: a sweep reads every record, so
/// sweeping after a number of claims proportional to the store's size keeps
/// its cost per claim constant.
const SWEEP_EVERY: u64 = 256;

/// The embedded store: records in memory, shared by every pipeline (and
/// every runtime) holding the same `Arc`. One made by
/// [`LocalBackend::idempotency_store`](crate::backend::local::LocalBackend::idempotency_store)
/// shares that backend's fault injection and call counts.
///
/// Memory is bounded by the records that still count: a claim sweeps the
/// store, removing every record that stopped counting more than
/// [`LOCAL_KEEP_EXPIRED`] ago, once the claims since the last sweep reach
/// half the store's size (at least 256), or once that long has passed since
/// it.
pub struct LocalIdempotencyStore {
    records: DashMap<String, IdempotencyRecord>,
    clock: Clock,
    /// The backend's faults, for a store made by the backend.
    faults: Option<Arc<FaultState>>,
    /// Claims since the last sweep.
    claims_since_sweep: AtomicU64,
    /// When the last sweep ran (ms since the epoch, on the store's clock).
    last_sweep_ms: AtomicU64,
}

impl Debug for LocalIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIdempotencyStore")
            .field("records", &self.records.len())
            .field("faults", &self.faults.is_some())
            .finish()
    }
}

impl Default for LocalIdempotencyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalIdempotencyStore {
    /// An empty store on the system clock, without faults.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// An empty store on the given clock, without faults.
    pub fn with_clock(clock: Clock) -> Self {
        let now = millis(clock());
        Self {
            records: DashMap::new(),
            clock,
            faults: None,
            claims_since_sweep: AtomicU64::new(0),
            last_sweep_ms: AtomicU64::new(now),
        }
    }

    /// An empty store on the system clock whose calls go through a
    /// backend's fault injection.
    pub(crate) fn with_faults(faults: Arc<FaultState>) -> Self {
        Self {
            faults: Some(faults),
            ..Self::new()
        }
    }

    /// Counts the call and applies the backend's faults, if any. Called
    /// before the call touches a record, so an injected panic leaves no
    /// lock held and no record half-written.
    async fn before(&self, op: Op, key: &str) -> Result<(), BackendError> {
        match &self.faults {
            Some(f) => f.before(op, &format!("idempotency store key {key}")).await,
            None => Ok(()),
        }
    }

    fn now_ms(&self) -> u64 {
        millis((self.clock)())
    }

    /// Removes the records that stopped counting more than
    /// [`LOCAL_KEEP_EXPIRED`] ago, when enough claims or time have passed
    /// since the last sweep. Takes no record's lock on entry: call it
    /// holding none.
    fn sweep_if_due(&self, now: u64) {
        let claims = self.claims_since_sweep.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let keep_ms = LOCAL_KEEP_EXPIRED.as_millis() as u64;
        let by_count = claims >= SWEEP_EVERY.max(self.records.len() as u64 / 2);
        if !(by_count || now >= last.saturating_add(keep_ms)) {
            return;
        }
        // One sweeper at a time; the others carry on.
        if self
            .last_sweep_ms
            .compare_exchange(last, now.max(last), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.claims_since_sweep.store(0, Ordering::Relaxed);
        let before = now.saturating_sub(keep_ms);
        self.records.retain(|_, r| r.expires_at_ms > before);
        if self.records.capacity() > 4 * self.records.len().max(64) {
            self.records.shrink_to_fit();
        }
    }

    /// Every record, by key.
    pub fn records(&self) -> Vec<(String, IdempotencyRecord)> {
        self.records
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

#[async_trait]
impl IdempotencyStore for LocalIdempotencyStore {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        self.before(Op::Claim, key).await?;
        let now = self.now_ms();
        self.sweep_if_due(now);
        let until = now + hold_for.as_millis() as u64;
        let mut entry = self
            .records
            .entry(key.to_owned())
            .or_insert_with(|| IdempotencyRecord {
                status: RecordStatus::InProgress,
                owner: String::new(),
                expires_at_ms: 0,
                claims: 0,
            });
        let r = entry.value_mut();
        if r.expires_at_ms > now {
            return Ok(match r.status {
                RecordStatus::Completed => ClaimOutcome::Completed,
                RecordStatus::InProgress => ClaimOutcome::HeldElsewhere {
                    until: from_millis(r.expires_at_ms),
                },
            });
        }
        let unfinished = r.claims > 0 && r.status == RecordStatus::InProgress;
        *r = IdempotencyRecord {
            status: RecordStatus::InProgress,
            owner: owner.to_owned(),
            expires_at_ms: until,
            claims: r.claims + 1,
        };
        Ok(if unfinished {
            ClaimOutcome::TakenOver
        } else {
            ClaimOutcome::Claimed
        })
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<bool, BackendError> {
        self.before(Op::Renew, key).await?;
        let now = self.now_ms();
        Ok(match self.records.get_mut(key) {
            Some(mut r) if r.status == RecordStatus::InProgress && r.owner == owner => {
                r.expires_at_ms = now + hold_for.as_millis() as u64;
                true
            }
            _ => false,
        })
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        keep_for: Duration,
    ) -> Result<bool, BackendError> {
        self.before(Op::Complete, key).await?;
        let now = self.now_ms();
        Ok(match self.records.get_mut(key) {
            Some(mut r) if r.status == RecordStatus::InProgress && r.owner == owner => {
                r.status = RecordStatus::Completed;
                r.expires_at_ms = now + keep_for.as_millis() as u64;
                true
            }
            _ => false,
        })
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), BackendError> {
        self.before(Op::Release, key).await?;
        let now = self.now_ms();
        if let Some(mut r) = self.records.get_mut(key) {
            if r.status == RecordStatus::InProgress && r.owner == owner {
                // Expired now (kept for the sweep's grace, so the claim
                // count carries on).
                r.expires_at_ms = now;
            }
        }
        Ok(())
    }

    async fn record(&self, key: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        Ok(self
            .records
            .get(key)
            .map(|r| r.clone())
            .filter(|r| r.claims > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::OffsetClock;

    #[tokio::test]
    async fn claim_complete_and_expiry() {
        let clock = OffsetClock::new();
        let s = LocalIdempotencyStore::with_clock(clock.clock());
        let hold = Duration::from_secs(30);
        assert_eq!(
            s.claim("k", "a", hold).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert!(matches!(
            s.claim("k", "b", hold).await.unwrap(),
            ClaimOutcome::HeldElsewhere { .. }
        ));
        assert!(s.renew("k", "a", hold).await.unwrap());
        assert!(!s.renew("k", "b", hold).await.unwrap());
        // a's claim lapses: b takes over, a's renewal and completion fail.
        clock.advance(Duration::from_secs(31));
        assert_eq!(
            s.claim("k", "b", hold).await.unwrap(),
            ClaimOutcome::TakenOver
        );
        assert!(!s.renew("k", "a", hold).await.unwrap());
        assert!(!s
            .complete("k", "a", Duration::from_secs(3600))
            .await
            .unwrap());
        assert!(s
            .complete("k", "b", Duration::from_secs(3600))
            .await
            .unwrap());
        assert_eq!(
            s.claim("k", "c", hold).await.unwrap(),
            ClaimOutcome::Completed
        );
        let r = s.record("k").await.unwrap().unwrap();
        assert_eq!(
            (r.status, r.claims, r.owner.as_str()),
            (RecordStatus::Completed, 2, "b")
        );
        // Past the completed window the job counts as new again.
        clock.advance(Duration::from_secs(3601));
        assert_eq!(
            s.claim("k", "c", hold).await.unwrap(),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test]
    async fn records_that_stopped_counting_are_swept() {
        let clock = OffsetClock::new();
        let s = LocalIdempotencyStore::with_clock(clock.clock());
        let (hold, keep) = (Duration::from_secs(30), Duration::from_secs(60));
        let run = |key: String| {
            let s = &s;
            async move {
                assert_eq!(
                    s.claim(&key, "w", hold).await.unwrap(),
                    ClaimOutcome::Claimed
                );
                assert!(s.complete(&key, "w", keep).await.unwrap());
            }
        };
        for i in 0..3000 {
            run(format!("job-{i}")).await;
        }
        assert_eq!(s.records().len(), 3000, "every record still counts");
        // Stopped counting, within the grace: kept, and a new claim of the
        // job adds to its count.
        clock.advance(keep + Duration::from_secs(1));
        assert_eq!(
            s.claim("job-0", "v", hold).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(s.record("job-0").await.unwrap().unwrap().claims, 2);
        assert_eq!(s.records().len(), 3000);
        // Past the grace: the next claims remove them.
        clock.advance(LOCAL_KEEP_EXPIRED + Duration::from_secs(60));
        for i in 0..10 {
            run(format!("new-{i}")).await;
        }
        assert_eq!(s.records().len(), 10, "3,000 expired records swept");
        // A steady flow (20,000 jobs, 500 a minute, each kept a minute):
        // the store holds what counts or is within the grace, plus at most
        // a sweep's worth.
        for round in 0..40 {
            for i in 0..500 {
                run(format!("flow-{round}-{i}")).await;
            }
            clock.advance(Duration::from_secs(61));
        }
        let n = s.records().len();
        assert!(n <= 9_000, "{n} records after 20,000 jobs");
    }

    #[tokio::test]
    async fn release_frees_only_the_owners_claim() {
        let s = LocalIdempotencyStore::new();
        let hold = Duration::from_secs(30);
        s.claim("k", "a", hold).await.unwrap();
        s.release("k", "b").await.unwrap();
        assert!(matches!(
            s.claim("k", "b", hold).await.unwrap(),
            ClaimOutcome::HeldElsewhere { .. }
        ));
        s.release("k", "a").await.unwrap();
        assert_eq!(
            s.claim("k", "b", hold).await.unwrap(),
            ClaimOutcome::TakenOver
        );
        assert_eq!(s.record("k").await.unwrap().unwrap().claims, 2);
    }
}
