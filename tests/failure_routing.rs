//! DESIGN rule 7: retry later with a backoff that grows with the receive
//! count, dead-letter after the maximum, and bad input straight to the
//! dead-letter queue with its reason. Every message ends deleted after
//! success or in the dead-letter queue.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::watched::{Delivery, Watched};
use common::*;
use ferry::backend::local::QueueOptions;
use ferry::prelude::*;
use ferry::{DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE, JOB_ID_ATTRIBUTE};

async fn retries_back_off_then_dead_letter_after_max_receives(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(2).await;
    // Records each delivery and each visibility ferry sets.
    let q = Watched::new(h.jobs.clone());
    let p = Counting::new();
    p.set(Behaviour::Retry);
    let base = Duration::from_millis(40);
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline_of(kind, p.clone())
                .source(q.clone())
                .configure(|c| {
                    c.max_receives = 4;
                    c.retry_backoff_base = base;
                    c.retry_backoff_max = Duration::from_secs(1);
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("both dead-lettered", || h.dlq.snapshot().len() == 2).await;
    eventually("source drained", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.retried, 6, "three retries per job: {stats:?}");
    assert_eq!(p.started_count(), 8, "four attempts per job");
    // Per message: four deliveries; after the k-th failed one the message
    // is given back for 40 ms · 2^(k-1) (40, 80, 160 ms), and the next
    // delivery comes no sooner.
    let record = q.record();
    let mut per_message: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in &record.deliveries {
        per_message.entry(&d.message_id).or_default().push(d);
    }
    assert_eq!(per_message.len(), 2, "{record:?}");
    for (id, deliveries) in &per_message {
        let counts: Vec<u32> = deliveries.iter().map(|d| d.receive_count).collect();
        assert_eq!(counts, [1, 2, 3, 4], "{id}: deliveries");
        for pair in deliveries.windows(2) {
            let (d, next) = (pair[0], pair[1]);
            let k = d.receive_count;
            let want = base * (1 << (k - 1));
            let set: Vec<Duration> = record.changes_of(&d.handle).iter().map(|c| c.to).collect();
            assert_eq!(
                set.last(),
                Some(&want),
                "{id}: the visibility set after failed receive {k} (all set on that handle: {set:?})"
            );
            let gap = next.at.duration_since(d.at);
            assert!(
                gap >= want,
                "{id}: receive {} came {gap:?} after receive {k}, before its {want:?} backoff",
                k + 1
            );
        }
        // The fourth failure dead-letters: that delivery is not given back.
        assert!(
            record.changes_of(&deliveries[3].handle).is_empty(),
            "{id}: the last delivery was given back: {record:?}"
        );
    }
    for m in h.dlq.snapshot() {
        let reason = &m.attributes[DLQ_REASON_ATTRIBUTE];
        assert!(
            reason.contains("failed on all 4 attempts") && reason.contains("not yet"),
            "{reason}"
        );
        assert_eq!(m.attributes[DLQ_RECEIVES_ATTRIBUTE], "4");
        assert_eq!(m.attributes[DLQ_SOURCE_ATTRIBUTE], "jobs");
        assert!(
            m.body.starts_with("payload of job-"),
            "the original body is kept"
        );
    }
}

async fn bad_input_goes_to_the_dead_letter_queue_with_its_reason_at_once(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(3).await;
    let p = Counting::new();
    p.set(Behaviour::BadInput);
    let rt = Runtime::builder()
        .pipeline(h.pipeline_of(kind, p.clone()))
        .start()
        .await
        .unwrap();
    eventually("all dead-lettered and deleted", || {
        h.dlq.snapshot().len() == 3 && h.jobs.depth_now().total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(p.started_count(), 3, "bad input is not retried");
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(stats.acked, 0, "a dead-lettered job is not a success");
    let mut ids: Vec<_> = h
        .dlq
        .snapshot()
        .into_iter()
        .map(|m| {
            assert_eq!(m.attributes[DLQ_REASON_ATTRIBUTE], "unusable payload");
            m.attributes[JOB_ID_ATTRIBUTE].clone()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["job-0", "job-1", "job-2"]);
    assert!(
        h.results().await.is_empty() && h.downstream.snapshot().is_empty(),
        "no effect of bad input"
    );
}

async fn a_message_received_too_often_is_dead_lettered_unprocessed(kind: Kind) {
    // A poison message that killed earlier workers arrives with a receive
    // count over the backstop (no redrive policy on this queue).
    let h = Harness::new();
    h.send_jobs(1).await;
    for _ in 0..3 {
        use ferry::backend::Queue;
        let got = h
            .jobs
            .receive(1, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    }
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(h.pipeline_of(kind, p.clone()).configure(|c| {
            c.max_receives = 3;
            c.max_deliveries = Some(3);
        }))
        .start()
        .await
        .unwrap();
    eventually("dead-lettered", || {
        h.dlq.snapshot().len() == 1 && h.jobs.depth_now().total() == 0
    })
    .await;
    rt.shutdown().await;
    assert_eq!(p.started_count(), 0);
    assert!(h.dlq.snapshot()[0].attributes[DLQ_REASON_ATTRIBUTE]
        .contains("received 4 times without an outcome"));
}

/// Receives are not attempts: without the `max_deliveries` backstop a
/// message received more often than `max_receives` (deferred, given back,
/// its worker killed) still runs, and succeeds.
async fn receives_that_never_ran_the_job_are_not_attempts(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(1).await;
    for _ in 0..5 {
        use ferry::backend::Queue;
        let got = h
            .jobs
            .receive(1, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    }
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline_of(kind, p.clone())
                .configure(|c| c.max_receives = 3),
        )
        .start()
        .await
        .unwrap();
    eventually("done", || h.jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    assert_eq!(p.started_count(), 1);
    assert!(h.dlq.snapshot().is_empty());
    assert_eq!(h.results().await.len(), 1);
}

#[tokio::test]
async fn the_queue_redrive_policy_is_a_backstop() {
    let local = ferry::backend::local::LocalBackend::new();
    let dlq = local.create_queue("dlq", QueueOptions::default());
    let q = local.create_queue(
        "q",
        QueueOptions {
            redrive: Some((dlq.clone(), 2)),
            ..Default::default()
        },
    );
    use ferry::backend::{OutgoingMessage, Queue};
    q.send_batch(vec![OutgoingMessage::new("x")]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            q.receive(10, Duration::ZERO, Duration::ZERO)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert!(q
        .receive(10, Duration::ZERO, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(dlq.snapshot().len(), 1);
    assert_eq!(q.depth_now().total(), 0);
}

for_each_kind!(
    retries_back_off_then_dead_letter_after_max_receives,
    bad_input_goes_to_the_dead_letter_queue_with_its_reason_at_once,
    a_message_received_too_often_is_dead_lettered_unprocessed,
    receives_that_never_ran_the_job_are_not_attempts,
);
