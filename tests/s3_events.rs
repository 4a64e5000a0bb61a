//! S3 events done right: S3's test event is deleted without work, an S3
//! event's job id is derived from the object and its version (a duplicate
//! delivery is the same job, a new version a new one), and an event with
//! several records is split into one job per record — on the embedded
//! backend and with a real S3 → SQS notification on moto.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ferry::backend::local::{LocalBackend, LocalBlobStore, LocalQueue, LocalTopic, QueueOptions};
use ferry::backend::{
    BlobStore, EntryResult, ObjectMeta, OutgoingMessage, Queue, QueueDepth, ReceivedMessage, Topic,
};
use ferry::prelude::*;
use ferry::{BackendError, DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};
use ferry_actors::{samples, Stage1, Stage2};

/// Each run of a processor: the job id and the body it saw.
type Runs = Arc<Mutex<Vec<(String, String)>>>;

/// Records every run of the processor it wraps, then runs it.
#[derive(Clone)]
struct Recorded<P> {
    inner: P,
    runs: Runs,
}

impl<P: Processor + Clone> Processor for Recorded<P> {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        self.runs
            .lock()
            .unwrap()
            .push((job.id.to_string(), job.body.clone()));
        self.inner.process(job, ctx)
    }
}

fn ids(runs: &Runs) -> Vec<String> {
    let mut v: Vec<String> = runs.lock().unwrap().iter().map(|r| r.0.clone()).collect();
    v.sort();
    v
}

/// The test event as moto writes it (`json.dumps`: a space after each colon).
fn test_event(bucket: &str) -> String {
    format!(
        r#"{{"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2024-05-01T10:00:00.000Z", "Bucket": "{bucket}"}}"#
    )
}

/// One S3 event record for `bucket`/`key` (URL-encoded as S3 does), with
/// these fields added to its `object`.
fn record(bucket: &str, key: &str, object: serde_json::Value) -> serde_json::Value {
    let mut o = serde_json::json!({"key": key.replace(' ', "+"), "size": 100});
    o.as_object_mut()
        .unwrap()
        .extend(object.as_object().unwrap().clone());
    serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2024-05-01T10:00:01.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": o}
    })
}

fn event(records: &[serde_json::Value]) -> String {
    serde_json::json!({ "Records": records }).to_string()
}

/// The stage-1 job id a single-record event for this record gets.
fn id_of(record: &serde_json::Value) -> JobId {
    ferry_actors::s3_event_job_id(&event(std::slice::from_ref(record))).unwrap()
}

fn result_key(prefix: &str, id: &JobId, ext: &str) -> String {
    format!("{prefix}{}.{ext}", id.key_safe())
}

/// Both stages of the image pipeline on the embedded backend, as the main
/// job wires them: stage 1 with the S3 job id and split, a topic (SNS
/// envelope) to stage 2.
struct World {
    local: LocalBackend,
    blobs: Arc<LocalBlobStore>,
    stage1: Arc<LocalQueue>,
    dlq1: Arc<LocalQueue>,
    stage2: Arc<LocalQueue>,
    dlq2: Arc<LocalQueue>,
    topic: Arc<LocalTopic>,
    runs1: Runs,
    runs2: Runs,
}

const INPUT: &str = "input";
const RESULTS: &str = "results";

impl World {
    fn new(fifo: bool) -> Self {
        let local = LocalBackend::new();
        let o = QueueOptions {
            fifo,
            ..QueueOptions::default()
        };
        let name = |n: &str| {
            if fifo {
                format!("{n}.fifo")
            } else {
                n.to_owned()
            }
        };
        let dlq1 = local.create_queue(&name("stage1-dlq"), o.clone());
        let stage1 = local.create_queue(&name("stage1"), o.clone());
        let dlq2 = local.create_queue(&name("stage2-dlq"), o.clone());
        let stage2 = local.create_queue(&name("stage2"), o);
        let topic = local.create_topic(&name("stage1-done"), fifo);
        local.subscribe(&topic, &stage2, false);
        Self {
            blobs: local.blobs(),
            local,
            stage1,
            dlq1,
            stage2,
            dlq2,
            topic,
            runs1: Runs::default(),
            runs2: Runs::default(),
        }
    }

    async fn put_images(&self, keys: &[&str]) {
        for (i, key) in keys.iter().enumerate() {
            let png = samples::synthetic_png(i as u64 + 1, 24);
            self.blobs
                .put(INPUT, key, png.into(), ObjectMeta::default())
                .await
                .unwrap();
        }
    }

