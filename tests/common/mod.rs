//! Shared harness for the invariant tests on the embedded backend.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod imds;
pub mod watched;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::backend::local::{LocalBackend, LocalQueue, LocalTopic, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::JOB_ID_ATTRIBUTE;

/// Every wait in a test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Waits for `cond`, failing the test with `what` after [`LIMIT`].
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        ferry::testkit::wait_until(LIMIT, cond).await,
        "timed out waiting for {what}"
    );
}

/// Like [`eventually`], for a condition that needs to await.
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `spot_pipeline` example binary, built by `cargo test` with the
/// other examples.
pub fn example_binary() -> std::path::PathBuf {
    example("spot_pipeline")
}

/// An example's binary, built by `cargo test` with the other examples.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/examples/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test`",
        path.display()
    );
    path
}

/// Sends one job per id (body `payload of <id>`, the id as `ferry-job-id`).
pub async fn send_named_to(queue: &dyn Queue, ids: &[String]) {
    for chunk in ids.chunks(10) {
        let batch = chunk
            .iter()
            .map(|id| {
                OutgoingMessage::new(format!("payload of {id}"))
                    .attribute(JOB_ID_ATTRIBUTE, id.clone())
            })
            .collect();
        for r in queue.send_batch(batch).await.unwrap() {
            r.unwrap();
        }
    }
}

/// A source queue with a DLQ, a topic routed (raw) to a downstream queue,
/// and a blob store.
pub struct Harness {
    pub local: LocalBackend,
    pub jobs: Arc<LocalQueue>,
    pub dlq: Arc<LocalQueue>,
    pub topic: Arc<LocalTopic>,
    pub downstream: Arc<LocalQueue>,
}

impl Harness {
    pub fn new() -> Self {
        let local = LocalBackend::new();
        let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
        let jobs = local.create_queue("jobs", QueueOptions::default());
        let topic = local.create_topic("done", false);
        let downstream = local.create_queue("downstream", QueueOptions::default());
        local.subscribe(&topic, &downstream, true);
        Self {
            local,
            jobs,
            dlq,
            topic,
            downstream,
        }
    }

    /// Sends `n` jobs named `job-0…`; returns their ids.
    pub async fn send_jobs(&self, n: usize) -> Vec<String> {
        self.send_named(&(0..n).map(|i| format!("job-{i}")).collect::<Vec<_>>())
            .await
    }

    pub async fn send_named(&self, ids: &[String]) -> Vec<String> {
        send_named_to(self.jobs.as_ref(), ids).await;
        ids.to_vec()
    }

    /// A pipeline over this harness with timings fit for tests.
    pub fn pipeline(&self, processor: Counting) -> Pipeline {
        self.pipeline_of(Kind::Sync, processor)
    }

    /// The same, with this kind of processor.
    pub fn pipeline_of(&self, kind: Kind, processor: Counting) -> Pipeline {
        kind.register(
            Pipeline::new("stage")
                .source(self.jobs.clone())
                .dead_letter(self.dlq.clone())
                .results(self.local.blobs(), "results", "out/", "txt")
                .topic(self.topic.clone()),
            processor,
        )
        .configure(fast)
    }

    /// Keys of stored results.
    pub async fn results(&self) -> Vec<String> {
        use ferry::backend::BlobStore;
        self.local.blobs().list("results", "out/").await.unwrap()
    }
}

/// One worker, at most ten leases and a 5 s shutdown grace: returns once
/// ten jobs are leased and the first has started (the others wait).
pub async fn ten_leases_one_started(h: &Harness, p: &Counting) -> RuntimeHandle {
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).configure(|c| {
            c.workers = 1;
            c.max_in_flight = 10;
            c.visibility_timeout = Duration::from_secs(30);
        }))
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    eventually("ten leases held and one job started", || {
        rt.in_flight() == 10 && p.started_count() == 1
    })
    .await;
    rt
}

/// Short timings so the tests run in well under a second each.
pub fn fast(c: &mut PipelineConfig) {
    c.workers = 2;
    c.visibility_timeout = Duration::from_millis(400);
    c.receive_wait = Duration::from_millis(50);
    c.retry_backoff_base = Duration::from_millis(20);
    c.retry_backoff_max = Duration::from_millis(200);
    c.flush_interval = Duration::from_millis(2);
    c.restart.backoff_base = Duration::from_millis(1);
    c.restart.backoff_max = Duration::from_millis(10);
}

/// What a processor does on each run.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Succeed,
    Retry,
    BadInput,
    Panic,
}

/// A processor that counts its runs per job id and may sleep, fail or panic
/// as a shared switch says.
#[derive(Clone)]
pub struct Counting {
    pub runs: Arc<Mutex<HashMap<String, u32>>>,
    pub started: Arc<Mutex<Vec<String>>>,
    pub delay: Duration,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Processors built so far (the factory counts).
    pub built: Arc<Mutex<u32>>,
    /// While set, a started job waits (at most [`LIMIT`]) before its outcome.
    pub held: Arc<std::sync::atomic::AtomicBool>,
}

impl Counting {
    pub fn new() -> Self {
        Self {
            runs: Default::default(),
            started: Default::default(),
            delay: Duration::ZERO,
            behaviour: Arc::new(Mutex::new(Behaviour::Succeed)),
            built: Default::default(),
            held: Default::default(),
        }
    }

