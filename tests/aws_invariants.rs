//! The invariants on the real SQS/SNS/S3 wire protocol, against the moto
//! server `scripts/test` starts. Each test has its own queues, topic, bucket.
#![cfg(feature = "aws")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::aws::*;
use common::*;
use ferry::backend::{BlobStore, Queue};
use ferry::prelude::*;
use ferry::{BackendError, DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE, RESULT_JOB_TAG};

#[tokio::test]
async fn missing_resources_fail_at_start_up_naming_the_resource() {
    let Some(_) = endpoint() else { return };
    let aws = backend().await;
    let q = aws.queue("no-such-queue-here").await.unwrap_err();
    assert!(
        matches!(&q, BackendError::NotFound { resource } if resource.contains("no-such-queue-here")),
        "{q:?}"
    );
    let b = aws.check_bucket("no-such-bucket-here").await.unwrap_err();
    assert!(
        matches!(&b, BackendError::NotFound { resource } if resource.contains("no-such-bucket-here")),
        "{b:?}"
    );
    let t = aws
        .topic("arn:aws:sns:us-east-1:123456789012:no-such-topic")
        .await
        .unwrap_err();
    assert!(matches!(&t, BackendError::NotFound { .. }), "{t:?}");
}

#[tokio::test]
async fn delete_last_then_resume_without_reprocessing() {
    let Some(h) = AwsHarness::new("resume").await else {
        return;
    };
    h.send_jobs(3).await;
    let p = Counting::new();
    let held = Hold::new(h.topic.clone());
    let rt = Runtime::builder()
        .pipeline(h.pipeline_with(h.jobs.clone(), held.clone(), p.clone()))
        .start()
        .await
        .unwrap();
    eventually_async("results stored", || async { h.results().await.len() == 3 }).await;
    // Frozen before the notification: nothing deleted.
    assert_eq!(
        h.depth(&h.jobs).await.total(),
        3,
        "deleted before the notification was accepted"
    );
    rt.abort();
    drop(held);

    // A fresh worker after the leases lapse.
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()))
        .start()
        .await
        .unwrap();
    eventually_async("source drained", || async {
        h.depth(&h.jobs).await.total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.resumed, 3, "{stats:?}");
    for i in 0..3 {
        let id = format!("job-{i}");
        assert_eq!(p.runs_of(&id), 1, "{id} processed again");
        let meta = h
            .aws
            .blobs()
            .head(&h.bucket, &format!("out/{id}.txt"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            meta.metadata.get(RESULT_JOB_TAG),
            Some(&id),
            "result tagged with the job id"
        );
    }
    // Notices went through SNS (envelope) to the next queue, naming their job.
    let notes = h.drain_view(&h.downstream).await;
    let mut ids: Vec<String> = notes
        .into_iter()
        .map(|m| Job::from_message(m).id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["job-0", "job-1", "job-2"]);
}

#[tokio::test]
async fn mid_flight_copy_merges_and_the_newest_handle_deletes() {
    let Some(h) = AwsHarness::new("merge").await else {
        return;
    };
    h.send_jobs(1).await;
    let tap = Arc::new(Tap {
        inner: h.jobs.clone(),
        received: Mutex::new(vec![]),
        deleted: Mutex::new(vec![]),
    });
    let p = Counting::new().with_delay(Duration::from_millis(2500));
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline_with(tap.clone(), h.topic.clone(), p.clone())
                // The first extension comes after half the visibility: long
                // enough for the poller to receive the copy first.
                .configure(|c| c.visibility_timeout = Duration::from_secs(6)),
        )
        .start()
        .await
        .unwrap();
    eventually("the job started", || p.started_count() == 1).await;
    // Another server makes the in-flight message visible again.
    let first = tap.received.lock().unwrap()[0].clone();
    h.jobs
        .change_visibility_batch(&[(first, Duration::ZERO)])
        .await
        .unwrap();
    eventually("the copy merged", || {
        rt.stats_of("stage").unwrap().duplicates_merged == 1
    })
    .await;
    eventually_async("deleted", || async { h.depth(&h.jobs).await.total() == 0 }).await;
    rt.shutdown().await;
    let received = tap.received.lock().unwrap().clone();
    let deleted = tap.deleted.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    assert_eq!(
        deleted,
        vec![received[1].clone()],
        "the newest receipt handle deletes"
    );
    assert_eq!(p.total_runs(), 1);
}

