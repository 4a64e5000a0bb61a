//! The dead-letter queue for operators (`ferry::dlq`): list entries with
//! their reasons; redrive them back to their source once fixed — only the
//! entries asked for, without ferry's dead-letter attributes — and the job
//! runs again, in the same worker, with or without an idempotency store.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use ferry::backend::local::LocalIdempotencyStore;
use ferry::backend::local::QueueOptions;
use ferry::backend::{OutgoingMessage, Queue};
use ferry::dlq::{self, RedriveOptions};
use ferry::idempotency::{job_key, IdempotencyStore};
use ferry::prelude::*;
use ferry::{DLQ_REASON_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// Each run: the job id, and the names of its attributes.
type Runs = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// Refuses every job as bad input until fixed; records each run's attributes.
#[derive(Clone, Default)]
struct Fixable {
    fixed: Arc<AtomicBool>,
    runs: Runs,
}

impl Processor for Fixable {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        let mut names: Vec<String> = job.attributes.keys().cloned().collect();
        names.sort();
        self.runs.lock().unwrap().push((job.id.to_string(), names));
        if !self.fixed.load(Ordering::Acquire) {
            return Err(ProcessError::bad_input("the reference data is missing"));
        }
        Ok(Output::text(job.body.clone()))
    }
}

async fn redrive_runs_the_job_again(with_store: bool) {
    let h = Harness::new();
    h.send_named(&["fix-me".to_string()]).await;
    let p = Fixable::default();
    let store = Arc::new(LocalIdempotencyStore::new());
    let mut pipeline = Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .processor({
            let p = p.clone();
            move || p.clone()
        })
        .configure(fast);
    if with_store {
        pipeline = pipeline.idempotency(store.clone());
    }
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    eventually("dead-lettered", || h.dlq.depth_now().total() == 1).await;
    eventually("the source drained", || h.jobs.depth_now().total() == 0).await;

    let listed = dlq::list(h.dlq.as_ref(), 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id.as_deref(), Some("fix-me"));
    assert_eq!(
        listed[0].reason.as_deref(),
        Some("the reference data is missing")
    );
    assert_eq!(listed[0].source.as_deref(), Some("jobs"));
    assert_eq!(h.dlq.depth_now().visible, 1, "listing consumed nothing");
    if with_store {
        // A dead-lettered job is not held as completed.
        let r = store
            .record(&job_key("stage", &JobId::new("fix-me")))
            .await
            .unwrap();
        assert!(
            r.as_ref()
                .is_none_or(|r| r.status != ferry::idempotency::RecordStatus::Completed),
            "{r:?}"
        );
    }

    p.fixed.store(true, Ordering::Release);
    let report = dlq::redrive(h.dlq.as_ref(), h.jobs.as_ref(), &RedriveOptions::default())
        .await
        .unwrap();
    assert_eq!((report.moved, report.skipped, report.failed), (1, 0, 0));
    // The same worker, well within its seen-ID cache's memory, runs it.
    eventually_async("the result", || async {
        h.results().await == vec!["out/fix-me.txt".to_string()]
    })
    .await;
    eventually("both queues empty", || {
        h.jobs.depth_now().total() == 0 && h.dlq.depth_now().total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.processed, 1, "{stats:?}");
    assert_eq!(stats.duplicates_dropped, 0, "{stats:?}");
    assert_eq!(stats.skipped_completed, 0, "{stats:?}");
    let runs = p.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    // The redriven message has the job id, none of the dead-letter marks.
    assert_eq!(runs[1].1, vec![JOB_ID_ATTRIBUTE.to_string()], "{runs:?}");
}

#[tokio::test]
async fn a_redriven_job_runs_again_in_the_same_worker() {
    redrive_runs_the_job_again(false).await;
}

#[tokio::test]
async fn a_redriven_job_runs_again_with_an_idempotency_store() {
    redrive_runs_the_job_again(true).await;
}

fn entry(id: &str, reason: &str, source: &str) -> OutgoingMessage {
    OutgoingMessage::new(format!("body of {id}"))
        .attribute(JOB_ID_ATTRIBUTE, id)
        .attribute(DLQ_REASON_ATTRIBUTE, reason)
        .attribute(DLQ_SOURCE_ATTRIBUTE, source)
        .attribute("user-attribute", "kept")
}

#[tokio::test]
async fn redrive_moves_only_matching_entries_of_its_source() {
    let local = ferry::backend::local::LocalBackend::new();
    let jobs = local.create_queue("jobs", QueueOptions::default());
    let dead = local.create_queue("jobs-dlq", QueueOptions::default());
    dead.send_batch(vec![
        entry("a", "missing object s3://in/a.png", "jobs"),
        entry("b", "not an image", "jobs"),
        entry("c", "missing object s3://in/c.png", "other-queue"),
        OutgoingMessage::new("no attributes at all"),
    ])
    .await
    .unwrap();
    let only_missing = RedriveOptions {
        reason_contains: Some("missing object".into()),
        ..Default::default()
    };
    let report = dlq::redrive(dead.as_ref(), jobs.as_ref(), &only_missing)
        .await
        .unwrap();
    assert_eq!(
        (report.scanned, report.moved, report.skipped, report.failed),
        (4, 1, 3, 0)
    );
    let moved = jobs.snapshot();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].attributes[JOB_ID_ATTRIBUTE], "a");
    assert_eq!(moved[0].attributes["user-attribute"], "kept");
    assert!(!moved[0].attributes.contains_key(DLQ_REASON_ATTRIBUTE));
    assert!(!moved[0].attributes.contains_key(DLQ_SOURCE_ATTRIBUTE));
    assert_eq!(moved[0].body, "body of a");
    // The rest stay, visible again.
    assert_eq!(dead.depth_now().visible, 3);
    // Any source, at most one: one more moves.
    let any = RedriveOptions {
        any_source: true,
        max: Some(1),
        ..Default::default()
    };
    let report = dlq::redrive(dead.as_ref(), jobs.as_ref(), &any)
        .await
        .unwrap();
    assert_eq!(report.moved, 1);
    assert_eq!(dead.depth_now().visible, 2);
}

