//! An effect's call is bounded by its lease (DESIGN rule 5): a call that
//! started in time but is still in flight when the lease is lost is
//! dropped, so it cannot land after the job's next delivery has been
//! settled some other way (dead-lettered, or run and stored again).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferry::backend::{BlobStore, ObjectMeta};
use ferry::prelude::*;
use ferry::BackendError;

/// A blob store whose first write takes two seconds before it lands.
#[derive(Debug)]
struct SlowFirstPut {
    inner: Arc<dyn BlobStore>,
    first: AtomicBool,
    landed_late: Arc<AtomicBool>,
    landed: Arc<AtomicUsize>,
}

#[ferry::async_trait]
impl BlobStore for SlowFirstPut {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> Result<(), BackendError> {
        let slow = self.first.swap(false, Ordering::AcqRel);
        if slow {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let r = self.inner.put(bucket, key, body, meta).await;
        if slow {
            self.landed_late.store(true, Ordering::Release);
        }
        self.landed.fetch_add(1, Ordering::AcqRel);
        r
    }
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        self.inner.get(bucket, key).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        self.inner.head(bucket, key).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.inner.list(bucket, prefix).await
    }
}

/// The first upload is slower than the lease may live (its age limit is
/// 800 ms, after which it is no longer extended): the lease's deadline
/// passes while the upload is in flight. The first upload must never land:
/// it was dropped with its lease. The result lands once, from a later try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_flight_when_its_lease_is_lost_never_lands() {
    let h = Harness::new();
    let (landed_late, landed) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let blobs = Arc::new(SlowFirstPut {
        inner: h.local.blobs(),
        first: AtomicBool::new(true),
        landed_late: landed_late.clone(),
        landed: Arc::clone(&landed),
    });
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(p.clone())
                .results(blobs as Arc<dyn BlobStore>, "results", "out/", "txt")
                .configure(|c| {
                    c.workers = 1;
                    c.visibility_timeout = Duration::from_millis(300);
                    c.max_lease_age = Duration::from_millis(800);
                    // Neither a stall watch nor a call's own timeout may
                    // stop the slow upload: only its lease.
                    c.stall_timeout = Duration::from_secs(20);
                    c.call_timeout = Duration::from_secs(20);
                }),
        )
        .start()
        .await
        .unwrap();
    h.send_named(&["J".into()]).await;
    eventually("the job settled", || h.jobs.depth_now().total() == 0).await;
    // Past the moment the first upload would have landed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stats = rt.total();
    rt.shutdown().await;
    eprintln!("{stats:?}");
    assert!(
        !landed_late.load(Ordering::Acquire),
        "the upload begun under the lost lease landed after it"
    );
    assert_eq!(landed.load(Ordering::Acquire), 1, "one upload landed");
    // Run again after the lease was lost, or once: the message, returned,
    // came back to this worker while the job's effects were under way and
    // was merged into its lease (a delivery of its own message), whose
    // upload was then tried again.
    assert!((1..=2).contains(&p.runs_of("J")), "{} runs", p.runs_of("J"));
    assert!(h.dlq.snapshot().is_empty());
}
