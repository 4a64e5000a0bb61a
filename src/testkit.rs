//! Helpers for testing processors and pipelines: a job and a context to
//! call a processor with, no pipeline needed, and seeded fault injection
//! for pipelines on the embedded backend.
//!
//! ```
//! use ferry::prelude::*;
//! use ferry::testkit;
//!
//! struct Double;
//! impl Processor for Double {
//!     fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
//!         let n: u64 = job.body.trim().parse().or_bad_input()?;
//!         Ok(Output::text((2 * n).to_string()))
//!     }
//! }
//!
//! let ctx = testkit::context();
//! let out = Double.process(&testkit::job("21"), &ctx).unwrap();
//! assert_eq!(out.body.as_ref(), b"42");
//! let err = Double.process(&testkit::job("x"), &ctx).unwrap_err();
//! assert!(matches!(err, ProcessError::BadInput { .. }));
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::backend::{BlobStore, ReceivedMessage};
use crate::error::ProcessError;
use crate::job::{Job, JOB_ID_ATTRIBUTE};
use crate::processor::{Context, Output, Processor, Reader, TaskContext, WorkerInfo};

/// A job with this body, as a processor gets it on its first receive
/// (job id `test-job`).
pub fn job(body: impl Into<String>) -> Job {
    job_with_id("test-job", body)
}

/// A job with this id and body, as a processor gets it on its first receive.
pub fn job_with_id(id: &str, body: impl Into<String>) -> Job {
    Job::from_message(ReceivedMessage {
        message_id: format!("test-message-{id}"),
        receipt_handle: String::new(),
        body: body.into(),
        attributes: [(JOB_ID_ATTRIBUTE.to_owned(), id.to_owned())].into(),
        receive_count: 1,
        group_id: None,
        dedup_id: None,
    })
}

/// A context for calling a sync processor in a test: it reads nothing
/// (every [`Context::fetch`] is bad input) and is never cancelled.
pub fn context() -> Context {
    context_reading(None, &[])
}

/// A context whose [`Context::fetch`] reads `buckets` of `blobs`, as a
/// pipeline with [`Pipeline::reads_from`](crate::Pipeline::reads_from)
/// would. Call the processor from a plain `#[test]` (a fetch blocks its
/// thread, as on a worker thread).
pub fn context_reading(blobs: Option<Arc<dyn BlobStore>>, buckets: &[&str]) -> Context {
    Context {
        reader: reader(blobs, buckets),
        io: io().clone(),
        cancelled: Default::default(),
        deadline: None,
    }
}

/// A context for calling an async or batch processor in a test, for `jobs`
/// jobs, never cancelled; it reads nothing.
pub fn task_context(jobs: usize) -> TaskContext {
    TaskContext {
        reader: reader(None, &[]),
        cancels: (0..jobs.max(1))
            .map(|_| crate::cancel::CancelHandle {
                flag: Default::default(),
                signal: Default::default(),
            })
            .collect(),
    }
}

fn reader(blobs: Option<Arc<dyn BlobStore>>, buckets: &[&str]) -> Arc<Reader> {
    Arc::new(Reader {
        pipeline: Arc::from("test"),
        blobs,
        max_fetch_bytes: crate::PipelineConfig::default().max_fetch_bytes,
        readable: buckets.iter().map(|b| (*b).to_owned()).collect(),
    })
}

/// The runtime a test context's fetches run on.
fn io() -> &'static tokio::runtime::Handle {
    static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-testkit-io")
            .enable_all()
            .build()
            .expect("the test context's runtime starts")
    })
    .handle()
}

/// Waits until `cond` holds, checking every 5 ms, for at most `limit`.
/// Returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the seeded choice for `id` falls under `rate` (same answer for
/// the same seed and id, on every machine and run).
pub fn chosen(seed: u64, id: &str, rate: f64) -> bool {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher's algorithm.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 1_000_000) as f64 / 1_000_000.0 < rate
}

/// Wraps a processor and makes it panic on the first attempt of a seeded
/// share of jobs, so supervision and retries can be watched.
#[derive(Debug)]
pub struct PanicInjector<P> {
    inner: P,
    seed: u64,
    rate: f64,
}

impl<P> PanicInjector<P> {
    /// Panics on the first receive of about `rate` of all jobs.
    pub fn new(inner: P, seed: u64, rate: f64) -> Self {
        Self { inner, seed, rate }
    }
}

impl<P: Processor> Processor for PanicInjector<P> {
    fn started(&mut self, info: &WorkerInfo) {
        self.inner.started(info);
    }

    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        if job.receive_count == 1 && chosen(self.seed, job.id.as_str(), self.rate) {
            panic!("injected panic for job {}", job.id);
        }
        self.inner.process(job, ctx)
    }

    fn stopping(&mut self) {
        self.inner.stopping();
    }
}
