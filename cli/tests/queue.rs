//! `ferry queue depth` and `ferry send` against moto, and the usage errors
//! (exit status 2).

mod common;

use std::time::Duration;

use common::*;
use ferry::backend::{OutgoingMessage, Queue};
use ferry::JOB_ID_ATTRIBUTE;

#[tokio::test]
async fn depth_counts_visible_in_flight_and_delayed() {
    let Some(_) = endpoint() else { return };
    let aws = backend().await;
    let name = unique("depth");
    let q = queue(&aws, &name).await;
    let mut batch: Vec<OutgoingMessage> = (0..4)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    let mut delayed = OutgoingMessage::new("later");
    delayed.delay = Some(Duration::from_secs(300));
    batch.push(delayed);
    for r in q.send_batch(batch).await.unwrap() {
        r.unwrap();
    }
    let got = q
        .receive(1, Duration::ZERO, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);

    let out = ferry(&["--json", "queue", "depth", "--queue", &name])
        .await
        .expect(0)
        .json();
    assert_eq!(out["queue"], q.url());
    assert_eq!(out["visible"], 3, "{out}");
    assert_eq!(out["in_flight"], 1, "{out}");
    assert_eq!(out["delayed"], 1, "{out}");
    assert_eq!(out["total"], 5, "{out}");

    let text = ferry(&["queue", "depth", "--queue", q.url()])
        .await
        .expect(0);
    for line in ["visible    3", "in_flight  1", "delayed    1"] {
        assert!(
            text.stdout.lines().any(|l| l == line),
            "no {line:?}: {text:#?}"
        );
    }
}

#[tokio::test]
async fn send_goes_through_the_producer_with_ferrys_job_id() {
    let Some(_) = endpoint() else { return };
    let aws = backend().await;
    let name = unique("send");
    let q = queue(&aws, &name).await;

    // An explicit id, the body as an argument.
    let out = ferry(&[
        "--json",
        "send",
        "--queue",
        &name,
        "--job-id",
        "order-7",
        r#"{"n":7}"#,
    ])
    .await
    .expect(0)
    .json();
    assert_eq!(out["job_id"], "order-7", "{out}");
    assert_eq!(out["queue"], q.url());
    let got = drain(&q).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, r#"{"n":7}"#);
    assert_eq!(got[0].attributes[JOB_ID_ATTRIBUTE], "order-7");
    assert_eq!(out["message_id"], got[0].message_id.as_str());

    // No id: the producer fixes one, sent as the attribute; the body from a file.
    let file = std::env::temp_dir().join(format!("{name}.json"));
    std::fs::write(&file, "from a file\n").unwrap();
    let run = ferry(&["send", "--queue", q.url(), "--file", file.to_str().unwrap()])
        .await
        .expect(0);
    std::fs::remove_file(&file).unwrap();
    let got = drain(&q).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "from a file\n");
    let id = &got[0].attributes[JOB_ID_ATTRIBUTE];
    assert_eq!(id.len(), 32, "the producer's random id: {id}");
    assert!(
        run.stdout.starts_with(&format!("sent job {id} (message ")),
        "{run:#?}"
    );

    // What the producer refuses is not sent: exit 1, with its reason.
    let long = "x".repeat(300);
    let run = ferry(&["send", "--queue", &name, "--job-id", &long, "body"])
        .await
        .expect(1);
    assert!(run.stderr.contains("dead-letter"), "{run:#?}");
    let run = ferry(&["--json", "send", "--queue", &name, "--group", "g", "body"])
        .await
        .expect(1);
    assert!(
        run.json()["error"].as_str().unwrap().contains("FIFO"),
        "{run:#?}"
    );
    assert!(drain(&q).await.is_empty(), "a refused job was sent");
}

#[tokio::test]
async fn send_to_a_fifo_queue_needs_a_group() {
    let Some(_) = endpoint() else { return };
    let aws = backend().await;
    let name = format!("{}.fifo", unique("send"));
    let q = queue(&aws, &name).await;
    let run = ferry(&["send", "--queue", &name, "--job-id", "a", "body"])
        .await
        .expect(1);
    assert!(run.stderr.contains("group"), "{run:#?}");
    let out = ferry(&[
        "--json", "send", "--queue", &name, "--job-id", "a", "--group", "t7", "body",
    ])
    .await
    .expect(0)
    .json();
    assert_eq!(out["job_id"], "a", "{out}");
    let got = drain(&q).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].group_id.as_deref(), Some("t7"));
    assert_eq!(got[0].attributes[JOB_ID_ATTRIBUTE], "a");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["send", "--queue", "q"][..],
        &["send", "--queue", "q", "--file", "f", "body"],
        &["dlq", "redrive", "--queue", "q"],
        &["dlq", "list", "--queue", "q", "--limit", "many"],
        &["queue", "depth"],
        &["no-such-command"],
    ] {
        let out = command(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "ferry {args:?}: {out:?}");
    }
}
