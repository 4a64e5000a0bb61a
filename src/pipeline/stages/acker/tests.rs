//! Unit tests of `acker`.

use super::dead_letter::{cut_bytes, cut_chars, MAX_ATTRIBUTES, MAX_REASON};
use super::*;
use crate::backend::local::{LocalBackend, QueueOptions};
use crate::backend::ReceivedMessage;
use crate::backend::{attribute_size, message_size, OutgoingMessage, MAX_MESSAGE_BYTES};
use crate::job::Job;
use crate::job::{
    DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE, DLQ_TRUNCATED_ATTRIBUTE,
    JOB_ID_ATTRIBUTE, MAX_JOB_ID_BYTES,
};
use crate::pipeline::lifecycle::Start;
use crate::pipeline::Pipeline;
use crate::processor::{Context as JobContext, Output, Processor};
use crate::ProcessError;

struct Noop;
impl Processor for Noop {
    fn process(&mut self, _: &Job, _: &JobContext) -> Result<Output, ProcessError> {
        Ok(Output::empty())
    }
}

/// An acker (not started) of a pipeline over `q` or `q.fifo`.
fn acker(fifo: bool) -> Acker {
    let local = LocalBackend::new();
    let options = QueueOptions {
        fifo,
        content_based_dedup: fifo,
        ..Default::default()
    };
    let suffix = if fifo { ".fifo" } else { "" };
    let q = local.create_queue(&format!("q{suffix}"), options.clone());
    let dlq = local.create_queue(&format!("dlq{suffix}"), options);
    Acker::new(
        Shared::new(
            Pipeline::new("p")
                .source(q)
                .dead_letter(dlq)
                .processor(|| Noop)
                .configure(|c| {
                    c.max_receives = 3;
                }),
        ),
        crate::pipeline::routes_nowhere(),
    )
}

fn message(id: &str, body: &str, receive_count: u32) -> ReceivedMessage {
    ReceivedMessage {
        message_id: format!("msg-{id}"),
        receipt_handle: "h".into(),
        body: body.into(),
        attributes: [(JOB_ID_ATTRIBUTE.to_owned(), id.to_owned())].into(),
        receive_count,
        group_id: None,
        dedup_id: None,
    }
}

fn lease_of(a: &Acker, m: ReceivedMessage) -> Arc<Lease> {
    a.shared.life.table().insert(
        Job::from_message(m),
        "h".into(),
        tokio::time::Instant::now(),
    )
}

fn settling(a: &Acker, receive_count: u32, ending: Ending) -> Arc<Lease> {
    let l = lease_of(a, message("j", "body", receive_count));
    assert!(l.begin_settling(ending));
    l
}

fn entry_for(a: &Acker, m: ReceivedMessage, reason: &str) -> OutgoingMessage {
    let l = lease_of(a, m);
    l.set_ending(Ending::DeadLetter {
        reason: reason.into(),
    });
    a.dead_letter_entry(&l)
}

#[test]
fn cuts_keep_what_fits_and_mark_a_cut() {
    assert_eq!(cut_chars("abc", 3), "abc");
    assert_eq!(cut_chars("abcd", 3), "ab…");
    assert_eq!(cut_chars("ééé", 3), "ééé");
    assert_eq!(cut_bytes("héllo", 2), "h");
    assert_eq!(cut_bytes("héllo", 3), "hé");
    assert_eq!(cut_bytes("abc", 10), "abc");
}

#[tokio::test]
async fn each_ending_goes_to_its_buffer_once() {
    let mut a = acker(false);
    let delete = Ending::Delete {
        dead_lettered: false,
    };
    // Not Settling: not the acker's.
    let pending = lease_of(&a, message("p", "b", 1));
    a.accept(pending);
    assert!(!a.pending());
    let d = settling(&a, 1, delete.clone());
    a.accept(d.clone());
    a.accept(d);
    assert_eq!(a.deletes.len(), 1, "taken in twice");
    assert!(a.pending());
    let c = settling(&a, 1, delete);
    c.set_claimed(tokio::time::Instant::now() + Duration::from_secs(60));
    a.accept(c);
    assert_eq!(a.completing.len(), 1);
    let retry = |after| Ending::Retry {
        reason: "r".into(),
        after,
    };
    a.accept(settling(&a, 2, retry(None)));
    assert_eq!(a.visibility.len(), 1);
    // The retry of a job that has failed its last attempt is
    // dead-lettered (attempts are the job's own, not receives).
    for _ in 0..3 {
        a.shared
            .life
            .attempts()
            .failed(&crate::job::JobId::new("j"), "m", 1);
    }
    let last = settling(&a, 3, retry(None));
    a.accept(last.clone());
    assert_eq!(a.dead.len(), 1);
    assert_eq!(
        last.ending(),
        Some(Ending::DeadLetter {
            reason: "failed on all 3 attempts; last error: r".into()
        })
    );
    a.accept(settling(&a, 1, Ending::DeadLetter { reason: "x".into() }));
    assert_eq!(a.dead.len(), 2);
    a.accept(settling(&a, 1, Ending::Release));
    a.accept(settling(
        &a,
        1,
        Ending::Defer {
            after: Duration::from_secs(1),
        },
    ));
    assert_eq!(a.visibility.len(), 3);
    // A Settling lease without an ending is given back.
    let none = lease_of(&a, message("n", "b", 1));
    none.put_in(LeaseState::Settling);
    a.accept(none.clone());
    assert_eq!(a.visibility.len(), 4);
    assert_eq!(none.ending(), Some(Ending::Release));
}

