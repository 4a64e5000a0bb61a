//! DESIGN rule 10: exactly-once runs across workers, through the idempotency
//! store. Two runtimes stand for two worker processes (each has its own
//! seen-ID cache, as a process would): on the embedded backend with
//! concurrent duplicate deliveries, and on SQS with DynamoDB (moto) with
//! every job sent twice. A claim whose holder dies expires and the job is
//! then run once by the other worker; a job re-sent after the queue's
//! five-minute window is recognised and not run again. The same on real
//! worker processes, SIGKILL included: `aws_processes.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferry::backend::local::{Faults, LocalIdempotencyStore};
use ferry::idempotency::{job_key, IdempotencyStore, OffsetClock, RecordStatus};
use ferry::prelude::*;

use common::{eventually_async, Counting, Harness, Kind};

const JOBS: usize = 150;

fn worker(h: &Harness, p: &Counting, store: &Arc<dyn IdempotencyStore>, kind: Kind) -> Pipeline {
    h.pipeline_of(kind, p.clone()).idempotency(store.clone())
}

async fn start(p: Pipeline) -> RuntimeHandle {
    Runtime::builder().pipeline(p).start().await.unwrap()
}

/// Every job completed once, in the store and by the processors.
async fn assert_once(store: &dyn IdempotencyStore, p: &Counting, ids: &[String]) {
    for id in ids {
        assert_eq!(p.runs_of(id), 1, "{id} ran {} times", p.runs_of(id));
        let r = store
            .record(&job_key("stage", &JobId::new(id.as_str())))
            .await
            .unwrap()
            .expect("a record per job");
        assert_eq!(r.status, RecordStatus::Completed, "{id}");
        assert_eq!(r.claims, 1, "{id} was claimed {} times", r.claims);
    }
    assert_eq!(p.total_runs() as usize, ids.len());
}

async fn two_workers_with_concurrent_duplicates_run_each_job_once(kind: Kind) {
    let h = Harness::new();
    h.local.set_faults(Faults {
        seed: 5,
        duplicate_rate: 0.4,
        redeliver_after_delete_rate: 0.2,
        ..Faults::none()
    });
    let ids = h.send_jobs(JOBS).await;
    let store: Arc<dyn IdempotencyStore> = Arc::new(LocalIdempotencyStore::new());
    // One processor count shared by both workers: runs in total.
    let p = Counting::new().with_delay(Duration::from_millis(3));
    let (a, b) = (
        start(worker(&h, &p, &store, kind)).await,
        start(worker(&h, &p, &store, kind)).await,
    );
    eventually_async("every job done and the queue empty", || async {
        h.results().await.len() == JOBS && h.jobs.depth_now().total() == 0
    })
    .await;
    let (sa, sb) = (a.total(), b.total());
    a.shutdown().await;
    b.shutdown().await;
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert_once(store.as_ref(), &p, &ids).await;
    let processed = sa.processed + sb.processed;
    let from_store = sa.skipped_completed + sb.skipped_completed;
    let deferred = sa.claims_deferred + sb.claims_deferred;
    eprintln!(
        "embedded, 2 workers, {JOBS} jobs: processor runs {} (a {} + b {}), copies merged or \
         dropped in-process {}, given back while the other worker held the claim {deferred}, \
         deleted as completed by the store {from_store}, received {}",
        p.total_runs(),
        sa.processed,
        sb.processed,
        sa.duplicates() + sb.duplicates(),
        sa.received + sb.received
    );
    assert_eq!(processed as usize, JOBS, "the workers' own counts agree");
    assert!(
        sa.processed > 0 && sb.processed > 0,
        "both workers ran jobs"
    );
    assert!(
        from_store + deferred > 0,
        "copies reached the other worker and the store stopped them"
    );
    assert_eq!(sa.claims_lost + sb.claims_lost, 0);
}

/// A processor that never returns: its worker dies with the job in hand.
#[derive(Clone)]
struct Stuck;

impl Processor for Stuck {
    fn process(&mut self, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        std::thread::sleep(Duration::from_secs(3600));
        unreachable!("the test ends first")
    }
}