#[tokio::test]
async fn listing_a_long_queue_ends_and_consumes_nothing() {
    let local = ferry::backend::local::LocalBackend::new();
    let dead = local.create_queue("dlq", QueueOptions::default());
    for chunk in (0..45).collect::<Vec<_>>().chunks(10) {
        dead.send_batch(
            chunk
                .iter()
                .map(|i| entry(&format!("j{i}"), "why", "q"))
                .collect(),
        )
        .await
        .unwrap();
    }
    let listed = dlq::list(dead.as_ref(), 20).await.unwrap();
    assert_eq!(listed.len(), 20);
    assert!(listed.iter().all(|e| e.reason.as_deref() == Some("why")));
    assert_eq!(dead.depth_now().visible, 45);
}

/// On FIFO queues a redrive that fixed nothing: the job runs again and is
/// dead-lettered again, within the five-minute deduplication window. The
/// second entry must not be dropped as a duplicate of the first, and a
/// redrive must not move the job's new entry again (with the same
/// deduplication id it would vanish), however long its scan runs.
#[tokio::test]
async fn a_fifo_job_redriven_and_failing_again_is_dead_lettered_again() {
    let local = ferry::backend::local::LocalBackend::new();
    let fifo = QueueOptions {
        fifo: true,
        visibility_timeout: std::time::Duration::from_millis(400),
        ..Default::default()
    };
    let dead = local.create_queue("jobs-dlq.fifo", fifo.clone());
    let jobs = local.create_queue("jobs.fifo", fifo);
    jobs.send_batch(vec![OutgoingMessage::new("broken")
        .attribute(JOB_ID_ATTRIBUTE, "J")
        .group("g")
        .dedup("J")])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let p = Fixable::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(jobs.clone())
                .dead_letter(dead.clone())
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    eventually("dead-lettered", || dead.depth_now().total() == 1).await;
    for round in 1..=3 {
        let report = dlq::redrive(dead.as_ref(), jobs.as_ref(), &RedriveOptions::default())
            .await
            .unwrap();
        assert_eq!(report.moved, 1, "round {round}: {report:?}");
        eventually("run again and dead-lettered again", || {
            p.runs.lock().unwrap().len() == round + 1
                && dead.depth_now().total() == 1
                && jobs.depth_now().total() == 0
        })
        .await;
    }
    rt.shutdown().await;
}
