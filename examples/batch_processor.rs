//! A batch processor: rows are written to a database in bulk, one round trip
//! per batch (here an in-memory table that takes 10 ms per insert call).
//! Each job gets its own outcome: good rows are stored and deleted, a bad
//! row goes to the dead-letter queue with its reason, the rest of its batch
//! unaffected.
//!
//! `cargo run --example batch_processor`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue, MAX_BATCH};
use ferry::prelude::*;

const ROWS: usize = 500;

/// The table, and how many insert calls it took.
#[derive(Default)]
struct Table {
    rows: Vec<(String, u64)>,
    calls: usize,
}

struct BulkInsert(Arc<Mutex<Table>>);

#[ferry::async_trait]
impl BatchProcessor for BulkInsert {
    async fn process_batch(
        &self,
        jobs: &[Job],
        _ctx: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        // Validate each row; insert the good ones in one call.
        let parsed: Vec<Result<(String, u64), ProcessError>> = jobs
            .iter()
            .map(|j| {
                let (name, value) = j
                    .body
                    .split_once('=')
                    .ok_or_else(|| ProcessError::bad_input("expected name=value"))?;
                let value = value
                    .parse::<u64>()
                    .map_err(|e| ProcessError::bad_input(format!("value {value:?}: {e}")))?;
                Ok((name.to_owned(), value))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        {
            let mut table = self.0.lock().unwrap();
            table.calls += 1;
            table
                .rows
                .extend(parsed.iter().filter_map(|r| r.as_ref().ok().cloned()));
        }
        parsed
            .into_iter()
            .map(|r| r.map(|(name, _)| Output::text(format!("inserted {name}"))))
            .collect()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = LocalBackend::new();
    let jobs = local.create_queue("rows", QueueOptions::default());
    let dlq = local.create_queue("rows-dlq", QueueOptions::default());
    let mut messages: Vec<OutgoingMessage> = (0..ROWS)
        .map(|i| OutgoingMessage::new(format!("row-{i:04}={}", i * 7)))
        .collect();
    messages.push(OutgoingMessage::new("row-bad=seven"));
    messages.push(OutgoingMessage::new("no equals sign"));
    for chunk in messages.chunks(MAX_BATCH) {
        jobs.send_batch(chunk.to_vec()).await?;
    }

    let table = Arc::new(Mutex::new(Table::default()));
    let started = Instant::now();
    let runtime = Runtime::builder()
        .pipeline(
            Pipeline::new("rows")
                .source(jobs.clone())
                .dead_letter(dlq.clone())
                .batch_processor(
                    BulkInsert(table.clone()),
                    BatchOptions {
                        max_jobs: 50,
                        max_wait: Duration::from_millis(20),
                    },
                ),
        )
        .start()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs.depth_now().total() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    runtime.shutdown().await;

    let table = table.lock().unwrap();
    println!(
        "batch_processor: {} messages in {:.2} s",
        messages.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "  rows inserted: {} in {} insert calls ({:.1} rows per call)",
        table.rows.len(),
        table.calls,
        table.rows.len() as f64 / table.calls.max(1) as f64
    );
    println!("  dead-lettered: {}", dlq.depth_now().total());
    for m in dlq.snapshot() {
        println!(
            "    {:?}: {}",
            m.body,
            m.attributes[ferry::DLQ_REASON_ATTRIBUTE]
        );
    }
    if table.rows.len() != ROWS || dlq.depth_now().total() != 2 || table.calls >= ROWS / 2 {
        return Err("expected every good row inserted in batches and 2 dead letters".into());
    }
    Ok(())
}
