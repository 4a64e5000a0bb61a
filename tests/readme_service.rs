//! The README's smallest service is `examples/service.rs`, word for word;
//! on SQS and S3 (moto here, through the standard AWS variables) it stores
//! a result, dead-letters what is not a number with the reason, and on
//! SIGTERM drains and exits 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::aws::{backend, endpoint};
use ferry::backend::aws::QueueSpec;
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::{DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// The example's code, its `//!` header aside.
fn example_code() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/service.rs"))
        .unwrap();
    text.lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_readme_shows_the_service_example_word_for_word() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let code = example_code();
    assert!(
        readme.contains(&code),
        "README.md's service differs from examples/service.rs:\n{code}"
    );
    let lines = code.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 15, "the smallest service is {lines} lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_service_runs_on_sqs_and_s3_until_sigterm() {
    if endpoint().is_none() {
        return;
    }
    // The names the README's service uses.
    let aws = backend().await;
    let dlq = aws
        .create_queue("squares-dlq", &QueueSpec::default())
        .await
        .unwrap();
    let jobs = aws
        .create_queue("squares", &QueueSpec::default())
        .await
        .unwrap();
    aws.create_bucket("squares-results").await.unwrap();
    let mut child = Command::new(common::example("service"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = common::aws::unique("seven");
    let bad = common::aws::unique("bad");
    let send = |body: &str, id: &str| OutgoingMessage::new(body).attribute(JOB_ID_ATTRIBUTE, id);
    for r in jobs
        .send_batch(vec![send("7", &id), send("seven", &bad)])
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let blobs = aws.blobs();
    let key = format!("out/{id}.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        if let Ok(b) = blobs.get("squares-results", &key).await {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "no result at s3://squares-results/{key}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored.as_ref(), b"49");
    let entry = loop {
        let got = dlq
            .receive(10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        if let Some(m) = got
            .into_iter()
            .find(|m| m.attributes.get(JOB_ID_ATTRIBUTE) == Some(&bad))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no dead-letter entry for {bad}");
    };
    let reason = entry.attributes.get(DLQ_REASON_ATTRIBUTE).unwrap();
    assert!(reason.contains("invalid digit"), "{reason}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the service did not exit within 20 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit {status:?}");
}
