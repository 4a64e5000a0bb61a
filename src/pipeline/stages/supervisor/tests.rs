//! Unit tests of `supervisor`.

use std::time::Duration;

use super::*;
use crate::backend::local::{LocalBackend, QueueOptions};
use crate::backend::{OutgoingMessage, Queue};
use crate::job::Job;
use crate::pipeline::Pipeline;
use crate::processor::{Context as JobContext, Output, Processor};
use crate::ProcessError;

struct Noop;
impl Processor for Noop {
    fn process(&mut self, _: &Job, _: &JobContext) -> Result<Output, ProcessError> {
        Ok(Output::empty())
    }
}

/// A lease left in an actor's state with no message to that actor (as
/// if the actor had lost it) is found by the stall watch; the actor is
/// restarted and finishes it.
/// Starts the pipeline with the source's one message taken by hand and
/// leased outside the poller (which so finds none): a lease no actor
/// was told of.
async fn leased_by_hand(
    shared: &Arc<Shared>,
    q: &crate::backend::local::LocalQueue,
) -> (crate::pipeline::Running, Arc<crate::lease::Lease>) {
    let m = q
        .receive(1, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let running = crate::pipeline::start(shared.clone());
    let handle = m.receipt_handle.clone();
    let lease = shared.life.table().insert(
        Job::from_message(m),
        handle,
        tokio::time::Instant::now() + Duration::from_secs(30),
    );
    (running, lease)
}

#[test]
fn a_lease_an_actor_lost_track_of_is_found_and_finished() {
    actix_rt::System::new().block_on(lost_track());
}

async fn lost_track() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let dlq = local.create_queue("dlq", QueueOptions::default());
    let topic = local.create_topic("t", false);
    let out = local.create_queue("out", QueueOptions::default());
    local.subscribe(&topic, &out, true);
    q.enqueue(OutgoingMessage::new("m")).unwrap();
    let shared = Shared::new(
        Pipeline::new("p")
            .source(q.clone())
            .dead_letter(dlq)
            .results(local.blobs(), "r", "out/", "txt")
            .topic(topic)
            .processor(|| Noop)
            .configure(|c| {
                c.stall_timeout = Duration::from_millis(200);
                c.visibility_timeout = Duration::from_secs(30);
                c.receive_wait = Duration::from_millis(10);
            }),
    );
    let (running, lease) = leased_by_hand(&shared, &q).await;
    // Its result "stored", but the publisher never told.
    for (from, to) in [
        (LeaseState::Pending, LeaseState::Running),
        (LeaseState::Running, LeaseState::Stored),
    ] {
        assert_eq!(lease.state(), from);
        lease.put_in(to);
    }
    let done = crate::testkit::wait_until(Duration::from_secs(10), || {
        q.depth_now().total() == 0 && shared.life.table().is_empty()
    })
    .await;
    let stats = shared.stats.snapshot();
    assert!(done, "the stalled lease was not finished: {stats:?}");
    assert!(stats.actor_restarts >= 1, "{stats:?}");
    assert_eq!(stats.published, 1, "{stats:?}");
    assert_eq!(out.depth_now().total(), 1, "the notice went out once");
    drop(running);
}

#[test]
fn a_settling_lease_the_acker_lost_track_of_is_found_and_finished() {
    actix_rt::System::new().block_on(lost_settling());
}

/// A lease handed to the acker (Settling, its ending recorded) whose
/// message never reached it: the stall watch restarts the acker, which
/// re-derives its work from the Settling leases and deletes it.
async fn lost_settling() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let dlq = local.create_queue("dlq", QueueOptions::default());
    q.enqueue(OutgoingMessage::new("m")).unwrap();
    let shared = Shared::new(
        Pipeline::new("p")
            .source(q.clone())
            .dead_letter(dlq)
            .results(local.blobs(), "r", "out/", "txt")
            .processor(|| Noop)
            .configure(|c| {
                c.stall_timeout = Duration::from_millis(200);
                c.visibility_timeout = Duration::from_secs(30);
                c.receive_wait = Duration::from_millis(10);
            }),
    );
    let (running, lease) = leased_by_hand(&shared, &q).await;
    // Settling with its ending, but the acker never told.
    let moved = shared
        .settle_one(
            lease,
            crate::lease::Ending::Delete {
                dead_lettered: false,
            },
        )
        .settle;
    assert_eq!(moved.len(), 1);
    let done = crate::testkit::wait_until(Duration::from_secs(10), || {
        q.depth_now().total() == 0 && shared.life.table().is_empty()
    })
    .await;
    let stats = shared.stats.snapshot();
    assert!(
        done,
        "the stalled Settling lease was not finished: {stats:?}"
    );
    assert!(stats.actor_restarts >= 1, "{stats:?}");
    assert_eq!(stats.acked, 1, "{stats:?}");
    drop(running);
}

/// Counts what the supervisor tells the poller.
#[derive(Default)]
struct Told {
    stops: Arc<std::sync::atomic::AtomicU32>,
    resumes: Arc<std::sync::atomic::AtomicU32>,
}

impl Actor for Told {
    type Context = Context<Self>;
}

impl Handler<StopPolling> for Told {
    type Result = ();
    fn handle(&mut self, _: StopPolling, _: &mut Context<Self>) {
        self.stops.fetch_add(1, Ordering::AcqRel);
    }
}

impl Handler<ResumePolling> for Told {
    type Result = ();
    fn handle(&mut self, _: ResumePolling, _: &mut Context<Self>) {
        self.resumes.fetch_add(1, Ordering::AcqRel);
    }
}

#[test]
fn an_escalation_signalled_before_a_restart_resumes_polling_once() {
    actix_rt::System::new().block_on(resumed_once());
}

/// The supervisor restarts between an escalation's signal and carrying it
/// out: the restart schedules the resume, and carrying the escalation out
/// afterwards finds it scheduled — one resume, after one pause.
async fn resumed_once() {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let dlq = local.create_queue("dlq", QueueOptions::default());
    let shared = Shared::new(
        Pipeline::new("p")
            .source(q)
            .dead_letter(dlq)
            .processor(|| Noop)
            .configure(|c| c.restart.escalation_pause = Duration::from_millis(150)),
    );
    let told = Told::default();
    let (stops, resumes) = (told.stops.clone(), told.resumes.clone());
    let told = told.start();
    let sup = crate::pipeline::supervision::Supervision::new(shared.clone());
    let addr = sup.start(
        Context::new(),
        PipelineSupervisor::new(
            shared.clone(),
            told.clone().recipient(),
            told.recipient(),
            HashMap::new(),
            crate::pipeline::routes_nowhere(),
        ),
    );
    // Let it start and wait for an escalation.
    tokio::time::sleep(Duration::from_millis(50)).await;
    shared.escalate("test".into());
    addr.do_send(Restart);
    // A second resume, if scheduled, would come after a doubled pause.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(stops.load(Ordering::Acquire), 1, "polling stopped once");
    assert_eq!(resumes.load(Ordering::Acquire), 1, "polling resumed once");
    assert!(!shared.is_escalated());
    assert!(shared.stats.snapshot().actor_restarts >= 1);
}
