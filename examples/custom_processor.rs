//! A service's own processor, registered in a few lines.
//!
//! `cargo run --example custom_processor`

use std::time::Duration;

use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::prelude::*;

/// Counts the words of each message and stores the count as the result.
struct WordCount;

impl Processor for WordCount {
    fn process(&mut self, job: &Job, _ctx: &Context) -> Result<Output, ProcessError> {
        if job.body.trim().is_empty() {
            return Err(ProcessError::bad_input("empty message"));
        }
        let words = job.body.split_whitespace().count();
        Output::json(&serde_json::json!({ "job_id": job.id, "words": words }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The embedded backend; an AWS deployment passes SQS/SNS/S3 handles instead.
    let local = LocalBackend::new();
    let jobs = local.create_queue("texts", QueueOptions::default());
    let dlq = local.create_queue("texts-dlq", QueueOptions::default());
    let texts = ["the quick brown fox", "jumps over", "", "the lazy dog"];
    jobs.send_batch(texts.iter().map(|t| OutgoingMessage::new(*t)).collect())
        .await?;

    let runtime = Runtime::builder()
        .pipeline(
            Pipeline::new("word-count")
                .source(jobs.clone())
                .dead_letter(dlq.clone())
                .results(local.blobs(), "results", "counts/", "json")
                .processor(|| WordCount),
        )
        .start()
        .await?;

    while jobs.depth_now().total() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime.shutdown().await;

    let blobs = local.blobs();
    for key in blobs.list("results", "counts/").await? {
        let body = blobs.get("results", &key).await?;
        println!("{key}: {}", String::from_utf8_lossy(&body));
    }
    for m in dlq.snapshot() {
        println!(
            "dead letter {:?}: {}",
            m.body,
            m.attributes[ferry::DLQ_REASON_ATTRIBUTE]
        );
    }
    Ok(())
}