    /// Stage 1 reading `source` (the stage-1 queue, or a wrapper of it),
    /// recording its runs in `runs`.
    fn stage1_on(&self, source: Arc<dyn Queue>, runs: &Runs) -> Pipeline {
        let p = Recorded {
            inner: Stage1::new(ferry_actors::Stage1Config {
                max_side: 16,
                blur_sigma: 0.5,
                ..Default::default()
            }),
            runs: runs.clone(),
        };
        Stage1::pipeline(Pipeline::new("stage1"))
            .source(source)
            .dead_letter(self.dlq1.clone())
            .results(self.blobs.clone(), RESULTS, "stage1/", "png")
            .reads_from(INPUT)
            .topic(self.topic.clone())
            .processor(move || p.clone())
            .configure(fast)
    }

    fn stage1(&self) -> Pipeline {
        self.stage1_on(self.stage1.clone(), &self.runs1)
    }

    fn stage2(&self) -> Pipeline {
        let p = Recorded {
            inner: Stage2,
            runs: self.runs2.clone(),
        };
        Pipeline::new("stage2")
            .source(self.stage2.clone())
            .dead_letter(self.dlq2.clone())
            .results(self.blobs.clone(), RESULTS, "stage2/", "json")
            .processor(move || p.clone())
            .configure(fast)
    }

    async fn send(&self, bodies: &[String]) {
        let batch = bodies
            .iter()
            .map(|b| OutgoingMessage::new(b.clone()))
            .collect();
        for r in self.stage1.send_batch(batch).await.unwrap() {
            r.unwrap();
        }
    }

    async fn results(&self, prefix: &str) -> Vec<String> {
        let mut v = self.blobs.list(RESULTS, prefix).await.unwrap();
        v.sort();
        v
    }

    fn drained(&self) -> bool {
        self.stage1.depth_now().total() == 0 && self.stage2.depth_now().total() == 0
    }