async fn a_dead_holders_claim_expires_and_another_worker_runs_the_job_once(kind: Kind) {
    let h = Harness::new();
    let ids = h.send_jobs(1).await;
    let key = job_key("stage", &JobId::new(ids[0].as_str()));
    let store: Arc<dyn IdempotencyStore> = Arc::new(LocalIdempotencyStore::new());
    let dying = start(
        Pipeline::new("stage")
            .source(h.jobs.clone())
            .dead_letter(h.dlq.clone())
            .results(h.local.blobs(), "results", "out/", "txt")
            .processor(|| Stuck)
            .idempotency(store.clone())
            .configure(common::fast),
    )
    .await;
    eventually_async("the first worker to claim the job", || async {
        store.record(&key).await.unwrap().is_some()
    })
    .await;
    // The worker dies as under SIGKILL: nothing released, no claim given up.
    dying.abort();
    let p = Counting::new();
    let other = start(worker(&h, &p, &store, kind)).await;
    eventually_async("the other worker to finish the job", || async {
        h.results().await.len() == 1 && h.jobs.depth_now().total() == 0
    })
    .await;
    let s = other.total();
    other.shutdown().await;
    let r = store.record(&key).await.unwrap().unwrap();
    eprintln!(
        "dead holder: record {:?}, claims {}, deferred while the dead claim lived {}",
        r.status, r.claims, s.claims_deferred
    );
    assert_eq!(p.runs_of(&ids[0]), 1);
    assert_eq!(r.status, RecordStatus::Completed);
    assert_eq!(r.claims, 2, "the dead worker's claim, then the other's");
    assert_eq!(s.processed, 1);
}

