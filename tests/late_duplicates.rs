//! A late duplicate of a finished offloaded job (DESIGN rule 3): worker A
//! ran a 300 KB job, stored its result and deleted its payload object; a
//! copy of the job delivered afterwards to worker B (a second message of
//! the job, or the same message returned after a delete a replica missed)
//! is deleted as a duplicate, never dead-lettered for its missing payload,
//! and the result A stored stays as it was. For every kind of processor.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use ferry::backend::local::{LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{
    BlobStore, EntryResult, ObjectMeta, OutgoingMessage, Queue, QueueDepth, ReceivedMessage,
};
use ferry::payload::LargePayloads;
use ferry::prelude::*;
use ferry::{BackendError, JOB_ID_ATTRIBUTE};

const JOB: &str = "big-1";
const RESULT: &str = "out/big-1.txt";

struct World {
    local: LocalBackend,
    jobs: Arc<LocalQueue>,
    dlq: Arc<LocalQueue>,
    big: String,
}

impl World {
    fn new() -> Self {
        let local = LocalBackend::new();
        let jobs = local.create_queue("jobs", QueueOptions::default());
        let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
        let big = (0..300_000)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        Self {
            local,
            jobs,
            dlq,
            big,
        }
    }

    /// The job as its producer sends it: a pointer to its offloaded body.
    async fn offloaded(&self) -> OutgoingMessage {
        let sent = LargePayloads::new(self.local.blobs(), "payloads")
            .prefix("payloads/")
            .offload(OutgoingMessage::new(self.big.clone()).attribute(JOB_ID_ATTRIBUTE, JOB))
            .await
            .unwrap();
        assert!(sent.body.len() < 200, "not offloaded: {}", sent.body.len());
        sent
    }

    async fn send(&self, m: OutgoingMessage) {
        for r in self.jobs.send_batch(vec![m]).await.unwrap() {
            r.unwrap();
        }
    }

    /// One worker's pipeline over `source`, its results in `results`.
    fn pipeline(
        &self,
        kind: Kind,
        p: &Counting,
        source: Arc<dyn Queue>,
        results: Arc<dyn BlobStore>,
    ) -> Pipeline {
        kind.register(
            Pipeline::new("stage")
                .source(source)
                .dead_letter(self.dlq.clone())
                .results(results, "results", "out/", "txt")
                .large_payloads(
                    LargePayloads::new(self.local.blobs(), "payloads").prefix("payloads/"),
                ),
            p.clone(),
        )
        .configure(|c| {
            fast(c);
            c.visibility_timeout = Duration::from_secs(2);
        })
    }

    async fn payload_objects(&self) -> Vec<String> {
        self.local
            .blobs()
            .list("payloads", "payloads/")
            .await
            .unwrap()
    }

    async fn result(&self) -> Option<Bytes> {
        match self.local.blobs().get("results", RESULT).await {
            Ok(b) => Some(b),
            Err(BackendError::NotFound { .. }) => None,
            Err(e) => panic!("reading the result: {e}"),
        }
    }

    /// Runs worker A on `source` until the job is acknowledged and its
    /// payload object deleted; returns the result it stored.
    async fn finish_on_a(&self, kind: Kind, source: Arc<dyn Queue>) -> Bytes {
        let a = Counting::new();
        let rt = Runtime::builder()
            .pipeline(self.pipeline(kind, &a, source, self.local.blobs()))
            .start()
            .await
            .unwrap();
        eventually("A acknowledged the job", || rt.total().acked == 1).await;
        eventually_async("A deleted the payload object", || async {
            self.payload_objects().await.is_empty()
        })
        .await;
        rt.shutdown().await;
        assert_eq!(a.runs_of(JOB), 1);
        let stored = self.result().await.expect("A stored the result");
        assert_eq!(stored, Bytes::from(self.big.to_uppercase()));
        stored
    }

