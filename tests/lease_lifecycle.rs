//! DESIGN rules 5 and 6 under faults outside the happy path: a panic inside
//! any backend or store call, a processor that panics when dropped, an
//! extension slower than the visibility timeout, a fast job followed by a
//! slow one on one worker, a permanently refused delete, and escalation.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use common::watched::{Hang, Watched};
use common::*;
use ferry::backend::local::LocalIdempotencyStore;
use ferry::backend::local::{LocalQueue, Op};
use ferry::backend::{
    BlobStore, EntryResult, Notification, ObjectMeta, OutgoingMessage, Queue, QueueDepth,
    ReceivedMessage, Topic,
};
use ferry::idempotency::{ClaimOutcome, IdempotencyRecord, IdempotencyStore};
use ferry::prelude::*;
use ferry::BackendError;

/// Which call of a user's backend panics (once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Receive,
    Delete,
    ChangeVisibility,
    Publish,
    Put,
    Claim,
    Complete,
}

/// A user's own backends around the embedded ones: the chosen call panics
/// the first time it is made, then works.
#[derive(Debug, Clone)]
struct PanicOnce {
    call: Call,
    armed: Arc<AtomicBool>,
}

impl PanicOnce {
    fn new(call: Call) -> Self {
        Self {
            call,
            armed: Arc::new(AtomicBool::new(true)),
        }
    }

    fn hit(&self, call: Call) {
        if call == self.call && self.armed.swap(false, Ordering::AcqRel) {
            panic!("user backend bug in {call:?}");
        }
    }