    fn dead(&self) -> usize {
        self.dlq1.depth_now().total() + self.dlq2.depth_now().total()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_is_deleted_without_work_and_the_worker_goes_on() {
    let w = World::new(false);
    w.put_images(&["in/a.png"]).await;
    let real = record(INPUT, "in/a.png", serde_json::json!({"sequencer": "0A1"}));
    w.send(&[test_event(INPUT), event(std::slice::from_ref(&real))])
        .await;
    let rt = Runtime::builder()
        .pipeline(w.stage1())
        .pipeline(w.stage2())
        .start()
        .await
        .unwrap();
    eventually_async("the real event through both stages", || async {
        w.results("stage2/").await.len() == 1 && w.drained()
    })
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    assert_eq!(s1.s3_test_events, 1);
    assert_eq!(
        ids(&w.runs1),
        vec![id_of(&real).to_string()],
        "the processor never saw the test event"
    );
    assert_eq!(
        w.results("stage1/").await,
        vec![result_key("stage1/", &id_of(&real), "png")],
        "no result for the test event"
    );
    assert_eq!(w.runs2.lock().unwrap().len(), 1, "nothing published for it");
    assert_eq!(w.dead(), 0, "no dead letter");
    assert_eq!((s1.acked, s1.processed, s1.uploaded), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_through_sns_is_dropped_and_with_the_option_off_the_processor_refuses_it() {
    let w = World::new(false);
    // S3 → SNS → SQS: the event arrives inside the SNS envelope.
    let s3_topic = w.local.create_topic("bucket-events", false);
    w.local.subscribe(&s3_topic, &w.stage1, false);
    s3_topic
        .publish_batch(vec![OutgoingMessage::new(test_event(INPUT))])
        .await
        .unwrap();
    let rt = Runtime::builder()
        .pipeline(w.stage1())
        .start()
        .await
        .unwrap();
    eventually("the enveloped test event deleted", || {
        rt.stats_of("stage1").unwrap().s3_test_events == 1 && w.stage1.depth_now().total() == 0
    })
    .await;
    rt.shutdown().await;
    assert!(w.runs1.lock().unwrap().is_empty());
    assert_eq!(w.dead(), 0);

    // Turned off, the processor sees it, and stage 1 refuses it as bad
    // input with its reason (never an empty result).
    w.send(&[test_event(INPUT)]).await;
    let rt = Runtime::builder()
        .pipeline(w.stage1().configure(|c| c.drop_s3_test_events = false))
        .start()
        .await
        .unwrap();
    eventually("the test event dead-lettered", || {
        w.dlq1.depth_now().total() == 1
    })
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    assert_eq!(s1.s3_test_events, 0);
    assert_eq!(w.runs1.lock().unwrap().len(), 1);
    assert!(w.results("stage1/").await.is_empty());
    let reason = w.dlq1.snapshot()[0].attributes[DLQ_REASON_ATTRIBUTE].clone();
    assert!(reason.contains("s3:TestEvent"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_s3_event_delivered_twice_is_one_job_through_both_stages() {
    let w = World::new(false);
    w.put_images(&["in/photo 1.png"]).await;
    let r = record(
        INPUT,
        "in/photo 1.png",
        serde_json::json!({"sequencer": "0062E99A88DC407460", "eTag": "d41d8cd9"}),
    );
    let body = event(std::slice::from_ref(&r));
    // S3 delivers at least once: the same event as two SQS messages.
    w.send(&[body.clone(), body.clone()]).await;
    let rt = Runtime::builder()
        .pipeline(w.stage1())
        .pipeline(w.stage2())
        .start()
        .await
        .unwrap();
    eventually_async(
        "both copies settled and the job through stage 2",
        || async { w.results("stage2/").await.len() == 1 && w.drained() },
    )
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    let id = id_of(&r);
    assert_eq!(id.as_str(), "s3:input:s=0062E99A88DC407460:in/photo 1.png");
    assert_eq!(ids(&w.runs1), vec![id.to_string()], "one stage-1 run");
    assert_eq!(ids(&w.runs2), vec![id.to_string()], "one stage-2 run");
    assert_eq!(
        w.results("stage1/").await,
        vec![result_key("stage1/", &id, "png")]
    );
    assert_eq!(
        w.results("stage2/").await,
        vec![result_key("stage2/", &id, "json")]
    );
    assert_eq!(s1.duplicates(), 1, "the second delivery was a duplicate");
    assert_eq!(w.dead(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_or_overwrite_of_the_object_is_a_new_job() {
    let w = World::new(false);
    w.put_images(&["in/a.png"]).await;
    let with = |o| record(INPUT, "in/a.png", o);
    let records = [
        // An unversioned bucket: each overwrite has a new sequencer.
        with(serde_json::json!({"sequencer": "0A1", "eTag": "e1"})),
        with(serde_json::json!({"sequencer": "0A2", "eTag": "e1"})),
        // A versioned bucket: each version is a job.
        with(serde_json::json!({"versionId": "v-1", "sequencer": "0B1"})),
        with(serde_json::json!({"versionId": "v-2", "sequencer": "0B2"})),
    ];
    let mut bodies: Vec<String> = records
        .iter()
        .map(|r| event(std::slice::from_ref(r)))
        .collect();
    bodies.push(bodies[0].clone());
    bodies.push(bodies[3].clone());
    w.send(&bodies).await;
    let rt = Runtime::builder()
        .pipeline(w.stage1())
        .start()
        .await
        .unwrap();
    eventually("every delivery settled", || {
        w.stage1.depth_now().total() == 0 && w.runs1.lock().unwrap().len() >= 4
    })
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    let mut want: Vec<String> = records.iter().map(|r| id_of(r).to_string()).collect();
    want.sort();
    assert_eq!(
        ids(&w.runs1),
        want,
        "one run per version, none per duplicate"
    );
    assert_eq!(w.results("stage1/").await.len(), 4);
    assert_eq!(s1.duplicates(), 2);
    assert_eq!(w.dead(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_three_records_is_split_into_three_jobs() {
    let w = World::new(false);
    let keys = ["in/r0.png", "in/r1.png", "in/r2.png"];
    w.put_images(&keys).await;
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| record(INPUT, k, serde_json::json!({"sequencer": format!("0C{i}")})))
        .collect();
    w.send(&[event(&records)]).await;
    let rt = Runtime::builder()
        .pipeline(w.stage1())
        .pipeline(w.stage2())
        .start()
        .await
        .unwrap();
    eventually_async("three jobs through both stages", || async {
        w.results("stage2/").await.len() == 3 && w.drained()
    })
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    let mut want: Vec<JobId> = records.iter().map(id_of).collect();
    want.sort();
    let want_ids: Vec<String> = want.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        ids(&w.runs1),
        want_ids,
        "one run per record, as a single-record delivery"
    );
    assert!(
        w.runs1.lock().unwrap().iter().all(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["Records"]
                .as_array()
                .unwrap()
                .len()
                == 1
        }),
        "the processor saw only single-record events"
    );
    let keys1: Vec<String> = want
        .iter()
        .map(|i| result_key("stage1/", i, "png"))
        .collect();
    assert_eq!(w.results("stage1/").await, keys1);
    assert_eq!(ids(&w.runs2), want_ids);
    assert_eq!(s1.split_messages, 1);
    // The original and its three parts: four deletes, nothing left.
    assert_eq!(s1.acked, 4);
    assert_eq!(s1.received, 4);
    assert_eq!(w.dead(), 0, "no dead letter for the multi-record event");
}

/// The source queue, recording what is sent to it; sends may be made to
/// hang once done, as if the worker died right after them.
#[derive(Debug)]
struct Recording {
    inner: Arc<LocalQueue>,
    sent: Mutex<Vec<OutgoingMessage>>,
    hang_after_send: AtomicBool,
}

impl Recording {
    fn new(inner: Arc<LocalQueue>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            sent: Mutex::default(),
            hang_after_send: AtomicBool::new(false),
        })
    }

    fn sent(&self) -> Vec<OutgoingMessage> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl Queue for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    fn receive_is_cancel_safe(&self) -> bool {
        self.inner.receive_is_cancel_safe()
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
        let res = self.inner.send_batch(m.clone()).await;
        self.sent.lock().unwrap().extend(m);
        if self.hang_after_send.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
        res
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_split_and_the_delete_only_duplicates_parts_which_are_deduplicated() {
    let w = World::new(false);
    let keys = ["in/k0.png", "in/k1.png", "in/k2.png"];
    w.put_images(&keys).await;
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| record(INPUT, k, serde_json::json!({"eTag": format!("e{i}")})))
        .collect();
    w.send(&[event(&records)]).await;
    let source = Recording::new(w.stage1.clone());
    source.hang_after_send.store(true, Ordering::Release);
    // One worker, frozen right after the parts are sent: then killed.
    // (A killed worker's threads may still pick up what it had queued, to
    // no effect: their runs are recorded apart.)
    let killed = Runs::default();
    let rt = Runtime::builder()
        .pipeline(
            w.stage1_on(source.clone(), &killed)
                .configure(|c| c.workers = 1),
        )
        .start()
        .await
        .unwrap();
    eventually("the parts sent", || source.sent().len() == 3).await;
    rt.abort();
    assert!(w.results("stage1/").await.is_empty());
    assert_eq!(w.stage1.snapshot().len(), 4, "the original is still there");

    // A fresh worker: the original comes back and is split again.
    source.hang_after_send.store(false, Ordering::Release);
    let rt = Runtime::builder()
        .pipeline(w.stage1_on(source.clone(), &w.runs1))
        .start()
        .await
        .unwrap();
    eventually("every message settled", || {
        w.stage1.depth_now().total() == 0 && w.runs1.lock().unwrap().len() >= 3
    })
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    let sent = source.sent();
    assert_eq!(sent.len(), 6, "each part sent twice");
    let part_ids = |parts: &[OutgoingMessage]| -> Vec<String> {
        parts
            .iter()
            .map(|m| m.attributes[JOB_ID_ATTRIBUTE].clone())
            .collect()
    };
    assert_eq!(
        part_ids(&sent[..3]),
        part_ids(&sent[3..]),
        "the same ids both times"
    );
    let mut want: Vec<String> = records.iter().map(|r| id_of(r).to_string()).collect();
    assert_eq!(part_ids(&sent[..3]), want, "each part's id is its record's");
    want.sort();
    assert_eq!(ids(&w.runs1), want, "each record processed once");
    assert_eq!(w.results("stage1/").await.len(), 3);
    assert_eq!(s1.split_messages, 1);
    assert_eq!(s1.duplicates(), 3);
    assert_eq!(w.dead(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_fifo_queue_parts_keep_the_group_and_a_test_event_does_not_block_it() {
    let w = World::new(true);
    let keys = ["in/f0.png", "in/f1.png", "in/f2.png", "in/f3.png"];
    w.put_images(&keys).await;
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| record(INPUT, k, serde_json::json!({"sequencer": format!("0F{i}")})))
        .collect();
    let in_group = |body: String, dedup: &str| OutgoingMessage::new(body).group("g").dedup(dedup);
    // The group: a test event at its head, then a single-record event, then
    // an event with three records.
    let batch = vec![
        in_group(test_event(INPUT), "test"),
        in_group(event(&records[..1]), "one"),
        in_group(event(&records[1..]), "three"),
    ];
    for r in w.stage1.send_batch(batch).await.unwrap() {
        r.unwrap();
    }
    let source = Recording::new(w.stage1.clone());
    let rt = Runtime::builder()
        .pipeline(w.stage1_on(source.clone(), &w.runs1))
        .pipeline(w.stage2())
        .start()
        .await
        .unwrap();
    eventually_async("four jobs through both stages", || async {
        w.results("stage2/").await.len() == 4 && w.drained()
    })
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    assert_eq!(s1.s3_test_events, 1);
    assert_eq!(s1.split_messages, 1);
    let runs: Vec<String> = w
        .runs1
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.clone())
        .collect();
    let want: Vec<String> = records.iter().map(|r| id_of(r).to_string()).collect();
    assert_eq!(runs, want, "in the group's order, the test event skipped");
    let parts = source.sent();
    assert_eq!(parts.len(), 3);
    let mut dedup = Vec::new();
    for (part, r) in parts.iter().zip(&records[1..]) {
        assert_eq!(part.group_id.as_deref(), Some("g"), "the original's group");
        assert_eq!(part.attributes[JOB_ID_ATTRIBUTE], id_of(r).to_string());
        let d = part.dedup_id.clone().unwrap();
        assert!(!d.is_empty() && d.len() <= 128);
        assert_eq!(d, id_of(r).dedup_id("split"), "derived from the part's id");
        assert!(part.attributes.contains_key("traceparent"));
        dedup.push(d);
    }
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 3);
    assert_eq!(w.dead(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_id_function_keeps_the_default_id_and_the_pipeline_going() {
    let h = Harness::new();
    h.send_named(&["j-0".into(), "boom-1".into(), "j-2".into(), "boom-3".into()])
        .await;
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).job_id(|job: &Job| {
            assert!(!job.body.contains("boom"), "a bug in the job id function");
            Some(JobId::new(format!("derived:{}", job.body)))
        }))
        .start()
        .await
        .unwrap();
    eventually("every job done", || {
        p.total_runs() == 4 && h.jobs.depth_now().total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    let health = rt.health();
    rt.shutdown().await;
    let runs: BTreeMap<String, u32> = p.runs.lock().unwrap().clone().into_iter().collect();
    let want: BTreeMap<String, u32> = [
        ("boom-1", 1),
        ("boom-3", 1),
        ("derived:payload of j-0", 1),
        ("derived:payload of j-2", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(
        runs, want,
        "derived ids where it answered, default ids where it panicked"
    );
    assert_eq!(stats.actor_restarts, 0, "the poller never went down");
    assert_eq!(stats.escalations, 0);
    assert!(health.iter().all(|h| h.status == "running"));
    assert_eq!(h.dlq.depth_now().total(), 0);
    let mut results = h.results().await;
    results.sort();
    assert_eq!(
        results,
        vec![
            "out/boom-1.txt",
            "out/boom-3.txt",
            "out/derived%3Apayload%20of%20j-0.txt",
            "out/derived%3Apayload%20of%20j-2.txt"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_ids_reach_the_notice_and_the_next_stage() {
    let h = Harness::new();
    h.send_named(&["a".into()]).await;
    let p = Counting::new();
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(p.clone())
                .job_id(|job: &Job| Some(JobId::new(format!("content-{}", job.body.len())))),
        )
        .start()
        .await
        .unwrap();
    eventually("the job done", || h.jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    let notices = h.downstream.snapshot();
    assert_eq!(notices.len(), 1);
    let id = format!("content-{}", "payload of a".len());
    assert_eq!(notices[0].attributes[JOB_ID_ATTRIBUTE], id);
    let notice: ResultNotice = serde_json::from_str(&notices[0].body).unwrap();
    assert_eq!(notice.job_id.as_str(), id);
    assert_eq!(notice.key, format!("out/{id}.txt"));
    assert_eq!(p.runs_of(&id), 1);
}

// ---------------------------------------------------------------------------
// moto: a real S3 → SQS notification feeding stage 1, stage 2 behind SNS.

#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_moto_a_real_notification_test_event_is_dropped_and_a_duplicate_event_is_one_job() {
    use common::aws::{backend, endpoint, unique};
    use ferry::backend::aws::QueueSpec;

    if endpoint().is_none() {
        return;
    }
    let aws = backend().await;
    let name = unique("s3ev");
    let q = |n: &str| {
        let aws = aws.clone();
        let n = format!("{name}-{n}");
        async move { aws.create_queue(&n, &QueueSpec::default()).await.unwrap() }
    };
    let (stage1, dlq1, stage2, dlq2) = (
        q("s1").await,
        q("s1-dlq").await,
        q("s2").await,
        q("s2-dlq").await,
    );
    let topic = aws
        .create_topic(&format!("{name}-done"), false)
        .await
        .unwrap();
    aws.subscribe(&topic, &stage2, false).await.unwrap();
    let (input, results) = (
        format!("{name}-in").to_lowercase(),
        format!("{name}-out").to_lowercase(),
    );
    aws.create_bucket(&input).await.unwrap();
    aws.create_bucket(&results).await.unwrap();
    let blobs = aws.blobs();

    // The notification: S3 sends the queue a test event at once, then an
    // event per object created.
    aws.notify_queue(&input, &stage1, &["s3:ObjectCreated:*"])
        .await
        .unwrap();
    let png = samples::synthetic_png(5, 32);
    blobs
        .put(
            &input,
            "in/moto photo.png",
            png.into(),
            ObjectMeta::default(),
        )
        .await
        .unwrap();
    // Look at what moto delivered without taking it (visibility 0).
    let mut seen: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while seen.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "moto delivered only {seen:?}"
        );
        for m in stage1
            .receive(10, Duration::from_millis(200), Duration::ZERO)
            .await
            .unwrap()
        {
            seen.insert(m.message_id, m.body);
        }
    }
    let bodies: Vec<&String> = seen.values().collect();
    eprintln!("moto delivered: {bodies:#?}");
    let test = bodies
        .iter()
        .find(|b| b.contains("s3:TestEvent"))
        .expect("a test event");
    assert!(ferry::is_s3_test_event(test), "{test}");
    let real = (*bodies
        .iter()
        .find(|b| b.contains("Records"))
        .expect("an object event"))
    .clone();
    let id = ferry_actors::s3_event_job_id(&real).expect("a single-record event");
    eprintln!("derived job id: {id}");
    assert!(id.as_str().contains("in/moto photo.png"), "{id}");
    // The same event delivered a second time, as a message of its own.
    for r in stage1
        .send_batch(vec![OutgoingMessage::new(real.clone())])
        .await
        .unwrap()
    {
        r.unwrap();
    }

    let (runs1, runs2) = (Runs::default(), Runs::default());
    let timing = |c: &mut PipelineConfig| {
        fast(c);
        c.visibility_timeout = Duration::from_secs(2);
        c.receive_wait = Duration::from_secs(1);
    };
    let p1 = Recorded {
        inner: Stage1::default(),
        runs: runs1.clone(),
    };
    let p2 = Recorded {
        inner: Stage2,
        runs: runs2.clone(),
    };
    let rt = Runtime::builder()
        .pipeline(
            Stage1::pipeline(Pipeline::new("stage1"))
                .source(stage1.clone())
                .dead_letter(dlq1.clone())
                .results(blobs.clone(), results.clone(), "stage1/", "png")
                .reads_from(input.clone())
                .topic(topic.clone())
                .processor(move || p1.clone())
                .configure(timing),
        )
        .pipeline(
            Pipeline::new("stage2")
                .source(stage2.clone())
                .dead_letter(dlq2.clone())
                .results(blobs.clone(), results.clone(), "stage2/", "json")
                .processor(move || p2.clone())
                .configure(timing),
        )
        .start()
        .await
        .unwrap();
    eventually_async(
        "three messages settled and the job through stage 2",
        || async {
            let done = blobs.list(&results, "stage2/").await.unwrap().len() == 1;
            let s1 = stage1.depth().await.unwrap().total();
            let s2 = stage2.depth().await.unwrap().total();
            done && s1 == 0 && s2 == 0
        },
    )
    .await;
    let s1 = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    assert_eq!(s1.s3_test_events, 1, "{s1:?}");
    assert_eq!(ids(&runs1), vec![id.to_string()], "one stage-1 run");
    assert_eq!(ids(&runs2), vec![id.to_string()], "one stage-2 run");
    assert_eq!(
        blobs.list(&results, "stage1/").await.unwrap(),
        vec![result_key("stage1/", &id, "png")]
    );
    assert_eq!(
        blobs.list(&results, "stage2/").await.unwrap(),
        vec![result_key("stage2/", &id, "json")]
    );
    assert_eq!(s1.duplicates(), 1, "{s1:?}");
    assert_eq!(dlq1.depth().await.unwrap().total(), 0, "no dead letter");
    assert_eq!(dlq2.depth().await.unwrap().total(), 0, "no dead letter");
}
