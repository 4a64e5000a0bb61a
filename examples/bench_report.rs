//! The benchmark command: fixed, seeded workloads, one line per figure,
//! `name value unit`, plus `baseline=` and `ratio=` where a baseline measured
//! in the same run applies.
//!
//! ```text
//! cargo run --release --example bench_report
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::__private::{LeaseTable, SeenCache};
use ferry::backend::local::{Faults, LocalBackend, LocalQueue, Op, QueueOptions};
use ferry::backend::{BlobStore, ObjectMeta, OutgoingMessage, Queue, ReceivedMessage, MAX_BATCH};
use ferry::prelude::*;
use ferry_actors::{samples, Stage1};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Noop;
impl Processor for Noop {
    fn process(&mut self, _: &Job, _: &Context) -> std::result::Result<Output, ProcessError> {
        Ok(Output::empty())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn filled(local: &LocalBackend, name: &str, n: usize) -> Result<Arc<LocalQueue>> {
    let q = local.create_queue(name, QueueOptions::default());
    for chunk in (0..n).collect::<Vec<_>>().chunks(MAX_BATCH) {
        let batch = chunk
            .iter()
            .map(|i| OutgoingMessage::new(format!("m{i}")))
            .collect();
        q.send_batch(batch).await?;
    }
    Ok(q)
}

async fn wait_drained(q: &LocalQueue, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while q.depth_now().total() > 0 {
        if Instant::now() > deadline {
            return Err(format!("{} not drained within {limit:?}", q.name()).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn noop_pipeline(
    q: Arc<LocalQueue>,
    dlq: Arc<LocalQueue>,
    tune: impl FnOnce(&mut PipelineConfig),
) -> Pipeline {
    Pipeline::new("noop")
        .source(q)
        .dead_letter(dlq)
        .processor(|| Noop)
        .configure(|c| {
            c.workers = 1;
            c.seen_capacity = 1_000_000;
            tune(c);
        })
}

/// Messages per second through a no-op pipeline draining `n` messages, with
/// `faults` on the backend while it runs.
async fn ferry_noop_with(n: usize, faults: Faults) -> Result<f64> {
    let local = LocalBackend::new();
    let q = filled(&local, "noop", n).await?;
    let dlq = local.create_queue("noop-dlq", QueueOptions::default());
    local.set_faults(faults);
    let start = Instant::now();
    let rt = Runtime::builder()
        .pipeline(noop_pipeline(q.clone(), dlq, |_| {}))
        .start()
        .await?;
    wait_drained(&q, Duration::from_secs(120)).await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    local.set_faults(Faults::none());
    rt.shutdown().await;
    Ok(rate)
}

/// Messages per second through a no-op pipeline.
async fn ferry_noop(n: usize) -> Result<f64> {
    ferry_noop_with(n, Faults::none()).await
}

/// Messages per second through a hand-written receive → delete loop.
async fn hand_written(n: usize) -> Result<f64> {
    let local = LocalBackend::new();
    let q = filled(&local, "loop", n).await?;
    let start = Instant::now();
    loop {
        let got: Vec<ReceivedMessage> = q
            .receive(MAX_BATCH, Duration::ZERO, Duration::from_secs(30))
            .await?;
        if got.is_empty() {
            break;
        }
        let handles: Vec<String> = got.into_iter().map(|m| m.receipt_handle).collect();
        q.delete_batch(&handles).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Stores each image as `s3://in/in/<i>.png` and enqueues a stage-1 job for it.
async fn stage1_inputs(
    local: &LocalBackend,
    jobs: &LocalQueue,
    images: impl IntoIterator<Item = Vec<u8>>,
) -> Result<()> {
    let blobs = local.blobs();
    let mut batch = Vec::new();
    for (i, img) in images.into_iter().enumerate() {
        let key = format!("in/{i}.png");
        blobs
            .put("in", &key, img.into(), ObjectMeta::default())
            .await?;
        batch.push(OutgoingMessage::new(
            serde_json::json!({"bucket": "in", "key": key}).to_string(),
        ));
    }
    for chunk in batch.chunks(MAX_BATCH) {
        jobs.send_batch(chunk.to_vec()).await?;
    }
    Ok(())
}

/// Calls per message while stage 1 handles `n` jobs on standard queues.
async fn calls_per_msg(n: usize) -> Result<(f64, f64, f64)> {
    let local = LocalBackend::new();
    let blobs = local.blobs();
    let jobs = local.create_queue("jobs", QueueOptions::default());
    let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
    let topic = local.create_topic("done", false);
    let next = local.create_queue("next", QueueOptions::default());
    local.subscribe(&topic, &next, false);
    let png = samples::synthetic_png(7, 64);
    stage1_inputs(&local, &jobs, (0..n).map(|_| png.clone())).await?;
    let before = local.calls();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage1")
                .source(jobs.clone())
                .dead_letter(dlq)
                .results(blobs.clone(), "out", "stage1/", "png")
                .reads_from("in")
                .topic(topic)
                .processor(Stage1::default),
        )
        .start()
        .await?;
    wait_drained(&jobs, Duration::from_secs(300)).await?;
    let calls = local.calls().since(&before);
    rt.shutdown().await;
    let per = |service: &str| calls.service(service) as f64 / n as f64;
    println!(
        "# stage 1, {n} jobs: {} receives, {} delete batches, {} visibility batches, {} publishes, {} puts, {} gets, {} heads",
        calls.get(Op::Receive),
        calls.get(Op::Delete),
        calls.get(Op::ChangeVisibility),
        calls.get(Op::Publish),
        calls.get(Op::Put),
        calls.get(Op::Get),
        calls.get(Op::Head)
    );
    Ok((per("sqs"), per("sns"), per("s3")))
}

/// Messages per second with 20 ms added to every backend call.
async fn latency_throughput(n: usize) -> Result<f64> {
    let latency = Duration::from_millis(20);
    ferry_noop_with(
        n,
        Faults {
            latency,
            ..Faults::none()
        },
    )
    .await
}

/// Waits 20 ms, as a job that awaits a database or an HTTP call does.
struct Awaits20;

#[ferry::async_trait]
impl AsyncProcessor for Awaits20 {
    async fn process(&self, _: &Job, _: &TaskContext) -> std::result::Result<Output, ProcessError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Output::empty())
    }
}

/// The same wait, blocking its worker thread.
struct Blocks20;

impl Processor for Blocks20 {
    fn process(&mut self, _: &Job, _: &Context) -> std::result::Result<Output, ProcessError> {
        std::thread::sleep(Duration::from_millis(20));
        Ok(Output::empty())
    }
}

/// Jobs per second through a pipeline whose jobs each wait 20 ms: an async
/// processor with a concurrency of 512 (`async_n` jobs), and beside it a
/// sync one with its default workers (`sync_n` jobs).
async fn async_latency_throughput(async_n: usize, sync_n: usize) -> Result<(f64, f64, usize)> {
    let mut rates = Vec::new();
    for (n, sync) in [(async_n, false), (sync_n, true)] {
        let local = LocalBackend::new();
        let q = filled(&local, "wait", n).await?;
        let dlq = local.create_queue("wait-dlq", QueueOptions::default());
        let p = Pipeline::new("wait").source(q.clone()).dead_letter(dlq);
        let p = if sync {
            p.processor(|| Blocks20)
        } else {
            p.async_processor(Awaits20)
                .configure(|c| c.concurrency = 512)
        };
        let start = Instant::now();
        let rt = Runtime::builder()
            .pipeline(p.configure(|c| c.seen_capacity = 1_000_000))
            .start()
            .await?;
        wait_drained(&q, Duration::from_secs(300)).await?;
        rates.push(n as f64 / start.elapsed().as_secs_f64());
        rt.shutdown().await;
    }
    let workers = PipelineConfig::default().workers;
    Ok((rates[0], rates[1], workers))
}

/// Images per second: ferry's stage 1 on all cores, and a raw loop calling
/// the same code on the same images with as many threads.
async fn image_rates(n: usize, side: u32) -> Result<(f64, f64)> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let images: Vec<Vec<u8>> = (0..n)
        .map(|i| samples::synthetic_png(i as u64, side))
        .collect();

    let shared = Arc::new(images.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (shared, next) = (shared.clone(), next.clone());
            std::thread::spawn(move || {
                let stage = Stage1::default();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(img) = shared.get(i) else { break };
                    std::hint::black_box(stage.transform(img).expect("a valid image"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("raw loop thread");
    }
    let raw = n as f64 / start.elapsed().as_secs_f64();

    let local = LocalBackend::new();
    let blobs = local.blobs();
    let jobs = local.create_queue("img", QueueOptions::default());
    let dlq = local.create_queue("img-dlq", QueueOptions::default());
    stage1_inputs(&local, &jobs, images).await?;
    let start = Instant::now();
    let rt = Runtime::builder()
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
        .await?;
    wait_drained(&jobs, Duration::from_secs(600)).await?;
    let ferry = n as f64 / start.elapsed().as_secs_f64();
    rt.shutdown().await;
    Ok((ferry, raw))
}

/// End-to-end latency of single jobs through one stage, in milliseconds.
async fn e2e_latency(samples_n: usize) -> Result<(Vec<f64>, Duration)> {
    let local = LocalBackend::new();
    let q = local.create_queue("one", QueueOptions::default());
    let dlq = local.create_queue("one-dlq", QueueOptions::default());
    let flush = PipelineConfig::default().flush_interval;
    let rt = Runtime::builder()
        .pipeline(noop_pipeline(q.clone(), dlq, |_| {}))
        .start()
        .await?;
    let mut out = Vec::with_capacity(samples_n);
    for i in 0..samples_n {
        let start = Instant::now();
        q.send_batch(vec![OutgoingMessage::new(format!("job {i}"))])
            .await?;
        let q2 = q.clone();
        // Watch from a plain thread: finer than the async timer's 1 ms.
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while q2.depth_now().total() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(50));
            }
        })
        .await?;
        out.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    rt.shutdown().await;
    out.sort_by(|a, b| a.total_cmp(b));
    Ok((out, flush))
}

fn bytes_per_seen_entry(n: usize) -> f64 {
    let cache = SeenCache::new(Duration::from_secs(3600), 10 * n);
    let ids: Vec<JobId> = (0..n)
        .map(|i| JobId::new(format!("{:08x}-4b1e-9c1d-{i:012}", i * 7919)))
        .collect();
    let before = rss_bytes();
    for id in &ids {
        cache.complete(id);
    }
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(cache.len(), n);
    grown as f64 / n as f64
}

fn rss_mb_leases(n: usize) -> f64 {
    let table = LeaseTable::default();
    let cache = SeenCache::new(Duration::from_secs(3600), 10 * n);
    let before = rss_bytes();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let m = ReceivedMessage {
            message_id: format!("5c9e1f3a-7b2d-4e8f-9a6c-{i:012}"),
            receipt_handle: format!("AQEB{i:0>60}"),
            body: format!("{{\"bucket\":\"ferry-input\",\"key\":\"input/img-{i:08}.png\"}}"),
            attributes: Default::default(),
            receive_count: 1,
            group_id: None,
            dedup_id: None,
        };
        let handle = m.receipt_handle.clone();
        let job = Job::from_message(m);
        let id = job.id.clone();
        if let ferry::__private::Arrival::New(lease) =
            cache.arrive(&id, || table.insert(job, handle, until))
        {
            held.push(lease);
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(table.len(), n);
    grown as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // `bench_report noop` runs only the no-op figure (for profiling; `NOOP_N`
    // messages, 100,000 by default).
    if std::env::args().nth(1).as_deref() == Some("async") {
        let (a, s, workers) = async_latency_throughput(50_000, 500).await?;
        println!("async_latency_throughput {a:.0} jobs/s baseline={s:.0} jobs/s (sync, {workers} workers)");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("noop") {
        let n: usize = std::env::var("NOOP_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let rate = ferry_noop(n).await?;
        println!("noop_throughput {rate:.0} msg/s");
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# ferry bench_report: {cores} cores; each figure beside its same-run baseline");

    // Memory first, on a quiet heap.
    let per_entry = bytes_per_seen_entry(200_000);
    let leases_mb = rss_mb_leases(100_000);

    let n = 100_000;
    let mut ferry_rates = Vec::new();
    let mut loop_rates = Vec::new();
    for _ in 0..3 {
        loop_rates.push(hand_written(n).await?);
        ferry_rates.push(ferry_noop(n).await?);
    }
    let (f, b) = (median(ferry_rates), median(loop_rates));
    println!(
        "noop_throughput {f:.0} msg/s baseline={b:.0} ratio={:.2}",
        f / b
    );

    let (sqs, sns, s3) = calls_per_msg(1000).await?;
    println!("sqs_calls_per_msg {sqs:.3} calls/msg");
    println!("sns_calls_per_msg {sns:.3} calls/msg");
    println!("s3_calls_per_msg {s3:.3} calls/msg");

    let slow = latency_throughput(5000).await?;
    println!("latency_throughput {slow:.0} msg/s (20 ms per backend call)");

    let (a, s, workers) = async_latency_throughput(50_000, 500).await?;
    println!(
        "async_latency_throughput {a:.0} jobs/s baseline={s:.0} jobs/s (sync, {workers} workers) ratio={:.1} (20 ms await per job, concurrency 512)",
        a / s
    );

    let (ferry_img, raw_img) = image_rates(120, 256).await?;
    println!(
        "image_ratio {:.3} ratio baseline={raw_img:.1} img/s ferry={ferry_img:.1} img/s",
        ferry_img / raw_img
    );

    let (lat, flush) = e2e_latency(200).await?;
    println!(
        "e2e_latency_p50_ms {:.2} ms flush_interval={} ms",
        percentile(&lat, 0.5),
        flush.as_millis()
    );
    println!(
        "e2e_latency_p99_ms {:.2} ms flush_interval={} ms",
        percentile(&lat, 0.99),
        flush.as_millis()
    );

    println!("bytes_per_seen_entry {per_entry:.1} bytes");
    println!("rss_mb_100k_leases {leases_mb:.1} MB");
    Ok(())
}
