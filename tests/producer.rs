//! `ferry::producer::Producer`: the ids it returns are the ones a pipeline
//! sees; ten jobs per call; per-entry retries; a permanent refusal fails
//! one job, not the batch; FIFO groups, deduplication and delays by SQS's
//! rules; the attribute limit; large payloads. On the embedded backend and
//! on SQS (moto).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::*;
use ferry::backend::local::{Faults, LocalBackend, Op, QueueOptions};
use ferry::backend::{Queue, ReceivedMessage};
use ferry::payload::{LargePayloads, PAYLOAD_SIZE_ATTRIBUTE};
use ferry::prelude::*;
use ferry::producer::{NewJob, ProduceError, Producer};

/// The ids a pipeline gives the messages now in `queue` (read without a
/// pipeline: `Job::from_message` is how the poller reads them).
async fn ids_seen(queue: &dyn Queue) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    loop {
        let got: Vec<ReceivedMessage> = queue
            .receive(
                10,
                std::time::Duration::ZERO,
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        for m in got {
            *out.entry(Job::from_message(m).id.to_string()).or_default() += 1;
        }
    }
}

#[tokio::test]
async fn returned_ids_are_the_ids_the_pipeline_sees_ten_jobs_per_call() {
    let local = LocalBackend::new();
    let q = local.create_queue("jobs", QueueOptions::default());
    let producer = Producer::new(q.clone());
    let jobs: Vec<NewJob> = (0..25)
        .map(|i| match i % 2 {
            0 => NewJob::new(format!("job {i}")).id(format!("named-{i}")),
            _ => NewJob::new(format!("job {i}")).attribute("tenant", "t7"),
        })
        .collect();
    let before = local.calls().get(Op::Send);
    let (sent, report) = producer.send_all(jobs).await;
    assert_eq!(
        local.calls().get(Op::Send) - before,
        3,
        "25 jobs in 3 calls"
    );
    assert_eq!(report.calls, 3);
    let sent: Vec<_> = sent.into_iter().map(Result::unwrap).collect();
    assert_eq!(sent[0].job_id.as_str(), "named-0");
    // No id given: one is fixed before the first attempt (a retried send
    // is the same job), not the message id the queue gives it.
    assert_ne!(sent[1].job_id.as_str(), sent[1].message_id);
    assert!(!sent[1].job_id.as_str().is_empty());
    let seen = ids_seen(q.as_ref()).await;
    let returned: BTreeMap<String, u32> = sent.iter().map(|s| (s.job_id.to_string(), 1)).collect();
    assert_eq!(seen, returned);
}

#[tokio::test]
async fn failing_entries_are_retried_on_their_own_and_each_job_arrives() {
    let local = LocalBackend::new();
    let q = local.create_queue("jobs", QueueOptions::default());
    local.set_faults(Faults {
        seed: 11,
        fail_rate: 0.3,
        ..Faults::none()
    });
    let producer = Producer::new(q.clone()).attempts(12);
    let jobs = (0..60)
        .map(|i| NewJob::new(format!("{i}")).id(format!("j{i:02}")))
        .collect();
    let (sent, report) = producer.send_all(jobs).await;
    local.set_faults(Faults::none());
    assert!(report.retried > 0, "{report:?}");
    assert!(sent.iter().all(Result::is_ok));
    let seen = ids_seen(q.as_ref()).await;
    // The embedded queue fails a call before it sends anything: each job
    // arrived exactly once, whatever its entry went through.
    let want: BTreeMap<String, u32> = (0..60).map(|i| (format!("j{i:02}"), 1)).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn a_permanent_refusal_fails_one_job_not_its_batch() {
    let local = LocalBackend::new();
    let q = local.create_queue("jobs", QueueOptions::default());
    let producer = Producer::new(q.clone());
    let jobs = vec![
        NewJob::new("small").id("a"),
        NewJob::new("x".repeat(300_000)).id("too-large"),
        NewJob::new("small").id("b"),
    ];
    let (sent, _) = producer.send_all(jobs).await;
    assert!(sent[0].is_ok() && sent[2].is_ok());
    assert!(
        matches!(sent[1], Err(ProduceError::Backend(_))),
        "{:?}",
        sent[1]
    );
    assert_eq!(ids_seen(q.as_ref()).await.len(), 2);
}

#[tokio::test]
async fn fifo_rules_groups_deduplication_and_delay() {
    let local = LocalBackend::new();
    let q = local.create_queue(
        "jobs.fifo",
        QueueOptions {
            fifo: true,
            ..QueueOptions::default()
        },
    );
    let producer = Producer::new(q.clone());
    let no_group = producer.send(NewJob::new("x").id("a")).await;
    assert!(matches!(no_group, Err(ProduceError::Invalid(_))));
    let delayed = producer
        .send(
            NewJob::new("x")
                .id("a")
                .group("g")
                .delay(std::time::Duration::from_secs(1)),
        )
        .await;
    assert!(matches!(delayed, Err(ProduceError::Invalid(_))));
    // The same job twice: the queue's deduplication drops the second.
    let first = producer
        .send(NewJob::new("x").id("a").group("g"))
        .await
        .unwrap();
    producer
        .send(NewJob::new("x").id("a").group("g"))
        .await
        .unwrap();
    // No id: the deduplication id, derived from the content, is the job id.
    let anon = producer.send(NewJob::new("y").group("g")).await.unwrap();
    let again = producer.send(NewJob::new("y").group("g")).await.unwrap();
    assert_eq!(anon.job_id, again.job_id);
    let seen = ids_seen(q.as_ref()).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[first.job_id.as_str()], 1);
    assert_eq!(seen[anon.job_id.as_str()], 1);
    // A standard queue takes no group.
    let std_q = local.create_queue("std", QueueOptions::default());
    let grouped = Producer::new(std_q).send(NewJob::new("x").group("g")).await;
    assert!(matches!(grouped, Err(ProduceError::Invalid(_))));
}