    fn fired(&self) -> bool {
        !self.armed.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct UserQueue<Q: ?Sized> {
    inner: Arc<Q>,
    p: PanicOnce,
}

#[async_trait]
impl Queue for UserQueue<LocalQueue> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        vis: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        self.p.hit(Call::Receive);
        self.inner.receive(max, wait, vis).await
    }
    async fn delete_batch(&self, h: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        self.p.hit(Call::Delete);
        self.inner.delete_batch(h).await
    }
    async fn change_visibility_batch(
        &self,
        e: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.p.hit(Call::ChangeVisibility);
        self.inner.change_visibility_batch(e).await
    }
    async fn send_batch(
        &self,
        m: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.inner.send_batch(m).await
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

#[derive(Debug)]
struct UserTopic {
    inner: Arc<dyn Topic>,
    p: PanicOnce,
}

#[async_trait]
impl Topic for UserTopic {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    async fn publish_batch(
        &self,
        n: Vec<Notification>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.p.hit(Call::Publish);
        self.inner.publish_batch(n).await
    }
}

#[derive(Debug)]
struct UserBlobs {
    inner: Arc<dyn BlobStore>,
    p: PanicOnce,
    /// Writes that went through, per key.
    puts: Arc<Mutex<BTreeMap<String, u32>>>,
}

#[async_trait]
impl BlobStore for UserBlobs {
    async fn put(&self, b: &str, k: &str, body: Bytes, m: ObjectMeta) -> Result<(), BackendError> {
        self.p.hit(Call::Put);
        self.inner.put(b, k, body, m).await?;
        *self.puts.lock().unwrap().entry(k.to_owned()).or_default() += 1;
        Ok(())
    }
    async fn get(&self, b: &str, k: &str) -> Result<Bytes, BackendError> {
        self.inner.get(b, k).await
    }
    async fn head(&self, b: &str, k: &str) -> Result<Option<ObjectMeta>, BackendError> {
        self.inner.head(b, k).await
    }
    async fn list(&self, b: &str, p: &str) -> Result<Vec<String>, BackendError> {
        self.inner.list(b, p).await
    }
}

#[derive(Debug)]
struct UserStore {
    inner: LocalIdempotencyStore,
    p: PanicOnce,
}

#[async_trait]
impl IdempotencyStore for UserStore {
    async fn claim(&self, k: &str, o: &str, h: Duration) -> Result<ClaimOutcome, BackendError> {
        self.p.hit(Call::Claim);
        self.inner.claim(k, o, h).await
    }
    async fn renew(&self, k: &str, o: &str, h: Duration) -> Result<bool, BackendError> {
        self.inner.renew(k, o, h).await
    }
    async fn complete(&self, k: &str, o: &str, t: Duration) -> Result<bool, BackendError> {
        self.p.hit(Call::Complete);
        self.inner.complete(k, o, t).await
    }
    async fn release(&self, k: &str, o: &str) -> Result<(), BackendError> {
        self.inner.release(k, o).await
    }
    async fn record(&self, k: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        self.inner.record(k).await
    }
}

#[tokio::test]
async fn a_user_backend_that_panics_once_in_any_call_loses_no_job() {
    quiet_injected_panics();
    for call in [
        Call::Receive,
        Call::Delete,
        Call::ChangeVisibility,
        Call::Publish,
        Call::Put,
        Call::Claim,
        Call::Complete,
    ] {
        let h = Harness::new();
        let ids = h.send_jobs(10).await;
        let p = PanicOnce::new(call);
        // One counter across every processor instance the factory builds.
        let runs = Counting::new().with_delay(Duration::from_millis(150));
        let puts = Arc::new(Mutex::new(BTreeMap::new()));
        let store = UserStore {
            inner: LocalIdempotencyStore::new(),
            p: p.clone(),
        };
        let rt = Runtime::builder()
            .pipeline(
                Pipeline::new("stage")
                    .source(Arc::new(UserQueue {
                        inner: h.jobs.clone(),
                        p: p.clone(),
                    }))
                    .dead_letter(h.dlq.clone())
                    .results(
                        Arc::new(UserBlobs {
                            inner: h.local.blobs(),
                            p: p.clone(),
                            puts: puts.clone(),
                        }) as Arc<dyn BlobStore>,
                        "results",
                        "out/",
                        "txt",
                    )
                    .topic(Arc::new(UserTopic {
                        inner: h.topic.clone(),
                        p: p.clone(),
                    }) as Arc<dyn Topic>)
                    .idempotency(Arc::new(store))
                    // Slow enough for the lease keeper to extend.
                    .processor({
                        let runs = runs.clone();
                        move || runs.clone()
                    })
                    .configure(|c| {
                        fast(c);
                        c.visibility_timeout = Duration::from_millis(300);
                    }),
            )
            .start()
            .await
            .unwrap();
        eventually(
            &format!("every job deleted after a panic in {call:?}"),
            || h.jobs.depth_now().total() == 0 && rt.in_flight() == 0,
        )
        .await;
        let stats = rt.stats_of("stage").unwrap();
        rt.shutdown().await;
        assert!(p.fired(), "{call:?} was never called");
        assert_eq!(stats.backend_panics, 1, "{call:?}: {stats:?}");
        assert_eq!(h.results().await.len(), 10, "{call:?}");
        // Every effect once per job: one result write, one notice.
        let once = |f: &dyn Fn(&String) -> String| -> BTreeMap<String, u32> {
            ids.iter().map(|id| (f(id), 1)).collect()
        };
        assert_eq!(
            *puts.lock().unwrap(),
            once(&|id| format!("out/{id}.txt")),
            "{call:?}: result writes per key"
        );
        let mut notices: BTreeMap<String, u32> = BTreeMap::new();
        for m in h.downstream.snapshot() {
            *notices
                .entry(m.attributes[ferry::JOB_ID_ATTRIBUTE].clone())
                .or_default() += 1;
        }
        assert_eq!(notices, once(&|id| id.clone()), "{call:?}: notices per job");
        // One processor run per job, counted across every processor
        // instance (a panic in the upload is retried by the uploader with
        // the output in hand).
        let per_job: BTreeMap<String, u32> =
            runs.runs.lock().unwrap().clone().into_iter().collect();
        assert_eq!(per_job, once(&|id| id.clone()), "{call:?}: runs per job");
        assert_eq!(stats.processed as usize, ids.len(), "{call:?}: {stats:?}");
        assert!(h.dlq.snapshot().is_empty(), "{call:?}");
        eprintln!("panic once in {call:?}: {stats:?}");
    }
}

/// Injected panics print nothing (the rest still do).
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !(msg.starts_with("user backend bug") || msg.starts_with("processor bug")) {
            default(info);
        }
    }));
}

/// Panics in `process` for its first job, and again when dropped.
struct PanicsInDrop {
    drops: Arc<AtomicU32>,
    first: Arc<AtomicBool>,
}

impl Processor for PanicsInDrop {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        if self.first.swap(false, Ordering::AcqRel) {
            panic!("processor bug for {}", job.id);
        }
        Ok(Output::text(job.body.clone()))
    }
}

