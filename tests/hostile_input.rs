//! Messages are untrusted input. A corpus of hostile messages, on both
//! backends (embedded, and SQS/S3 on moto): each ends as the README says
//! (a result, or the dead-letter queue with a reason that says why), the
//! worker stays up, and nothing outside the pipeline's own buckets is read,
//! written or deleted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{BlobStore, ObjectMeta, OutgoingMessage, Queue, ReceivedMessage};
use ferry::payload::{LargePayloads, LEGACY_POINTER_CLASS, PAYLOAD_SIZE_ATTRIBUTE};
use ferry::prelude::*;
use ferry::{BackendError, DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};
use ferry_actors::{samples, Stage1};

/// A blob store that records every bucket it is asked about.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn BlobStore>,
    touched: Mutex<Vec<(&'static str, String, String)>>,
}

impl Recording {
    fn note(&self, op: &'static str, bucket: &str, key: &str) {
        self.touched
            .lock()
            .unwrap()
            .push((op, bucket.to_owned(), key.to_owned()));
    }
}

#[async_trait]
impl BlobStore for Recording {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> Result<(), BackendError> {
        self.note("put", bucket, key);
        self.inner.put(bucket, key, body, meta).await
    }
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        self.note("get", bucket, key);
        self.inner.get(bucket, key).await
    }
    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        self.note("get", bucket, key);
        self.inner.get_limited(bucket, key, limit).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        self.note("head", bucket, key);
        self.inner.head(bucket, key).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.note("list", bucket, prefix);
        self.inner.list(bucket, prefix).await
    }
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        self.note("delete", bucket, key);
        self.inner.delete(bucket, key).await
    }
}

/// One backend's resources: a job queue, its dead-letter queue, the
/// pipeline's three buckets and one it must never touch.
struct Env {
    tag: &'static str,
    jobs: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    input: String,
    results: String,
    payloads: String,
    secrets: String,
    timing: fn(&mut PipelineConfig),
}

fn local_env() -> Env {
    let local = LocalBackend::new();
    Env {
        tag: "local",
        jobs: local.create_queue("jobs", QueueOptions::default()),
        dlq: local.create_queue("jobs-dlq", QueueOptions::default()),
        blobs: local.blobs(),
        input: "corpus-in".into(),
        results: "corpus-out".into(),
        payloads: "corpus-payloads".into(),
        secrets: "secrets".into(),
        timing: fast,
    }
}

#[cfg(feature = "aws")]
async fn aws_env(tag: &str) -> Option<Env> {
    let h = common::aws::AwsHarness::new(tag).await?;
    let name = |s: &str| format!("{}-{s}", h.bucket);
    for b in ["in", "pay", "secrets"] {
        h.aws.create_bucket(&name(b)).await.unwrap();
    }
    Some(Env {
        tag: "aws",
        jobs: h.jobs.clone(),
        dlq: h.dlq.clone(),
        blobs: h.aws.blobs(),
        input: name("in"),
        results: h.bucket.clone(),
        payloads: name("pay"),
        secrets: name("secrets"),
        timing: |c| {
            fast(c);
            c.visibility_timeout = Duration::from_secs(5);
            c.receive_wait = Duration::from_secs(1);
        },
    })
}

/// How a case must end.
#[derive(Debug, Clone)]
enum Expect {
    /// A stage-1 result for the case's job id (the id stage 1 derives from
    /// an S3 event, else the case's name).
    Result,
    /// One stage-1 result for each of these job ids.
    Results(Vec<JobId>),
    /// No result and no dead letter (acknowledged without work).
    Nothing,
    /// A dead-letter entry whose reason contains this.
    Dead(&'static str),
}

struct Case {
    name: &'static str,
    message: OutgoingMessage,
    expect: Expect,
    /// Sent as this many messages (an S3 event delivered twice).
    copies: usize,
}

impl Case {
    fn new(name: &'static str, message: OutgoingMessage, expect: Expect) -> Self {
        Self {
            name,
            message,
            expect,
            copies: 1,
        }
    }

