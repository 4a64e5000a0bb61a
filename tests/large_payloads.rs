//! Large payloads on both backends (embedded, and S3/SQS/SNS on moto): a
//! body over the threshold travels as an extended-client pointer, is
//! resolved before the processor sees it, and its object is deleted only
//! after the message is — never a fanned-out notification's object; a
//! pointer to a missing object is dead-lettered with the reason.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{
    BlobStore, EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage, Topic,
};
use ferry::payload::{LargePayloads, PayloadPointer, PAYLOAD_SIZE_ATTRIBUTE};
use ferry::prelude::*;
use ferry::{BackendError, DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// A queue that, at every delete, lists the payload objects that exist.
#[derive(Debug)]
struct Watch {
    inner: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    bucket: String,
    at_delete: Mutex<Vec<Vec<String>>>,
}

#[async_trait]
impl Queue for Watch {
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
        self.inner.receive(max, wait, vis).await
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        let present = self.blobs.list(&self.bucket, "payloads/").await?;
        self.at_delete.lock().unwrap().push(present);
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

/// One backend's resources: a job queue and its DLQ, a topic fanned out
/// (SNS envelope, not raw) to a stage-2 queue and to an observer queue.
struct Env {
    tag: &'static str,
    jobs: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    topic: Arc<dyn Topic>,
    stage2: Arc<dyn Queue>,
    observer: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    bucket: String,
    timing: fn(&mut PipelineConfig),
}

fn local_env() -> Env {
    let local = LocalBackend::new();
    let topic = local.create_topic("done", false);
    let stage2 = local.create_queue("stage2", QueueOptions::default());
    let observer = local.create_queue("observer", QueueOptions::default());
    local.subscribe(&topic, &stage2, false);
    local.subscribe(&topic, &observer, false);
    Env {
        tag: "local",
        jobs: local.create_queue("jobs", QueueOptions::default()),
        dlq: local.create_queue("jobs-dlq", QueueOptions::default()),
        topic,
        stage2,
        observer,
        blobs: local.blobs(),
        bucket: "payload-bucket".into(),
        timing: fast,
    }
}

#[cfg(feature = "aws")]
async fn aws_env(tag: &str) -> Option<Env> {
    use ferry::backend::aws::QueueSpec;
    let h = common::aws::AwsHarness::new(tag).await?;
    let observer = h
        .aws
        .create_queue(&common::aws::unique("observer"), &QueueSpec::default())
        .await
        .unwrap();
    h.aws.subscribe(&h.topic, &observer, false).await.unwrap();
    Some(Env {
        tag: "aws",
        jobs: h.jobs.clone(),
        dlq: h.dlq.clone(),
        topic: h.topic.clone(),
        stage2: h.downstream.clone(),
        observer,
        blobs: h.aws.blobs(),
        bucket: h.bucket.clone(),
        timing: |c| {
            fast(c);
            c.visibility_timeout = Duration::from_secs(5);
            c.receive_wait = Duration::from_secs(1);
        },
    })
}

/// A processor that upper-cases the body it is given and records its size.
#[derive(Clone, Default)]
struct Upper(Arc<Mutex<Vec<(String, usize)>>>);

impl Processor for Upper {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        self.0
            .lock()
            .unwrap()
            .push((job.id.to_string(), job.body.len()));
        Ok(Output::text(job.body.to_uppercase()))
    }
}

fn payloads(env: &Env) -> LargePayloads {
    LargePayloads::new(env.blobs.clone(), env.bucket.clone()).prefix("payloads/")
}

async fn payload_keys(env: &Env) -> Vec<String> {
    env.blobs.list(&env.bucket, "payloads/").await.unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 300 KB in, through stage 1 (no result store: its output, 300 KB, is the
/// notification itself, offloaded) and stage 2 (stores the result).
async fn large_job_round_trips(env: Env) {
    let big: String = (0..300_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let sent = payloads(&env)
        .offload(OutgoingMessage::new(big.clone()).attribute(JOB_ID_ATTRIBUTE, "big-1"))
        .await
        .unwrap();
    let source_ptr = PayloadPointer::parse(&sent.body).expect("the producer sent a pointer");
    assert_eq!(sent.attributes[PAYLOAD_SIZE_ATTRIBUTE], "300000");
    assert!(sent.body.len() < 200, "{}", sent.body);
    for r in env.jobs.send_batch(vec![sent]).await.unwrap() {
        r.unwrap();
    }
    // A small job is left as it is.
    let small = payloads(&env)
        .offload(OutgoingMessage::new("small"))
        .await
        .unwrap();
    assert_eq!(small.body, "small");
    assert_eq!(payload_keys(&env).await, vec![source_ptr.key.clone()]);

    let watch = Arc::new(Watch {
        inner: env.jobs.clone(),
        blobs: env.blobs.clone(),
        bucket: env.bucket.clone(),
        at_delete: Mutex::new(Vec::new()),
    });
    let (p1, p2) = (Upper::default(), Upper::default());
    let (q1, q2) = (p1.clone(), p2.clone());
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage1")
                .source(watch.clone() as Arc<dyn Queue>)
                .dead_letter(env.dlq.clone())
                .topic(env.topic.clone())
                .large_payloads(payloads(&env))
                .processor(move || q1.clone())
                .configure(env.timing),
        )
        .pipeline(
            Pipeline::new("stage2")
                .source(env.stage2.clone())
                .dead_letter(env.dlq.clone())
                .results(env.blobs.clone(), env.bucket.clone(), "out/", "txt")
                .large_payloads(payloads(&env))
                .processor(move || q2.clone())
                .configure(env.timing),
        )
        .start()
        .await
        .unwrap();
    let (blobs, bucket) = (env.blobs.clone(), env.bucket.clone());
    wait_for("the stage-2 result", || {
        let (blobs, bucket) = (blobs.clone(), bucket.clone());
        async move {
            blobs
                .head(&bucket, "out/big-1.txt")
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    wait_for(
        "both queues drained and the source payload deleted",
        || async {
            env.jobs.depth().await.unwrap().total() == 0
                && env.stage2.depth().await.unwrap().total() == 0
                && !payload_keys(&env).await.contains(&source_ptr.key)
        },
    )
    .await;
    let stats = rt.stats_reader();
    rt.shutdown().await;

    // Each processor saw the whole payload, not the pointer.
    assert_eq!(*p1.0.lock().unwrap(), vec![("big-1".to_string(), 300_000)]);
    assert_eq!(*p2.0.lock().unwrap(), vec![("big-1".to_string(), 300_000)]);
    let result = env.blobs.get(&env.bucket, "out/big-1.txt").await.unwrap();
    assert_eq!(result.len(), 300_000);
    assert!(
        result == big.to_uppercase().as_bytes(),
        "the result is not the payload's"
    );
    // The source payload object was still there when its message was deleted.
    let at_delete = watch.at_delete.lock().unwrap().clone();
    assert!(!at_delete.is_empty());
    assert!(
        at_delete[0].contains(&source_ptr.key),
        "the payload object was gone before its message was deleted: {at_delete:?}"
    );
    // The notification went out as a pointer; after stage 2 deleted its
    // copy, the other subscriber can still read the object.
    let seen = env
        .observer
        .receive(10, Duration::from_secs(1), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(seen.len(), 1);
    let notice = Job::from_message(seen[0].clone());
    let ptr = PayloadPointer::of_job(&notice).expect("the notification is a pointer");
    assert_eq!(notice.attributes[PAYLOAD_SIZE_ATTRIBUTE], "300000");
    assert_eq!(notice.id.as_str(), "big-1");
    let kept = env.blobs.get(&ptr.bucket, &ptr.key).await.unwrap();
    assert!(kept == big.to_uppercase().as_bytes());
    assert_eq!(payload_keys(&env).await, vec![ptr.key.clone()]);
    let t = stats.total();
    assert_eq!((t.acked, t.dead_lettered, t.failed), (2, 0, 0), "{t:?}");
    eprintln!(
        "{}: 300000-byte job via {} → stage 2 via {}; deletes saw {:?}",
        env.tag, source_ptr.key, ptr.key, at_delete
    );
}

/// A pointer whose object is missing is dead-lettered with the reason; the
/// worker goes on with the next job.
async fn missing_payload_is_dead_lettered(env: Env) {
    let missing = PayloadPointer {
        bucket: env.bucket.clone(),
        key: "payloads/never-written".into(),
    };
    let msgs = vec![
        OutgoingMessage::new(missing.to_body())
            .attribute(PAYLOAD_SIZE_ATTRIBUTE, "300000")
            .attribute(JOB_ID_ATTRIBUTE, "lost-payload"),
        OutgoingMessage::new("fine").attribute(JOB_ID_ATTRIBUTE, "ok-1"),
    ];
    for r in env.jobs.send_batch(msgs).await.unwrap() {
        r.unwrap();
    }
    let p = Upper::default();
    let q = p.clone();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage1")
                .source(env.jobs.clone())
                .dead_letter(env.dlq.clone())
                .results(env.blobs.clone(), env.bucket.clone(), "out/", "txt")
                .large_payloads(payloads(&env))
                .processor(move || q.clone())
                .configure(env.timing),
        )
        .start()
        .await
        .unwrap();
    wait_for("the source queue drained", || async {
        env.jobs.depth().await.unwrap().total() == 0
    })
    .await;
    // Alive after the bad one: another job goes through.
    for r in env
        .jobs
        .send_batch(vec![
            OutgoingMessage::new("after").attribute(JOB_ID_ATTRIBUTE, "ok-2")
        ])
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let (blobs, bucket) = (env.blobs.clone(), env.bucket.clone());
    wait_for("the job after the bad one", || {
        let (blobs, bucket) = (blobs.clone(), bucket.clone());
        async move { blobs.head(&bucket, "out/ok-2.txt").await.unwrap().is_some() }
    })
    .await;
    wait_for("the source queue drained again", || async {
        env.jobs.depth().await.unwrap().total() == 0
    })
    .await;
    assert!(!rt.stats()[0].escalated);
    let reader = rt.stats_reader();
    rt.shutdown().await;
    let stats = reader.total();

    let dead = env
        .dlq
        .receive(10, Duration::from_secs(1), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = &dead[0].attributes[DLQ_REASON_ATTRIBUTE];
    assert_eq!(dead[0].attributes[JOB_ID_ATTRIBUTE], "lost-payload");
    assert!(
        reason.contains("large payload pointer")
            && reason.contains("missing object")
            && reason.contains("payloads/never-written"),
        "{reason}"
    );
    // The entry keeps the pointer as it arrived.
    assert_eq!(PayloadPointer::parse(&dead[0].body), Some(missing));
    let results = env.blobs.list(&env.bucket, "out/").await.unwrap();
    assert_eq!(results, vec!["out/ok-1.txt", "out/ok-2.txt"]);
    assert_eq!(
        p.0.lock().unwrap().len(),
        2,
        "the processor never saw the bad one"
    );
    assert_eq!((stats.dead_lettered, stats.acked), (1, 2), "{stats:?}");
    eprintln!("{}: dead-lettered with reason {reason:?}", env.tag);
}

/// A message that copies another job's pointer (body and size attribute)
/// under its own job id reads the payload, but its object is deleted only
/// after the job it was written for; an object without ferry's job tag is
/// left in place unless the pipeline opts in.
async fn payload_objects_are_deleted_only_for_their_own_job(env: Env) {
    let exists = |key: String| {
        let (blobs, bucket) = (env.blobs.clone(), env.bucket.clone());
        async move { blobs.head(&bucket, &key).await.unwrap().is_some() }
    };
    let big = "v".repeat(300_000);
    let victim = payloads(&env)
        .offload(OutgoingMessage::new(big.clone()).attribute(JOB_ID_ATTRIBUTE, "victim"))
        .await
        .unwrap();
    let victim_key = PayloadPointer::parse(&victim.body).unwrap().key;
    let mut attack = victim.clone();
    attack
        .attributes
        .insert(JOB_ID_ATTRIBUTE.to_owned(), "attacker".to_owned());
    // Written by another extended client: no tag.
    let foreign = |key: &'static str| {
        let (blobs, bucket, big) = (env.blobs.clone(), env.bucket.clone(), big.clone());
        async move {
            blobs
                .put(
                    &bucket,
                    key,
                    big.clone().into_bytes().into(),
                    Default::default(),
                )
                .await
                .unwrap();
            let pointer = PayloadPointer {
                bucket,
                key: key.to_owned(),
            };
            OutgoingMessage::new(pointer.to_body())
                .attribute(PAYLOAD_SIZE_ATTRIBUTE, big.len().to_string())
                .attribute(JOB_ID_ATTRIBUTE, key.replace('/', "-"))
        }
    };
    let untagged = foreign("payloads/foreign-1").await;
    let untagged_key = PayloadPointer::parse(&untagged.body).unwrap().key;
    env.jobs.send_batch(vec![attack, untagged]).await.unwrap();
    let start = |lp: LargePayloads| {
        Runtime::builder()
            .pipeline(
                Pipeline::new("stage")
                    .source(env.jobs.clone())
                    .dead_letter(env.dlq.clone())
                    .results(env.blobs.clone(), env.bucket.clone(), "out/", "txt")
                    .large_payloads(lp)
                    .processor(Upper::default)
                    .configure(env.timing),
            )
            .start()
    };
    let rt = start(payloads(&env)).await.unwrap();
    let done = |n: usize| {
        let (blobs, bucket, jobs) = (env.blobs.clone(), env.bucket.clone(), env.jobs.clone());
        move || {
            let (blobs, bucket, jobs) = (blobs.clone(), bucket.clone(), jobs.clone());
            async move {
                blobs.list(&bucket, "out/").await.unwrap().len() == n
                    && jobs.depth().await.unwrap().total() == 0
            }
        }
    };
    wait_for("the attacker's and the untagged job's results", done(2)).await;
    // The acker deletes payload objects right after the messages.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        exists(victim_key.clone()).await,
        "{}: the copied pointer deleted the victim's payload",
        env.tag
    );
    assert!(
        exists(untagged_key.clone()).await,
        "{}: an untagged payload object was deleted by default",
        env.tag
    );
    // The victim's own message: it runs, and then its object goes.
    env.jobs.send_batch(vec![victim]).await.unwrap();
    wait_for("the victim's result", done(3)).await;
    wait_for("the victim's object deleted after its job", || {
        let key = victim_key.clone();
        async move { !exists(key).await }
    })
    .await;
    rt.shutdown().await;
    assert_eq!(env.dlq.depth().await.unwrap().total(), 0);
    let result = env.blobs.get(&env.bucket, "out/victim.txt").await.unwrap();
    assert!(result == big.to_uppercase().as_bytes());

    // Opted in: an untagged object goes after its message.
    let again = foreign("payloads/foreign-2").await;
    let again_key = PayloadPointer::parse(&again.body).unwrap().key;
    env.jobs.send_batch(vec![again]).await.unwrap();
    let rt = start(payloads(&env).delete_untagged(true)).await.unwrap();
    wait_for("the opted-in untagged object deleted", || {
        let key = again_key.clone();
        async move { !exists(key).await }
    })
    .await;
    rt.shutdown().await;
    assert!(
        exists(untagged_key).await,
        "only the new message's object went"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_copied_pointer_never_deletes_another_jobs_payload() {
    payload_objects_are_deleted_only_for_their_own_job(local_env()).await;
}

#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_copied_pointer_never_deletes_another_jobs_payload() {
    let Some(env) = aws_env("bigown").await else {
        return;
    };
    payload_objects_are_deleted_only_for_their_own_job(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_large_job_round_trips_and_its_object_goes_after_the_message() {
    large_job_round_trips(local_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_missing_payload_object_is_dead_lettered_with_reason() {
    missing_payload_is_dead_lettered(local_env()).await;
}

#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_large_job_round_trips_and_its_object_goes_after_the_message() {
    let Some(env) = aws_env("big").await else {
        return;
    };
    large_job_round_trips(env).await;
}

#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_missing_payload_object_is_dead_lettered_with_reason() {
    let Some(env) = aws_env("nobig").await else {
        return;
    };
    missing_payload_is_dead_lettered(env).await;
}
