//! The producer's sends are idempotent, and it refuses what the pipeline
//! would dead-letter: a job's id (and, on FIFO, its deduplication id) is
//! fixed before the first attempt, so a send retried after the queue took
//! it — a timeout that hid a success — is the same job, run once; a job id,
//! group, deduplication id or attribute the pipeline or SQS would refuse is
//! refused before anything is sent, with the pipeline's own reason.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ferry::backend::local::{LocalBackend, LocalQueue, Op, QueueOptions};
use ferry::backend::{EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage};
use ferry::prelude::*;
use ferry::producer::{NewJob, ProduceError, Producer};
use ferry::{BackendError, JOB_ID_ATTRIBUTE, MAX_JOB_ID_BYTES};

/// A queue whose first send takes the messages and then answers with a
/// timeout, as a send whose answer was lost after SQS took it.
#[derive(Debug)]
struct LostAnswer {
    inner: Arc<LocalQueue>,
    lost: AtomicBool,
}

impl LostAnswer {
    fn new(inner: Arc<LocalQueue>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            lost: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Queue for LostAnswer {
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
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        self.inner.receive(max, wait, visibility).await
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        self.inner.delete_batch(handles).await
    }
    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.inner.change_visibility_batch(entries).await
    }
    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        let answers = self.inner.send_batch(messages).await?;
        if !self.lost.swap(true, Ordering::AcqRel) {
            return Err(BackendError::transient(
                "send timed out (the queue took it)",
            ));
        }
        Ok(answers)
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

/// The ids the pipeline gives the messages now in `queue`.
fn ids_in(queue: &LocalQueue) -> Vec<String> {
    queue
        .snapshot()
        .into_iter()
        .map(|m| {
            Job::from_message(ReceivedMessage {
                message_id: m.message_id,
                receipt_handle: String::new(),
                body: m.body,
                attributes: m.attributes,
                receive_count: 1,
                group_id: None,
                dedup_id: None,
            })
            .id
            .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_after_the_queue_took_it_is_the_same_job_run_once() {
    let local = LocalBackend::new();
    let jobs = local.create_queue("jobs", QueueOptions::default());
    let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
    let lossy = LostAnswer::new(jobs.clone());
    // No id given: the producer fixes one before the first attempt.
    let sent = Producer::new(lossy.clone())
        .send(NewJob::new("resize a.png"))
        .await
        .unwrap();
    // The lost answer's send went through, and so did the retry.
    assert_eq!(jobs.depth_now().total(), 2);
    assert_eq!(
        ids_in(&jobs),
        vec![sent.job_id.to_string(); 2],
        "both copies are one job, the one returned"
    );
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(jobs.clone())
                .dead_letter(dlq.clone())
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    eventually("both copies gone", || jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    assert_eq!(p.total_runs(), 1, "{:?}", p.runs.lock().unwrap());
    assert_eq!(p.runs_of(sent.job_id.as_str()), 1);
    assert_eq!(dlq.depth_now().total(), 0);

    // Two jobs with the same body are two jobs: each its own id.
    let q = local.create_queue("other", QueueOptions::default());
    let producer = Producer::new(q.clone());
    let a = producer.send(NewJob::new("same")).await.unwrap();
    let b = producer.send(NewJob::new("same")).await.unwrap();
    assert_ne!(a.job_id, b.job_id);
    let mut ids = ids_in(&q);
    ids.sort();
    let mut want = vec![a.job_id.to_string(), b.job_id.to_string()];
    want.sort();
    assert_eq!(ids, want);
    assert!(q
        .snapshot()
        .iter()
        .all(|m| m.attributes.contains_key(JOB_ID_ATTRIBUTE)));
}

#[tokio::test]
async fn on_fifo_the_retry_carries_the_same_deduplication_id_and_is_dropped() {
    let local = LocalBackend::new();
    let jobs = local.create_queue(
        "jobs.fifo",
        QueueOptions {
            fifo: true,
            ..QueueOptions::default()
        },
    );
    let lossy = LostAnswer::new(jobs.clone());
    let sent = Producer::new(lossy)
        .send(NewJob::new("resize b.png").group("tenant-7"))
        .await
        .unwrap();
    let held = jobs.snapshot();
    assert_eq!(held.len(), 1, "the queue dropped the retry as a duplicate");
    let got = jobs
        .receive(10, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(Job::from_message(got[0].clone()).id, sent.job_id);
}

#[tokio::test]
async fn the_producer_refuses_what_the_pipeline_would_dead_letter() {
    let local = LocalBackend::new();
    let q = local.create_queue("jobs", QueueOptions::default());
    let fifo = local.create_queue(
        "jobs.fifo",
        QueueOptions {
            fifo: true,
            ..QueueOptions::default()
        },
    );
    let producer = Producer::new(q.clone());
    let fifo_producer = Producer::new(fifo.clone());
    let refused = |r: Result<_, ProduceError>, says: &str| match r {
        Err(ProduceError::Invalid(why)) => {
            assert!(why.contains(says), "{why:?} does not say {says:?}")
        }
        other => panic!("not refused: {other:?}"),
    };
    // A 301-byte id: the pipeline's own reason.
    refused(
        producer.send(NewJob::new("x").id("i".repeat(301))).await,
        &format!("over the limit of {MAX_JOB_ID_BYTES}"),
    );
    refused(
        producer.send(NewJob::new("x").id("a\u{1}b")).await,
        "SQS does not allow",
    );
    // The id a job without one falls back to on FIFO, and a derived one.
    refused(
        fifo_producer
            .send(NewJob::new("x").group("g").dedup("d\u{1}"))
            .await,
        "deduplication id",
    );
    let deriving = Producer::new(q.clone()).job_id(|_| Some(JobId::new("k".repeat(300))));
    refused(deriving.send(NewJob::new("x")).await, "over the limit");
    // Groups and deduplication ids SQS refuses.
    refused(
        fifo_producer
            .send(NewJob::new("x").id("a").group("has space"))
            .await,
        "message group id",
    );
    refused(
        fifo_producer
            .send(NewJob::new("x").id("a").group("g".repeat(129)))
            .await,
        "message group id",
    );
    // Attributes SQS refuses, and one only offloading sets.
    refused(
        producer
            .send(NewJob::new("x").attribute("has space", "v"))
            .await,
        "attribute name",
    );
    refused(
        producer
            .send(NewJob::new("x").attribute("AWS.trace", "v"))
            .await,
        "reserved",
    );
    refused(
        producer
            .send(NewJob::new("x").attribute("tenant", "a\u{1}"))
            .await,
        "SQS does not allow",
    );
    refused(
        producer
            .send(NewJob::new("x").attribute("ExtendedPayloadSize", "12"))
            .await,
        "offloading",
    );
    assert_eq!(local.calls().get(Op::Send), 0, "nothing was sent");

    // What the producer takes, the pipeline runs: the longest id and
    // group, punctuation in both.
    let longest = format!("{}/é", "i".repeat(MAX_JOB_ID_BYTES - 3));
    assert_eq!(longest.len(), MAX_JOB_ID_BYTES);
    let sent = producer.send(NewJob::new("x").id(&longest)).await.unwrap();
    assert_eq!(sent.job_id.as_str(), longest);
    fifo_producer
        .send(NewJob::new("y").id("f").group("g!#".repeat(42)))
        .await
        .unwrap();
    let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(q.clone())
                .dead_letter(dlq.clone())
                .processor({
                    let p = p.clone();
                    move || p.clone()
                })
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    eventually("the job run", || q.depth_now().total() == 0).await;
    rt.shutdown().await;
    assert_eq!(p.runs_of(&longest), 1);
    assert_eq!(dlq.depth_now().total(), 0, "nothing dead-lettered");
}
