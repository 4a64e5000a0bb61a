//! The dead-letter tools on FIFO dead-letter queues (embedded backend): a
//! FIFO group hands out no more of its messages while any is in flight, so
//! a redrive hands the entries it keeps of a group back before its next
//! receive (every matching entry of a long group moves), and a listing or
//! redrive says how many entries it never saw.

mod common;

use std::time::Duration;

use ferry::backend::local::{LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue};
use ferry::dlq::{self, RedriveOptions};
use ferry::{DLQ_REASON_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE, JOB_ID_ATTRIBUTE};

fn fifo() -> QueueOptions {
    QueueOptions {
        fifo: true,
        ..QueueOptions::default()
    }
}

/// Dead-letter entries `(job id, group, reason)`, sent in order.
async fn fill(dead: &dyn Queue, entries: &[(String, &str, &str)]) {
    let messages: Vec<OutgoingMessage> = entries
        .iter()
        .map(|(id, group, reason)| {
            let m = OutgoingMessage::new(format!("body of {id}"))
                .attribute(JOB_ID_ATTRIBUTE, id.as_str())
                .attribute(DLQ_REASON_ATTRIBUTE, *reason)
                .attribute(DLQ_SOURCE_ATTRIBUTE, "jobs.fifo");
            if dead.is_fifo() {
                m.group(*group).dedup(id.as_str())
            } else {
                m
            }
        })
        .collect();
    for chunk in messages.chunks(10) {
        for r in dead.send_batch(chunk.to_vec()).await.unwrap() {
            r.unwrap();
        }
    }
}

fn ids(q: &LocalQueue) -> Vec<String> {
    q.snapshot()
        .into_iter()
        .map(|m| m.attributes[JOB_ID_ATTRIBUTE].clone())
        .collect()
}

