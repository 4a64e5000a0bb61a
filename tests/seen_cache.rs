//! DESIGN rule 13, the seen cache's part: a dead-lettered job is forgotten,
//! but its message id is remembered, so the same message coming back (its
//! delete missed, as an SQS replica can miss one) is deleted without running
//! again and without a second dead-letter entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::backend::local::{Faults, LocalBackend, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::JOB_ID_ATTRIBUTE;

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        ferry::testkit::wait_until(LIMIT, cond).await,
        "timed out waiting for {what}"
    );
}

/// Refuses bodies starting with `bad` as bad input; counts runs per job.
#[derive(Clone, Default)]
struct Picky {
    runs: Arc<Mutex<HashMap<String, u32>>>,
}

impl Processor for Picky {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(job.id.to_string())
            .or_default() += 1;
        if job.body.starts_with("bad") {
            return Err(ProcessError::bad_input("refused"));
        }
        Ok(Output::text(job.body.clone()))
    }
}

#[tokio::test]
async fn a_dead_lettered_message_that_returns_is_deleted_without_a_second_entry() {
    let local = LocalBackend::new();
    let jobs = local.create_queue("jobs", QueueOptions::default());
    let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
    jobs.send_batch(vec![
        OutgoingMessage::new("bad input").attribute(JOB_ID_ATTRIBUTE, "bad-1"),
        OutgoingMessage::new("good input").attribute(JOB_ID_ATTRIBUTE, "good-1"),
    ])
    .await
    .unwrap();
    // Every delete is missed once: each message comes back, once, within
    // 200 ms, with the same message id.
    local.set_faults(Faults {
        seed: 7,
        redeliver_after_delete_rate: 1.0,
        ..Faults::none()
    });
    let p = Picky::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(jobs.clone())
                .dead_letter(dlq.clone())
                .results(local.blobs(), "results", "out/", "txt")
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(|c| {
                    c.workers = 2;
                    c.visibility_timeout = Duration::from_millis(400);
                    c.receive_wait = Duration::from_millis(50);
                    c.flush_interval = Duration::from_millis(2);
                }),
        )
        .start()
        .await
        .unwrap();
    // Both messages deleted twice: the queue holds nothing, not even a
    // message waiting to come back.
    eventually("both messages gone for good", || {
        jobs.snapshot().is_empty() && dlq.depth_now().total() >= 1
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    let runs = p.runs.lock().unwrap().clone();
    assert_eq!(
        runs,
        HashMap::from([("bad-1".to_string(), 1), ("good-1".to_string(), 1)]),
        "a returning message ran again"
    );
    let entries = dlq.snapshot();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].attributes[JOB_ID_ATTRIBUTE], "bad-1");
    // The good job's return was a completed job's copy.
    assert_eq!(stats.duplicates_dropped, 1, "{stats:?}");
}