#[tokio::test]
async fn copy_after_completion_is_dropped() {
    let Some(h) = AwsHarness::new("drop").await else {
        return;
    };
    h.send_jobs(2).await;
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()))
        .start()
        .await
        .unwrap();
    eventually_async("done", || async { h.depth(&h.jobs).await.total() == 0 }).await;
    h.send_jobs(2).await;
    eventually("copies dropped", || {
        rt.stats_of("stage").unwrap().duplicates_dropped == 2
    })
    .await;
    eventually_async("drained", || async { h.depth(&h.jobs).await.total() == 0 }).await;
    rt.shutdown().await;
    assert_eq!(p.total_runs(), 2);
    assert_eq!(
        h.drain_view(&h.downstream).await.len(),
        2,
        "one notification per job"
    );
}

#[tokio::test]
async fn leases_are_extended_while_a_slow_job_runs() {
    let Some(h) = AwsHarness::new("lease").await else {
        return;
    };
    h.send_jobs(1).await;
    // Five seconds of work under a two-second visibility.
    let p = Counting::new().with_delay(Duration::from_secs(5));
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()))
        .start()
        .await
        .unwrap();
    eventually("started", || p.started_count() == 1).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let peek = h
            .jobs
            .receive(1, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            peek.is_empty(),
            "the held message became visible to another reader"
        );
    }
    eventually_async("deleted", || async { h.depth(&h.jobs).await.total() == 0 }).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert!(stats.leases_extended >= 2, "{stats:?}");
    assert_eq!(
        (stats.duplicates_merged, stats.leases_lost),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(p.total_runs(), 1);
}

#[tokio::test]
async fn failures_route_to_the_dead_letter_queue_with_reasons() {
    let Some(h) = AwsHarness::new("dlq").await else {
        return;
    };
    h.send_named(&["bad".to_string()]).await;
    h.send_named(&["flaky".to_string()]).await;
    let p = Counting::new();
    #[derive(Clone)]
    struct Route(Counting);
    impl Processor for Route {
        fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
            if job.id.as_str() == "bad" {
                return Err(ProcessError::bad_input("unusable payload"));
            }
            self.0.started.lock().unwrap().push(job.id.to_string());
            Err(ProcessError::retry("downstream busy"))
        }
    }
    let route = Route(p.clone());
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .processor(move || route.clone())
                .configure(|c| {
                    fast(c);
                    c.visibility_timeout = Duration::from_secs(2);
                    c.receive_wait = Duration::from_secs(1);
                    c.max_receives = 2;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually_async("both dead-lettered", || async {
        h.depth(&h.dlq).await.total() == 2
    })
    .await;
    eventually_async("source drained", || async {
        h.depth(&h.jobs).await.total() == 0
    })
    .await;
    rt.shutdown().await;
    assert_eq!(p.started_count(), 2, "the retried job ran on both receives");
    let mut entries: Vec<(String, String)> = h
        .drain_view(&h.dlq)
        .await
        .into_iter()
        .map(|m| {
            (
                m.attributes[JOB_ID_ATTRIBUTE].clone(),
                m.attributes[DLQ_REASON_ATTRIBUTE].clone(),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(entries[0], ("bad".into(), "unusable payload".into()));
    assert_eq!(entries[1].0, "flaky");
    assert!(
        entries[1].1.contains("failed on all 2 attempts")
            && entries[1].1.contains("downstream busy"),
        "{:?}",
        entries[1]
    );
}

#[tokio::test]
async fn shutdown_releases_leases_of_unstarted_jobs() {
    let Some(h) = AwsHarness::new("drain").await else {
        return;
    };
    h.send_jobs(6).await;
    let p = Counting::new().with_delay(Duration::from_millis(1500));
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).configure(|c| {
            c.workers = 1;
            c.max_in_flight = 6;
            c.visibility_timeout = Duration::from_secs(30);
            c.receive_concurrency = 1;
        }))
        .shutdown_grace(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    eventually("six leased, one started", || {
        rt.in_flight() == 6 && p.started_count() == 1
    })
    .await;
    let report = rt.shutdown().await;
    assert_eq!(report.released_unstarted, 5, "{report:?}");
    assert_eq!(report.held_at_exit, 0);
    let depth = h.depth(&h.jobs).await;
    assert_eq!(
        (depth.visible, depth.in_flight),
        (5, 0),
        "the started job finished, the rest are back"
    );
    assert_eq!(h.results().await.len(), 1);
}
