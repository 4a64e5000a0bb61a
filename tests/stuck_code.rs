//! Stuck user code is contained: a sync job that hangs past its
//! cancellation has its worker thread replaced and is retried (dead-lettered
//! as "timed out" when it hangs every time); an async processor that blocks
//! its thread does not stop lease keeping or another pipeline; a blocked I/O
//! thread shows in `health()`; and a job whose lease lapsed while the I/O
//! thread was blocked has no effect.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry::backend::local::QueueOptions;
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::{DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// Blocks the calling thread until `flag` is set, for at most `limit`.
fn block_until(flag: &AtomicBool, limit: Duration) {
    let end = std::time::Instant::now() + limit;
    while !flag.load(Ordering::Acquire) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends one message to the harness's source queue.
async fn send(h: &Harness, m: OutgoingMessage) {
    for r in h.jobs.send_batch(vec![m]).await.unwrap() {
        r.unwrap();
    }
}

/// A job named `hang` blocks its thread ignoring cancellation (for a
/// minute, far past the test: an abandoned thread does not keep the test
/// process from ending); every other job succeeds.
#[derive(Clone, Default)]
struct Hangs {
    hangs_started: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

impl Processor for Hangs {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        if job.id.as_str() == "hang" {
            self.hangs_started.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(Duration::from_secs(60));
        }
        self.done.fetch_add(1, Ordering::AcqRel);
        Ok(Output::text(job.body.clone()))
    }
}

#[tokio::test]
async fn a_hung_job_is_abandoned_its_worker_replaced_and_the_others_complete() {
    let h = Harness::new();
    let p = Hangs::default();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(|c| {
                    fast(c);
                    c.workers = 1;
                    c.visibility_timeout = Duration::from_secs(1);
                    c.max_lease_age = Duration::from_secs(2);
                    c.max_receives = 2;
                    c.hang_grace = Duration::from_millis(300);
                }),
        )
        .start()
        .await
        .unwrap();
    h.send_named(&["hang".to_owned()]).await;
    eventually("the hanging job started", || {
        p.hangs_started.load(Ordering::Acquire) == 1
    })
    .await;
    h.send_jobs(5).await;
    eventually("the five other jobs done, past the hung one", || {
        rt.stats_of("stage").unwrap().acked == 5
    })
    .await;
    let s = rt.stats_of("stage").unwrap();
    assert!(s.workers_replaced >= 1, "{s:?}");
    let health = rt.health().remove(0);
    assert!(health.workers_replaced >= 1, "{health:?}");
    assert!(
        health.status == "degraded" && health.abandoned_workers >= 1,
        "an abandoned thread still running shows: {health:?}"
    );
    assert!(
        health.problems.iter().any(|p| p.contains("replaced")),
        "{health:?}"
    );
    // It hangs every time: after max_receives runs that timed out, it is
    // dead-lettered, and saying why.
    eventually("the hanging job dead-lettered", || {
        h.dlq.depth_now().total() == 1
    })
    .await;
    let entry = h.dlq.snapshot().remove(0);
    assert_eq!(entry.attributes[JOB_ID_ATTRIBUTE], "hang");
    let reason = &entry.attributes[DLQ_REASON_ATTRIBUTE];
    assert!(reason.contains("timed out"), "{reason}");
    assert_eq!(
        p.hangs_started.load(Ordering::Acquire),
        2,
        "two runs, each hung"
    );
    eventually("the second hung thread replaced too", || {
        rt.stats_of("stage").unwrap().workers_replaced == 2
    })
    .await;
    assert_eq!(p.done.load(Ordering::Acquire), 5);
    let report = rt.shutdown().await;
    assert_eq!(report.held_at_exit, 0);
    assert_eq!(h.jobs.depth_now().total(), 0);
}

/// An async job that blocks its thread for 5 s with `std::thread::sleep`.
struct Sleeps {
    asleep: Arc<AtomicBool>,
}

#[ferry::async_trait]
impl AsyncProcessor for Sleeps {
    async fn process(&self, job: &Job, _: &TaskContext) -> Result<Output, ProcessError> {
        self.asleep.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_secs(5));
        self.asleep.store(false, Ordering::Release);
        Ok(Output::text(job.body.clone()))
    }
}

#[tokio::test]
async fn an_async_job_blocking_its_thread_stops_neither_leases_nor_another_pipeline() {
    let h = Harness::new();
    let other = h.local.create_queue("other", QueueOptions::default());
    let asleep = Arc::new(AtomicBool::new(false));
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("blocking")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .async_processor(Sleeps {
                    asleep: asleep.clone(),
                })
                .configure(|c| {
                    fast(c);
                    c.visibility_timeout = Duration::from_secs(2);
                }),
        )
        .pipeline(
            Pipeline::new("other")
                .source(other.clone())
                .dead_letter(h.dlq.clone())
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    h.send_jobs(1).await;
    eventually("the blocking job asleep", || asleep.load(Ordering::Acquire)).await;
    send_named_to(
        other.as_ref(),
        &(0..5).map(|i| format!("o-{i}")).collect::<Vec<_>>(),
    )
    .await;
    let acked = ferry::testkit::wait_until(Duration::from_secs(3), || {
        rt.stats_of("other").unwrap().acked == 5
    })
    .await;
    let still_asleep = asleep.load(Ordering::Acquire);
    assert!(
        acked && still_asleep,
        "the other pipeline acked {} of 5 while the async job blocked its thread",
        rt.stats_of("other").unwrap().acked
    );
    eventually("the blocking job done", || {
        rt.stats_of("blocking").unwrap().acked == 1
    })
    .await;
    let s = rt.stats_of("blocking").unwrap();
    assert_eq!(s.leases_lost, 0, "its lease was kept meanwhile: {s:?}");
    assert_eq!(s.processed, 1, "{s:?}");
    rt.shutdown().await;
    assert_eq!(h.dlq.depth_now().total(), 0);
}

