//! Middleware around a processor: a layer that times every job and names
//! the slow ones, the shipped `Timeout` and `ConcurrencyLimit` layers, and
//! the failure and dead-letter hooks — where a service would report to its
//! error tracker or page someone.
//!
//! `cargo run --example middleware`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::{ConcurrencyLimit, Layer, Outcome, Timeout, JOB_ID_ATTRIBUTE};

/// Times each job; a success slower than `slow` is logged by name.
struct Timing {
    slow: Duration,
    ran: Arc<AtomicUsize>,
}

#[ferry::async_trait]
impl Layer for Timing {
    fn after(&self, job: &Job, took: Duration, outcome: Outcome) -> Outcome {
        self.ran.fetch_add(1, Ordering::Relaxed);
        if outcome.is_ok() && took > self.slow {
            println!("slow job {} took {} ms", job.id, took.as_millis());
        }
        outcome
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = LocalBackend::new();
    let jobs = local.create_queue("jobs", QueueOptions::default());
    let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
    // Ten orders, one of them not a number, one that sleeps past the limit.
    let bodies = ["1", "2", "3", "4", "oops", "6", "7", "8", "9", "sleep"];
    let messages = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| OutgoingMessage::new(*b).attribute(JOB_ID_ATTRIBUTE, format!("order-{i}")))
        .collect();
    for r in jobs.send_batch(messages).await? {
        r?;
    }
    let (ran, failures, dead) = (
        Arc::default(),
        Arc::new(AtomicUsize::new(0)),
        Arc::default(),
    );
    let (f, d): (Arc<AtomicUsize>, Arc<AtomicUsize>) = (failures.clone(), Arc::clone(&dead));
    let pipeline = Pipeline::new("orders")
        .source(jobs.clone())
        .dead_letter(dlq.clone())
        .async_handler(|job: Job, _ctx: TaskContext| async move {
            if job.body == "sleep" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let n: u64 = job.body.parse().or_bad_input()?;
            tokio::time::sleep(Duration::from_millis(10 * n)).await;
            Ok(Output::text(format!("order of {n}")))
        })
        .layer(Timing {
            slow: Duration::from_millis(60),
            ran: Arc::clone(&ran),
        })
        .layer(Timeout(Duration::from_millis(500)))
        .layer(ConcurrencyLimit::new(3))
        .on_failure(move |job, error| {
            f.fetch_add(1, Ordering::Relaxed);
            println!("job {} failed: {error}", job.id);
        })
        .on_dead_letter(move |job, reason| {
            d.fetch_add(1, Ordering::Relaxed);
            println!("job {} dead-lettered: {reason}", job.id);
        })
        .configure(|c| {
            c.max_receives = 2;
            c.retry_backoff_base = Duration::from_millis(50);
            c.receive_wait = Duration::from_millis(100);
            c.visibility_timeout = Duration::from_secs(2);
        });
    let rt = Runtime::builder().pipeline(pipeline).start().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jobs.depth_now().total() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown().await;
    let (ran, failures, dead) = (
        ran.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        dead.load(Ordering::Relaxed),
    );
    println!("ran {ran} job(s), {failures} failure(s), {dead} dead-lettered");
    if jobs.depth_now().total() > 0 || dlq.depth_now().total() != 2 || dead != 2 {
        return Err("the orders did not settle as expected".into());
    }
    Ok(())
}
