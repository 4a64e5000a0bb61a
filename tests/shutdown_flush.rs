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

/// A blob store whose deletes take a while.
#[derive(Debug)]
struct SlowDeletes(std::sync::Arc<dyn ferry::BlobStore>);

#[ferry::async_trait]
impl ferry::BlobStore for SlowDeletes {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: bytes::Bytes,
        meta: ferry::backend::ObjectMeta,
    ) -> Result<(), ferry::BackendError> {
        self.0.put(bucket, key, body, meta).await
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<bytes::Bytes, ferry::BackendError> {
        self.0.get(bucket, key).await
    }

    async fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<ferry::backend::ObjectMeta>, ferry::BackendError> {
        self.0.head(bucket, key).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, ferry::BackendError> {
        self.0.list(bucket, prefix).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ferry::BackendError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.0.delete(bucket, key).await
    }
}

/// The large-payload object of a job acked just before the drain is
/// deleted before the runtime stops: shutdown waits for the acker's calls
/// in flight, not only for its leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_payload_delete_in_flight() {
    use ferry::backend::{BlobStore, OutgoingMessage, Queue};
    use ferry::payload::LargePayloads;
    let h = Harness::new();
    let slow: std::sync::Arc<dyn ferry::BlobStore> =
        std::sync::Arc::new(SlowDeletes(h.local.blobs()));
    // Over the notices' size too: they are offloaded beside it and stay.
    let payloads = LargePayloads::new(slow, "payloads").threshold(800);
    let m = payloads
        .offload(OutgoingMessage::new("x".repeat(1_000)).attribute(ferry::JOB_ID_ATTRIBUTE, "big"))
        .await
        .unwrap();
    h.jobs.send_batch(vec![m]).await.unwrap();
    let before = h.local.blobs().list("payloads", "").await.unwrap();
    assert_eq!(before.len(), 1);
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).large_payloads(payloads))
        .start()
        .await
        .unwrap();
    eventually("the job acked", || {
        rt.stats_of("stage").is_some_and(|s| s.acked == 1)
    })
    .await;
    // The payload's delete is under way (it takes 400 ms): stop now.
    let report = rt.shutdown().await;
    assert_eq!(report.held_at_exit, 0, "{report:?}");
    let after = h.local.blobs().list("payloads", "").await.unwrap();
    assert!(
        !after.contains(&before[0]),
        "the job's payload object was left behind: {after:?} {report:?}"
    );
}
