//! A runtime dropped without a shutdown stops as a crash would: the worker
//! thread it leaves behind finishes the job in hand (nothing can stop a
//! sync processor from outside) but starts none of the jobs still queued
//! for it. Their messages come back when their visibility lapses, to a
//! worker that is alive.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_starts_no_further_job() {
    let h = Harness::new();
    h.send_jobs(10).await;
    let p = Counting::new();
    p.hold();
    let rt = ten_leases_one_started(&h, &p).await;
    // SIGKILL, as near as a process can come to it from inside.
    tokio::task::spawn_blocking(move || drop(rt)).await.unwrap();
    p.release();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.started_count(),
        1,
        "the thread left behind started a job queued for it after the runtime was dropped"
    );
    assert_eq!(p.total_runs(), 1);
}