    /// Started jobs wait until [`Counting::release`].
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn release(&self) {
        self.held.store(false, std::sync::atomic::Ordering::Release);
    }

    fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits on this thread while held (sync processors).
    fn wait_blocking(&self) {
        let deadline = std::time::Instant::now() + LIMIT;
        while self.is_held() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Awaits while held (async and batch processors).
    async fn wait(&self) {
        let deadline = std::time::Instant::now() + LIMIT;
        while self.is_held() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn runs_of(&self, id: &str) -> u32 {
        self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    pub fn total_runs(&self) -> u32 {
        self.runs.lock().unwrap().values().sum()
    }

    pub fn started_count(&self) -> usize {
        self.started.lock().unwrap().len()
    }
}

impl Counting {
    /// One run's outcome, by the shared switch (the delay is the caller's).
    pub fn outcome(&self, job: &Job) -> Result<Output, ProcessError> {
        let behaviour = *self.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Succeed => {
                *self
                    .runs
                    .lock()
                    .unwrap()
                    .entry(job.id.to_string())
                    .or_default() += 1;
                Ok(Output::text(job.body.to_uppercase()))
            }
            Behaviour::Retry => Err(ProcessError::retry("not yet")),
            Behaviour::BadInput => Err(ProcessError::bad_input("unusable payload")),
            Behaviour::Panic => panic!("processor bug for {}", job.id),
        }
    }
}

impl Processor for Counting {
    fn started(&mut self, _: &ferry::WorkerInfo) {
        *self.built.lock().unwrap() += 1;
    }

    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        self.started.lock().unwrap().push(job.id.to_string());
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.wait_blocking();
        self.outcome(job)
    }
}

/// The kinds of processor a pipeline can run; the invariant suite runs for
/// each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sync,
    Async,
    Batch,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Sync, Kind::Async, Kind::Batch];

    /// Registers `p` on `pipeline` as this kind of processor.
    pub fn register(self, pipeline: Pipeline, p: Counting) -> Pipeline {
        match self {
            Kind::Sync => pipeline.processor(move || p.clone()),
            Kind::Async => pipeline.async_processor(AsyncCounting(p)),
            Kind::Batch => pipeline.batch_processor(
                BatchCounting(p),
                BatchOptions {
                    max_jobs: 4,
                    max_wait: Duration::from_millis(5),
                },
            ),
        }
    }
}

/// [`Counting`] as an async processor: the delay is awaited.
pub struct AsyncCounting(pub Counting);

#[ferry::async_trait]
impl AsyncProcessor for AsyncCounting {
    async fn process(&self, job: &Job, _: &TaskContext) -> Result<Output, ProcessError> {
        let c = &self.0;
        c.started.lock().unwrap().push(job.id.to_string());
        if !c.delay.is_zero() {
            tokio::time::sleep(c.delay).await;
        }
        c.wait().await;
        c.outcome(job)
    }
}

/// [`Counting`] as a batch processor: one delay per batch, an outcome per
/// job (a panic fails the whole batch).
pub struct BatchCounting(pub Counting);

#[ferry::async_trait]
impl BatchProcessor for BatchCounting {
    async fn process_batch(
        &self,
        jobs: &[Job],
        _: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        let c = &self.0;
        for job in jobs {
            c.started.lock().unwrap().push(job.id.to_string());
        }
        if !c.delay.is_zero() {
            tokio::time::sleep(c.delay).await;
        }
        c.wait().await;
        jobs.iter().map(|j| c.outcome(j)).collect()
    }
}

/// Runs each named scenario (`async fn name(kind: Kind)`) once per kind of
/// processor, as the tests `name::sync`, `name::async_` and `name::batch`.
/// `mt;` first: on a multi-threaded runtime.
#[macro_export]
macro_rules! for_each_kind {
    (mt; $($name:ident),* $(,)?) => {
        $( $crate::for_each_kind!(@one [flavor = "multi_thread", worker_threads = 2] $name); )*
    };
    ($($name:ident),* $(,)?) => {
        $( $crate::for_each_kind!(@one [] $name); )*
    };
    (@one [$($flavor:tt)*] $name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test($($flavor)*)]
            async fn sync() {
                super::$name(Kind::Sync).await
            }
            #[tokio::test($($flavor)*)]
            async fn async_() {
                super::$name(Kind::Async).await
            }
            #[tokio::test($($flavor)*)]
            async fn batch() {
                super::$name(Kind::Batch).await
            }
        }
    };
}

/// Runs 600 ms, watching its cancellation; counts runs and cancellations.
#[derive(Clone, Default)]
pub struct Watchful {
    pub runs: Arc<std::sync::atomic::AtomicU32>,
    pub cancelled: Arc<std::sync::atomic::AtomicU32>,
}

impl Processor for Watchful {
    fn process(&mut self, _: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        use std::sync::atomic::Ordering::AcqRel;
        self.runs.fetch_add(1, AcqRel);
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(10));
            if ctx.is_cancelled() {
                self.cancelled.fetch_add(1, AcqRel);
                return Err(ProcessError::retry("cancelled"));
            }
        }
        Ok(Output::text("done"))
    }
}
