//! Two messages, one job id: a producer that sent the same job twice. The
//! lease keeps both messages' handles, extends both while the job runs, and
//! deletes (or gives back) both when it ends.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry::backend::{OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::JOB_ID_ATTRIBUTE;

/// Sends the job `twice` as two distinct messages.
async fn send_twice(h: &Harness) {
    h.send_named(&["twice".to_string(), "twice".to_string()])
        .await;
    assert_eq!(h.jobs.depth_now().visible, 2);
}

#[tokio::test]
async fn both_messages_are_held_while_the_job_runs_and_both_deleted_after() {
    let h = Harness::new();
    send_twice(&h).await;
    // The job runs for several visibility timeouts (400 ms each).
    let p = Counting::new().with_delay(Duration::from_millis(1500));
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).configure(|c| c.workers = 1))
        .start()
        .await
        .unwrap();
    eventually("the job started", || p.started_count() == 1).await;
    // Neither message comes back while the job runs (watched until its run
    // returns, at most LIMIT).
    let mut max_visible = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.total_runs() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job's run did not return within {LIMIT:?}"
        );
        max_visible = max_visible.max(h.jobs.depth_now().visible);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("both messages deleted", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(max_visible, 0, "a message came back while its job ran");
    assert_eq!(p.runs_of("twice"), 1);
    assert_eq!(h.results().await.len(), 1);
    assert_eq!(stats.duplicates_merged, 1, "{stats:?}");
    assert_eq!(stats.duplicates_dropped, 0, "{stats:?}");
    assert_eq!(h.dlq.depth_now().total(), 0);
}

#[tokio::test]
async fn both_messages_are_given_back_together() {
    let h = Harness::new();
    send_twice(&h).await;
    let p = Counting::new();
    p.set(Behaviour::Retry);
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).configure(|c| {
            c.workers = 1;
            c.retry_backoff_base = Duration::from_millis(100);
            c.retry_backoff_max = Duration::from_millis(100);
            // A message left out of the give-back stays hidden this long.
            c.visibility_timeout = Duration::from_secs(6);
        }))
        .start()
        .await
        .unwrap();
    eventually("the first run", || p.started_count() == 1).await;
    p.set(Behaviour::Succeed);
    let retried = tokio::time::Instant::now();
    eventually("the job ran again", || p.total_runs() == 1).await;
    eventually("both messages deleted", || h.jobs.depth_now().total() == 0).await;
    let took = retried.elapsed();
    rt.shutdown().await;
    // Both came back after the 100 ms backoff; one left hidden would have
    // kept the queue non-empty for the 6 s visibility.
    assert!(
        took < Duration::from_secs(4),
        "the queue emptied {took:?} after the retry"
    );
    assert_eq!(p.runs_of("twice"), 1);
}

/// Bad input unless the body says `fixed`; counts runs by body.
struct BadUnlessFixed(Arc<Mutex<HashMap<String, u32>>>);

impl Processor for BadUnlessFixed {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        *self.0.lock().unwrap().entry(job.body.clone()).or_default() += 1;
        std::thread::sleep(Duration::from_millis(100));
        if job.body == "fixed" {
            Ok(Output::text("ok"))
        } else {
            Err(ProcessError::bad_input("broken"))
        }
    }
}

#[tokio::test]
async fn a_fixed_resend_merged_into_a_job_that_is_dead_lettered_runs_after_it() {
    let h = Harness::new();
    // The broken message and its fix, under one job id, in one receive: the
    // fix is merged into the broken one's lease.
    h.jobs
        .send_batch(vec![
            OutgoingMessage::new("broken").attribute(JOB_ID_ATTRIBUTE, "J"),
            OutgoingMessage::new("fixed").attribute(JOB_ID_ATTRIBUTE, "J"),
        ])
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let r = runs.clone();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .processor(move || BadUnlessFixed(r.clone()))
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    eventually("the fix ran and both messages are gone", || {
        runs.lock().unwrap().get("fixed") == Some(&1) && h.jobs.depth_now().total() == 0
    })
    .await;
    let s = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(s.duplicates_merged, 1, "{s:?}");
    assert_eq!(runs.lock().unwrap().get("broken"), Some(&1));
    assert_eq!(h.dlq.depth_now().total(), 1, "the broken message alone");
    assert_eq!(h.results().await.len(), 1);
}
