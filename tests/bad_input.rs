//! DESIGN rule 11: malformed bodies, missing objects, non-images, oversized
//! objects and decompression bombs give a clear reason in the dead-letter
//! queue; the worker stays up and good jobs finish.

mod common;

use common::*;
use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{BlobStore, ObjectMeta, OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::{DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};
use ferry_actors::{samples, Stage1};

#[tokio::test]
async fn bad_inputs_are_dead_lettered_with_reasons_while_good_jobs_finish() {
    let local = LocalBackend::new();
    let blobs = local.blobs();
    let dlq = local.create_queue("dlq", QueueOptions::default());
    let jobs = local.create_queue("jobs", QueueOptions::default());
    for i in 0..6 {
        let png = samples::synthetic_png(i, 64);
        blobs
            .put(
                "in",
                &format!("good-{i}.png"),
                png.into(),
                ObjectMeta::default(),
            )
            .await
            .unwrap();
    }
    blobs
        .put(
            "in",
            "bomb.png",
            samples::decompression_bomb_png().into(),
            ObjectMeta::default(),
        )
        .await
        .unwrap();
    blobs
        .put(
            "in",
            "text.png",
            samples::not_an_image().into(),
            ObjectMeta::default(),
        )
        .await
        .unwrap();
    blobs
        .put(
            "in",
            "huge.png",
            vec![7u8; 300_000].into(),
            ObjectMeta::default(),
        )
        .await
        .unwrap();
    let plain = |key: &str| serde_json::json!({"bucket": "in", "key": key}).to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad-json",
            "{\"bucket\": \"in\", ".to_string(),
            "malformed message",
        ),
        (
            "wrong-shape",
            "{\"hello\": 1}".to_string(),
            "expected an S3 event",
        ),
        (
            "missing",
            plain("nope.png"),
            "missing object s3://in/nope.png",
        ),
        ("bomb", plain("bomb.png"), "decompression bomb"),
        ("text", plain("text.png"), "not an image"),
        ("huge", plain("huge.png"), "over the limit"),
    ];
    let batch: Vec<_> = cases
        .iter()
        .map(|(id, body, _)| OutgoingMessage::new(body.clone()).attribute(JOB_ID_ATTRIBUTE, *id))
        .collect();
    jobs.send_batch(batch).await.unwrap();
    let good: Vec<_> = (0..6)
        .map(|i| {
            OutgoingMessage::new(plain(&format!("good-{i}.png")))
                .attribute(JOB_ID_ATTRIBUTE, format!("good-{i}"))
        })
        .collect();
    jobs.send_batch(good).await.unwrap();

    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage1")
                .source(jobs.clone())
                .dead_letter(dlq.clone())
                .results(blobs.clone(), "out", "stage1/", "png")
                .reads_from("in")
                .processor(Stage1::default)
                .configure(|c| {
                    fast(c);
                    c.max_fetch_bytes = 200_000;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("every message settled", || jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;

    assert_eq!(stats.panics, 0, "a bad input crashed a worker");
    assert_eq!(stats.acked, 6);
    assert_eq!(blobs.list("out", "stage1/").await.unwrap().len(), 6);
    let dead = dlq.snapshot();
    assert_eq!(dead.len(), cases.len());
    for (id, _, want) in &cases {
        let entry = dead
            .iter()
            .find(|m| m.attributes[JOB_ID_ATTRIBUTE] == *id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered"));
        let reason = &entry.attributes[DLQ_REASON_ATTRIBUTE];
        assert!(
            reason.contains(want),
            "{id}: reason {reason:?} lacks {want:?}"
        );
    }
}

/// Bad input whose reason carries characters SQS refuses in an attribute.
struct BadWithControlChars;

impl Processor for BadWithControlChars {
    fn process(&mut self, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        Err(ProcessError::bad_input("no object at in/a\u{1}b\u{0}.png"))
    }
}

/// Whatever a message's job id, attributes and body, its dead-letter entry
/// is one SQS takes: a job id of 262,131 bytes (the largest a message can
/// carry with a one-byte body) is refused with a reason, the entries of
/// three messages near the size limit go in calls under the request limit,
/// and a reason with control characters is cleaned.
#[tokio::test]
async fn dead_letter_entries_fit_sqs_whatever_the_message_holds() {
    let local = LocalBackend::new();
    let dlq = local.create_queue("dlq", QueueOptions::default());
    let jobs = local.create_queue("jobs", QueueOptions::default());
    let long_id = "j".repeat(262_131 - 6);
    jobs.send_batch(vec![
        OutgoingMessage::new("x").attribute(JOB_ID_ATTRIBUTE, long_id.clone())
    ])
    .await
    .unwrap()
    .remove(0)
    .unwrap();
    let big: Vec<OutgoingMessage> = (0..3)
        .map(|i| {
            OutgoingMessage::new("b".repeat(250_000))
                .attribute(JOB_ID_ATTRIBUTE, format!("big-{i}"))
        })
        .collect();
    for m in big {
        jobs.send_batch(vec![m]).await.unwrap().remove(0).unwrap();
    }
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(jobs.clone())
                .dead_letter(dlq.clone())
                .processor(|| BadWithControlChars)
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    eventually("four dead-letter entries", || dlq.depth_now().total() == 4).await;
    let s = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(
        (s.actor_restarts, s.settle_gave_up, s.backend_panics),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(jobs.depth_now().total(), 0);
    let entries = dlq.snapshot();
    let long = entries
        .iter()
        .find(|m| m.body == "x")
        .expect("the long id's entry");
    let reason = &long.attributes[DLQ_REASON_ATTRIBUTE];
    assert_eq!(
        reason,
        &format!("a job id of {} bytes, over the limit of 256", long_id.len())
    );
    assert_eq!(long.attributes[JOB_ID_ATTRIBUTE], "j".repeat(256));
    // Not the job as it came: never redriven under the cut id.
    assert_eq!(long.attributes[ferry::DLQ_TRUNCATED_ATTRIBUTE], "1");
    for m in entries.iter().filter(|m| m.body != "x") {
        assert_eq!(m.body.len(), 250_000);
        assert_eq!(
            m.attributes[DLQ_REASON_ATTRIBUTE],
            "no object at in/a\u{FFFD}b\u{FFFD}.png"
        );
    }
}
