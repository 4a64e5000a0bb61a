//! DESIGN rule 9: back-pressure and graceful shutdown. The poller holds no
//! more than its limit; shutdown releases jobs not yet started at once, lets
//! started ones finish within the grace period, flushes deletes, releases the
//! rest, and exits holding no lease.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry::backend::local::Op;
use ferry::prelude::*;

#[tokio::test]
async fn the_poller_holds_no_more_than_its_limit() {
    let h = Harness::new();
    h.send_jobs(50).await;
    let p = Counting::new().with_delay(Duration::from_millis(30));
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).configure(|c| {
            c.workers = 1;
            c.max_in_flight = 7;
        }))
        .start()
        .await
        .unwrap();
    // Watched from start to the last delete (at most LIMIT).
    let mut peak = 0;
    let deadline = Instant::now() + LIMIT;
    while h.jobs.depth_now().total() > 0 {
        assert!(
            Instant::now() < deadline,
            "the 50 jobs were not done within {LIMIT:?}"
        );
        peak = peak.max(h.jobs.depth_now().in_flight);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rt.shutdown().await;
    assert_eq!(p.total_runs(), 50);
    // With 50 jobs waiting behind one slow worker, the poller fills its
    // window, and never more.
    assert_eq!(peak, 7, "in flight at the queue peaked at {peak}");
}

#[tokio::test]
async fn shutdown_releases_unstarted_jobs_at_once_and_finishes_started_ones() {
    let h = Harness::new();
    h.send_jobs(20).await;
    let p = Counting::new().with_delay(Duration::from_millis(300));
    let rt = common::ten_leases_one_started(&h, &p).await;
    let asked = Instant::now();
    let shutdown = tokio::spawn(rt.shutdown());
    // The nine not started are visible again well within a second, while
    // the started job is still running.
    eventually("unstarted leases released", || {
        h.jobs.depth_now().visible >= 19
    })
    .await;
    let released_after = asked.elapsed();
    assert!(
        released_after < Duration::from_secs(1),
        "took {released_after:?}"
    );
    let report = shutdown.await.unwrap();
    assert_eq!(report.released_unstarted, 9, "{report:?}");
    assert_eq!(report.released_after_grace, 0);
    assert_eq!(report.held_at_exit, 0);
    // The started job finished and was deleted; the rest wait in the queue.
    assert_eq!(p.total_runs(), 1);
    let depth = h.jobs.depth_now();
    assert_eq!((depth.visible, depth.in_flight), (19, 0));
    assert_eq!(h.results().await.len(), 1);
}

/// Runs until its job is cancelled (at most [`LIMIT`]), then returns a
/// result as if it had finished; says whether it saw the cancellation.
struct UntilCancelled {
    started: Arc<AtomicBool>,
    saw_cancel: Arc<AtomicBool>,
    returned: Arc<AtomicBool>,
}

impl Processor for UntilCancelled {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        self.started.store(true, Ordering::Release);
        let deadline = Instant::now() + LIMIT;
        while !ctx.is_cancelled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.saw_cancel.store(ctx.is_cancelled(), Ordering::Release);
        self.returned.store(true, Ordering::Release);
        Ok(Output::text(job.body.clone()))
    }
}

#[tokio::test]
async fn a_job_outliving_the_grace_period_is_cancelled_and_released() {
    let h = Harness::new();
    h.send_jobs(1).await;
    let (started, saw_cancel, returned) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (s, c, r) = (started.clone(), saw_cancel.clone(), returned.clone());
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(Counting::new())
                .processor(move || UntilCancelled {
                    started: s.clone(),
                    saw_cancel: c.clone(),
                    returned: r.clone(),
                })
                .configure(|c| c.visibility_timeout = Duration::from_secs(30)),
        )
        .shutdown_grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    eventually("the job started", || started.load(Ordering::Acquire)).await;
    let report = rt.shutdown().await;
    assert_eq!(report.released_after_grace, 1, "{report:?}");
    assert_eq!(report.held_at_exit, 0);
    assert_eq!(
        h.jobs.depth_now().visible,
        1,
        "the message is back in the queue"
    );
    // The running job is told it was cancelled; its run then returns a
    // result, which goes nowhere: no upload is even tried.
    eventually("the abandoned run returned", || {
        returned.load(Ordering::Acquire)
    })
    .await;
    assert!(
        saw_cancel.load(Ordering::Acquire),
        "the job ran on for {LIMIT:?} without seeing its cancellation"
    );
    assert_eq!(h.local.calls().get(Op::Put), 0, "an upload was tried");
    assert!(
        h.results().await.is_empty(),
        "a cancelled job stored a result"
    );
    assert!(h.downstream.snapshot().is_empty());
}