#[tokio::test]
async fn at_most_ten_attributes_ferrys_included() {
    let local = LocalBackend::new();
    let q = local.create_queue("jobs", QueueOptions::default());
    let producer = Producer::new(q.clone());
    let mut nine = NewJob::new("x").id("j");
    for i in 0..9 {
        nine = nine.attribute(format!("a{i}"), "v");
    }
    producer.send(nine).await.unwrap();
    let mut ten = NewJob::new("x").id("k");
    for i in 0..10 {
        ten = ten.attribute(format!("a{i}"), "v");
    }
    assert!(matches!(
        producer.send(ten).await,
        Err(ProduceError::Invalid(_))
    ));
    assert!(matches!(
        producer.send(NewJob::new("x").attribute("empty", "")).await,
        Err(ProduceError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_large_job_is_offloaded_and_a_pipeline_reads_it_whole() {
    let local = LocalBackend::new();
    let q = local.create_queue("jobs", QueueOptions::default());
    let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
    let payloads = LargePayloads::new(local.blobs(), "payloads");
    let producer = Producer::new(q.clone()).large_payloads(payloads.clone());
    let big = "z".repeat(400_000);
    let (sent, report) = producer
        .send_all(vec![
            NewJob::new(big.clone()).id("big"),
            NewJob::new("small").id("small"),
        ])
        .await;
    assert_eq!(report.offloaded, 1);
    assert!(sent.iter().all(Result::is_ok));
    assert!(q
        .snapshot()
        .iter()
        .any(|m| m.attributes.contains_key(PAYLOAD_SIZE_ATTRIBUTE)));
    let sizes = Arc::new(Mutex::new(BTreeMap::new()));
    #[derive(Clone)]
    struct Size(Arc<Mutex<BTreeMap<String, usize>>>);
    impl Processor for Size {
        fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
            self.0
                .lock()
                .unwrap()
                .insert(job.id.to_string(), job.body.len());
            Ok(Output::empty())
        }
    }
    let p = Size(sizes.clone());
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(q.clone())
                .dead_letter(dlq)
                .large_payloads(payloads)
                .processor(move || p.clone())
                .configure(fast),
        )
        .start()
        .await
        .unwrap();
    eventually("both read", || q.depth_now().total() == 0).await;
    rt.shutdown().await;
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes["big"], 400_000);
    assert_eq!(sizes["small"], 5);
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn on_sqs_ids_and_fifo_deduplication_hold() {
    use ferry::backend::aws::QueueSpec;
    let Some(_) = common::aws::endpoint() else {
        return;
    };
    let aws = common::aws::backend().await;
    let name = common::aws::unique("produce");
    let std_q = aws
        .create_queue(&name, &QueueSpec::default())
        .await
        .unwrap();
    let fifo_q = aws
        .create_queue(
            &format!("{name}.fifo"),
            &QueueSpec {
                fifo: true,
                ..QueueSpec::default()
            },
        )
        .await
        .unwrap();
    let (sent, _) = Producer::new(std_q.clone())
        .send_all(
            (0..12)
                .map(|i| NewJob::new(format!("{i}")).id(format!("s{i}")))
                .collect(),
        )
        .await;
    assert!(sent.iter().all(Result::is_ok));
    let fifo = Producer::new(fifo_q.clone());
    let (sent_fifo, _) = fifo
        .send_all(
            (0..6)
                .map(|i| {
                    NewJob::new(format!("{i}"))
                        .id(format!("f{}", i % 3))
                        .group("g")
                })
                .collect(),
        )
        .await;
    assert!(sent_fifo.iter().all(Result::is_ok));
    let seen = ids_seen(std_q.as_ref()).await;
    assert_eq!(seen.len(), 12);
    let seen = ids_seen(fifo_q.as_ref()).await;
    // f0..f2 each sent twice: SQS kept one of each.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}