/// The group is not left locked: a receive gets its head at once.
async fn head_of_group_is_free(dead: &dyn Queue, want: &str) {
    let got = dead
        .receive(1, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the group is still locked");
    assert_eq!(got[0].attributes[JOB_ID_ATTRIBUTE], want);
    dead.change_visibility_batch(&[(got[0].receipt_handle.clone(), Duration::ZERO)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_filtered_redrive_moves_every_matching_entry_of_a_long_fifo_group() {
    let local = LocalBackend::new();
    let dead = local.create_queue("jobs-dlq.fifo", fifo());
    let jobs = local.create_queue("jobs.fifo", fifo());
    // 15 entries in one group; the fourth is not to be redriven.
    let entries: Vec<(String, &str, &str)> = (0..15)
        .map(|i| {
            let reason = if i == 3 {
                "not an image"
            } else {
                "missing object"
            };
            (format!("j{i:02}"), "g", reason)
        })
        .collect();
    fill(dead.as_ref(), &entries).await;
    let options = RedriveOptions {
        reason_contains: Some("missing object".into()),
        ..RedriveOptions::default()
    };
    let report = dlq::redrive(dead.as_ref(), jobs.as_ref(), &options)
        .await
        .unwrap();
    assert_eq!(
        (report.moved, report.skipped, report.failed, report.unseen),
        (14, 1, 0, Some(0)),
        "{report:?}"
    );
    assert_eq!(report.scanned, 15, "{report:?}");
    // Moved in their group's order; the kept one stays, visible.
    let moved: Vec<String> = (0..15)
        .filter(|i| *i != 3)
        .map(|i| format!("j{i:02}"))
        .collect();
    assert_eq!(ids(&jobs), moved);
    assert_eq!(ids(&dead), ["j03"]);
    let depth = dead.depth_now();
    assert_eq!((depth.visible, depth.in_flight), (1, 0));
    head_of_group_is_free(dead.as_ref(), "j03").await;
}

#[tokio::test]
async fn a_listing_of_a_long_fifo_group_says_how_many_it_left_out() {
    let local = LocalBackend::new();
    let dead = local.create_queue("dlq.fifo", fifo());
    let mut entries: Vec<(String, &str, &str)> =
        (0..15).map(|i| (format!("a{i:02}"), "a", "why")).collect();
    entries.extend((0..3).map(|i| (format!("b{i:02}"), "b", "why")));
    fill(dead.as_ref(), &entries).await;
    // SQS hands out no more than the first ten of a group that is not
    // deleted from: the other five are left out, and said to be.
    let listing = dlq::listing(dead.as_ref(), 100).await.unwrap();
    let mut listed: Vec<String> = listing
        .entries
        .iter()
        .map(|e| e.job_id.clone().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("a{i:02}")).collect();
    expected.extend((0..3).map(|i| format!("b{i:02}")));
    assert_eq!(listed, expected);
    assert_eq!(listing.unlisted, Some(5));
    // Nothing consumed, nothing left locked.
    let depth = dead.depth_now();
    assert_eq!((depth.visible, depth.in_flight), (18, 0));
    head_of_group_is_free(dead.as_ref(), "a00").await;
    // A limit leaves the rest out too.
    let short = dlq::listing(dead.as_ref(), 4).await.unwrap();
    assert_eq!(short.entries.len(), 4);
    assert_eq!(short.unlisted, Some(14));
    assert_eq!(dead.depth_now().visible, 18);
    // On a standard queue a listing sees every entry.
    let plain = local.create_queue("dlq", QueueOptions::default());
    fill(plain.as_ref(), &entries).await;
    let all = dlq::listing(plain.as_ref(), 100).await.unwrap();
    assert_eq!((all.entries.len(), all.unlisted), (18, Some(0)));
}

#[tokio::test]
async fn a_redrive_says_how_many_entries_it_never_saw() {
    let local = LocalBackend::new();
    let dead = local.create_queue("jobs-dlq.fifo", fifo());
    let jobs = local.create_queue("jobs.fifo", fifo());
    // Ten entries to keep at the group's head hide the five behind them.
    let entries: Vec<(String, &str, &str)> = (0..15)
        .map(|i| {
            let reason = if i < 10 {
                "not an image"
            } else {
                "missing object"
            };
            (format!("j{i:02}"), "g", reason)
        })
        .collect();
    fill(dead.as_ref(), &entries).await;
    let options = RedriveOptions {
        reason_contains: Some("missing object".into()),
        ..RedriveOptions::default()
    };
    let report = dlq::redrive(dead.as_ref(), jobs.as_ref(), &options)
        .await
        .unwrap();
    assert_eq!(
        (report.scanned, report.moved, report.skipped, report.unseen),
        (10, 0, 10, Some(5)),
        "{report:?}"
    );
    assert_eq!(jobs.depth_now().total(), 0);
    let depth = dead.depth_now();
    assert_eq!((depth.visible, depth.in_flight), (15, 0));
    // Past the limit of a redrive: not looked at, and said to be.
    let report = dlq::redrive(
        dead.as_ref(),
        jobs.as_ref(),
        &RedriveOptions {
            max: Some(10),
            ..RedriveOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((report.moved, report.unseen), (10, Some(5)), "{report:?}");
    assert_eq!(dead.depth_now().visible, 5);
    head_of_group_is_free(dead.as_ref(), "j10").await;
}

/// The same redrive through SQS's wire protocol (moto).
#[cfg(feature = "aws")]
#[tokio::test]
async fn on_sqs_a_filtered_redrive_moves_every_matching_entry_of_a_long_fifo_group() {
    use common::aws::{backend, endpoint, unique};
    use ferry::backend::aws::QueueSpec;
    if endpoint().is_none() {
        return;
    }
    let aws = backend().await;
    let spec = QueueSpec {
        fifo: true,
        ..QueueSpec::default()
    };
    let name = unique("dlqfifo");
    let dead = aws
        .create_queue(&format!("{name}-dlq.fifo"), &spec)
        .await
        .unwrap();
    let jobs = aws
        .create_queue(&format!("{name}-jobs.fifo"), &spec)
        .await
        .unwrap();
    let entries: Vec<(String, &str, &str)> = (0..15)
        .map(|i| {
            let reason = if i == 3 {
                "not an image"
            } else {
                "missing object"
            };
            (format!("j{i:02}"), "g", reason)
        })
        .collect();
    fill(dead.as_ref(), &entries).await;
    let report = dlq::redrive(
        dead.as_ref(),
        jobs.as_ref(),
        &RedriveOptions {
            reason_contains: Some("missing object".into()),
            any_source: true,
            ..RedriveOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.moved, report.skipped, report.failed, report.unseen),
        (14, 1, 0, Some(0)),
        "{report:?}"
    );
    let mut moved = Vec::new();
    loop {
        let got = jobs
            .receive(10, Duration::ZERO, Duration::from_secs(60))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        // Deleted as read: the group hands out its next ones after.
        let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
        jobs.delete_batch(&handles).await.unwrap();
        moved.extend(
            got.into_iter()
                .map(|m| m.attributes[JOB_ID_ATTRIBUTE].clone()),
        );
    }
    let expected: Vec<String> = (0..15)
        .filter(|i| *i != 3)
        .map(|i| format!("j{i:02}"))
        .collect();
    assert_eq!(moved, expected);
    head_of_group_is_free(dead.as_ref(), "j03").await;
}