impl Drop for PanicsInDrop {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::AcqRel);
        if !std::thread::panicking() {
            panic!("processor bug in drop");
        }
    }
}

#[tokio::test]
async fn a_processor_that_panics_in_drop_kills_no_worker() {
    quiet_injected_panics();
    let h = Harness::new();
    h.send_jobs(20).await;
    let drops = Arc::new(AtomicU32::new(0));
    let first = Arc::new(AtomicBool::new(true));
    let (d, f) = (drops.clone(), first.clone());
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(Counting::new())
                .processor(move || PanicsInDrop {
                    drops: d.clone(),
                    first: f.clone(),
                })
                .configure(|c| c.workers = 1),
        )
        .start()
        .await
        .unwrap();
    eventually("every job deleted", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(h.results().await.len(), 20);
    assert_eq!(stats.panics, 1, "{stats:?}");
    assert!(
        drops.load(Ordering::Acquire) >= 1,
        "the panicking processor was dropped"
    );
}

#[tokio::test]
async fn an_extension_slower_than_the_visibility_cancels_its_job_before_any_effect() {
    let h = Harness::new();
    h.send_jobs(1).await;
    // Every extension hangs: the lease cannot be confirmed past its deadline.
    let extensions = h.local.gate(Op::ChangeVisibility);
    let cancelled_seen = Arc::new(AtomicBool::new(false));
    let seen = cancelled_seen.clone();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(Counting::new())
                .processor(move || SlowFirst {
                    cancelled_seen: seen.clone(),
                    runs: r.clone(),
                })
                .configure(|c| {
                    c.visibility_timeout = Duration::from_millis(300);
                    c.workers = 1;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("the lease lost", || {
        rt.stats_of("stage").unwrap().leases_lost >= 1
    })
    .await;
    // The message comes back when its visibility lapses; the second run is
    // quick (no extension needed) and finishes the job.
    eventually("the job done", || h.jobs.depth_now().total() == 0).await;
    // The first run ends its second of work and finds itself cancelled.
    eventually("the first run to see its cancellation", || {
        cancelled_seen.load(Ordering::Acquire)
    })
    .await;
    extensions.open();
    // Read after the shutdown: whatever the first run's outcome led to is
    // counted by then.
    let reader = rt.stats_reader();
    rt.shutdown().await;
    let stats = reader.total();
    // Every extension hangs, so a redelivery waiting behind the first run
    // may lose its lease too: at least one more run, one result.
    assert!(runs.load(Ordering::Acquire) >= 2);
    // Only the second run's result was stored and announced: the first,
    // cancelled when its lease lapsed, had no effect.
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert_eq!(stats.published, 1, "{stats:?}");
    let stored = h
        .local
        .blobs()
        .get("results", "out/job-0.txt")
        .await
        .unwrap();
    assert_ne!(&stored[..], b"run 1", "the lapsed run's result was stored");
}

/// Takes a second on its first run, watching for the cancellation.
struct SlowFirst {
    cancelled_seen: Arc<AtomicBool>,
    runs: Arc<AtomicU32>,
}

impl Processor for SlowFirst {
    fn process(&mut self, _: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        let run = self.runs.fetch_add(1, Ordering::AcqRel) + 1;
        if run == 1 {
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if ctx.is_cancelled() {
                self.cancelled_seen.store(true, Ordering::Release);
            }
        }
        Ok(Output::text(format!("run {run}")))
    }
}

#[tokio::test]
async fn one_hung_extension_leaves_time_for_another() {
    let h = Harness::new();
    h.send_jobs(1).await;
    // The first extension call never answers; the later ones do.
    let q = Watched::new(h.jobs.clone());
    q.hang(Hang::FirstCall);
    let p = Counting::new().with_delay(Duration::from_secs(4));
    let visibility = Duration::from_secs(2);
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).source(q.clone()).configure(|c| {
            c.visibility_timeout = visibility;
            c.workers = 1;
        }))
        .start()
        .await
        .unwrap();
    eventually("the job started", || p.started_count() == 1).await;
    // Never visible to another reader while it runs (two visibilities).
    let mut max_visible = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.total_runs() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not return"
        );
        max_visible = max_visible.max(h.jobs.depth_now().visible);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the job deleted", || h.jobs.depth_now().total() == 0).await;
    let reader = rt.stats_reader();
    rt.shutdown().await;
    let stats = reader.total();
    assert!(q.has_hung(), "no extension was made");
    assert_eq!(max_visible, 0, "the message came back while its job ran");
    assert_eq!(stats.leases_lost, 0, "{stats:?}");
    assert_eq!((stats.received, stats.duplicates()), (1, 0), "{stats:?}");
    let record = q.record();
    assert_eq!(record.deliveries.len(), 1, "delivered again: {record:?}");
    // The hung call gave up in time for another, answered, within the
    // first visibility.
    let received = record.deliveries[0].at;
    let hung = &record.visibility[0];
    assert!(hung.hung, "{record:?}");
    let next = record
        .visibility
        .iter()
        .find(|c| c.call > hung.call)
        .unwrap_or_else(|| panic!("no extension after the hung one: {record:?}"));
    assert!(
        next.at.duration_since(received) < visibility,
        "the next extension came {:?} after the receive",
        next.at.duration_since(received)
    );
    assert!(stats.leases_extended >= 1, "{stats:?}");
    assert_eq!(p.runs_of("job-0"), 1);
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert_eq!(h.results().await, ["out/job-0.txt"]);
    assert_eq!(h.downstream.snapshot().len(), 1);
}

