//! Harness for tests against a real SQS/SNS/S3 wire protocol (a moto server
//! started by `scripts/test`). Each test gets its own queues, topic and
//! bucket.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry::backend::aws::{AwsBackend, AwsOptions, QueueSpec, SnsTopic, SqsQueue};
use ferry::backend::{
    EntryResult, Notification, OutgoingMessage, Queue, QueueDepth, ReceivedMessage, Topic,
};
use ferry::prelude::*;
use ferry::BackendError;
use tokio::sync::watch;

use super::{fast, Counting};

/// The endpoint, or None (skip) when the test command did not start moto.
/// Under `scripts/test` (`FERRY_TEST_AWS=required`) a missing endpoint fails.
pub fn endpoint() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert_ne!(
                std::env::var("FERRY_TEST_AWS").as_deref(),
                Ok("required"),
                "FERRY_TEST_AWS=required but AWS_ENDPOINT_URL is not set"
            );
            eprintln!("skipped: AWS_ENDPOINT_URL is not set (scripts/test starts a moto server)");
            None
        }
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t{}-{}-{nanos:x}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn backend() -> AwsBackend {
    AwsBackend::load(AwsOptions {
        force_path_style: true,
        ..AwsOptions::default()
    })
    .await
}

pub struct AwsHarness {
    pub aws: AwsBackend,
    pub jobs: Arc<SqsQueue>,
    pub dlq: Arc<SqsQueue>,
    pub topic: Arc<SnsTopic>,
    pub downstream: Arc<SqsQueue>,
    pub bucket: String,
}

impl AwsHarness {
    pub async fn new(tag: &str) -> Option<Self> {
        endpoint()?;
        let aws = backend().await;
        let name = unique(tag);
        let dlq = aws
            .create_queue(&format!("{name}-dlq"), &QueueSpec::default())
            .await
            .unwrap();
        let jobs = aws
            .create_queue(&format!("{name}-jobs"), &QueueSpec::default())
            .await
            .unwrap();
        let downstream = aws
            .create_queue(&format!("{name}-next"), &QueueSpec::default())
            .await
            .unwrap();
        let topic = aws
            .create_topic(&format!("{name}-done"), false)
            .await
            .unwrap();
        aws.subscribe(&topic, &downstream, false).await.unwrap();
        let bucket = name.to_lowercase();
        aws.create_bucket(&bucket).await.unwrap();
        Some(Self {
            aws,
            jobs,
            dlq,
            topic,
            downstream,
            bucket,
        })
    }

    pub async fn send_named(&self, ids: &[String]) {
        super::send_named_to(self.jobs.as_ref(), ids).await;
    }

    pub async fn send_jobs(&self, n: usize) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
        self.send_named(&ids).await;
        ids
    }

    /// A pipeline over these resources, with timings fit for moto.
    pub fn pipeline(&self, processor: Counting) -> Pipeline {
        self.pipeline_with(self.jobs.clone(), self.topic.clone(), processor)
    }

    pub fn pipeline_with(
        &self,
        source: Arc<dyn Queue>,
        topic: Arc<dyn Topic>,
        processor: Counting,
    ) -> Pipeline {
        Pipeline::new("stage")
            .source(source)
            .dead_letter(self.dlq.clone())
            .results(self.aws.blobs(), self.bucket.clone(), "out/", "txt")
            .topic(topic)
            .processor(move || processor.clone())
            .configure(|c| {
                fast(c);
                c.visibility_timeout = Duration::from_secs(2);
                c.receive_wait = Duration::from_secs(1);
            })
    }

    pub async fn depth(&self, q: &SqsQueue) -> QueueDepth {
        q.depth().await.unwrap()
    }

    pub async fn results(&self) -> Vec<String> {
        use ferry::backend::BlobStore;
        self.aws.blobs().list(&self.bucket, "out/").await.unwrap()
    }

    /// Reads every message of a queue without deleting it.
    pub async fn drain_view(&self, q: &SqsQueue) -> Vec<ReceivedMessage> {
        let mut out = Vec::new();
        loop {
            let got = q
                .receive(10, Duration::ZERO, Duration::from_secs(60))
                .await
                .unwrap();
            if got.is_empty() {
                return out;
            }
            out.extend(got);
        }
    }
}

/// A topic whose publishes wait until `release` (a worker frozen before its
/// notification is accepted).
#[derive(Debug)]
pub struct Hold {
    pub inner: Arc<dyn Topic>,
    pub open: watch::Sender<bool>,
}

impl Hold {
    pub fn new(inner: Arc<dyn Topic>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            open: watch::channel(false).0,
        })
    }
}

#[async_trait]
impl Topic for Hold {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    async fn publish_batch(
        &self,
        n: Vec<Notification>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|o| *o).await;
        self.inner.publish_batch(n).await
    }
}

/// A queue that records the receipt handles it receives and deletes with.
#[derive(Debug)]
pub struct Tap {
    pub inner: Arc<SqsQueue>,
    pub received: Mutex<Vec<String>>,
    pub deleted: Mutex<Vec<String>>,
}

#[async_trait]
impl Queue for Tap {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        vis: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        let got = self.inner.receive(max, wait, vis).await?;
        self.received
            .lock()
            .unwrap()
            .extend(got.iter().map(|m| m.receipt_handle.clone()));
        Ok(got)
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        self.deleted.lock().unwrap().extend(handles.iter().cloned());
        self.inner.delete_batch(handles).await
    }
    async fn change_visibility_batch(
        &self,
        e: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.inner.change_visibility_batch(e).await
    }
    async fn send_batch(
        &self,
        m: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.inner.send_batch(m).await
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}
