//! Helpers for testing processors and pipelines on the embedded backend.

use std::time::Duration;

use crate::error::ProcessError;
use crate::job::Job;
use crate::processor::{Context, Output, Processor, WorkerInfo};

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
