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

/// Stage 1 through ferry on all cores, beside a raw loop calling the same
/// image code on the same images with as many threads.
fn stage1_image(c: &mut Criterion) {
    use ferry::backend::{BlobStore, ObjectMeta};
    use ferry_actors::{samples, Stage1};
    const IMAGES: usize = 24;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let images: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..IMAGES)
            .map(|i| samples::synthetic_png(i as u64, 192))
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("stage1_image");
    group.throughput(Throughput::Elements(IMAGES as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("raw_loop", threads), |b| {
        b.iter(|| {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (images, next) = (images.clone(), next.clone());
                    std::thread::spawn(move || {
                        let stage = Stage1::default();
                        while let Some(img) =
                            images.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                        {
                            std::hint::black_box(stage.transform(img).unwrap());
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        })
    });
    group.bench_function(BenchmarkId::new("ferry", threads), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let local = LocalBackend::new();
                    let blobs = local.blobs();
                    let jobs = local.create_queue("img", QueueOptions::default());
                    let dlq = local.create_queue("img-dlq", QueueOptions::default());
                    rt.block_on(async {
                        let mut batch = Vec::new();
                        for (i, img) in images.iter().enumerate() {
                            let key = format!("in/{i}.png");
                            blobs
                                .put("in", &key, img.clone().into(), ObjectMeta::default())
                                .await
                                .unwrap();
                            batch.push(OutgoingMessage::new(format!(
                                "{{\"bucket\":\"in\",\"key\":\"{key}\"}}"
                            )));
                        }
                        for chunk in batch.chunks(MAX_BATCH) {
                            jobs.send_batch(chunk.to_vec()).await.unwrap();
                        }
                        let start = Instant::now();
                        let runtime = Runtime::builder()
                            .pipeline(
                                Pipeline::new("img")
                                    .source(jobs.clone())
                                    .dead_letter(dlq)
                                    .results(blobs.clone(), "out", "stage1/", "png")
                                    .reads_from("in")
                                    .processor(Stage1::default)
                                    .configure(|c| c.workers = threads),
                            )
                            .start()
                            .await
                            .unwrap();
                        while jobs.depth_now().total() > 0 {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                        let took = start.elapsed();
                        runtime.shutdown().await;
                        took
                    })
                })
                .sum()
        })
    });
    group.finish();
}

/// The seen-ID cache and the lease table, per operation.
fn shared_state(c: &mut Criterion) {
    use ferry::__private::{Arrival, LeaseTable, SeenCache};
    use ferry::backend::ReceivedMessage;
    let job = |i: u64| {
        Job::from_message(ReceivedMessage {
            message_id: format!("5c9e1f3a-7b2d-4e8f-9a6c-{i:012}"),
            receipt_handle: format!("h{i}"),
            body: String::new(),
            attributes: Default::default(),
            receive_count: 1,
            group_id: None,
            dedup_id: None,
        })
    };
    let mut group = c.benchmark_group("shared_state");
    group.throughput(Throughput::Elements(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let table = LeaseTable::default();
    let cache = SeenCache::new(Duration::from_secs(600), 100_000);
    let mut i = 0u64;
    group.bench_function("seen_claim_then_complete", |b| {
        b.iter(|| {
            i += 1;
            let j = job(i);
            let id = j.id.clone();
            if let Arrival::New(lease) = cache.arrive(&id, || table.insert(j, String::new(), until))
            {
                table.remove(&lease);
            }
            cache.complete(&id);
        })
    });
    group.bench_function("lease_insert_then_remove", |b| {
        b.iter(|| {
            i += 1;
            let lease = table.insert(job(i), String::new(), until);
            table.remove(&lease);
        })
    });
    group.bench_function("job_construction_baseline", |b| {
        b.iter(|| {
            i += 1;
            std::hint::black_box(job(i));
        })
    });
    group.finish();
}

criterion_group!(benches, noop_pipeline, stage1_image, shared_state);
criterion_main!(benches);
