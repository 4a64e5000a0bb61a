//! Tracing: each stage's `job` span carries the job's ids and outcome, and
//! stage 2's span continues stage 1's trace through the notification's
//! `traceparent` attribute (SNS envelope → SQS), on the embedded backend
//! and on moto. Spans are captured by a `tracing_subscriber::Layer`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use ferry::backend::local::QueueOptions;
use ferry::backend::{BlobStore, Queue, Topic};
use ferry::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

type Fields = HashMap<String, String>;

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

/// Keeps the fields of every closed `job` span.
struct Capture(Arc<Mutex<Vec<Fields>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        if attrs.metadata().name() != "job" {
            return;
        }
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visitor(fields));
            }
        }
    }
    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(fields) = span.extensions_mut().remove::<Fields>() {
                self.0.lock().unwrap().push(fields);
            }
        }
    }
}

/// The spans captured in this test binary (one global subscriber: the
/// processors run on threads of their own).
fn captured() -> Arc<Mutex<Vec<Fields>>> {
    static SPANS: OnceLock<Arc<Mutex<Vec<Fields>>>> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            let spans = Arc::new(Mutex::new(Vec::new()));
            let subscriber = tracing_subscriber::registry().with(Capture(spans.clone()));
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            spans
        })
        .clone()
}

/// The closed `job` spans of one pipeline, by job id.
fn spans_of(pipeline: &str) -> HashMap<String, Fields> {
    captured()
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.get("pipeline").map(String::as_str) == Some(pipeline))
        .map(|f| (f["job_id"].clone(), f.clone()))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn two_stages(
    tag: &str,
    source: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    topic: Arc<dyn Topic>,
    next: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    bucket: &str,
    timing: fn(&mut PipelineConfig),
) -> ferry::RuntimeBuilder {
    let p = Counting::new();
    let q = Counting::new();
    Runtime::builder()
        .pipeline(
            Pipeline::new(format!("{tag}-stage1"))
                .source(source)
                .dead_letter(dlq.clone())
                .results(blobs.clone(), bucket, "s1/", "txt")
                .topic(topic)
                .processor(move || p.clone())
                .configure(timing),
        )
        .pipeline(
            Pipeline::new(format!("{tag}-stage2"))
                .source(next)
                .dead_letter(dlq)
                .results(blobs, bucket, "s2/", "txt")
                .processor(move || q.clone())
                .configure(timing),
        )
}

/// Stage 2's span of each job is a child of stage 1's: same trace id, its
/// parent the stage-1 span; distinct jobs have distinct traces.
fn check_links(tag: &str, ids: &[String]) {
    let s1 = spans_of(&format!("{tag}-stage1"));
    let s2 = spans_of(&format!("{tag}-stage2"));
    let mut traces = std::collections::HashSet::new();
    for id in ids {
        let a = s1
            .get(id)
            .unwrap_or_else(|| panic!("no stage-1 span for {id}"));
        let b = s2
            .get(id)
            .unwrap_or_else(|| panic!("no stage-2 span for {id}"));
        for f in [a, b] {
            assert_eq!(f["outcome"], "processed", "{f:?}");
            assert_eq!(f["receive_count"], "1", "{f:?}");
            assert!(!f["message_id"].is_empty(), "{f:?}");
            assert_eq!(f["trace_id"].len(), 32, "{f:?}");
            assert_eq!(f["span_id"].len(), 16, "{f:?}");
        }
        assert!(
            !a.contains_key("parent_span_id"),
            "stage 1 starts the trace: {a:?}"
        );
        assert_eq!(
            b["trace_id"], a["trace_id"],
            "stage 2 left the trace of {id}"
        );
        assert_eq!(
            b["parent_span_id"], a["span_id"],
            "stage 2's parent of {id}"
        );
        assert_ne!(b["span_id"], a["span_id"]);
        assert!(
            traces.insert(a["trace_id"].clone()),
            "two jobs share a trace"
        );
    }
    eprintln!(
        "{tag}: {} jobs; e.g. stage1 {:?} → stage2 {:?}",
        ids.len(),
        s1[&ids[0]],
        s2[&ids[0]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_two_continues_stage_ones_trace_on_the_embedded_backend() {
    captured();
    let h = Harness::new();
    // Not raw: stage 2 reads the SNS envelope, attributes inside it.
    let next = h.local.create_queue("stage2-jobs", QueueOptions::default());
    let topic = h.local.create_topic("stage1-done", false);
    h.local.subscribe(&topic, &next, false);
    let ids = h.send_jobs(12).await;
    let rt = two_stages(
        "local",
        h.jobs.clone(),
        h.dlq.clone(),
        topic,
        next.clone(),
        h.local.blobs(),
        "results",
        fast,
    )
    .start()
    .await
    .unwrap();
    let blobs = h.local.blobs();
    eventually_async("every stage-2 result", || {
        let blobs = blobs.clone();
        async move { blobs.list("results", "s2/").await.unwrap().len() == 12 }
    })
    .await;
    eventually("both queues drained", || {
        h.jobs.depth_now().total() == 0 && next.depth_now().total() == 0
    })
    .await;
    rt.shutdown().await;
    check_links("local", &ids);
}

#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_two_continues_stage_ones_trace_through_sns_and_sqs() {
    captured();
    let Some(h) = common::aws::AwsHarness::new("trace").await else {
        return;
    };
    // The harness subscribes `downstream` to the topic, not raw.
    let ids = h.send_jobs(6).await;
    let rt = two_stages(
        "aws",
        h.jobs.clone(),
        h.dlq.clone(),
        h.topic.clone(),
        h.downstream.clone(),
        h.aws.blobs(),
        &h.bucket,
        |c| {
            fast(c);
            c.visibility_timeout = Duration::from_secs(5);
            c.receive_wait = Duration::from_secs(1);
        },
    )
    .start()
    .await
    .unwrap();
    let blobs = h.aws.blobs();
    let bucket = h.bucket.clone();
    eventually_async("every stage-2 result", || {
        let (blobs, bucket) = (blobs.clone(), bucket.clone());
        async move { blobs.list(&bucket, "s2/").await.unwrap().len() == 6 }
    })
    .await;
    rt.shutdown().await;
    check_links("aws", &ids);
}