    /// Runs worker B until the queue is empty: B deleted the copy without
    /// running it, nothing was dead-lettered, A's result is intact.
    async fn b_drops_the_copy(&self, kind: Kind, results: Arc<dyn BlobStore>, stored: Bytes) {
        let b = Counting::new();
        let rt = Runtime::builder()
            .pipeline(self.pipeline(kind, &b, self.jobs.clone(), results))
            .start()
            .await
            .unwrap();
        eventually("B settled the copy", || {
            let s = rt.total();
            s.acked + s.dead_lettered >= 1
        })
        .await;
        eventually("the queue empty", || self.jobs.depth_now().total() == 0).await;
        let reader = rt.stats_reader();
        rt.shutdown().await;
        let s = reader.total();
        assert_eq!(
            self.dlq.depth_now().total(),
            0,
            "the copy of a finished job was dead-lettered"
        );
        assert_eq!((s.dead_lettered, s.acked), (0, 1), "{s:?}");
        assert_eq!(s.resumed, 1, "{s:?}");
        assert_eq!(b.started_count(), 0, "B ran the finished job again");
        assert_eq!(self.result().await, Some(stored), "the result changed");
    }
}

/// A second message of the job (a send retried after the queue took it):
/// B's first delivery of it, receive count 1, after A finished.
async fn a_copy_after_completion_on_another_worker(kind: Kind) {
    let w = World::new();
    let m = w.offloaded().await;
    w.send(m.clone()).await;
    let stored = w.finish_on_a(kind, w.jobs.clone()).await;
    w.send(m).await;
    assert_eq!(w.jobs.snapshot()[0].receive_count, 0);
    w.b_drops_the_copy(kind, w.local.blobs(), stored).await;
}

for_each_kind!(a_copy_after_completion_on_another_worker);

/// The same message back after A's delete (a replica missed it), receive
/// count 2: B's resume probe ran before A's result was there (it answers
/// "no result" once), so B reaches the payload A deleted meanwhile.
async fn the_same_message_back_after_the_probe_missed_the_result(kind: Kind) {
    let w = World::new();
    w.send(w.offloaded().await).await;
    let missed = Arc::new(MissedDelete(w.jobs.clone()));
    let stored = w.finish_on_a(kind, missed).await;
    let stale = Arc::new(ProbeTooEarly {
        inner: w.local.blobs(),
        answered: AtomicBool::new(false),
    });
    w.b_drops_the_copy(kind, stale.clone(), stored).await;
    assert!(stale.answered.load(Ordering::Acquire), "B never probed");
}

for_each_kind!(the_same_message_back_after_the_probe_missed_the_result);

/// A queue whose deletes are answered but never made: the message returns
/// when its visibility lapses, as when a replica missed the delete.
#[derive(Debug)]
struct MissedDelete(Arc<LocalQueue>);

#[async_trait]
impl Queue for MissedDelete {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn is_fifo(&self) -> bool {
        false
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        vis: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        self.0.receive(max, wait, vis).await
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        Ok(handles.iter().map(|_| Ok(())).collect())
    }
    async fn change_visibility_batch(
        &self,
        e: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.0.change_visibility_batch(e).await
    }
    async fn send_batch(
        &self,
        m: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.0.send_batch(m).await
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.0.depth().await
    }
}

/// A blob store whose first look at a result finds none, as a probe made
/// before another worker stored it would.
#[derive(Debug)]
struct ProbeTooEarly {
    inner: Arc<dyn BlobStore>,
    answered: AtomicBool,
}

#[async_trait]
impl BlobStore for ProbeTooEarly {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> Result<(), BackendError> {
        self.inner.put(bucket, key, body, meta).await
    }
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        self.inner.get(bucket, key).await
    }
    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        self.inner.get_limited(bucket, key, limit).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        if bucket == "results" && !self.answered.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        self.inner.head(bucket, key).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.inner.list(bucket, prefix).await
    }
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        self.inner.delete(bucket, key).await
    }
}
