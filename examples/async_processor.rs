//! An I/O-bound stage: each job awaits a call to a service (here a price
//! service on loopback that this example starts itself, answering after
//! 20 ms). An async processor runs hundreds of such jobs at once on one
//! thread; a sync one would hold a worker thread per job in flight.
//!
//! `cargo run --example async_processor`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{BlobStore, OutgoingMessage, Queue, MAX_BATCH};
use ferry::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const JOBS: usize = 2_000;
const SERVICE_LATENCY: Duration = Duration::from_millis(20);

/// The price service: one line in (`sku`), one line out (`price`), after
/// [`SERVICE_LATENCY`]. A line `boom` gets no answer.
async fn price_service() -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(sku)) = lines.next_line().await {
                    tokio::time::sleep(SERVICE_LATENCY).await;
                    if sku == "boom" {
                        return;
                    }
                    let price = sku.bytes().map(u64::from).sum::<u64>() % 1000;
                    if write
                        .write_all(format!("{price}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

#[derive(serde::Deserialize)]
struct PriceRequest {
    sku: String,
}

/// Looks up each job's price over the network.
struct Pricer {
    service: std::net::SocketAddr,
    at_once: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

#[ferry::async_trait]
impl TypedAsyncProcessor for Pricer {
    type Input = PriceRequest;

    async fn process(
        &self,
        req: PriceRequest,
        job: &Job,
        _ctx: &TaskContext,
    ) -> Result<Output, ProcessError> {
        let n = self.at_once.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(n, Ordering::AcqRel);
        let answer = async {
            let stream = TcpStream::connect(self.service).await?;
            let (read, mut write) = stream.into_split();
            write.write_all(format!("{}\n", req.sku).as_bytes()).await?;
            BufReader::new(read).lines().next_line().await
        };
        let answer = tokio::time::timeout(Duration::from_secs(2), answer).await;
        self.at_once.fetch_sub(1, Ordering::AcqRel);
        let price = match answer {
            Ok(Ok(Some(price))) => price,
            // The service did not answer: worth another try later.
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                return Err(ProcessError::retry("the price service did not answer"))
            }
        };
        Output::json(&serde_json::json!({"job_id": job.id, "sku": req.sku, "price": price}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = price_service().await?;
    let local = LocalBackend::new();
    let jobs = local.create_queue("prices", QueueOptions::default());
    let dlq = local.create_queue("prices-dlq", QueueOptions::default());
    let mut messages: Vec<OutgoingMessage> = (0..JOBS)
        .map(|i| OutgoingMessage::new(format!("{{\"sku\":\"sku-{i:05}\"}}")))
        .collect();
    // Two bad inputs: the wrong shape, and not JSON at all.
    messages.push(OutgoingMessage::new("{\"item\":\"sku-x\"}"));
    messages.push(OutgoingMessage::new("sku-y"));
    for chunk in messages.chunks(MAX_BATCH) {
        jobs.send_batch(chunk.to_vec()).await?;
    }

    let (at_once, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let runtime = Runtime::builder()
        .pipeline(
            Pipeline::new("prices")
                .source(jobs.clone())
                .dead_letter(dlq.clone())
                .results(local.blobs(), "results", "prices/", "json")
                .async_processor(Typed(Pricer {
                    service,
                    at_once: at_once.clone(),
                    most: most.clone(),
                }))
                .configure(|c| c.concurrency = 256),
        )
        .start()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs.depth_now().total() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let stats = runtime.stats_of("prices").expect("the pipeline");
    runtime.shutdown().await;

    let stored = local.blobs().list("results", "prices/").await?.len();
    println!(
        "async_processor: {JOBS} jobs, each awaiting a {} ms call to a loopback service",
        SERVICE_LATENCY.as_millis()
    );
    println!(
        "  done in {:.2} s: {:.0} jobs/s",
        elapsed.as_secs_f64(),
        stats.acked as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  most jobs in flight at once: {} (limit 256)",
        most.load(Ordering::Acquire)
    );
    println!(
        "  results stored: {stored}, dead-lettered: {}",
        dlq.depth_now().total()
    );
    for m in dlq.snapshot() {
        println!(
            "    {:?}: {}",
            m.body,
            m.attributes[ferry::DLQ_REASON_ATTRIBUTE]
        );
    }
    println!(
        "  (a sync processor with {} worker threads would take about {:.0} s)",
        PipelineConfig::default().workers,
        JOBS as f64 * SERVICE_LATENCY.as_secs_f64() / PipelineConfig::default().workers as f64
    );
    if stored != JOBS || dlq.depth_now().total() != 2 {
        return Err(format!("expected {JOBS} results and 2 dead letters").into());
    }
    Ok(())
}