/// An idempotency store that refuses the first renewal, as if the claim
/// had lapsed and another worker had taken it.
#[derive(Debug)]
struct RefusesFirstRenewal {
    inner: LocalIdempotencyStore,
    armed: AtomicBool,
}

#[async_trait]
impl IdempotencyStore for RefusesFirstRenewal {
    async fn claim(&self, k: &str, o: &str, h: Duration) -> Result<ClaimOutcome, BackendError> {
        self.inner.claim(k, o, h).await
    }
    async fn renew(&self, k: &str, o: &str, h: Duration) -> Result<bool, BackendError> {
        if self.armed.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        self.inner.renew(k, o, h).await
    }
    async fn complete(&self, k: &str, o: &str, t: Duration) -> Result<bool, BackendError> {
        self.inner.complete(k, o, t).await
    }
    async fn release(&self, k: &str, o: &str) -> Result<(), BackendError> {
        self.inner.release(k, o).await
    }
    async fn record(&self, k: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        self.inner.record(k).await
    }
}

#[tokio::test]
async fn a_refused_claim_renewal_cancels_its_job_before_its_effects() {
    let h = Harness::new();
    h.send_jobs(1).await;
    let store = Arc::new(RefusesFirstRenewal {
        inner: LocalIdempotencyStore::new(),
        armed: AtomicBool::new(true),
    });
    let cancelled_seen = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU32::new(0));
    let (seen, r) = (cancelled_seen.clone(), runs.clone());
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(Counting::new())
                .idempotency(store.clone())
                // The first run takes a second: its lease is extended, and
                // the claim renewed with it, at 150 ms.
                .processor(move || SlowFirst {
                    cancelled_seen: seen.clone(),
                    runs: r.clone(),
                })
                .configure(|c| {
                    c.visibility_timeout = Duration::from_millis(300);
                    c.workers = 1;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("the claim lost", || {
        rt.stats_of("stage").unwrap().claims_lost == 1
    })
    .await;
    assert!(
        !store.armed.load(Ordering::Acquire),
        "no renewal was refused"
    );
    eventually("the first run to see its cancellation", || {
        cancelled_seen.load(Ordering::Acquire)
    })
    .await;
    eventually("the job done", || h.jobs.depth_now().total() == 0).await;
    let reader = rt.stats_reader();
    rt.shutdown().await;
    let stats = reader.total();
    // The first run's output ("run 1") had no effect; the redelivery's did.
    assert_eq!(runs.load(Ordering::Acquire), 2);
    assert_eq!((stats.uploaded, stats.published), (1, 1), "{stats:?}");
    let stored = h
        .local
        .blobs()
        .get("results", "out/job-0.txt")
        .await
        .unwrap();
    assert_eq!(&stored[..], b"run 2");
    assert_eq!(h.downstream.snapshot().len(), 1);
    let record = store
        .record(&ferry::idempotency::job_key("stage", &JobId::new("job-0")))
        .await
        .unwrap()
        .expect("a record");
    assert_eq!(
        record.status,
        ferry::idempotency::RecordStatus::Completed,
        "{record:?}"
    );
    assert_eq!(record.claims, 2, "the refused claim, then the redelivery's");
}

#[tokio::test]
async fn a_fast_job_is_deleted_while_a_slow_one_runs_on_the_same_worker() {
    let h = Harness::new();
    h.send_named(&["fast".into()]).await;
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(p.clone())
                .processor(|| FastThenSlow)
                .configure(|c| {
                    c.workers = 1;
                    c.flush_interval = Duration::from_millis(20);
                    c.visibility_timeout = Duration::from_secs(30);
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("the fast job started", || rt.total().received >= 1).await;
    h.send_named(&["slow".into()]).await;
    let started = Instant::now();
    eventually("the fast job deleted", || rt.total().acked >= 1).await;
    let took = started.elapsed();
    let stats = rt.total();
    rt.abort();
    eprintln!("fast job acked {took:?} after the slow one was sent: {stats:?}");
    // The slow job takes 3 s: an outcome sent only after the next job
    // would show here as ≥ 3 s.
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

struct FastThenSlow;

impl Processor for FastThenSlow {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        if job.id.as_str() == "slow" {
            std::thread::sleep(Duration::from_secs(3));
        } else {
            // Long enough for the slow job to be queued behind it.
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Output::text(job.body.clone()))
    }
}

/// A queue that refuses, for good, every delete of the first handle it sees.
#[derive(Debug)]
struct RefusesOneHandle {
    inner: Arc<LocalQueue>,
    refused: Mutex<Option<String>>,
    deletes: AtomicU32,
}

#[async_trait]
impl Queue for RefusesOneHandle {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        false
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        vis: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        self.inner.receive(max, wait, vis).await
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        self.deletes.fetch_add(1, Ordering::AcqRel);
        let bad = self
            .refused
            .lock()
            .unwrap()
            .get_or_insert_with(|| handles[0].clone())
            .clone();
        let ok: Vec<String> = handles.iter().filter(|h| **h != bad).cloned().collect();
        let mut results = self.inner.delete_batch(&ok).await?.into_iter();
        Ok(handles
            .iter()
            .map(|h| {
                if *h == bad {
                    Err(BackendError::Invalid {
                        message: "refused for good".into(),
                    })
                } else {
                    results.next().expect("one per entry")
                }
            })
            .collect())
    }
    async fn change_visibility_batch(
        &self,
        e: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.inner.change_visibility_batch(e).await
    }
    async fn send_batch(
        &self,
        m: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.inner.send_batch(m).await
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

#[tokio::test]
async fn a_permanently_refused_delete_lets_the_rest_through_with_bounded_calls() {
    let h = Harness::new();
    h.send_jobs(10).await;
    let q = Arc::new(RefusesOneHandle {
        inner: h.jobs.clone(),
        refused: Mutex::new(None),
        deletes: AtomicU32::new(0),
    });
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(Counting::new())
                .source(q.clone())
                .configure(|c| c.flush_interval = Duration::from_millis(50)),
        )
        .start()
        .await
        .unwrap();
    // The refused job's lease is let go; its message comes back after the
    // visibility timeout with a new handle, resumes and is deleted.
    eventually("every job deleted", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    let calls = q.deletes.load(Ordering::Acquire);
    eprintln!("refused delete: {calls} delete calls; {stats:?}");
    assert_eq!(
        stats.settle_gave_up, 1,
        "a permanent refusal is not retried: {stats:?}"
    );
    assert!(calls <= 6, "{calls} delete calls");
    assert_eq!(h.results().await.len(), 10);
    assert!(h.dlq.snapshot().is_empty());
}

#[tokio::test]
async fn an_escalated_pipeline_makes_run_until_return_an_error() {
    quiet_injected_panics();
    let h = Harness::new();
    h.send_jobs(10).await;
    let p = Counting::new();
    p.set(Behaviour::Panic);
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p).configure(|c| {
            c.restart.max_restarts = 3;
            c.retry_backoff_base = Duration::from_secs(30);
        }))
        .start()
        .await
        .unwrap();
    let res = tokio::time::timeout(LIMIT, rt.run_until(std::future::pending())).await;
    match res {
        Ok(Err(FerryError::Escalated { pipeline, reason })) => {
            assert_eq!(pipeline, "stage");
            assert!(reason.contains("restarts in a row"), "{reason}");
        }
        other => panic!("expected an escalation error, got {other:?}"),
    }
    // Nothing lost: every message is back in the queue.
    assert_eq!(h.jobs.depth_now().total(), 10);
    assert!(h.dlq.snapshot().is_empty());
}