#[tokio::test]
async fn pending_sees_every_buffer() {
    let a = acker(false);
    let l = lease_of(&a, message("j", "b", 1));
    assert!(!a.pending());
    for i in 0..4 {
        let mut a = acker(false);
        match i {
            0 => a.deletes.push(Delete::Copy("h".into())),
            1 => a.visibility.push(l.clone()),
            2 => a.dead.push(l.clone()),
            _ => a.completing.push(l.clone()),
        }
        assert!(a.pending(), "buffer {i}");
    }
}

#[tokio::test]
async fn a_wait_gives_the_message_back_for_a_pause_not_at_once() {
    let a = acker(false);
    let of = |ending| a.visibility_of(&settling(&a, 1, ending));
    assert_eq!(
        of(Ending::Wait {
            reason: "throttled".into(),
            after: Some(Duration::from_secs(7)),
        }),
        Duration::from_secs(7)
    );
    // The pipeline's own pause: never zero, which would hand the job
    // straight back into the failing dependency.
    let base = a.shared.config.retry_backoff_base;
    let w = of(Ending::Wait {
        reason: "throttled".into(),
        after: None,
    });
    assert!(w >= base / 2 && w > Duration::ZERO, "{w:?}");
}

#[tokio::test]
async fn the_visibility_set_is_the_endings() {
    let a = acker(false);
    let cfg = a.shared.config.clone();
    let of = |receives, ending| a.visibility_of(&settling(&a, receives, ending));
    assert_eq!(
        of(
            2,
            Ending::Retry {
                reason: "r".into(),
                after: Some(Duration::from_secs(7))
            }
        ),
        Duration::from_secs(7)
    );
    // The backoff grows with the job's own failed attempts.
    for _ in 0..2 {
        a.shared
            .life
            .attempts()
            .failed(&crate::job::JobId::new("j"), "m", 1);
    }
    assert_eq!(
        of(
            2,
            Ending::Retry {
                reason: "r".into(),
                after: None
            }
        ),
        cfg.retry_backoff(2)
    );
    assert_ne!(cfg.retry_backoff(2), Duration::ZERO);
    assert_eq!(
        of(
            1,
            Ending::Defer {
                after: Duration::from_secs(3)
            }
        ),
        Duration::from_secs(3)
    );
    assert_eq!(of(1, Ending::Release), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_failed_entry_waits_its_own_pause_unless_permanent_or_lapsed() {
    let mut a = acker(false);
    // Settling leases held for the next minute.
    let held = |a: &Acker| {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        let l = a.shared.life.table().insert(
            Job::from_message(message("j", "b", 1)),
            "h".into(),
            until,
        );
        assert!(l.begin_settling(Ending::Release));
        l
    };
    let l = held(&a);
    let transient = BackendError::transient("throttled");
    a.failed(l.clone(), &transient, "x", Step::Visibility);
    assert_eq!(a.failures, 1);
    // Other entries succeeding do not hurry it: it waits its own pause.
    a.succeeded();
    a.unpark(false);
    assert!(a.visibility.is_empty(), "retried before its pause");
    // The first pause is at most 100 ms (jittered down to half).
    tokio::time::advance(Duration::from_millis(101)).await;
    a.unpark(false);
    assert_eq!(a.visibility.len(), 1);
    // The pauses double, per entry.
    a.visibility.clear();
    for _ in 0..20 {
        a.failed(l.clone(), &transient, "x", Step::Visibility);
        a.succeeded();
    }
    let waits = a
        .parked
        .iter()
        .map(|(at, _, _)| *at - tokio::time::Instant::now());
    assert!(waits.clone().next_back().unwrap() >= Duration::from_millis(3200));
    assert!(waits.clone().all(|w| w <= Duration::from_millis(6400)));
    assert_eq!(
        a.shared.stats.snapshot().settle_gave_up,
        0,
        "a transient failure gave up"
    );
    a.parked.clear();
    // A permanent refusal takes the last resort at once.
    let p = held(&a);
    a.failed(p, &BackendError::ReceiptInvalid, "x", Step::Visibility);
    assert_eq!(a.shared.stats.snapshot().settle_gave_up, 1);
    assert!(a.parked.is_empty());
    // So does a transient failure once the lease has lapsed.
    let q = held(&a);
    tokio::time::advance(Duration::from_secs(61)).await;
    a.failed(q, &transient, "x", Step::Visibility);
    assert_eq!(a.shared.stats.snapshot().settle_gave_up, 2);
    assert!(a.parked.is_empty());
}

#[test]
fn a_batch_answer_is_split_per_entry() {
    let ok: Result<Vec<Result<String, BackendError>>, BackendError> =
        Ok(vec![Ok("a".into()), Err(BackendError::ReceiptInvalid)]);
    let r = Acker::per_entry(2, ok);
    assert_eq!(r.len(), 2);
    assert!(r[0].is_ok() && matches!(r[1], Err(BackendError::ReceiptInvalid)));
    let all: Result<Vec<Result<String, BackendError>>, BackendError> =
        Err(BackendError::transient("down"));
    let r = Acker::per_entry(3, all);
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(Result::is_err));
}

#[tokio::test]
async fn only_a_sent_dead_letter_entry_marks_a_lease_dead_lettered() {
    let a = acker(false);
    for (ending, dead) in [
        (
            Ending::Delete {
                dead_lettered: true,
            },
            true,
        ),
        (
            Ending::Delete {
                dead_lettered: false,
            },
            false,
        ),
        (Ending::DeadLetter { reason: "r".into() }, false),
        (Ending::Release, false),
    ] {
        assert_eq!(
            is_dead_lettered(&settling(&a, 1, ending.clone())),
            dead,
            "{ending:?}"
        );
    }
}

#[tokio::test]
async fn a_dead_letter_entry_says_why_and_keeps_the_body() {
    let a = acker(false);
    let mut m = message("job-1", "the body", 2);
    m.attributes.insert("mine".into(), "kept".into());
    m.attributes.insert("empty".into(), String::new());
    let e = entry_for(&a, m, "not an image");
    assert_eq!(e.body, "the body");
    assert_eq!(e.attributes[DLQ_REASON_ATTRIBUTE], "not an image");
    assert_eq!(e.attributes[DLQ_SOURCE_ATTRIBUTE], "q");
    assert_eq!(e.attributes[DLQ_RECEIVES_ATTRIBUTE], "2");
    assert_eq!(e.attributes[JOB_ID_ATTRIBUTE], "job-1");
    assert_eq!(e.attributes["mine"], "kept");
    assert!(!e.attributes.contains_key("empty"));
    assert!(!e.attributes.contains_key(DLQ_TRUNCATED_ATTRIBUTE));
    assert_eq!((e.group_id, e.dedup_id), (None, None));
    // A reason is never empty, and at most 1,024 characters.
    for blank in ["", "  \n"] {
        let e = entry_for(&a, message("j", "b", 1), blank);
        assert_eq!(e.attributes[DLQ_REASON_ATTRIBUTE], "no reason given");
    }
    let e = entry_for(&a, message("j", "b", 1), &"r".repeat(2000));
    let reason = &e.attributes[DLQ_REASON_ATTRIBUTE];
    assert_eq!(reason.chars().count(), MAX_REASON);
    assert!(reason.ends_with('…'));
    // A job id over the limit is cut, and the entry marked as not the
    // job as it came.
    let long = "x".repeat(MAX_JOB_ID_BYTES + 1);
    let e = entry_for(&a, message(&long, "body", 1), "r");
    assert_eq!(e.attributes[JOB_ID_ATTRIBUTE].len(), MAX_JOB_ID_BYTES);
    assert_eq!(e.attributes[DLQ_TRUNCATED_ATTRIBUTE], "4");
}

#[tokio::test]
async fn a_dead_letter_entry_always_fits_the_queue() {
    let a = acker(false);
    // Ours alone: the room the body has.
    let ours = message_size("", &entry_for(&a, message("j", "", 1), "r").attributes);
    let room = MAX_MESSAGE_BYTES - ours;
    let fits = entry_for(&a, message("j", &"b".repeat(room), 1), "r");
    assert_eq!(fits.body.len(), room, "a body that fits is kept whole");
    assert!(!fits.attributes.contains_key(DLQ_TRUNCATED_ATTRIBUTE));
    let over = entry_for(&a, message("j", &"b".repeat(room + 1), 1), "r");
    assert_eq!(
        over.attributes[DLQ_TRUNCATED_ATTRIBUTE],
        (room + 1).to_string()
    );
    assert_eq!(
        message_size(&over.body, &over.attributes),
        MAX_MESSAGE_BYTES
    );
    // At most ten attributes, the job's own sorted by name after ours.
    let mut m = message("j", "b", 1);
    for i in 0..9 {
        m.attributes.insert(format!("a{i}"), "v".into());
    }
    m.attributes
        .insert(DLQ_REASON_ATTRIBUTE.into(), "forged".into());
    let e = entry_for(&a, m, "real");
    assert_eq!(e.attributes.len(), MAX_ATTRIBUTES);
    assert_eq!(e.attributes[DLQ_REASON_ATTRIBUTE], "real");
    assert!((0..6).all(|i| e.attributes.contains_key(&format!("a{i}"))));
    // Never more bytes than the queue takes: attributes that would not
    // fit are left out, those that do are kept.
    let mut m = message("j", "b", 1);
    let big = "v".repeat(MAX_MESSAGE_BYTES / 3);
    for name in ["x1", "x2", "x3", "x4"] {
        m.attributes.insert(name.into(), big.clone());
    }
    let e = entry_for(&a, m, "r");
    assert!(message_size(&e.body, &e.attributes) <= MAX_MESSAGE_BYTES);
    assert!(e.attributes.contains_key("x1") && e.attributes.contains_key("x2"));
    assert!(!e.attributes.contains_key("x3"));
    // An attribute that fits exactly is kept.
    let base = entry_for(&a, message("j", "b", 1), "r");
    let left = MAX_MESSAGE_BYTES - message_size(&base.body, &base.attributes);
    let mut m = message("j", "b", 1);
    let value = "v".repeat(left - attribute_size("z", ""));
    m.attributes.insert("z".into(), value);
    let e = entry_for(&a, m, "r");
    assert!(e.attributes.contains_key("z"), "an exact fit left out");
    assert_eq!(message_size(&e.body, &e.attributes), MAX_MESSAGE_BYTES);
}

#[tokio::test]
async fn a_fifo_dead_letter_entry_keeps_its_group_and_dedups_per_message() {
    let a = acker(true);
    let mut m = message("j", "b", 1);
    m.group_id = Some("g".into());
    let e = entry_for(&a, m, "r");
    assert_eq!(e.group_id.as_deref(), Some("g"));
    assert_eq!(e.dedup_id.as_deref(), Some("dead-letter:msg-j"));
    let e = entry_for(&a, message("j", "b", 1), "r");
    assert_eq!(e.group_id.as_deref(), Some("dead-letter:j"));
}

/// A Pending lease whose deadline passed before a worker took it is given
/// back, uncharged, not left Pending for good; one in time starts; one
/// started or cancelled is left to its owner.
#[test]
fn a_lease_past_its_deadline_before_its_job_started_is_given_back() {
    let a = acker(false);
    let s = &a.shared;
    // Its deadline is its insertion: past by the time a worker looks.
    let late = lease_of(&a, message("late", "b", 1));
    std::thread::sleep(Duration::from_millis(2));
    let Start::Not(next) = s.start_job(&late) else {
        panic!("started past its deadline")
    };
    assert_eq!(next.settle.len(), 1);
    assert_eq!(late.state(), LeaseState::Settling);
    assert!(matches!(late.ending(), Some(Ending::Release)));
    assert_eq!(s.life.attempts_of(&late.job.id), 0, "nothing charged");

    let in_time = s.life.table().insert(
        Job::from_message(message("in-time", "b", 1)),
        "h2".into(),
        tokio::time::Instant::now() + Duration::from_secs(30),
    );
    assert!(matches!(s.start_job(&in_time), Start::Started));
    assert_eq!(in_time.state(), LeaseState::Running);
    let Start::Not(again) = s.start_job(&in_time) else {
        panic!("started twice")
    };
    assert!(again.settle.is_empty());
    assert_eq!(in_time.state(), LeaseState::Running);

    let cancelled = lease_of(&a, message("cancelled", "b", 1));
    s.life.cancel(&cancelled);
    let Start::Not(none) = s.start_job(&cancelled) else {
        panic!("a cancelled lease started")
    };
    assert!(none.settle.is_empty(), "its canceller settles it");
    assert_eq!(cancelled.state(), LeaseState::Pending);
}
