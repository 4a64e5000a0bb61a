//! DESIGN rule 4: the seen-ID cache. A copy that arrives mid-flight joins the
//! first delivery's lease and its newer receipt handle is the one used to
//! delete; a copy that arrives after completion is deleted unprocessed.

mod common;

use std::time::Duration;

use common::*;
use ferry::backend::local::Faults;
use ferry::prelude::*;

async fn copy_mid_flight_is_merged_and_the_newest_handle_deletes(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(1).await;
    let counting = Counting::new();
    counting.hold();
    let rt = Runtime::builder()
        .pipeline(h.pipeline_of(kind, counting.clone()))
        .start()
        .await
        .unwrap();
    eventually("the job started", || counting.started_count() == 1).await;
    let message_id = h.jobs.snapshot()[0].message_id.clone();
    // SQS hands the in-flight message to a reader again: twice.
    for n in 1..=2 {
        assert!(h.jobs.duplicate_now(&message_id));
        eventually("the copy merged", || {
            rt.stats_of("stage").unwrap().duplicates_merged == n
        })
        .await;
    }
    assert_eq!(h.jobs.snapshot()[0].receive_count, 3);
    counting.release();
    eventually("the message deleted", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    // Only the third handle could delete it: the first two are stale.
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.leases_lost, 0);
    assert_eq!(counting.total_runs(), 1, "the copies were not processed");
    assert_eq!(h.downstream.snapshot().len(), 1, "one notification");
}

async fn copy_after_completion_is_deleted_unprocessed(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(3).await;
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(h.pipeline_of(kind, p.clone()))
        .start()
        .await
        .unwrap();
    eventually("first copies done", || h.jobs.depth_now().total() == 0).await;
    // The producer sends the same jobs again (new messages, same job ids).
    h.send_jobs(3).await;
    eventually("copies deleted", || {
        h.jobs.depth_now().total() == 0 && rt.stats_of("stage").unwrap().duplicates_dropped == 3
    })
    .await;
    rt.shutdown().await;
    assert_eq!(p.total_runs(), 3);
    assert_eq!(h.downstream.snapshot().len(), 3, "no second notification");
}

async fn redelivery_after_delete_and_concurrent_copies_repeat_no_effect(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(60).await;
    h.local.set_faults(Faults {
        seed: 11,
        duplicate_rate: 0.3,
        redeliver_after_delete_rate: 0.3,
        ..Faults::none()
    });
    // A little work per job and a window that leases the whole queue, so
    // copies (queued behind the other messages) arrive while jobs are held.
    let p = Counting::new().with_delay(Duration::from_millis(3));
    let rt = Runtime::builder()
        .pipeline(h.pipeline_of(kind, p.clone()).configure(|c| {
            c.receive_concurrency = 3;
            c.prefetch = Some(100);
        }))
        .start()
        .await
        .unwrap();
    eventually_async("every job settled, every ghost copy drained", || async {
        h.jobs.depth_now().total() == 0 && h.results().await.len() == 60
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert!(stats.duplicates_merged > 0, "{stats:?}");
    assert!(stats.duplicates_dropped > 0, "{stats:?}");
    for i in 0..60 {
        assert_eq!(p.runs_of(&format!("job-{i}")), 1, "job-{i} ran twice");
    }
    assert_eq!(
        h.downstream.snapshot().len(),
        60,
        "one notification per job"
    );
}

for_each_kind!(
    copy_mid_flight_is_merged_and_the_newest_handle_deletes,
    copy_after_completion_is_deleted_unprocessed,
    redelivery_after_delete_and_concurrent_copies_repeat_no_effect,
);