    /// The job ids the case's results are stored under.
    fn result_ids(&self) -> Vec<JobId> {
        match &self.expect {
            Expect::Result => vec![ferry_actors::s3_event_job_id(&self.message.body)
                .unwrap_or_else(|| JobId::new(self.name))],
            Expect::Results(ids) => ids.clone(),
            _ => Vec::new(),
        }
    }
}

const LIMIT_BYTES: usize = 200_000;
/// A body that fits SQS's limit with its job id, but not with a dead-letter
/// entry's attributes beside it.
const AT_LIMIT: usize = 262_144 - 100;

fn pointer(class: &str, bucket: &str, key: &str) -> String {
    serde_json::json!([class, {"s3BucketName": bucket, "s3Key": key}]).to_string()
}

fn s3_event(bucket: &str, encoded_key: &str) -> String {
    serde_json::json!({"Records": [{
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": encoded_key, "size": 1}}
    }]})
    .to_string()
}

fn s3_event_versioned(bucket: &str, key: &str, sequencer: &str) -> String {
    serde_json::json!({"Records": [{
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1, "sequencer": sequencer}}
    }]})
    .to_string()
}

async fn corpus(env: &Env) -> Vec<Case> {
    let put = |bucket: String, key: &'static str, body: Vec<u8>| {
        let blobs = env.blobs.clone();
        async move {
            blobs
                .put(&bucket, key, body.into(), ObjectMeta::default())
                .await
                .unwrap()
        }
    };
    put(env.secrets.clone(), "db-password", b"hunter2".to_vec()).await;
    put(env.input.clone(), "ok.png", samples::synthetic_png(1, 32)).await;
    put(
        env.input.clone(),
        "café ✓.png",
        samples::synthetic_png(2, 32),
    )
    .await;
    put(
        env.input.clone(),
        "日本/画像.png",
        samples::synthetic_png(3, 32),
    )
    .await;
    put(env.input.clone(), "huge.png", vec![7; 300_000]).await;
    put(env.payloads.clone(), "payloads/legacy", {
        let body = serde_json::json!({"bucket": env.input, "key": "ok.png"});
        body.to_string().into_bytes()
    })
    .await;
    put(env.payloads.clone(), "payloads/huge", vec![b'x'; 300_000]).await;
    put(env.payloads.clone(), "elsewhere/body", {
        let body = serde_json::json!({"bucket": env.input, "key": "ok.png"});
        body.to_string().into_bytes()
    })
    .await;

    let plain =
        |bucket: &str, key: &str| serde_json::json!({"bucket": bucket, "key": key}).to_string();
    let offloaded = |body: String, size: &str| {
        OutgoingMessage::new(body).attribute(PAYLOAD_SIZE_ATTRIBUTE, size.to_owned())
    };
    let modern = ferry::payload::POINTER_CLASS;
    let many = serde_json::json!({"Records": (0..5).map(|i| serde_json::json!({
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": env.input}, "object": {"key": "ok.png", "sequencer": format!("00{i:016X}")}}
    })).collect::<Vec<_>>()})
    .to_string();
    let mut ten = OutgoingMessage::new(plain(&env.input, "missing.png"));
    for i in 0..9 {
        ten = ten.attribute(format!("user-{i}"), format!("value {i}"));
    }
    let mut junk_with_ten = OutgoingMessage::new("x".repeat(250_000));
    for i in 0..9 {
        junk_with_ten = junk_with_ten.attribute(format!("user-{i}"), "v".repeat(100));
    }
    vec![
        Case::new(
            "plain-good",
            OutgoingMessage::new(plain(&env.input, "ok.png")),
            Expect::Result,
        ),
        Case::new(
            "event-percent-encoded-key",
            OutgoingMessage::new(s3_event(&env.input, "caf%C3%A9+%E2%9C%93.png")),
            Expect::Result,
        ),
        Case::new(
            "plain-non-ascii-key",
            OutgoingMessage::new(plain(&env.input, "日本/画像.png")),
            Expect::Result,
        ),
        Case::new(
            "legacy-pointer-class",
            offloaded(
                pointer(LEGACY_POINTER_CLASS, &env.payloads, "payloads/legacy"),
                "40",
            ),
            Expect::Result,
        ),
        Case::new(
            "pointer-to-foreign-bucket",
            offloaded(pointer(modern, &env.secrets, "db-password"), "7"),
            Expect::Dead("not followed"),
        ),
        Case::new(
            "legacy-pointer-to-foreign-bucket",
            offloaded(
                pointer(LEGACY_POINTER_CLASS, &env.secrets, "db-password"),
                "7",
            ),
            Expect::Dead("not followed"),
        ),
        Case::new(
            "pointer-outside-the-payload-prefix",
            offloaded(pointer(modern, &env.payloads, "elsewhere/body"), "40"),
            Expect::Dead("not followed"),
        ),
        Case::new(
            "pointer-dotdot-bucket",
            offloaded(pointer(modern, "..", "payloads/x"), "7"),
            Expect::Dead("not a valid bucket name"),
        ),
        Case::new(
            "pointer-dotdot-key",
            offloaded(
                pointer(modern, &env.payloads, "payloads/../../secrets/db-password"),
                "7",
            ),
            Expect::Dead("segment"),
        ),
        Case::new(
            "pointer-declared-size-over-limit",
            offloaded(
                pointer(modern, &env.payloads, "payloads/huge"),
                "1000000000000",
            ),
            Expect::Dead("declared size"),
        ),
        Case::new(
            "pointer-object-over-limit",
            offloaded(pointer(modern, &env.payloads, "payloads/huge"), "10"),
            Expect::Dead("over the limit"),
        ),
        Case::new(
            "input-in-foreign-bucket",
            OutgoingMessage::new(plain(&env.secrets, "db-password")),
            Expect::Dead("outside the buckets"),
        ),
        Case::new(
            "input-dotdot-bucket",
            OutgoingMessage::new(plain("..", "db-password")),
            Expect::Dead("not a valid bucket name"),
        ),
        Case::new(
            "input-absolute-bucket",
            OutgoingMessage::new(plain("/etc", "passwd")),
            Expect::Dead("not a valid bucket name"),
        ),
        Case::new(
            "input-dotdot-key",
            OutgoingMessage::new(plain(&env.input, "../secrets/db-password")),
            Expect::Dead("segment"),
        ),
        Case::new(
            "input-object-over-limit",
            OutgoingMessage::new(plain(&env.input, "huge.png")),
            Expect::Dead("over the limit"),
        ),
        Case::new(
            "ten-attributes-already",
            ten,
            Expect::Dead("missing object"),
        ),
        Case::new(
            "deeply-nested-json",
            OutgoingMessage::new("[".repeat(100_000)),
            Expect::Dead("malformed"),
        ),
        Case::new(
            "nested-pointer-lookalike",
            offloaded(format!("{}\"{modern}\"", "[".repeat(1000)), "7"),
            Expect::Dead("malformed"),
        ),
        Case::new(
            "junk-at-the-size-limit",
            OutgoingMessage::new("y".repeat(AT_LIMIT)),
            Expect::Dead("malformed"),
        ),
        Case::new(
            "junk-near-the-size-limit-with-ten-attributes",
            junk_with_ten,
            Expect::Dead("malformed"),
        ),
        Case::new(
            "s3-test-event",
            OutgoingMessage::new(format!(
                r#"{{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "{}"}}"#,
                env.input
            )),
            Expect::Nothing,
        ),
        Case::new(
            "s3-event-many-records",
            OutgoingMessage::new(many.clone()),
            Expect::Results(
                ferry_actors::split_s3_event(&many)
                    .expect("several records")
                    .iter()
                    .map(|part| ferry_actors::s3_event_job_id(part).expect("one record"))
                    .collect(),
            ),
        ),
        Case {
            copies: 2,
            ..Case::new(
                "s3-event-duplicated",
                OutgoingMessage::new(s3_event_versioned(
                    &env.input,
                    "ok.png",
                    "0055AED6DCD90281E5",
                )),
                Expect::Result,
            )
        },
        Case::new(
            "fixed-later",
            OutgoingMessage::new(plain(&env.input, "later.png")),
            Expect::Dead("missing object"),
        ),
    ]
}

