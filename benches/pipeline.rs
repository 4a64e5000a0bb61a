#![allow(missing_docs)]
//! No-op pipeline throughput on the embedded backend, beside a hand-written
//! receive → delete loop on the same backend in the same run, so the ratio
//! of the two survives a noisy machine.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry::backend::local::{LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue, MAX_BATCH};
use ferry::prelude::*;
use std::sync::Arc;

const MESSAGES: usize = 20_000;

fn filled_queue(rt: &tokio::runtime::Runtime) -> (LocalBackend, Arc<LocalQueue>, Arc<LocalQueue>) {
    let local = LocalBackend::new();
    let q = local.create_queue("bench", QueueOptions::default());
    let dlq = local.create_queue("bench-dlq", QueueOptions::default());
    rt.block_on(async {
        let batch: Vec<_> = (0..MAX_BATCH)
            .map(|i| OutgoingMessage::new(format!("m{i}")))
            .collect();
        for _ in 0..MESSAGES / MAX_BATCH {
            q.send_batch(batch.clone()).await.unwrap();
        }
    });
    (local, q, dlq)
}

struct Noop;
impl Processor for Noop {
    fn process(&mut self, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        Ok(Output::empty())
    }
}

async fn ferry_drain(q: Arc<LocalQueue>, dlq: Arc<LocalQueue>) -> Duration {
    let start = Instant::now();
    let runtime = Runtime::builder()
        .pipeline(
            Pipeline::new("noop")
                .source(q.clone())
                .dead_letter(dlq)
                .processor(|| Noop)
                .configure(|c| {
                    c.workers = 1;
                    c.max_in_flight = 512;
                    c.receive_concurrency = 8;
                    c.seen_capacity = MESSAGES * 2;
                }),
        )
        .start()
        .await
        .unwrap();
    while q.depth_now().total() > 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let took = start.elapsed();
    runtime.shutdown().await;
    took
}

async fn hand_written_drain(q: Arc<LocalQueue>) -> Duration {
    let start = Instant::now();
    loop {
        let got = q
            .receive(MAX_BATCH, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        let handles: Vec<String> = got.into_iter().map(|m| m.receipt_handle).collect();
        q.delete_batch(&handles).await.unwrap();
    }
    start.elapsed()
}

fn noop_pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("noop_pipeline");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(BenchmarkId::new("hand_written_loop", MESSAGES), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (_l, q, _d) = filled_queue(&rt);
                    rt.block_on(hand_written_drain(q))
                })
                .sum()
        })
    });
    group.bench_function(BenchmarkId::new("ferry", MESSAGES), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (_l, q, d) = filled_queue(&rt);
                    rt.block_on(ferry_drain(q, d))
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, noop_pipeline);
criterion_main!(benches);