/// A job re-sent after the queue's five-minute deduplication window (the
/// store's clock moved past it) to a fresh worker is not run again.
async fn resent_after_the_window_is_not_run_again(
    h: &Harness,
    store: Arc<dyn IdempotencyStore>,
    clock: &OffsetClock,
) {
    let p = Counting::new();
    let ids = h.send_jobs(3).await;
    let first = start(worker(h, &p, &store, Kind::Sync)).await;
    eventually_async("the first run", || async {
        h.results().await.len() == 3 && h.jobs.depth_now().total() == 0
    })
    .await;
    first.shutdown().await;
    clock.advance(ferry::backend::DEDUP_WINDOW + Duration::from_secs(60));
    h.send_named(&ids).await;
    let again = start(worker(h, &p, &store, Kind::Sync)).await;
    eventually_async("the copies to be deleted", || async {
        h.jobs.depth_now().total() == 0
    })
    .await;
    let s = again.total();
    again.shutdown().await;
    assert_eq!(s.processed, 0, "nothing ran again");
    assert_eq!(s.skipped_completed, 3);
    assert_eq!(s.duplicates(), 0, "a fresh worker's cache knew nothing");
    assert_once(store.as_ref(), &p, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_remembers_past_the_queues_deduplication_window() {
    let h = Harness::new();
    let clock = OffsetClock::new();
    let store = Arc::new(LocalIdempotencyStore::with_clock(clock.clock()));
    resent_after_the_window_is_not_run_again(&h, store, &clock).await;
}

for_each_kind!(
    mt;
    two_workers_with_concurrent_duplicates_run_each_job_once,
    a_dead_holders_claim_expires_and_another_worker_runs_the_job_once,
);

#[cfg(feature = "aws")]
mod aws {
    use std::time::Instant;

    use super::*;
    use common::aws::{backend, endpoint, unique, AwsHarness};

    async fn table(tag: &str) -> ferry::backend::aws::DynamoIdempotencyStore {
        backend()
            .await
            .create_idempotency_table(&unique(tag))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dynamodb_store_claims_renews_completes_and_expires() {
        if endpoint().is_none() {
            return;
        }
        let clock = OffsetClock::new();
        let s = table("claims").await.with_clock(clock.clock());
        let hold = Duration::from_secs(30);
        use ferry::idempotency::ClaimOutcome::*;
        assert_eq!(s.claim("k", "a", hold).await.unwrap(), Claimed);
        assert!(matches!(
            s.claim("k", "b", hold).await.unwrap(),
            HeldElsewhere { .. }
        ));
        assert!(s.renew("k", "a", hold).await.unwrap());
        assert!(!s.renew("k", "b", hold).await.unwrap());
        clock.advance(Duration::from_secs(31));
        // a's claim lapsed unfinished: b takes it over.
        assert_eq!(s.claim("k", "b", hold).await.unwrap(), TakenOver);
        assert!(!s.renew("k", "a", hold).await.unwrap(), "a lost its claim");
        let keep = Duration::from_secs(3600);
        assert!(!s.complete("k", "a", keep).await.unwrap());
        assert!(s.complete("k", "b", keep).await.unwrap());
        assert_eq!(s.claim("k", "c", hold).await.unwrap(), Completed);
        let r = s.record("k").await.unwrap().unwrap();
        assert_eq!((r.status, r.claims), (RecordStatus::Completed, 2));
        s.claim("other", "a", hold).await.unwrap();
        s.release("other", "b").await.unwrap();
        assert!(matches!(
            s.claim("other", "b", hold).await.unwrap(),
            HeldElsewhere { .. }
        ));
        s.release("other", "a").await.unwrap();
        assert_eq!(s.claim("other", "b", hold).await.unwrap(), TakenOver);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_workers_on_sqs_with_every_job_sent_twice_run_each_job_once() {
        let Some(h) = AwsHarness::new("once").await else {
            return;
        };
        let store: Arc<dyn IdempotencyStore> = Arc::new(table("once").await);
        let n = 40;
        let ids: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
        // A producer that retried every send: two messages per job, the
        // second batch sent once the workers are under way, so copies reach
        // the worker that did not run their job (a worker that receives
        // both copies of a job drops one itself, without the store).
        h.send_named(&ids).await;
        let p = Counting::new().with_delay(Duration::from_millis(20));
        let worker = |p: &Counting| h.pipeline(p.clone()).idempotency(store.clone());
        let a = start(worker(&p)).await;
        let b = start(worker(&p)).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        while h.results().await.len() < n / 4 {
            assert!(Instant::now() < deadline, "timed out before the copies");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.send_named(&ids).await;
        while h.results().await.len() < n || h.depth(&h.jobs).await.total() > 0 {
            assert!(
                Instant::now() < deadline,
                "timed out: {:?}",
                a.total() + b.total()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (sa, sb) = (a.total(), b.total());
        a.shutdown().await;
        b.shutdown().await;
        for id in &ids {
            assert_eq!(p.runs_of(id), 1, "{id}");
            let r = store
                .record(&job_key("stage", &JobId::new(id.as_str())))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((r.status, r.claims), (RecordStatus::Completed, 1), "{id}");
        }
        eprintln!(
            "SQS + DynamoDB, 2 workers, {n} jobs sent twice: processor runs {} (a {} + b {}), \
             merged or dropped in-process {}, given back while held elsewhere {}, deleted as \
             completed by the store {}",
            p.total_runs(),
            sa.processed,
            sb.processed,
            sa.duplicates() + sb.duplicates(),
            sa.claims_deferred + sb.claims_deferred,
            sa.skipped_completed + sb.skipped_completed
        );
        assert_eq!((sa.processed + sb.processed) as usize, n);
        assert!(
            sa.skipped_completed + sb.skipped_completed + sa.claims_deferred + sb.claims_deferred
                > 0,
            "the store stopped some copies"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dynamodb_remembers_past_the_queues_deduplication_window() {
        let Some(h) = AwsHarness::new("window").await else {
            return;
        };
        let clock = OffsetClock::new();
        let store: Arc<dyn IdempotencyStore> =
            Arc::new(table("window").await.with_clock(clock.clock()));
        let p = Counting::new();
        let ids = h.send_jobs(3).await;
        let first = start(h.pipeline(p.clone()).idempotency(store.clone())).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while h.results().await.len() < 3 || h.depth(&h.jobs).await.total() > 0 {
            assert!(Instant::now() < deadline, "first run timed out");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first.shutdown().await;
        clock.advance(ferry::backend::DEDUP_WINDOW + Duration::from_secs(60));
        h.send_named(&ids).await;
        let again = start(h.pipeline(p.clone()).idempotency(store.clone())).await;
        while h.depth(&h.jobs).await.total() > 0 {
            assert!(Instant::now() < deadline, "copies not deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = again.total();
        again.shutdown().await;
        assert_eq!((s.processed, s.skipped_completed), (0, 3));
        assert_eq!(p.total_runs(), 3);
    }
}