/// Reads every dead-letter entry: job id → (reason, attribute count, body length).
async fn dead_letters(dlq: &dyn Queue, want: usize) -> BTreeMap<String, (String, usize, usize)> {
    let mut out = BTreeMap::new();
    let mut handles = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < want && tokio::time::Instant::now() < deadline {
        let got: Vec<ReceivedMessage> = dlq
            .receive(10, Duration::from_millis(200), Duration::from_secs(60))
            .await
            .unwrap();
        for m in got {
            let id = m
                .attributes
                .get(JOB_ID_ATTRIBUTE)
                .cloned()
                .unwrap_or_default();
            let reason = m
                .attributes
                .get(DLQ_REASON_ATTRIBUTE)
                .cloned()
                .unwrap_or_default();
            out.insert(id, (reason, m.attributes.len(), m.body.len()));
            handles.push(m.receipt_handle);
        }
    }
    // Read, not consumed: visible again for the redrive that follows.
    for chunk in handles.chunks(10) {
        let back: Vec<(String, Duration)> =
            chunk.iter().map(|h| (h.clone(), Duration::ZERO)).collect();
        dlq.change_visibility_batch(&back).await.unwrap();
    }
    out
}

async fn hostile_corpus(env: Env) {
    let cases = corpus(&env).await;
    let messages: Vec<OutgoingMessage> = cases
        .iter()
        .flat_map(|c| {
            let m = if c.name.starts_with("s3-") {
                c.message.clone()
            } else {
                c.message.clone().attribute(JOB_ID_ATTRIBUTE, c.name)
            };
            std::iter::repeat_n(m, c.copies)
        })
        .collect();
    for range in ferry::backend::batches(&messages) {
        for r in env.jobs.send_batch(messages[range].to_vec()).await.unwrap() {
            r.unwrap();
        }
    }
    let recording = Arc::new(Recording {
        inner: env.blobs.clone(),
        touched: Mutex::new(Vec::new()),
    });
    let timing = env.timing;
    let rt = Runtime::builder()
        .pipeline(
            Stage1::pipeline(Pipeline::new("stage1"))
                .source(env.jobs.clone())
                .dead_letter(env.dlq.clone())
                .results(recording.clone(), env.results.clone(), "stage1/", "png")
                .reads_from(env.input.clone())
                .large_payloads(
                    LargePayloads::new(recording.clone(), env.payloads.clone()).prefix("payloads/"),
                )
                .processor(Stage1::default)
                .configure(|c| {
                    timing(c);
                    c.max_fetch_bytes = LIMIT_BYTES;
                }),
        )
        .start()
        .await
        .unwrap();

    let want_dead = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Dead(_)))
        .count();
    let dead = dead_letters(env.dlq.as_ref(), want_dead).await;
    let want_results: Vec<String> = cases
        .iter()
        .flat_map(|c| c.result_ids())
        .map(|id| format!("stage1/{}.png", id.key_safe()))
        .collect();
    let results = &env.results;
    let blobs = env.blobs.clone();
    eventually_async("every good case's result", || {
        let blobs = blobs.clone();
        let keys = want_results.clone();
        async move {
            let have = blobs.list(results, "stage1/").await.unwrap();
            keys.iter().all(|k| have.contains(k))
        }
    })
    .await;
    eventually_async("the queue drained", || {
        let q = env.jobs.clone();
        async move { q.depth().await.unwrap().total() == 0 }
    })
    .await;

    // The worker is still up: a good job sent now finishes.
    env.jobs
        .send_batch(vec![OutgoingMessage::new(
            serde_json::json!({"bucket": env.input, "key": "ok.png"}).to_string(),
        )
        .attribute(JOB_ID_ATTRIBUTE, "after-the-corpus")])
        .await
        .unwrap();
    let blobs = env.blobs.clone();
    eventually_async("a good job after the corpus", || {
        let blobs = blobs.clone();
        async move {
            blobs
                .list(results, "stage1/after-the-corpus")
                .await
                .unwrap()
                .len()
                == 1
        }
    })
    .await;

    // A redrive after a fix: the object appears, the entry goes back, and
    // the same worker runs the job.
    env.blobs
        .put(
            &env.input,
            "later.png",
            samples::synthetic_png(4, 32).into(),
            ObjectMeta::default(),
        )
        .await
        .unwrap();
    let report = ferry::dlq::redrive(
        env.dlq.as_ref(),
        env.jobs.as_ref(),
        &ferry::dlq::RedriveOptions {
            reason_contains: Some("later.png".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.moved, 1, "[{}] {report:?}", env.tag);
    let blobs = env.blobs.clone();
    eventually_async("the redriven job's result", || {
        let blobs = blobs.clone();
        async move {
            blobs
                .list(results, "stage1/fixed-later")
                .await
                .unwrap()
                .len()
                == 1
        }
    })
    .await;
    let stats = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;

    // Exactly the results the corpus calls for: none for the test event,
    // one for the duplicated event, one per record of the split one.
    let mut have = env.blobs.list(results, "stage1/").await.unwrap();
    have.sort();
    let mut want = want_results.clone();
    want.extend([
        "stage1/after-the-corpus.png".to_string(),
        "stage1/fixed-later.png".to_string(),
    ]);
    want.sort();
    want.dedup();
    assert_eq!(have, want, "[{}]", env.tag);
    assert_eq!(stats.s3_test_events, 1, "[{}] {stats:?}", env.tag);
    assert_eq!(stats.split_messages, 1, "[{}] {stats:?}", env.tag);

    let mut wrong = Vec::new();
    for c in &cases {
        let id = c
            .result_ids()
            .first()
            .map_or(c.name.to_string(), |i| i.to_string());
        match (&c.expect, dead.get(&id)) {
            (Expect::Result | Expect::Results(_) | Expect::Nothing, None) => {}
            (Expect::Result | Expect::Results(_) | Expect::Nothing, Some((reason, ..))) => {
                wrong.push(format!("{}: dead-lettered ({reason})", c.name))
            }
            (Expect::Dead(want), Some((reason, attrs, _))) => {
                if !reason.contains(want) {
                    wrong.push(format!("{}: reason {reason:?} lacks {want:?}", c.name));
                }
                if *attrs > 10 {
                    wrong.push(format!("{}: entry with {attrs} attributes", c.name));
                }
            }
            (Expect::Dead(want), None) => {
                wrong.push(format!("{}: not dead-lettered (wanted {want:?})", c.name))
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "[{}] {wrong:#?}\ndead: {dead:#?}",
        env.tag
    );
    assert_eq!(dead.len(), want_dead, "[{}] {dead:#?}", env.tag);
    assert_eq!(
        stats.dead_lettered as usize, want_dead,
        "[{}] {stats:?}",
        env.tag
    );

    // Nothing outside the pipeline's own buckets was touched, and the
    // secret is where it was.
    let own: BTreeSet<&str> = [&env.input, &env.results, &env.payloads]
        .into_iter()
        .map(String::as_str)
        .collect();
    let touched = recording.touched.lock().unwrap().clone();
    let outside: Vec<_> = touched
        .iter()
        .filter(|(_, b, _)| !own.contains(b.as_str()))
        .collect();
    assert!(outside.is_empty(), "[{}] touched {outside:?}", env.tag);
    // Every payload object here was written by hand, not by ferry's offload
    // for its job: none carries the job tag, so none is deleted.
    let deletes: Vec<_> = touched.iter().filter(|(op, ..)| *op == "delete").collect();
    assert!(deletes.is_empty(), "[{}] deleted {deletes:?}", env.tag);
    assert_eq!(
        env.blobs.get(&env.secrets, "db-password").await.unwrap(),
        Bytes::from_static(b"hunter2")
    );
    // The legacy pointer's object (another client's, untagged) stays too.
    let left = env.blobs.list(&env.payloads, "").await.unwrap();
    assert!(left.contains(&"payloads/legacy".to_string()), "{left:?}");
    assert!(left.contains(&"payloads/huge".to_string()), "{left:?}");
    assert!(left.contains(&"elsewhere/body".to_string()), "{left:?}");
    eprintln!("[{}] dead: {dead:#?}\n{stats:?}", env.tag);
}

#[tokio::test]
async fn embedded_hostile_corpus() {
    hostile_corpus(local_env()).await;
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn aws_hostile_corpus() {
    if let Some(env) = aws_env("hostile").await {
        hostile_corpus(env).await;
    }
}
