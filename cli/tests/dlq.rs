//! `ferry dlq list` and `ferry dlq redrive` against moto: entries with
//! their reasons, what a listing leaves out, dry runs, filtered redrives
//! and their counts.

mod common;

use std::collections::BTreeMap;

use common::*;
use ferry::backend::aws::SqsQueue;
use ferry::backend::{OutgoingMessage, Queue};
use ferry::{DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// Puts entries in a dead-letter queue as ferry's acker writes them:
/// (job id, reason, source queue name, receive count).
async fn dead_letter(dlq: &SqsQueue, entries: &[(&str, &str, &str, u32)]) {
    let batch = entries
        .iter()
        .map(|(job, reason, source, receives)| {
            OutgoingMessage::new(format!("body of {job}"))
                .attribute(JOB_ID_ATTRIBUTE, *job)
                .attribute(DLQ_REASON_ATTRIBUTE, *reason)
                .attribute(DLQ_SOURCE_ATTRIBUTE, *source)
                .attribute(DLQ_RECEIVES_ATTRIBUTE, receives.to_string())
        })
        .collect();
    for r in dlq.send_batch(batch).await.unwrap() {
        r.unwrap();
    }
}

/// Job ids of a queue's messages, sorted (the messages stay hidden a minute).
async fn job_ids(q: &SqsQueue) -> Vec<String> {
    let mut ids: Vec<String> = drain(q)
        .await
        .iter()
        .map(|m| {
            m.attributes
                .get(JOB_ID_ATTRIBUTE)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn list_shows_each_entry_with_its_reason_and_what_it_left_out() {
    let Some(_) = endpoint() else { return };
    let aws = backend().await;
    let name = unique("list-dlq");
    let dlq = queue(&aws, &name).await;
    dead_letter(
        &dlq,
        &[
            ("job-a", "missing object s3://in/a.png", "jobs", 5),
            ("job-b", "bad input: not JSON", "jobs", 1),
            ("job-c", "panicked: index out of bounds", "other", 3),
        ],
    )
    .await;

    // By name (resolved with GetQueueUrl), as JSON.
    let run = ferry(&["--json", "dlq", "list", "--queue", &name])
        .await
        .expect(0);
    let out = run.json();
    assert_eq!(out["queue"], dlq.url());
    assert_eq!(out["listed"], 3, "{out}");
    assert_eq!(out["unlisted"], 0, "{out}");
    let entries: BTreeMap<String, &serde_json::Value> = out["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["job_id"].as_str().unwrap().to_owned(), e))
        .collect();
    assert_eq!(entries.len(), 3, "{out}");
    let a = entries["job-a"];
    assert_eq!(a["reason"], "missing object s3://in/a.png");
    assert_eq!(a["source"], "jobs");
    assert_eq!(a["receive_count"], 5);
    assert_eq!(a["body_bytes"], "body of job-a".len());
    assert_eq!(a["truncated"], false);
    assert_eq!(entries["job-b"]["reason"], "bad input: not JSON");
    assert_eq!(entries["job-c"]["source"], "other");
    assert_eq!(entries["job-c"]["receive_count"], 3);

    // By URL, as text: every entry on a line of its own with its reason.
    let run = ferry(&["dlq", "list", "--queue", dlq.url()])
        .await
        .expect(0);
    for (job, reason) in [
        ("job-a", "missing object s3://in/a.png"),
        ("job-b", "bad input: not JSON"),
        ("job-c", "panicked: index out of bounds"),
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(job) && l.ends_with(reason)),
            "no line for {job}: {run:#?}"
        );
    }
    assert!(
        run.stdout.contains("3 entries listed; 0 unlisted"),
        "{run:#?}"
    );

    // Past the limit: the entries it never saw are counted.
    let run = ferry(&["--json", "dlq", "list", "--queue", &name, "--limit", "2"])
        .await
        .expect(0);
    let out = run.json();
    assert_eq!(out["listed"], 2, "{out}");
    assert_eq!(out["entries"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(out["unlisted"], 1, "{out}");
    let run = ferry(&["dlq", "list", "--queue", &name, "--limit", "2"])
        .await
        .expect(0);
    assert!(
        run.stdout.contains("1 unlisted (past the limit"),
        "{run:#?}"
    );

    // Listing consumed nothing.
    assert_eq!(dlq.depth().await.unwrap().visible, 3);
}

#[tokio::test]
async fn a_missing_queue_fails_naming_it() {
    let Some(_) = endpoint() else { return };
    let name = unique("no-such-queue");
    let run = ferry(&["--json", "dlq", "list", "--queue", &name])
        .await
        .expect(1);
    assert!(
        run.json()["error"].as_str().unwrap().contains(&name),
        "{run:#?}"
    );
    let run = ferry(&["dlq", "list", "--queue", &name]).await.expect(1);
    assert!(run.stderr.contains(&name), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
}

#[tokio::test]
async fn redrive_dry_run_moves_nothing_and_filters_move_only_matching_entries() {
    let Some(_) = endpoint() else { return };
    let aws = backend().await;
    let base = unique("redrive");
    let jobs_name = format!("{base}-jobs");
    let jobs = queue(&aws, &jobs_name).await;
    let dlq = queue(&aws, &format!("{base}-dlq")).await;
    let old = format!("{base}-old");
    dead_letter(
        &dlq,
        &[
            ("m1", "missing object s3://in/1.png", &jobs_name, 5),
            ("m2", "missing object s3://in/2.png", &jobs_name, 5),
            ("b1", "bad input: not JSON", &jobs_name, 1),
            ("o1", "missing object s3://in/o.png", &old, 5),
            ("o2", "bad input: empty", &old, 1),
        ],
    )
    .await;
    let redrive = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "dlq",
            "redrive",
            "--queue",
            dlq.url(),
            "--to",
            &jobs_name,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ferry(&args).await.expect(0).json()
    };

    // A dry run counts and moves nothing.
    let out = run(redrive(&["--dry-run", "--reason-filter", "missing object"])).await;
    assert_eq!(out["dry_run"], true, "{out}");
    assert_eq!(out["would_move"], 2, "{out}");
    assert_eq!(out["scanned"], 5, "{out}");
    assert_eq!(out["unseen"], 0, "{out}");
    let out = run(redrive(&["--dry-run"])).await;
    assert_eq!(
        out["would_move"], 3,
        "only the target's own entries by default: {out}"
    );
    let out = run(redrive(&[
        "--dry-run",
        "--source-filter",
        "*",
        "--max",
        "4",
    ]))
    .await;
    assert_eq!(out["would_move"], 4, "{out}");
    assert_eq!(out["source_filter"], "*", "{out}");
    assert_eq!(
        jobs.depth().await.unwrap().total(),
        0,
        "a dry run sent entries"
    );
    assert_eq!(
        dlq.depth().await.unwrap().visible,
        5,
        "a dry run took entries"
    );

    // Only the target's entries whose reason matches.
    let out = run(redrive(&["--reason-filter", "missing object"])).await;
    assert_eq!(out["dry_run"], false, "{out}");
    assert_eq!(out["moved"], 2, "{out}");
    assert_eq!(out["scanned"], 5, "{out}");
    assert_eq!(out["skipped"], 3, "{out}");
    assert_eq!(out["failed"], 0, "{out}");
    assert_eq!(out["unseen"], 0, "{out}");
    let moved = drain(&jobs).await;
    let mut ids: Vec<&str> = moved
        .iter()
        .map(|m| m.attributes[JOB_ID_ATTRIBUTE].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["m1", "m2"]);
    for m in &moved {
        assert_eq!(
            m.body,
            format!("body of {}", m.attributes[JOB_ID_ATTRIBUTE])
        );
        assert!(!m.attributes.contains_key(DLQ_REASON_ATTRIBUTE), "{m:?}");
        assert!(!m.attributes.contains_key(DLQ_SOURCE_ATTRIBUTE), "{m:?}");
    }
    assert_eq!(dlq.depth().await.unwrap().visible, 3);

    // Another source's entries, by its name.
    let out = run(redrive(&[
        "--source-filter",
        &old,
        "--reason-filter",
        "missing",
    ]))
    .await;
    assert_eq!(out["moved"], 1, "{out}");
    assert_eq!(out["source_filter"], old.as_str(), "{out}");
    assert_eq!(job_ids(&jobs).await, ["o1"]);

    // Any source, at most one: one moved, one left.
    let out = run(redrive(&["--source-filter", "*", "--max", "1"])).await;
    assert_eq!(out["moved"], 1, "{out}");
    assert_eq!(job_ids(&jobs).await.len(), 1);
    assert_eq!(dlq.depth().await.unwrap().visible, 1);

    // As text: the count.
    let args = [
        "dlq",
        "redrive",
        "--queue",
        dlq.url(),
        "--to",
        jobs.url(),
        "--source-filter",
        "*",
    ];
    let text = ferry(&args).await.expect(0);
    assert!(text.stdout.starts_with("moved 1 entry to "), "{text:#?}");
    let left = ferry(&["--json", "dlq", "list", "--queue", dlq.url()])
        .await
        .expect(0)
        .json();
    assert_eq!(left["listed"], 0, "{left}");
}
