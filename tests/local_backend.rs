//! The embedded backend's SQS/SNS/S3 semantics and its fault injection.

use std::sync::Arc;
use std::time::Duration;

use ferry::backend::local::LocalIdempotencyStore;
use ferry::backend::local::{Faults, LocalBackend, Op, QueueOptions};
use ferry::backend::{BlobStore, ObjectMeta, OutgoingMessage, Queue, Topic, MAX_MESSAGE_BYTES};
use ferry::idempotency::{ClaimOutcome, IdempotencyStore};
use ferry::BackendError;

const VIS: Duration = Duration::from_secs(30);

async fn send(q: &dyn Queue, bodies: &[&str]) {
    let batch = bodies.iter().map(|b| OutgoingMessage::new(*b)).collect();
    for r in q.send_batch(batch).await.unwrap() {
        r.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn each_receive_gets_a_new_handle_and_an_old_one_no_longer_deletes() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    send(q.as_ref(), &["a"]).await;
    let first = q
        .receive(10, Duration::ZERO, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first[0].receive_count, 1);
    // Hidden until the visibility lapses, then delivered again.
    assert!(q.receive(10, Duration::ZERO, VIS).await.unwrap().is_empty());
    tokio::time::advance(Duration::from_millis(1001)).await;
    let second = q.receive(10, Duration::ZERO, VIS).await.unwrap();
    assert_eq!(second[0].receive_count, 2);
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_ne!(second[0].receipt_handle, first[0].receipt_handle);
    let stale = q
        .delete_batch(&[first[0].receipt_handle.clone()])
        .await
        .unwrap();
    assert_eq!(stale, vec![Err(BackendError::ReceiptInvalid)]);
    let stale_vis = q
        .change_visibility_batch(&[(first[0].receipt_handle.clone(), VIS)])
        .await
        .unwrap();
    assert_eq!(stale_vis, vec![Err(BackendError::ReceiptInvalid)]);
    assert_eq!(q.depth_now().total(), 1);
    assert_eq!(
        q.delete_batch(&[second[0].receipt_handle.clone()])
            .await
            .unwrap(),
        vec![Ok(())]
    );
    assert_eq!(q.depth_now().total(), 0);
}

#[tokio::test(start_paused = true)]
async fn visibility_changes_extend_and_release() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    send(q.as_ref(), &["a"]).await;
    let m = q
        .receive(1, Duration::ZERO, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    tokio::time::advance(Duration::from_secs(8)).await;
    q.change_visibility_batch(&[(m.receipt_handle.clone(), Duration::from_secs(10))])
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(8)).await;
    assert!(
        q.receive(1, Duration::ZERO, VIS).await.unwrap().is_empty(),
        "extended lease lapsed"
    );
    q.change_visibility_batch(&[(m.receipt_handle.clone(), Duration::ZERO)])
        .await
        .unwrap();
    assert_eq!(
        q.receive(1, Duration::ZERO, VIS).await.unwrap().len(),
        1,
        "released at once"
    );
}

