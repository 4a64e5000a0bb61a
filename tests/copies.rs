//! Two messages, one job id: a producer that sent the same job twice. The
//! lease keeps both messages' handles, extends both while the job runs, and
//! deletes (or gives back) both when it ends.

mod common;

use std::time::Duration;

use common::*;
use ferry::prelude::*;

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
    // Neither message comes back while the job runs.
    let mut max_visible = 0;
    while p.total_runs() == 0 {
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
