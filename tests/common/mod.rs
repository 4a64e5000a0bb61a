//! Shared harness for the invariant tests on the embedded backend.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod imds;

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
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/examples/spot_pipeline
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir
        .join("examples")
        .join(format!("spot_pipeline{}", std::env::consts::EXE_SUFFIX));
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
        Pipeline::new("stage")
            .source(self.jobs.clone())
            .dead_letter(self.dlq.clone())
            .results(self.local.blobs(), "results", "out/", "txt")
            .topic(self.topic.clone())
            .processor(move || processor.clone())
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
}

impl Counting {
    pub fn new() -> Self {
        Self {
            runs: Default::default(),
            started: Default::default(),
            delay: Duration::ZERO,
            behaviour: Arc::new(Mutex::new(Behaviour::Succeed)),
            built: Default::default(),
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

impl Processor for Counting {
    fn started(&mut self, _: &ferry::WorkerInfo) {
        *self.built.lock().unwrap() += 1;
    }

    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        self.started.lock().unwrap().push(job.id.to_string());
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
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