#[tokio::test(start_paused = true)]
async fn long_polling_waits_for_a_send_and_for_a_lapse() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let q2 = q.clone();
    let lease = Duration::from_secs(10);
    let waiter = tokio::spawn(async move { q2.receive(10, Duration::from_secs(20), lease).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    send(q.as_ref(), &["late"]).await;
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    // A receive waiting on an empty queue wakes when an in-flight message lapses.
    let started = tokio::time::Instant::now();
    let again = q.receive(10, Duration::from_secs(20), VIS).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(started.elapsed(), lease);
}

#[tokio::test(start_paused = true)]
async fn fifo_locks_a_group_while_in_flight_and_keeps_order() {
    let local = LocalBackend::new();
    let q = local.create_queue(
        "q.fifo",
        QueueOptions {
            fifo: true,
            content_based_dedup: true,
            ..Default::default()
        },
    );
    let batch = [("a", "1"), ("a", "2"), ("b", "1"), ("a", "3")]
        .iter()
        .map(|(g, n)| OutgoingMessage::new(format!("{g}{n}")).group(*g))
        .collect();
    q.send_batch(batch).await.unwrap();
    let first = q.receive(1, Duration::ZERO, VIS).await.unwrap();
    assert_eq!(first[0].body, "a1");
    // Group a is locked; b is free.
    let next = q.receive(10, Duration::ZERO, VIS).await.unwrap();
    assert_eq!(
        next.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["b1"]
    );
    // Releasing a1 returns it first, before a2.
    q.change_visibility_batch(&[(first[0].receipt_handle.clone(), Duration::ZERO)])
        .await
        .unwrap();
    let again = q.receive(10, Duration::ZERO, VIS).await.unwrap();
    assert_eq!(
        again.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["a1", "a2", "a3"]
    );
}

#[tokio::test(start_paused = true)]
async fn fifo_deduplicates_within_five_minutes_only() {
    let local = LocalBackend::new();
    let q = local.create_queue(
        "q.fifo",
        QueueOptions {
            fifo: true,
            ..Default::default()
        },
    );
    let msg = || OutgoingMessage::new("x").group("g").dedup("d-1");
    let a = q.send_batch(vec![msg()]).await.unwrap().remove(0).unwrap();
    tokio::time::advance(Duration::from_secs(299)).await;
    let b = q.send_batch(vec![msg()]).await.unwrap().remove(0).unwrap();
    assert_eq!(a, b, "a resend within the window is the same message");
    assert_eq!(q.depth_now().total(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    q.send_batch(vec![msg()]).await.unwrap();
    assert_eq!(
        q.depth_now().total(),
        2,
        "past the window it is a new message"
    );
    let missing = q
        .send_batch(vec![OutgoingMessage::new("y").group("g")])
        .await
        .unwrap();
    assert!(matches!(missing[0], Err(BackendError::Invalid { .. })));
}

#[tokio::test]
async fn topics_fan_out_raw_and_enveloped() {
    let local = LocalBackend::new();
    let t = local.create_topic("t", false);
    let raw = local.create_queue("raw", QueueOptions::default());
    let env = local.create_queue("env", QueueOptions::default());
    local.subscribe(&t, &raw, true);
    local.subscribe(&t, &env, false);
    t.publish_batch(vec![OutgoingMessage::new("hello").attribute("k", "v")])
        .await
        .unwrap();
    let r = raw.snapshot().remove(0);
    assert_eq!(
        (r.body.as_str(), r.attributes["k"].as_str()),
        ("hello", "v")
    );
    let e = env.snapshot().remove(0);
    let v: serde_json::Value = serde_json::from_str(&e.body).unwrap();
    assert_eq!(v["Type"], "Notification");
    assert_eq!(v["Message"], "hello");
    assert_eq!(v["MessageAttributes"]["k"]["Value"], "v");
}

#[tokio::test]
async fn fifo_topics_deduplicate() {
    let local = LocalBackend::new();
    let t = local.create_topic("t.fifo", true);
    let q = local.create_queue(
        "q.fifo",
        QueueOptions {
            fifo: true,
            ..Default::default()
        },
    );
    local.subscribe(&t, &q, true);
    let n = || OutgoingMessage::new("x").group("g").dedup("job-1");
    t.publish_batch(vec![n(), n()]).await.unwrap();
    assert_eq!(q.depth_now().total(), 1);
}

#[tokio::test]
async fn blob_stores_in_memory_and_in_a_directory() {
    let dir = std::env::temp_dir().join(format!("ferry-blobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for local in [LocalBackend::new(), LocalBackend::with_blob_dir(&dir)] {
        let b = local.blobs();
        let meta = ObjectMeta {
            content_type: Some("text/plain".into()),
            metadata: [("ferry-job-id".to_string(), "j1".to_string())].into(),
            ..Default::default()
        };
        b.put("bkt", "a/b/c.txt", "hello".into(), meta)
            .await
            .unwrap();
        assert_eq!(&b.get("bkt", "a/b/c.txt").await.unwrap()[..], b"hello");
        let head = b.head("bkt", "a/b/c.txt").await.unwrap().unwrap();
        assert_eq!(head.size, 5);
        assert_eq!(head.metadata["ferry-job-id"], "j1");
        assert_eq!(b.head("bkt", "nope").await.unwrap(), None);
        assert!(matches!(
            b.get("bkt", "nope").await,
            Err(BackendError::NotFound { .. })
        ));
        assert_eq!(
            b.list("bkt", "a/").await.unwrap(),
            vec!["a/b/c.txt".to_string()]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn failure_pattern(seed: u64) -> Vec<bool> {
    let local = LocalBackend::with_faults(Faults {
        seed,
        fail_rate: 0.3,
        ..Faults::none()
    });
    let q = local.create_queue("q", QueueOptions::default());
    let mut out = Vec::new();
    for _ in 0..50 {
        out.push(q.receive(1, Duration::ZERO, VIS).await.is_err());
    }
    assert_eq!(
        local.calls().get(Op::Receive),
        50,
        "failed calls are counted too"
    );
    out
}

#[tokio::test]
async fn faults_are_seeded_and_reproducible() {
    let a = failure_pattern(42).await;
    assert_eq!(a, failure_pattern(42).await);
    assert_ne!(a, failure_pattern(43).await);
    let failures = a.iter().filter(|f| **f).count();
    assert!(
        (5..=25).contains(&failures),
        "{failures} of 50 failed at a 30% rate"
    );
}

#[tokio::test]
async fn concurrent_duplicates_hand_one_message_to_two_receives() {
    let local = LocalBackend::with_faults(Faults {
        seed: 1,
        duplicate_rate: 1.0,
        ..Faults::none()
    });
    let q = local.create_queue("q", QueueOptions::default());
    send(q.as_ref(), &["once"]).await;
    let (a, b) = tokio::join!(
        q.receive(10, Duration::from_millis(100), VIS),
        q.receive(10, Duration::from_millis(100), VIS)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.len(), b.len()), (1, 1), "both readers got the message");
    assert_eq!(a[0].message_id, b[0].message_id);
    assert_ne!(a[0].receipt_handle, b[0].receipt_handle);
}

#[tokio::test]
async fn latency_and_gates_hold_calls() {
    let local = LocalBackend::with_faults(Faults {
        latency: Duration::from_millis(30),
        ..Faults::none()
    });
    let q = local.create_queue("q", QueueOptions::default());
    let t0 = std::time::Instant::now();
    send(q.as_ref(), &["a"]).await;
    assert!(t0.elapsed() >= Duration::from_millis(30));
    let gate = local.gate(Op::Receive);
    let held = tokio::time::timeout(
        Duration::from_millis(100),
        q.receive(1, Duration::ZERO, VIS),
    )
    .await;
    assert!(held.is_err(), "a closed gate holds the call");
    gate.open();
    assert_eq!(q.receive(1, Duration::ZERO, VIS).await.unwrap().len(), 1);
    assert_eq!(local.calls().service("sqs"), 3);
}

/// A delete that a replica misses, landing on a message that is visible
/// again, must not list the message twice: one receive would then take it
/// twice and its FIFO group would stay locked after the delete.
#[tokio::test(start_paused = true)]
async fn a_missed_delete_of_a_visible_fifo_message_does_not_lock_its_group() {
    let local = LocalBackend::new();
    let q = local.create_queue(
        "q.fifo",
        QueueOptions {
            fifo: true,
            ..QueueOptions::default()
        },
    );
    for (i, body) in ["a1", "a2"].iter().enumerate() {
        q.send_batch(vec![OutgoingMessage::new(*body)
            .group("a")
            .dedup(format!("d{i}"))])
            .await
            .unwrap();
    }
    let vis = Duration::from_secs(30);
    let first = q.receive(1, Duration::ZERO, vis).await.unwrap();
    assert_eq!(first.len(), 1);
    let h1 = first[0].receipt_handle.clone();
    // Given back: visible again, the handle still current.
    q.change_visibility_batch(&[(h1.clone(), Duration::ZERO)])
        .await
        .unwrap();
    local.set_faults(Faults {
        seed: 1,
        redeliver_after_delete_rate: 1.0,
        ..Faults::none()
    });
    q.delete_batch(&[h1]).await.unwrap()[0].clone().unwrap();
    local.set_faults(Faults::none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = q.receive(10, Duration::ZERO, vis).await.unwrap();
    let bodies: Vec<_> = again.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["a1", "a2"], "one listing, one delivery each");
    let handles: Vec<String> = again.iter().map(|m| m.receipt_handle.clone()).collect();
    for r in q.delete_batch(&handles).await.unwrap() {
        r.unwrap();
    }
    assert_eq!(q.depth_now().total(), 0);
    q.send_batch(vec![OutgoingMessage::new("a3").group("a").dedup("d3")])
        .await
        .unwrap();
    let next = q.receive(10, Duration::ZERO, vis).await.unwrap();
    assert_eq!(next.len(), 1, "the group stayed locked");
    assert_eq!(next[0].body, "a3");
}

/// Keeps the default hook quiet for the panics these tests inject.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map_or("", String::as_str);
            if !msg.starts_with("injected") {
                default_hook(info);
            }
        }));
    });
}

