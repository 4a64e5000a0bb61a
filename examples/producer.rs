//! Producing jobs with `ferry::producer::Producer`: ids, FIFO groups and
//! deduplication, large payloads and retries done by the rules the
//! pipeline reads by. Sends a few hundred jobs to the embedded backend
//! under injected send failures, then runs a pipeline over them and checks
//! that each arrived once, under the id the producer returned.
//!
//! `cargo run --example producer`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::backend::local::{Faults, LocalBackend, QueueOptions};
use ferry::payload::LargePayloads;
use ferry::prelude::*;
use ferry::producer::{NewJob, Producer};

/// Records the id of every job it sees.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<BTreeMap<String, u32>>>);

impl Processor for Seen {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        *self
            .0
            .lock()
            .unwrap()
            .entry(job.id.to_string())
            .or_default() += 1;
        Ok(Output::empty())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = LocalBackend::new();
    let fifo = QueueOptions {
        fifo: true,
        ..QueueOptions::default()
    };
    let orders = local.create_queue("orders.fifo", fifo.clone());
    let dlq = local.create_queue("orders-dlq.fifo", fifo);
    let producer = Producer::new(orders.clone())
        .large_payloads(LargePayloads::new(local.blobs(), "payloads"))
        .attempts(8);

    // Jobs in 12 groups; every tenth one is large (offloaded); all have ids.
    let jobs: Vec<NewJob> = (0..300)
        .map(|i| {
            let body = if i % 10 == 0 {
                format!("{{\"order\":{i},\"notes\":\"{}\"}}", "x".repeat(300_000))
            } else {
                format!("{{\"order\":{i}}}")
            };
            NewJob::new(body)
                .id(format!("order-{i:04}"))
                .group(format!("customer-{:02}", i % 12))
        })
        .collect();
    // One send call in five fails, and some entries fail on their own.
    local.set_faults(Faults {
        seed: 3,
        fail_rate: 0.2,
        ..Faults::none()
    });
    let started = Instant::now();
    let (sent, report) = producer.send_all(jobs).await;
    local.set_faults(Faults::none());
    let sent: Vec<_> = sent.into_iter().collect::<Result<_, _>>()?;
    println!(
        "producer: {} jobs sent in {:.2} s: {} send calls, {} entries retried, {} bodies offloaded",
        sent.len(),
        started.elapsed().as_secs_f64(),
        report.calls,
        report.retried,
        report.offloaded
    );

    // The same job again: the FIFO queue drops it within five minutes.
    producer
        .send(
            NewJob::new("{\"order\":0}")
                .id("order-0000")
                .group("customer-00"),
        )
        .await?;
    // A rule broken is refused before anything is sent.
    let refused = producer.send(NewJob::new("{}").id("no-group")).await;
    println!("  a job without a FIFO group: {}", refused.unwrap_err());

    let seen = Seen::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("orders")
                .source(orders.clone())
                .dead_letter(dlq.clone())
                .large_payloads(LargePayloads::new(local.blobs(), "payloads"))
                .processor({
                    let seen = seen.clone();
                    move || seen.clone()
                }),
        )
        .start()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while orders.depth_now().total() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown().await;

    let seen = seen.0.lock().unwrap().clone();
    let once = sent
        .iter()
        .filter(|s| seen.get(s.job_id.as_str()) == Some(&1))
        .count();
    println!(
        "  the pipeline saw {} jobs; {once} of {} under the producer's ids, each once",
        seen.len(),
        sent.len()
    );
    if once != sent.len() || seen.len() != sent.len() {
        return Err("every job must arrive once, under the id the producer returned".into());
    }
    Ok(())
}
