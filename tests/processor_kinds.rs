//! What only async and batch processors have: a concurrency limit apart
//! from the receive batch, a job's future dropped when its lease is lost,
//! an outcome per job of a batch; typed jobs; a service's own actor as the
//! processor; and an async pipeline over SQS, SNS and S3 on moto.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry::backend::local::Op;
use ferry::backend::BlobStore;
use ferry::prelude::*;
use ferry::{ActorProcessor, ProcessJob, DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// Counts jobs running at once.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(n, Ordering::AcqRel);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::AcqRel);
        self.done.fetch_add(1, Ordering::AcqRel);
    }
}

struct Awaits(Gauge, Duration);

#[ferry::async_trait]
impl AsyncProcessor for Awaits {
    async fn process(&self, job: &Job, _: &TaskContext) -> Result<Output, ProcessError> {
        self.0.enter();
        tokio::time::sleep(self.1).await;
        self.0.leave();
        Ok(Output::text(job.body.clone()))
    }
}

#[tokio::test]
async fn the_concurrency_limit_is_never_exceeded_and_is_used() {
    let h = Harness::new();
    h.send_jobs(200).await;
    let gauge = Gauge::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .async_processor(Awaits(gauge.clone(), Duration::from_millis(20)))
                .configure(|c| {
                    fast(c);
                    // Receives bring ten at a time and may run ahead: the
                    // limit, not the batch, decides.
                    c.concurrency = 16;
                    c.workers = 1;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("every job done", || h.jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    let most = gauge.most.load(Ordering::Acquire);
    assert_eq!(gauge.done.load(Ordering::Acquire), 200);
    assert!(most <= 16, "{most} jobs ran at once, over the limit of 16");
    assert!(most > 10, "only {most} at once: the limit was not used");
}

/// Takes its time on its first run, noting whether its future was dropped.
struct SlowFirstAsync {
    runs: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    finished_first: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[ferry::async_trait]
impl AsyncProcessor for SlowFirstAsync {
    async fn process(&self, _: &Job, _: &TaskContext) -> Result<Output, ProcessError> {
        let run = self.runs.fetch_add(1, Ordering::AcqRel) + 1;
        if run == 1 {
            let flag = DropFlag(self.dropped.clone());
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.finished_first.store(true, Ordering::Release);
            std::mem::forget(flag);
        }
        Ok(Output::text(format!("run {run}")))
    }
}

#[tokio::test]
async fn a_lost_lease_drops_the_async_jobs_future_before_any_effect() {
    let h = Harness::new();
    h.send_jobs(1).await;
    // Every extension hangs: the lease cannot be confirmed past its deadline.
    let extensions = h.local.gate(Op::ChangeVisibility);
    let (runs, dropped, finished) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .topic(h.topic.clone())
                .async_processor(SlowFirstAsync {
                    runs: runs.clone(),
                    dropped: dropped.clone(),
                    finished_first: finished.clone(),
                })
                .configure(|c| {
                    fast(c);
                    c.visibility_timeout = Duration::from_millis(300);
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("the first run's future dropped", || {
        dropped.load(Ordering::Acquire)
    })
    .await;
    eventually("the job done by its second run", || {
        h.jobs.depth_now().total() == 0
    })
    .await;
    extensions.open();
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert!(!finished.load(Ordering::Acquire), "the first run went on");
    assert!(stats.leases_lost >= 1, "{stats:?}");
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert_eq!(stats.published, 1, "{stats:?}");
    let stored = h
        .local
        .blobs()
        .get("results", "out/job-0.txt")
        .await
        .unwrap();
    assert_eq!(&stored[..], b"run 2");
}

/// Starts a pipeline over `h` with a batch processor.
async fn start_batch(
    h: &Harness,
    p: impl BatchProcessor,
    max_jobs: usize,
    max_wait_ms: u64,
) -> RuntimeHandle {
    let options = BatchOptions {
        max_jobs,
        max_wait: Duration::from_millis(max_wait_ms),
    };
    Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .batch_processor(p, options)
                .configure(fast),
        )
        .start()
        .await
        .unwrap()
}

/// Succeeds on even-numbered jobs, fails the odd ones: a retry for `job-1`,
/// bad input for the rest.
struct Mixed(Arc<Mutex<Vec<usize>>>);

#[ferry::async_trait]
impl BatchProcessor for Mixed {
    async fn process_batch(
        &self,
        jobs: &[Job],
        _: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        self.0.lock().unwrap().push(jobs.len());
        jobs.iter()
            .map(|j| {
                let n: usize = j.id.as_str().trim_start_matches("job-").parse().unwrap();
                match n {
                    _ if n.is_multiple_of(2) => Ok(Output::text(format!("ok {n}"))),
                    1 if j.receive_count < 2 => Err(ProcessError::retry("try once more")),
                    1 => Ok(Output::text("ok 1 at last")),
                    _ => Err(ProcessError::bad_input(format!("odd job {n}"))),
                }
            })
            .collect()
    }
}

#[tokio::test]
async fn a_batch_with_mixed_outcomes_settles_each_job_on_its_own() {
    let h = Harness::new();
    h.send_jobs(20).await;
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let rt = start_batch(&h, Mixed(sizes.clone()), 8, 30).await;
    eventually("every job settled", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    let mut results = h.local.blobs().list("results", "out/").await.unwrap();
    results.sort();
    let mut want: Vec<String> = (0..20)
        .filter(|n: &usize| n.is_multiple_of(2) || *n == 1)
        .map(|n| format!("out/job-{n}.txt"))
        .collect();
    want.sort();
    assert_eq!(results, want);
    let dead: Vec<(String, String)> = h
        .dlq
        .snapshot()
        .into_iter()
        .map(|m| {
            (
                m.attributes[JOB_ID_ATTRIBUTE].clone(),
                m.attributes[DLQ_REASON_ATTRIBUTE].clone(),
            )
        })
        .collect();
    assert_eq!(dead.len(), 9, "{dead:?}");
    assert!(dead
        .iter()
        .all(|(id, r)| r == &format!("odd job {}", &id[4..])));
    assert_eq!(stats.retried, 1, "{stats:?}");
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|n| *n <= 8), "{sizes:?}");
    assert!(sizes.iter().any(|n| *n > 1), "jobs were batched: {sizes:?}");
}

/// A batch processor that answers with the wrong number of outcomes once,
/// then panics once, then behaves.
struct Unruly(Arc<AtomicUsize>);

#[ferry::async_trait]
impl BatchProcessor for Unruly {
    async fn process_batch(
        &self,
        jobs: &[Job],
        _: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        match self.0.fetch_add(1, Ordering::AcqRel) {
            0 => vec![],
            1 => panic!("batch processor bug"),
            _ => jobs
                .iter()
                .map(|j| Ok(Output::text(j.body.clone())))
                .collect(),
        }
    }
}

#[tokio::test]
async fn a_wrong_length_answer_or_a_panic_retries_the_whole_batch() {
    let h = Harness::new();
    h.send_jobs(6).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = start_batch(&h, Unruly(calls.clone()), 10, 50).await;
    eventually("every job done", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(
        h.local.blobs().list("results", "out/").await.unwrap().len(),
        6
    );
    assert!(stats.panics >= 1, "{stats:?}");
    assert!(stats.retried >= 2, "{stats:?}");
    assert_eq!(h.dlq.depth_now().total(), 0);
}

#[derive(serde::Deserialize)]
struct Resize {
    key: String,
    width: u32,
}

struct Resizer;

impl TypedProcessor for Resizer {
    type Input = Resize;
    fn process(&mut self, r: Resize, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        Ok(Output::text(format!("{} at {}", r.key, r.width)))
    }
}

struct AsyncResizer;

#[ferry::async_trait]
impl TypedAsyncProcessor for AsyncResizer {
    type Input = Resize;
    async fn process(&self, r: Resize, _: &Job, _: &TaskContext) -> Result<Output, ProcessError> {
        Ok(Output::text(format!("{} at {}", r.key, r.width)))
    }
}

async fn typed_jobs(kind: Kind) {
    let h = Harness::new();
    use ferry::backend::{OutgoingMessage, Queue};
    let good =
        OutgoingMessage::new(r#"{"key":"a.png","width":64}"#).attribute(JOB_ID_ATTRIBUTE, "good");
    let bad = OutgoingMessage::new(r#"{"key":"a.png","width":"wide"}"#)
        .attribute(JOB_ID_ATTRIBUTE, "bad");
    h.jobs.send_batch(vec![good, bad]).await.unwrap();
    let base = Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .configure(fast);
    let pipeline = match kind {
        Kind::Async => base.async_processor(Typed(AsyncResizer)),
        _ => base.processor(|| Typed(Resizer)),
    };
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    eventually("both settled", || h.jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    let got = h
        .local
        .blobs()
        .get("results", "out/good.txt")
        .await
        .unwrap();
    assert_eq!(&got[..], b"a.png at 64");
    let dead = h.dlq.snapshot();
    assert_eq!(dead.len(), 1);
    let reason = &dead[0].attributes[DLQ_REASON_ATTRIBUTE];
    assert!(
        reason.starts_with("the body is not a Resize: invalid type: string \"wide\""),
        "{reason}"
    );
}

#[tokio::test]
async fn typed_sync_jobs_parse_or_are_bad_input_with_the_parsers_error() {
    typed_jobs(Kind::Sync).await;
}

#[tokio::test]
async fn typed_async_jobs_parse_or_are_bad_input_with_the_parsers_error() {
    typed_jobs(Kind::Async).await;
}

/// A service's own actor.
struct Shouter {
    handled: Arc<AtomicUsize>,
}

impl actix::Actor for Shouter {
    type Context = actix::Context<Self>;
}

impl actix::Handler<ProcessJob> for Shouter {
    type Result = Result<Output, ProcessError>;
    fn handle(&mut self, msg: ProcessJob, _: &mut Self::Context) -> Self::Result {
        self.handled.fetch_add(1, Ordering::AcqRel);
        if msg.job.body.contains("job-3") {
            return Err(ProcessError::bad_input("the actor refused job-3"));
        }
        Ok(Output::text(msg.job.body.to_uppercase()))
    }
}

#[test]
fn a_services_own_actor_is_the_processor() {
    use actix::Actor;
    let sys = actix::System::new();
    sys.block_on(async {
        let h = Harness::new();
        h.send_jobs(10).await;
        let handled = Arc::new(AtomicUsize::new(0));
        let actor = Shouter {
            handled: handled.clone(),
        }
        .start();
        let rt = Runtime::builder()
            .pipeline(
                Pipeline::new("stage")
                    .source(h.jobs.clone())
                    .dead_letter(h.dlq.clone())
                    .results(h.local.blobs(), "results", "out/", "txt")
                    .async_processor(ActorProcessor::new(actor.recipient()))
                    .configure(fast),
            )
            .start()
            .await
            .unwrap();
        eventually("every job settled", || h.jobs.depth_now().total() == 0).await;
        rt.shutdown().await;
        assert_eq!(handled.load(Ordering::Acquire), 10);
        assert_eq!(
            h.local.blobs().list("results", "out/").await.unwrap().len(),
            9
        );
        let got = h
            .local
            .blobs()
            .get("results", "out/job-0.txt")
            .await
            .unwrap();
        assert_eq!(&got[..], b"PAYLOAD OF JOB-0");
        assert_eq!(h.dlq.depth_now().total(), 1);
    });
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn an_async_pipeline_on_sqs_sns_and_s3() {
    let Some(h) = common::aws::AwsHarness::new("async").await else {
        return;
    };
    let ids = h.send_jobs(30).await;
    let gauge = Gauge::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.aws.blobs(), h.bucket.clone(), "out/", "txt")
                .topic(h.topic.clone())
                .async_processor(Awaits(gauge.clone(), Duration::from_millis(50)))
                .configure(|c| {
                    fast(c);
                    c.concurrency = 32;
                    c.visibility_timeout = Duration::from_secs(5);
                    c.receive_wait = Duration::from_secs(1);
                }),
        )
        .start()
        .await
        .unwrap();
    eventually_async("every result stored and every message deleted", || async {
        h.results().await.len() == ids.len() && h.depth(&h.jobs).await.total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.processed as usize, ids.len(), "{stats:?}");
    assert_eq!(stats.published as usize, ids.len(), "{stats:?}");
    assert!(gauge.most.load(Ordering::Acquire) > 1, "jobs ran at once");
    let notices = h.drain_view(&h.downstream).await;
    assert_eq!(notices.len(), ids.len());
}

/// Records batch sizes and jobs running at once.
struct Sizes(Arc<Mutex<Vec<usize>>>, Gauge);

#[ferry::async_trait]
impl BatchProcessor for Sizes {
    async fn process_batch(
        &self,
        jobs: &[Job],
        _: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        self.0.lock().unwrap().push(jobs.len());
        jobs.iter().for_each(|_| self.1.enter());
        tokio::time::sleep(Duration::from_millis(10)).await;
        jobs.iter().for_each(|_| self.1.leave());
        jobs.iter().map(|_| Ok(Output::empty())).collect()
    }
}

#[tokio::test]
async fn batches_are_cut_to_the_concurrency_limit() {
    let h = Harness::new();
    h.send_jobs(60).await;
    let (sizes, gauge) = (Arc::new(Mutex::new(Vec::new())), Gauge::default());
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .batch_processor(
                    Sizes(sizes.clone(), gauge.clone()),
                    BatchOptions {
                        max_jobs: 50,
                        max_wait: Duration::from_millis(20),
                    },
                )
                .configure(|c| {
                    fast(c);
                    c.concurrency = 6;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("every job done", || h.jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 60);
    assert!(sizes.iter().all(|n| *n <= 6), "{sizes:?}");
    assert!(gauge.most.load(Ordering::Acquire) <= 6);
}

/// A batch whose first call never answers (a call with no timeout).
struct HangsFirst {
    calls: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

#[ferry::async_trait]
impl BatchProcessor for HangsFirst {
    async fn process_batch(
        &self,
        jobs: &[Job],
        _ctx: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        if self.calls.fetch_add(1, Ordering::AcqRel) == 0 {
            std::future::pending::<()>().await;
        }
        self.done.fetch_add(jobs.len(), Ordering::AcqRel);
        jobs.iter().map(|_| Ok(Output::empty())).collect()
    }
}

#[tokio::test]
async fn a_hung_batch_is_dropped_once_its_leases_are_lost_and_its_permits_come_back() {
    let h = Harness::new();
    h.send_jobs(1).await;
    let (calls, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .batch_processor(
                    HangsFirst {
                        calls: calls.clone(),
                        done: done.clone(),
                    },
                    BatchOptions {
                        max_jobs: 1,
                        max_wait: Duration::from_millis(5),
                    },
                )
                .configure(|c| {
                    fast(c);
                    // One permit: a batch that kept it would wedge the stage.
                    c.concurrency = 1;
                    c.max_lease_age = Duration::from_secs(1);
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("the first batch started", || {
        calls.load(Ordering::Acquire) == 1
    })
    .await;
    h.send_named(&["later".to_owned()]).await;
    eventually("both jobs done after the hung batch was dropped", || {
        done.load(Ordering::Acquire) == 2 && h.jobs.depth_now().total() == 0
    })
    .await;
    let s = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(h.dlq.depth_now().total(), 0);
    assert!(
        s.leases_lost >= 1,
        "the hung batch's lease lapsed at its age limit"
    );
}