#[test]
fn new_faults_are_off_by_default_and_chaos_is_unchanged() {
    let none = Faults::none();
    assert_eq!(
        (none.panic_rate, none.slow_rate, none.refuse_rate),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(none.slow_max, Duration::ZERO);
    assert_eq!(
        Faults::chaos(7),
        Faults {
            seed: 7,
            duplicate_rate: 0.05,
            redeliver_after_delete_rate: 0.05,
            fail_rate: 0.02,
            latency: Duration::ZERO,
            panic_rate: 0.0,
            slow_rate: 0.0,
            slow_max: Duration::ZERO,
            refuse_rate: 0.0,
        }
    );
}

/// Which of 40 receives panicked, at a 25 % panic rate.
async fn panic_pattern(seed: u64) -> Vec<bool> {
    quiet_injected_panics();
    let local = LocalBackend::with_faults(Faults {
        seed,
        panic_rate: 0.25,
        ..Faults::none()
    });
    let q = local.create_queue("q", QueueOptions::default());
    let mut out = Vec::new();
    for _ in 0..40 {
        let q = q.clone();
        let r = tokio::spawn(async move { q.receive(1, Duration::ZERO, VIS).await }).await;
        match r {
            Ok(got) => {
                got.unwrap();
                out.push(false);
            }
            Err(e) => {
                let payload = e.into_panic();
                let msg = payload.downcast_ref::<String>().unwrap();
                assert!(
                    msg.starts_with("injected backend panic: Receive on q"),
                    "{msg}"
                );
                out.push(true);
            }
        }
    }
    assert_eq!(local.calls().get(Op::Receive), 40, "panicked calls count");
    // No lock was left poisoned: the queue works as before.
    local.set_faults(Faults::none());
    send(q.as_ref(), &["after"]).await;
    assert_eq!(q.receive(10, Duration::ZERO, VIS).await.unwrap().len(), 1);
    out
}

#[tokio::test]
async fn backend_panics_are_seeded_and_leave_the_backend_usable() {
    let a = panic_pattern(3).await;
    assert_eq!(a, panic_pattern(3).await);
    assert_ne!(a, panic_pattern(4).await);
    let n = a.iter().filter(|p| **p).count();
    assert!((3..=20).contains(&n), "{n} of 40 panicked at 25%");
}

#[tokio::test]
async fn panic_next_panics_once_on_one_operation_without_other_faults() {
    quiet_injected_panics();
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    send(q.as_ref(), &["a"]).await;
    local.panic_next(Op::Delete);
    let m = q.receive(1, Duration::ZERO, VIS).await.unwrap().remove(0);
    let handle = m.receipt_handle.clone();
    let q2 = q.clone();
    let h2 = handle.clone();
    let panicked = tokio::spawn(async move { q2.delete_batch(&[h2]).await }).await;
    let msg = panicked.unwrap_err().into_panic();
    assert_eq!(
        msg.downcast_ref::<String>().unwrap(),
        "injected backend panic: Delete on q"
    );
    assert_eq!(q.depth_now().total(), 1, "the panicking delete did nothing");
    assert_eq!(q.delete_batch(&[handle]).await.unwrap(), vec![Ok(())]);
    assert_eq!(q.depth_now().total(), 0);
    assert_eq!(local.calls().get(Op::Delete), 2);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_are_seeded_and_do_nothing_until_their_delay_is_over() {
    async fn delays(seed: u64) -> Vec<Duration> {
        let local = LocalBackend::with_faults(Faults {
            seed,
            slow_rate: 0.5,
            slow_max: Duration::from_secs(2),
            ..Faults::none()
        });
        let q = local.create_queue("q", QueueOptions::default());
        let mut out = Vec::new();
        for _ in 0..20 {
            let t0 = tokio::time::Instant::now();
            q.receive(1, Duration::ZERO, VIS).await.unwrap();
            out.push(t0.elapsed());
        }
        out
    }
    let a = delays(8).await;
    assert_eq!(a, delays(8).await);
    assert_ne!(a, delays(9).await);
    let slowed = a.iter().filter(|d| !d.is_zero()).count();
    assert!((4..=16).contains(&slowed), "{slowed} of 20 slowed at 50%");
    assert!(a.iter().all(|d| *d < Duration::from_secs(2)));

    // A receive given up during its delay takes nothing.
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    send(q.as_ref(), &["a"]).await;
    local.set_faults(Faults {
        seed: 1,
        slow_rate: 1.0,
        slow_max: Duration::from_secs(10),
        ..Faults::none()
    });
    let gave_up =
        tokio::time::timeout(Duration::from_millis(5), q.receive(10, Duration::ZERO, VIS)).await;
    assert!(gave_up.is_err(), "the slowed receive was still waiting");
    let left = q.snapshot();
    assert_eq!((left.len(), left[0].receive_count), (1, 0));
    assert!(!left[0].in_flight);
    local.set_faults(Faults::none());
    let got = q.receive(10, Duration::ZERO, VIS).await.unwrap();
    assert_eq!(got[0].receive_count, 1);
}

/// Sends 20 messages, receives them with a 1 s visibility and deletes them
/// all; returns the bodies whose handles were refused.
async fn refused_bodies(q: &dyn Queue) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < 20 {
        got.extend(
            q.receive(10, Duration::ZERO, Duration::from_secs(1))
                .await
                .unwrap(),
        );
    }
    let mut refused = Vec::new();
    for chunk in got.chunks(10) {
        let handles: Vec<String> = chunk.iter().map(|m| m.receipt_handle.clone()).collect();
        let results = q.delete_batch(&handles).await.unwrap();
        for (m, r) in chunk.iter().zip(results) {
            match r {
                Ok(()) => {}
                Err(BackendError::Invalid { message }) => {
                    assert!(
                        message.starts_with("injected permanent refusal of receipt handle"),
                        "{message}"
                    );
                    refused.push(m.body.clone());
                    // Refused again, by a delete and a visibility change.
                    let again = q
                        .delete_batch(std::slice::from_ref(&m.receipt_handle))
                        .await
                        .unwrap();
                    assert!(matches!(again[0], Err(BackendError::Invalid { .. })));
                    let vis = q
                        .change_visibility_batch(&[(m.receipt_handle.clone(), VIS)])
                        .await
                        .unwrap();
                    assert!(matches!(vis[0], Err(BackendError::Invalid { .. })));
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
    refused.sort();
    refused
}

async fn refusal_run(seed: u64) -> (Vec<String>, Vec<String>) {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let bodies: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    send(
        q.as_ref(),
        &bodies.iter().map(String::as_str).collect::<Vec<_>>()[..10],
    )
    .await;
    send(
        q.as_ref(),
        &bodies.iter().map(String::as_str).collect::<Vec<_>>()[10..],
    )
    .await;
    local.set_faults(Faults {
        seed,
        refuse_rate: 0.4,
        ..Faults::none()
    });
    let first = refused_bodies(q.as_ref()).await;
    assert_eq!(
        q.depth_now().total(),
        first.len(),
        "the others were deleted"
    );
    // The refused ones come back with new handles, which draw again.
    tokio::time::advance(Duration::from_millis(1100)).await;
    let mut second_round = Vec::new();
    while second_round.len() < first.len() {
        second_round.extend(q.receive(10, Duration::ZERO, VIS).await.unwrap());
    }
    let handles: Vec<String> = second_round
        .iter()
        .map(|m| m.receipt_handle.clone())
        .collect();
    let mut second: Vec<String> = q
        .delete_batch(&handles)
        .await
        .unwrap()
        .into_iter()
        .zip(&second_round)
        .filter(|(r, _)| r.is_err())
        .map(|(_, m)| m.body.clone())
        .collect();
    second.sort();
    (first, second)
}

#[tokio::test(start_paused = true)]
async fn refused_handles_stay_refused_and_new_deliveries_draw_again() {
    let (first, second) = refusal_run(21).await;
    assert!(
        (2..=16).contains(&first.len()),
        "{} of 20 refused at 40%",
        first.len()
    );
    assert!(
        second.len() < first.len(),
        "new handles are drawn again: {second:?} of {first:?}"
    );
    assert_eq!((first.clone(), second), refusal_run(21).await);
    assert_ne!(first, refusal_run(22).await.0);
}

#[tokio::test]
async fn queues_and_topics_check_messages_as_sqs_and_sns_do() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let eleven = (0..11).fold(OutgoingMessage::new("x"), |m, i| {
        m.attribute(format!("a{i}"), "v")
    });
    let ten = (0..10).fold(OutgoingMessage::new("ten"), |m, i| {
        m.attribute(format!("a{i}"), "v")
    });
    let batch = || {
        vec![
            eleven.clone(),
            OutgoingMessage::new("empty value").attribute("k", ""),
            OutgoingMessage::new("empty name").attribute("", "v"),
            // The body fits alone; with the attribute's name, data type
            // ("String") and value it does not.
            OutgoingMessage::new("y".repeat(MAX_MESSAGE_BYTES - 10)).attribute("key", "vv"),
            OutgoingMessage::new("y".repeat(MAX_MESSAGE_BYTES - 11)).attribute("key", "v"),
            ten.clone(),
        ]
    };
    let check = |results: Vec<Result<String, BackendError>>| {
        match &results[0] {
            Err(BackendError::Invalid { message }) => assert!(
                message.ends_with("has 11 message attributes; at most 10"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        match &results[1] {
            Err(BackendError::Invalid { message }) => {
                assert!(message.contains("`k` has an empty value"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match &results[2] {
            Err(BackendError::Invalid { message }) => {
                assert!(message.contains("empty name"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            results[3],
            Err(BackendError::PayloadTooLarge {
                actual: MAX_MESSAGE_BYTES + 1,
                limit: MAX_MESSAGE_BYTES
            })
        );
        assert!(results[4].is_ok() && results[5].is_ok(), "{results:?}");
    };
    // Together the entries are over the limit of one request: refused whole.
    match q.send_batch(batch()).await {
        Err(BackendError::Invalid { message }) => {
            assert!(message.contains("a batch of 6 entries"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let mut results = Vec::new();
    for m in batch() {
        results.extend(q.send_batch(vec![m]).await.unwrap());
    }
    check(results);
    let held: Vec<usize> = q.snapshot().iter().map(|m| m.body.len()).collect();
    assert_eq!(held, vec![MAX_MESSAGE_BYTES - 11, 3], "only the valid ones");

    let t = local.create_topic("t", false);
    let sub = local.create_queue("sub", QueueOptions::default());
    local.subscribe(&t, &sub, true);
    assert!(
        t.publish_batch(batch()).await.is_err(),
        "over the request's limit"
    );
    let mut results = Vec::new();
    for m in batch() {
        results.extend(t.publish_batch(vec![m]).await.unwrap());
    }
    check(results);
    assert_eq!(sub.depth_now().total(), 2);

    // An invalid notification records no deduplication id on a FIFO topic.
    let ft = local.create_topic("t.fifo", true);
    let fq = local.create_queue(
        "f.fifo",
        QueueOptions {
            fifo: true,
            ..Default::default()
        },
    );
    local.subscribe(&ft, &fq, true);
    let n = |v: &str| {
        OutgoingMessage::new("x")
            .group("g")
            .dedup("d")
            .attribute("k", v)
    };
    let r = ft.publish_batch(vec![n(""), n("v")]).await.unwrap();
    assert!(matches!(r[0], Err(BackendError::Invalid { .. })) && r[1].is_ok());
    assert_eq!(fq.depth_now().total(), 1);
}

async fn store_failures(seed: u64) -> Vec<bool> {
    let local = LocalBackend::with_faults(Faults {
        seed,
        fail_rate: 0.3,
        ..Faults::none()
    });
    let store = local.idempotency_store();
    let mut out = Vec::new();
    for i in 0..40 {
        out.push(store.claim(&format!("k{i}"), "me", VIS).await.is_err());
    }
    assert_eq!(local.calls().get(Op::Claim), 40);
    assert_eq!(local.calls().service("store"), 40);
    assert_eq!(local.calls().service("sqs"), 0);
    out
}

#[tokio::test]
async fn the_backends_idempotency_store_shares_its_faults() {
    quiet_injected_panics();
    let a = store_failures(5).await;
    assert_eq!(a, store_failures(5).await);
    assert_ne!(a, store_failures(6).await);
    assert!(a.iter().any(|f| *f) && !a.iter().all(|f| *f));

    let local = LocalBackend::new();
    let store = Arc::new(local.idempotency_store());
    assert_eq!(
        store.claim("k", "me", VIS).await.unwrap(),
        ClaimOutcome::Claimed
    );
    // An armed panic hits the next renewal only, and leaves the store usable.
    local.panic_next(Op::Renew);
    let s2 = store.clone();
    let panicked = tokio::spawn(async move { s2.renew("k", "me", VIS).await }).await;
    assert!(panicked.unwrap_err().is_panic());
    assert!(store.renew("k", "me", VIS).await.unwrap());
    // A gate holds completions.
    let gate = local.gate(Op::Complete);
    let held =
        tokio::time::timeout(Duration::from_millis(50), store.complete("k", "me", VIS)).await;
    assert!(held.is_err(), "a closed gate holds the call");
    gate.open();
    assert!(store.complete("k", "me", VIS).await.unwrap());
    store.release("k", "me").await.unwrap();
    let calls = local.calls();
    assert_eq!(
        Op::ALL
            .iter()
            .filter(|op| op.service() == "store")
            .map(|op| (*op, calls.get(*op)))
            .collect::<Vec<_>>(),
        vec![
            (Op::Claim, 1),
            (Op::Renew, 2),
            (Op::Complete, 2),
            (Op::Release, 1)
        ]
    );

    // A store made on its own knows nothing of the backend's faults.
    local.set_faults(Faults {
        fail_rate: 1.0,
        ..Faults::none()
    });
    let plain = LocalIdempotencyStore::new();
    assert_eq!(
        plain.claim("k", "me", VIS).await.unwrap(),
        ClaimOutcome::Claimed
    );
    assert!(store.claim("k2", "me", VIS).await.is_err());
    assert_eq!(local.calls().get(Op::Claim), 2);
}

#[tokio::test(start_paused = true)]
async fn visibility_over_twelve_hours_from_the_receive_is_refused_as_sqs_does() {
    use ferry::backend::MAX_VISIBILITY;
    let hour = Duration::from_secs(3600);
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    send(q.as_ref(), &["a"]).await;
    let over = MAX_VISIBILITY + Duration::from_secs(1);
    let refused = q.receive(10, Duration::ZERO, over).await.unwrap_err();
    assert!(
        matches!(&refused, BackendError::Invalid { message } if message.contains("43200")),
        "{refused:?}"
    );
    let got = q.receive(10, Duration::ZERO, VIS).await.unwrap();
    let handle = got[0].receipt_handle.clone();
    let r = q
        .change_visibility_batch(&[(handle.clone(), over)])
        .await
        .unwrap();
    assert!(matches!(r[0], Err(BackendError::Invalid { .. })), "{r:?}");
    // Twelve hours from the receive is the most, in all.
    let r = q
        .change_visibility_batch(&[(handle.clone(), MAX_VISIBILITY)])
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    tokio::time::advance(11 * hour).await;
    let r = q
        .change_visibility_batch(&[(handle.clone(), 2 * hour)])
        .await
        .unwrap();
    assert!(
        matches!(&r[0], Err(BackendError::Invalid { message }) if message.contains("beyond the limit")),
        "an extension past 12 h from the receive: {r:?}"
    );
    let r = q
        .change_visibility_batch(&[(handle.clone(), hour)])
        .await
        .unwrap();
    assert!(r[0].is_ok(), "up to 12 h from the receive: {r:?}");
    // A new receive starts a new 12 hours.
    q.change_visibility_batch(&[(handle, Duration::ZERO)])
        .await
        .unwrap();
    let again = q.receive(10, Duration::ZERO, VIS).await.unwrap();
    tokio::time::advance(hour).await;
    let r = q
        .change_visibility_batch(&[(again[0].receipt_handle.clone(), 11 * hour)])
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_long_poll_returns_as_soon_as_a_message_is_visible_again() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    send(q.as_ref(), &["a"]).await;
    let got = q.receive(10, Duration::ZERO, VIS).await.unwrap();
    let start = tokio::time::Instant::now();
    let waiting = tokio::spawn({
        let q = q.clone();
        async move {
            let got = q.receive(10, Duration::from_secs(5), VIS).await.unwrap();
            (got, start.elapsed())
        }
    });
    // The long poll is waiting when the job's retry backoff is set.
    tokio::time::sleep(Duration::from_millis(10)).await;
    q.change_visibility_batch(&[(got[0].receipt_handle.clone(), Duration::from_secs(1))])
        .await
        .unwrap();
    let (again, after) = waiting.await.unwrap();
    assert_eq!(again.len(), 1, "the message came back within the wait");
    assert!(
        after < Duration::from_millis(1500),
        "returned {after:?} after the receive, not as the message became visible (1 s)"
    );
}

#[tokio::test]
async fn throttling_is_injected_at_a_seeded_rate_on_the_operations_aimed_at() {
    use ferry::backend::local::InfraFaults;
    async fn puts(seed: u64) -> Vec<bool> {
        let local = LocalBackend::with_faults(Faults {
            seed,
            ..Faults::none()
        });
        local.set_infra_faults(InfraFaults {
            throttle_rate: 0.4,
            ops: vec![Op::Put],
            ..InfraFaults::default()
        });
        let blobs = local.blobs();
        let mut out = Vec::new();
        for i in 0..40 {
            let key = format!("k{i}");
            match blobs
                .put("b", &key, "x".into(), ObjectMeta::default())
                .await
            {
                Ok(()) => out.push(false),
                Err(e) => {
                    assert!(
                        matches!(&e, BackendError::Throttled { message } if message.contains("SlowDown")),
                        "{e:?}"
                    );
                    assert!(e.is_retryable());
                    out.push(true);
                }
            }
            // Other operations are not aimed at.
            blobs.head("b", &key).await.unwrap();
        }
        out
    }
    let a = puts(7).await;
    assert!(a.iter().any(|t| *t) && !a.iter().all(|t| *t), "{a:?}");
    assert_eq!(a, puts(7).await, "the same seed throttles the same calls");
    assert_ne!(a, puts(8).await);
}

#[tokio::test(start_paused = true)]
async fn throttling_bursts_and_expired_credentials_hold_for_their_window() {
    use ferry::backend::local::{InfraFaults, Window};
    let s = Duration::from_secs(1);
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    local
        .blobs()
        .put("b", "k", "x".into(), ObjectMeta::default())
        .await
        .unwrap();
    local.set_infra_faults(InfraFaults {
        throttle_window: Some(Window::new(s, 2 * s)),
        expired_credentials_window: Some(Window::new(4 * s, 2 * s)),
        ops: vec![Op::Get, Op::Receive],
        ..InfraFaults::default()
    });
    let get = || async { local.blobs().get("b", "k").await };
    assert!(get().await.is_ok());
    assert!(q.receive(1, Duration::ZERO, VIS).await.is_ok());
    tokio::time::advance(1500 * Duration::from_millis(1)).await;
    let throttled = get().await.unwrap_err();
    assert!(
        matches!(&throttled, BackendError::Throttled { message } if message.contains("SlowDown")),
        "{throttled:?}"
    );
    let sqs = q.receive(1, Duration::ZERO, VIS).await.unwrap_err();
    assert!(
        matches!(&sqs, BackendError::Throttled { message } if message.contains("RequestThrottled")),
        "{sqs:?}"
    );
    // Sends are not aimed at.
    send(q.as_ref(), &["a"]).await;
    tokio::time::advance(2 * s).await;
    assert!(get().await.is_ok(), "the burst is over");
    tokio::time::advance(s).await;
    let expired = get().await.unwrap_err();
    // What the AWS backend makes of `ExpiredToken`.
    assert_eq!(
        std::mem::discriminant(&expired),
        std::mem::discriminant(&BackendError::expired_credentials("x"))
    );
    assert!(expired.to_string().contains("ExpiredToken"), "{expired}");
    tokio::time::advance(2 * s).await;
    assert!(get().await.is_ok(), "new credentials");
    assert_eq!(q.receive(1, Duration::ZERO, VIS).await.unwrap().len(), 1);
    // Quiet again once cleared.
    local.set_infra_faults(InfraFaults {
        expired_credentials_rate: 1.0,
        ..InfraFaults::default()
    });
    assert!(get().await.is_err());
    local.set_infra_faults(InfraFaults::default());
    assert!(get().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_queue_keeps_bounded_bookkeeping_whatever_it_has_carried() {
    async fn churn(q: &ferry::backend::local::LocalQueue, n: usize, fifo: bool) {
        for round in 0..n / 10 {
            let batch = (0..10)
                .map(|i| {
                    let m = OutgoingMessage::new(format!("{round}-{i}"));
                    if fifo {
                        // A group and a deduplication id per message.
                        m.group(format!("g{round}-{i}"))
                            .dedup(format!("d{round}-{i}"))
                    } else {
                        m
                    }
                })
                .collect();
            for r in q.send_batch(batch).await.unwrap() {
                r.unwrap();
            }
            let got = q.receive(10, Duration::ZERO, VIS).await.unwrap();
            assert_eq!(got.len(), 10);
            let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
            for r in q.delete_batch(&handles).await.unwrap() {
                r.unwrap();
            }
        }
    }
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    churn(&q, 5_000, false).await;
    assert_eq!(q.depth_now().total(), 0);
    let kept = q.bookkeeping();
    assert!(kept <= 100, "{kept} entries kept for 5,000 messages gone");

    let f = local.create_queue(
        "f.fifo",
        QueueOptions {
            fifo: true,
            ..QueueOptions::default()
        },
    );
    churn(&f, 3_000, true).await;
    // Deduplication ids count within the five-minute window, as on SQS ...
    assert!(f.bookkeeping() >= 3_000);
    // ... and not after it.
    tokio::time::advance(ferry::backend::DEDUP_WINDOW + Duration::from_secs(1)).await;
    churn(&f, 10, true).await;
    let kept = f.bookkeeping();
    assert!(
        kept <= 100,
        "{kept} entries kept for 3,000 FIFO messages gone"
    );
}
