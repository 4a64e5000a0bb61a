//! DESIGN rule 2: the ids ferry derives for a job — its id when the queue or
//! the producer makes one from the content, the deduplication ids of its
//! messages — are fixed values, the same in every build and release. Each
//! expected value here was computed once, outside ferry, and pasted in: a
//! change of hash fails this file.

use std::time::Duration;

use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue, ReceivedMessage};
use ferry::prelude::*;
use ferry::producer::{NewJob, Producer};

fn fifo(
    local: &LocalBackend,
    name: &str,
    content_based_dedup: bool,
) -> std::sync::Arc<ferry::backend::local::LocalQueue> {
    local.create_queue(
        name,
        QueueOptions {
            fifo: true,
            content_based_dedup,
            ..Default::default()
        },
    )
}

async fn receive_one(q: &dyn Queue) -> ReceivedMessage {
    let mut got = q
        .receive(10, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    got.pop().unwrap()
}

#[tokio::test]
async fn a_producer_job_without_an_id_on_fifo_is_the_xxh3_of_its_group_and_body() {
    let local = LocalBackend::new();
    let q = fifo(&local, "jobs.fifo", false);
    let sent = Producer::new(q.clone())
        .send(NewJob::new("hello").group("g"))
        .await
        .unwrap();
    // xxh3-128 (seed 0) of "g\nhello", hex.
    let expected = "543d305dec885b73d1467d0623ec614e";
    assert_eq!(sent.job_id.as_str(), expected);
    let m = receive_one(q.as_ref()).await;
    assert_eq!(m.dedup_id.as_deref(), Some(expected));
    assert_eq!(Job::from_message(m).id.as_str(), expected);
}

#[tokio::test]
async fn a_producer_job_with_a_long_id_on_fifo_gets_a_sha256_deduplication_id() {
    let local = LocalBackend::new();
    let q = fifo(&local, "jobs.fifo", false);
    // Within the pipeline's 256-byte limit, past the 128 a deduplication id
    // may hold.
    let id = "y".repeat(200);
    let sent = Producer::new(q.clone())
        .send(NewJob::new("body").id(&id).group("g"))
        .await
        .unwrap();
    assert_eq!(sent.job_id.as_str(), id);
    let m = receive_one(q.as_ref()).await;
    // "produce:" and the first 128 bits of SHA-256("produce:yyy…"), hex.
    assert_eq!(
        m.dedup_id.as_deref(),
        Some("produce:2ddf829783a1cb4ae3d27824513e2dad")
    );
    assert_eq!(Job::from_message(m).id.as_str(), id);
}

#[tokio::test]
async fn content_based_deduplication_gives_the_sha256_of_the_body_as_the_job_id() {
    let local = LocalBackend::new();
    let q = fifo(&local, "content.fifo", true);
    q.send_batch(vec![OutgoingMessage::new("abc").group("g")])
        .await
        .unwrap();
    let m = receive_one(q.as_ref()).await;
    // SHA-256("abc"), as SQS derives it.
    let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(m.dedup_id.as_deref(), Some(expected));
    assert_eq!(Job::from_message(m).id.as_str(), expected);
}

#[test]
fn notice_deduplication_ids_are_fixed_values() {
    assert_eq!(JobId::new("job-1").dedup_id("stage1"), "stage1:job-1");
    // "stage1:" and the first 128 bits of SHA-256("stage1:xxx…"), hex.
    assert_eq!(
        JobId::new("x".repeat(500)).dedup_id("stage1"),
        "stage1:02fb3c4e6f71efefe643d664e9701179"
    );
}
