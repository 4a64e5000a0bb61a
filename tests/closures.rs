//! The smallest services: closures as processors (sync and async), `?` on
//! any error with its fault said explicitly (`ResultExt`), and a processor
//! unit-tested without a pipeline (`ferry::testkit`).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use ferry::backend::Queue;
use ferry::prelude::*;
use ferry::{testkit, DLQ_REASON_ATTRIBUTE};

/// Doubles the number in the body; a body that is not one is bad input.
fn double(job: &Job) -> Result<Output, ProcessError> {
    let n: u64 = job.body.trim().parse().or_bad_input()?;
    Ok(Output::text((2 * n).to_string()))
}

/// A job whose body is not a number.
async fn send_bad(h: &Harness) {
    let sent = h
        .jobs
        .send_batch(vec![ferry::backend::OutgoingMessage::new("not a number")])
        .await
        .unwrap();
    sent.into_iter().for_each(|r| {
        r.unwrap();
    });
}

async fn run(pipeline: Pipeline, h: &Harness) {
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    eventually("both jobs settled", || {
        h.jobs.depth_now().total() == 0 && h.dlq.depth_now().total() == 1
    })
    .await;
    rt.shutdown().await;
    let results = h.results().await;
    assert_eq!(results.len(), 1, "{results:?}");
    let entry = &h.dlq.snapshot()[0];
    let reason = entry.attributes.get(DLQ_REASON_ATTRIBUTE).unwrap();
    assert!(reason.contains("invalid digit"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_closure_is_a_processor() {
    let h = Harness::new();
    h.send_named(&["good".to_string()]).await;
    send_bad(&h).await;
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let p = Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .handler(move |job: &Job, _: &Context| {
            counted.fetch_add(1, Ordering::AcqRel);
            if job.body.trim() == "payload of good" {
                return Ok(Output::text("21"));
            }
            double(job)
        })
        .configure(fast);
    run(p, &h).await;
    assert_eq!(runs.load(Ordering::Acquire), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_closure_is_a_processor() {
    let h = Harness::new();
    h.send_named(&["good".to_string()]).await;
    send_bad(&h).await;
    let p = Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .async_handler(|job: Job, ctx: TaskContext| async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            assert!(!ctx.is_cancelled());
            if job.body.trim() == "payload of good" {
                return Ok(Output::text("21"));
            }
            double(&job)
        })
        .configure(fast);
    run(p, &h).await;
}

#[test]
fn a_processor_is_tested_without_a_pipeline() {
    struct Double;
    impl Processor for Double {
        fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
            double(job)
        }
    }
    let ctx = testkit::context();
    let out = Double.process(&testkit::job("21"), &ctx).unwrap();
    assert_eq!(out.body.as_ref(), b"42");
    let err = Double.process(&testkit::job("x"), &ctx).unwrap_err();
    assert!(matches!(err, ProcessError::BadInput { .. }), "{err:?}");
    // A fetch outside the pipeline's buckets is bad input, not a panic.
    let fetched = ctx.fetch("elsewhere", "key");
    assert!(
        matches!(fetched, Err(ProcessError::BadInput { .. })),
        "{fetched:?}"
    );
}

#[test]
fn a_test_context_reads_its_buckets() {
    let local = ferry::backend::local::LocalBackend::new();
    let blobs = local.blobs();
    let io = tokio::runtime::Runtime::new().unwrap();
    io.block_on(ferry::BlobStore::put(
        &*blobs,
        "in",
        "k",
        b"hi".to_vec().into(),
        Default::default(),
    ))
    .unwrap();
    let blobs: Arc<dyn ferry::BlobStore> = blobs;
    let ctx = testkit::context_reading(Some(blobs), &["in"]);
    assert_eq!(ctx.fetch("in", "k").unwrap().as_ref(), b"hi");
    let missing = ctx.fetch("in", "nope");
    assert!(
        matches!(missing, Err(ProcessError::BadInput { .. })),
        "{missing:?}"
    );
}

#[test]
fn an_error_keeps_its_sources_in_the_reason() {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("loading the model")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let failed: Result<(), Outer> = Err(Outer(std::io::Error::other("disk full")));
    let e = failed.or_retry().unwrap_err();
    assert_eq!(e, ProcessError::retry("loading the model: disk full"));
    let text: Result<(), String> = Err("plain text".into());
    assert_eq!(
        text.or_unavailable().unwrap_err(),
        ProcessError::unavailable("plain text")
    );
}
