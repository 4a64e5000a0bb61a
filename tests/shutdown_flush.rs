//! Shutdown waits for the acker's calls in flight, not only for its
//! buffers to empty (DESIGN rule 9): a delete sent just before the drain
//! lands before the runtime stops, and nothing is left held.

mod common;

use std::time::Duration;

use common::*;
use ferry::backend::local::Op;
use ferry::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_delete_in_flight() {
    let h = Harness::new();
    h.send_jobs(1).await;
    // Deletes are held until the gate opens.
    let gate = h.local.gate(Op::Delete);
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()))
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    eventually("the delete sent", || h.local.calls().get(Op::Delete) >= 1).await;
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gate.open();
    });
    let report = rt.shutdown().await;
    opener.await.unwrap();
    assert_eq!(report.held_at_exit, 0, "{report:?}");
    assert_eq!(
        h.jobs.depth_now().total(),
        0,
        "the delete in flight landed before the runtime stopped: {report:?}"
    );
}
