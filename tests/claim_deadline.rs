//! An idempotency claim has a deadline of its own, as a lease does (DESIGN
//! rule 10): a renewal that answers after the claim lapsed in the store
//! confirms nothing, since another worker may have taken the job meanwhile.
//! The job is cancelled at the claim's deadline, before its effects, so
//! however late a renewal comes the job's result is stored once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry::idempotency::{ClaimOutcome, IdempotencyRecord, IdempotencyStore};
use ferry::prelude::*;
use ferry::BackendError;

/// The shared store as one worker reaches it: while `slow` is set its
/// renewals answer two seconds late (long after the claim they renew has
/// lapsed, and after the job would have finished); while `down` is set its
/// renewals and completions fail (the store throttling this worker); while
/// `late` is set a claim is taken at once and answered two seconds later.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn IdempotencyStore>,
    slow: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    late: Arc<AtomicBool>,
}

impl Flaky {
    fn over(inner: &Arc<dyn IdempotencyStore>) -> Self {
        Self {
            inner: inner.clone(),
            slow: Default::default(),
            down: Default::default(),
            late: Default::default(),
        }
    }

    fn check(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::Acquire) {
            return Err(BackendError::transient("throttled"));
        }
        Ok(())
    }
}

#[ferry::async_trait]
impl IdempotencyStore for Flaky {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        hold: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        let answer = self.inner.claim(key, owner, hold).await;
        if self.late.swap(false, Ordering::AcqRel) {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        answer
    }
    async fn renew(&self, key: &str, owner: &str, hold: Duration) -> Result<bool, BackendError> {
        self.check()?;
        if self.slow.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.inner.renew(key, owner, hold).await
    }
    async fn complete(&self, key: &str, owner: &str, keep: Duration) -> Result<bool, BackendError> {
        self.check()?;
        self.inner.complete(key, owner, keep).await
    }
    async fn release(&self, key: &str, owner: &str) -> Result<(), BackendError> {
        self.inner.release(key, owner).await
    }
    async fn record(&self, key: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        self.inner.record(key).await
    }
}

/// One worker of pipeline `stage` reading `source`, its claims in `store`,
/// visibility 300 ms.
fn worker<P: Processor + Clone + Sync>(
    h: &Harness,
    source: Arc<ferry::backend::local::LocalQueue>,
    store: Arc<dyn IdempotencyStore>,
    p: &P,
) -> Pipeline {
    let p = p.clone();
    Pipeline::new("stage")
        .source(source)
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .idempotency(store)
        .processor(move || p.clone())
        .configure(|c| {
            fast(c);
            c.workers = 1;
            c.visibility_timeout = Duration::from_millis(300);
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_answering_after_the_claim_lapsed_stops_the_job_before_its_effects() {
    let h = Harness::new();
    let shared: Arc<dyn IdempotencyStore> = Arc::new(h.local.idempotency_store());
    let flaky = Arc::new(Flaky::over(&shared));
    flaky.slow.store(true, Ordering::Release);
    let p = Watchful::default();
    // Worker A takes the job; its renewals answer late.
    h.send_named(&["J".into()]).await;
    let a = Runtime::builder()
        .pipeline(worker(&h, h.jobs.clone(), flaky.clone(), &p))
        .start()
        .await
        .unwrap();
    eventually("A runs the job", || p.runs.load(Ordering::Acquire) == 1).await;
    // The job sent again reaches worker B, which takes the claim once A's
    // has lapsed in the store.
    h.send_named(&["J".into()]).await;
    let b = Runtime::builder()
        .pipeline(worker(&h, h.jobs.clone(), shared.clone(), &p))
        .start()
        .await
        .unwrap();
    eventually("both messages settled", || h.jobs.depth_now().total() == 0).await;
    flaky.slow.store(false, Ordering::Release);
    let (sa, sb) = (a.total(), b.total());
    a.shutdown().await;
    b.shutdown().await;
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert_eq!(
        sa.uploaded + sb.uploaded,
        1,
        "the result stored once: a {} + b {}",
        sa.uploaded,
        sb.uploaded
    );
    assert!(
        p.cancelled.load(Ordering::Acquire) >= 1,
        "A's run was not stopped"
    );
    assert!(h.dlq.snapshot().is_empty());
}

/// A worker stores a job's result, then cannot reach the store to mark it
/// completed for longer than its claim holds; a copy of the job reaching
/// another worker takes the lapsed claim over, finds the result and
/// finishes the job from it, without running it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_taken_over_from_a_finished_run_resumes_instead_of_running() {
    let h = Harness::new();
    let shared: Arc<dyn IdempotencyStore> = Arc::new(h.local.idempotency_store());
    let flaky = Arc::new(Flaky::over(&shared));
    let p = Counting::new();
    // B reads its own queue, so the copy cannot reach A (which would merge
    // it into its lease): the same job in the same pipeline all the same.
    let copies = h.local.create_queue("copies", Default::default());
    h.send_named(&["J".into()]).await;
    flaky.down.store(true, Ordering::Release);
    let a = Runtime::builder()
        .pipeline(worker(&h, h.jobs.clone(), flaky.clone(), &p))
        .start()
        .await
        .unwrap();
    eventually("A stores the result", || a.total().uploaded == 1).await;
    // A's claim lapses in the store while A cannot complete it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    send_named_to(copies.as_ref(), &["J".into()]).await;
    let b = Runtime::builder()
        .pipeline(worker(&h, copies.clone(), shared.clone(), &p))
        .start()
        .await
        .unwrap();
    eventually("B finishes the job from its result", || {
        b.total().resumed == 1
    })
    .await;
    flaky.down.store(false, Ordering::Release);
    eventually("both messages settled", || {
        h.jobs.depth_now().total() == 0 && copies.depth_now().total() == 0
    })
    .await;
    let (sa, sb) = (a.total(), b.total());
    a.shutdown().await;
    b.shutdown().await;
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert_eq!(p.runs_of("J"), 1, "run again by B");
    assert_eq!(sb.processed, 0, "{sb:?}");
    assert!(h.dlq.snapshot().is_empty());
}

/// A claim answered after its hold has passed may be another worker's by
/// then (the answer's network path, or a batch of claims answered together
/// with its slowest): the job is not started from it. The message comes
/// back and the job runs once, from a claim answered in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_answered_after_its_hold_does_not_start_the_job() {
    let h = Harness::new();
    let shared: Arc<dyn IdempotencyStore> = Arc::new(h.local.idempotency_store());
    let flaky = Arc::new(Flaky::over(&shared));
    flaky.late.store(true, Ordering::Release);
    let p = Counting::new();
    h.send_named(&["J".into()]).await;
    let rt = Runtime::builder()
        .pipeline(worker(&h, h.jobs.clone(), flaky.clone(), &p))
        .start()
        .await
        .unwrap();
    eventually("the job stored", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(
        p.runs_of("J"),
        1,
        "run from a claim answered too late: {stats:?}"
    );
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert!(h.dlq.snapshot().is_empty());
}