/// A pipeline whose job-id function (run on ferry's I/O thread) blocks that
/// thread for 4 s on the first message with the body `block`, after
/// setting `blocking`.
fn blocks_the_io_thread(h: &Harness, blocking: Arc<AtomicBool>) -> Pipeline {
    let once = AtomicBool::new(false);
    Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .job_id(move |job: &Job| {
            if job.body == "block" && !once.swap(true, Ordering::AcqRel) {
                blocking.store(true, Ordering::Release);
                std::thread::sleep(Duration::from_secs(4));
            }
            None
        })
        .configure(|c| {
            fast(c);
            c.workers = 1;
            c.visibility_timeout = Duration::from_secs(2);
        })
}

#[tokio::test]
async fn a_blocked_io_thread_shows_in_health_while_it_lasts() {
    let h = Harness::new();
    let blocking = Arc::new(AtomicBool::new(false));
    let rt = Runtime::builder()
        .pipeline(blocks_the_io_thread(&h, blocking.clone()).processor(Counting::new))
        .start()
        .await
        .unwrap();
    send(&h, OutgoingMessage::new("block")).await;
    eventually("the I/O thread blocked", || {
        blocking.load(Ordering::Acquire)
    })
    .await;
    let seen = ferry::testkit::wait_until(Duration::from_millis(3500), || {
        rt.health()[0].status == "blocked"
    })
    .await;
    let health = rt.health().remove(0);
    assert!(seen, "health never said blocked: {health:?}");
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.contains("I/O thread has not run")),
        "{health:?}"
    );
    assert!(
        health.io_blocked_ms.is_some_and(|ms| ms >= 1000),
        "{health:?}"
    );
    eventually("health running again once the thread is back", || {
        rt.health()[0].status == "running"
    })
    .await;
    assert!(rt.health()[0].io_blocked_ms.is_none());
    let report = rt.shutdown().await;
    assert!(report.io_thread_blocks >= 1, "{report:?}");
    assert!(report.longest_io_block_ms >= 1000, "{report:?}");
}

/// A job that, on its first delivery, finishes only once the I/O thread is
/// blocked; its output names the delivery.
#[derive(Clone)]
struct Late {
    started: Arc<AtomicBool>,
    blocking: Arc<AtomicBool>,
}

impl Processor for Late {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        if job.id.as_str() == "late" && job.receive_count == 1 {
            self.started.store(true, Ordering::Release);
            block_until(&self.blocking, Duration::from_secs(10));
        }
        Ok(Output::text(format!("receive {}", job.receive_count)))
    }
}

#[tokio::test]
async fn a_job_whose_lease_lapsed_while_the_io_thread_was_blocked_stores_nothing() {
    let h = Harness::new();
    let blocking = Arc::new(AtomicBool::new(false));
    let late = Late {
        started: Arc::default(),
        blocking: blocking.clone(),
    };
    let rt = Runtime::builder()
        .pipeline(blocks_the_io_thread(&h, blocking.clone()).processor({
            let late = late.clone();
            move || late.clone()
        }))
        .start()
        .await
        .unwrap();
    send(
        &h,
        OutgoingMessage::new("late job").attribute(JOB_ID_ATTRIBUTE, "late"),
    )
    .await;
    eventually("the late job started", || {
        late.started.load(Ordering::Acquire)
    })
    .await;
    // Its processor returns once the I/O thread is blocked: the result is
    // ready, and nothing extends the lease. Past its deadline another
    // consumer takes the message.
    send(&h, OutgoingMessage::new("block")).await;
    eventually("the I/O thread blocked", || {
        blocking.load(Ordering::Acquire)
    })
    .await;
    let mut taken = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    while taken.is_empty() && tokio::time::Instant::now() < deadline {
        taken = h
            .jobs
            .receive(1, Duration::ZERO, Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        taken.len(),
        1,
        "the lapsed message was not handed out again"
    );
    assert_eq!(taken[0].attributes[JOB_ID_ATTRIBUTE], "late");
    // The I/O thread comes back: the other job is done, the lapsed lease
    // ends, and its result is not stored.
    eventually("the other job done and the lapsed lease gone", || {
        rt.stats_of("stage").unwrap().acked >= 1 && rt.in_flight() == 0
    })
    .await;
    let stored = h.local.blobs().get("results", "out/late.txt").await;
    assert!(
        stored.is_err(),
        "a result was stored after its lease lapsed: {:?}",
        stored.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
    let s = rt.stats_of("stage").unwrap();
    assert!(s.leases_lost >= 1, "{s:?}");
    // The other consumer gives the message back: ferry runs it afresh.
    h.jobs
        .change_visibility_batch(&[(taken[0].receipt_handle.clone(), Duration::ZERO)])
        .await
        .unwrap();
    eventually("the late job done on its third delivery", || {
        rt.stats_of("stage").unwrap().acked == 2
    })
    .await;
    let body = h
        .local
        .blobs()
        .get("results", "out/late.txt")
        .await
        .unwrap();
    assert_eq!(std::str::from_utf8(&body).unwrap(), "receive 3");
    rt.shutdown().await;
    assert_eq!(h.dlq.depth_now().total(), 0);
}
