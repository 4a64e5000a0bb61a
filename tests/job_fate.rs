//! A job's fate follows from the job alone (DESIGN rule 7): throttling,
//! expired credentials, deferrals behind another worker's claim and waits
//! behind a failing FIFO head never use up a good job's attempts or send it
//! to the dead-letter queue; the pipeline waits them out and says which
//! dependency is degraded while it lasts.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry::backend::local::{InfraFaults, Op, QueueOptions, Window};
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::{DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// Dead-letter entries: job id → reason.
fn entries(h: &Harness) -> HashMap<String, String> {
    entries_of(&h.dlq)
}

/// A dead-letter queue's entries: job id → reason.
fn entries_of(dlq: &ferry::backend::local::LocalQueue) -> HashMap<String, String> {
    dlq.snapshot()
        .into_iter()
        .map(|m| {
            (
                m.attributes
                    .get(JOB_ID_ATTRIBUTE)
                    .cloned()
                    .unwrap_or_default(),
                m.attributes
                    .get(DLQ_REASON_ATTRIBUTE)
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_uploads_wait_and_never_dead_letter_a_job() {
    let h = Harness::new();
    let ids = h.send_jobs(5).await;
    // Every result upload is throttled for the first two seconds.
    h.local.set_infra_faults(InfraFaults {
        throttle_window: Some(Window::new(Duration::ZERO, Duration::from_secs(2))),
        ops: vec![Op::Put],
        ..InfraFaults::default()
    });
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).configure(|c| c.max_receives = 2))
        .start()
        .await
        .unwrap();
    eventually("the bucket reported degraded", || {
        rt.health().iter().any(|x| {
            x.status == "degraded"
                && x.degraded
                    .iter()
                    .any(|d| d.last_error.contains("throttled") && d.failures >= 1)
        })
    })
    .await;
    eventually("every job stored", || {
        h.jobs.depth_now().total() == 0 && h.dlq.depth_now().total() == 0
    })
    .await;
    assert_eq!(h.results().await.len(), ids.len());
    assert!(entries(&h).is_empty(), "{:?}", entries(&h));
    let stats = rt.stats_of("stage").unwrap();
    assert!(stats.waited >= 5, "{stats:?}");
    assert_eq!(stats.retried, 0, "no attempt charged: {stats:?}");
    eventually("healthy again", || {
        rt.health()
            .iter()
            .all(|x| x.status == "running" && x.degraded.is_empty())
    })
    .await;
    rt.shutdown().await;
}

/// Reads an input object the message names, through `Context::fetch`.
#[derive(Clone, Default)]
struct Reads {
    runs: Arc<AtomicU32>,
}

impl Processor for Reads {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        self.runs.fetch_add(1, Ordering::AcqRel);
        let input = ctx.fetch("inputs", &job.body)?;
        Ok(Output::bytes(input.to_vec(), "text/plain"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_credentials_on_an_input_read_are_not_bad_input() {
    let h = Harness::new();
    let blobs = h.local.blobs();
    blobs
        .put("inputs", "a.txt", "hello".into(), Default::default())
        .await
        .unwrap();
    h.jobs
        .send_batch(vec![
            OutgoingMessage::new("a.txt").attribute(JOB_ID_ATTRIBUTE, "reads-a"),
            OutgoingMessage::new("missing.txt").attribute(JOB_ID_ATTRIBUTE, "reads-missing"),
        ])
        .await
        .unwrap();
    // Reads fail with expired credentials for a second and a half, as
    // while a rotation lapses.
    h.local.set_infra_faults(InfraFaults {
        expired_credentials_window: Some(Window::new(Duration::ZERO, Duration::from_millis(1500))),
        ops: vec![Op::Get],
        ..InfraFaults::default()
    });
    let p = Reads::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .reads_from("inputs")
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(|c| {
                    fast(c);
                    c.max_receives = 2;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("both jobs ended", || h.jobs.depth_now().total() == 0).await;
    let dead = entries(&h);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead["reads-missing"].contains("missing object"),
        "only the object the message named and that is not there is bad input: {dead:?}"
    );
    assert_eq!(h.results().await, vec!["out/reads-a.txt".to_string()]);
    let stats = rt.stats_of("stage").unwrap();
    assert!(stats.waited >= 1, "{stats:?}");
    rt.shutdown().await;
}

/// Holds its first run until told; counts runs per worker.
#[derive(Clone)]
struct Slow {
    hold: Arc<AtomicBool>,
    runs: Arc<AtomicU32>,
}

impl Processor for Slow {
    fn process(&mut self, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        self.runs.fetch_add(1, Ordering::AcqRel);
        while self.hold.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Output::text("done"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_deferred_behind_another_workers_claim_is_never_dead_lettered() {
    let h = Harness::new();
    let store = Arc::new(h.local.idempotency_store());
    let (a, b) = (
        Slow {
            hold: Arc::new(AtomicBool::new(true)),
            runs: Arc::default(),
        },
        Slow {
            hold: Arc::new(AtomicBool::new(false)),
            runs: Arc::default(),
        },
    );
    let worker = |p: &Slow, room: usize| {
        let p = p.clone();
        Pipeline::new("stage")
            .source(h.jobs.clone())
            .dead_letter(h.dlq.clone())
            .results(h.local.blobs(), "results", "out/", "txt")
            .idempotency(store.clone())
            .processor(move || p.clone())
            .configure(|c| {
                fast(c);
                c.visibility_timeout = Duration::from_millis(300);
                c.max_receives = 2;
                // A holds only the job, so the copy goes to B.
                c.max_in_flight = room;
                c.workers = room.min(2);
                c.concurrency = room.min(c.concurrency);
            })
    };
    h.send_named(&["long".to_string()]).await;
    let rt_a = Runtime::builder()
        .pipeline(worker(&a, 1))
        .start()
        .await
        .unwrap();
    eventually("A runs the job", || a.runs.load(Ordering::Acquire) == 1).await;
    // The job is sent again (a producer's re-send): B gets the copy while
    // A holds the claim, and defers it, again and again.
    h.send_named(&["long".to_string()]).await;
    let rt_b = Runtime::builder()
        .pipeline(worker(&b, 10))
        .start()
        .await
        .unwrap();
    eventually("B deferred the copy more than max_receives times", || {
        rt_b.stats_of("stage")
            .is_some_and(|s| s.claims_deferred > 3)
    })
    .await;
    a.hold.store(false, Ordering::Release);
    eventually("both messages gone", || h.jobs.depth_now().total() == 0).await;
    assert!(entries(&h).is_empty(), "{:?}", entries(&h));
    assert_eq!(a.runs.load(Ordering::Acquire), 1);
    assert_eq!(b.runs.load(Ordering::Acquire), 0, "B never ran it");
    rt_a.shutdown().await;
    rt_b.shutdown().await;
}

/// Fails `poison` every time, and `ok-1`'s first run only.
#[derive(Clone, Default)]
struct Head {
    failed_once: Arc<AtomicBool>,
    order: Arc<Mutex<Vec<String>>>,
}

impl Processor for Head {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        if job.id.as_str() == "poison" {
            return Err(ProcessError::retry("fails every time"));
        }
        if job.id.as_str() == "ok-1" && !self.failed_once.swap(true, Ordering::AcqRel) {
            return Err(ProcessError::retry("a transient timeout"));
        }
        self.order.lock().unwrap().push(job.id.to_string());
        Ok(Output::text("ok"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_followers_of_a_poison_head_keep_their_attempts() {
    let local = ferry::backend::local::LocalBackend::new();
    let fifo = QueueOptions {
        fifo: true,
        ..QueueOptions::default()
    };
    let dlq = local.create_queue("jobs-dlq.fifo", fifo.clone());
    let jobs = local.create_queue("jobs.fifo", fifo);
    let ids = ["poison", "ok-1", "ok-2", "ok-3"];
    jobs.send_batch(
        ids.iter()
            .map(|id| {
                OutgoingMessage::new(*id)
                    .attribute(JOB_ID_ATTRIBUTE, *id)
                    .group("g")
                    .dedup(*id)
            })
            .collect(),
    )
    .await
    .unwrap();
    let p = Head::default();
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
                    fast(c);
                    c.max_receives = 5;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("the group drained", || jobs.depth_now().total() == 0).await;
    let dead: Vec<(String, String)> = entries_of(&dlq).into_iter().collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "poison");
    assert!(dead[0].1.contains("failed on all 5 attempts"), "{dead:?}");
    assert_eq!(*p.order.lock().unwrap(), vec!["ok-1", "ok-2", "ok-3"]);
    let received = jobs
        .snapshot()
        .iter()
        .map(|m| m.receive_count)
        .max()
        .unwrap_or(0);
    assert_eq!(received, 0, "nothing left");
    rt.shutdown().await;
}

/// An exactly-once claim whose renewal fails may lapse before the next
/// renewal, and another worker take the job: the attempt stops before its
/// effects (charged nothing), and the job runs again once the store works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_renewal_that_fails_cancels_its_job_before_its_effects() {
    let h = Harness::new();
    let store = Arc::new(h.local.idempotency_store());
    h.send_named(&["renewed".to_string()]).await;
    // Renewals are throttled for the first second.
    h.local.set_infra_faults(InfraFaults {
        throttle_window: Some(Window::new(Duration::ZERO, Duration::from_secs(1))),
        ops: vec![Op::Renew],
        ..InfraFaults::default()
    });
    let p = Watchful::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .idempotency(store)
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(|c| {
                    fast(c);
                    c.visibility_timeout = Duration::from_millis(200);
                    c.max_receives = 2;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("the job stored", || {
        h.jobs.depth_now().total() == 0 && h.dlq.depth_now().total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    assert!(stats.claims_lost >= 1, "{stats:?}");
    assert!(p.cancelled.load(Ordering::Acquire) >= 1, "{stats:?}");
    assert_eq!(
        stats.uploaded, 1,
        "only the run that kept its claim stored: {stats:?}"
    );
    assert!(entries(&h).is_empty());
    rt.shutdown().await;
}

/// Completions throttled four times in five for a second and a half: the
/// others succeeding in between do not hurry a failing one, each waits its
/// own pause and is recorded once the store answers. None is given up and
/// deleted without its record, which would let a copy of the job run again
/// on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_completion_is_retried_until_the_store_answers() {
    let h = Harness::new();
    let store = Arc::new(h.local.idempotency_store());
    let ids = h.send_jobs(40).await;
    h.local.set_infra_faults(InfraFaults {
        throttle_rate: 0.8,
        ops: vec![Op::Complete],
        ..InfraFaults::default()
    });
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .idempotency(store.clone())
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.local.set_infra_faults(InfraFaults::default());
    eventually("every job deleted", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.settle_gave_up, 0, "{stats:?}");
    for id in &ids {
        let record = ferry::idempotency::IdempotencyStore::record(&*store, &format!("stage/{id}"))
            .await
            .unwrap();
        assert!(
            record.is_some_and(|r| r.status == ferry::idempotency::RecordStatus::Completed),
            "{id} deleted without its completion recorded"
        );
        assert_eq!(p.runs_of(id), 1, "{id}");
    }
}
