//! Unit tests of `lease_keeper`.

use std::time::Duration;

use super::*;
use crate::backend::local::{LocalBackend, Op, QueueOptions};
use crate::backend::{OutgoingMessage, Queue};
use crate::job::Job;
use crate::pipeline::Pipeline;
use crate::processor::{Context, Output, Processor};
use crate::ProcessError;

struct Noop;
impl Processor for Noop {
    fn process(&mut self, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        Ok(Output::empty())
    }
}

/// An actix system on a paused clock: sleeps advance time at once.
fn paused_system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
    })
}

/// Receives every message of `q` as the poller would and leases it.
async fn lease_all(shared: &Shared, q: &dyn Queue, n: usize) -> Vec<Arc<Lease>> {
    let vis = shared.config.visibility_timeout;
    let mut out = Vec::new();
    while out.len() < n {
        for m in q.receive(10, Duration::ZERO, vis).await.unwrap() {
            let handle = m.receipt_handle.clone();
            out.push(shared.life.table().insert(
                Job::from_message(m),
                handle,
                Instant::now() + vis,
            ));
        }
    }
    out
}

fn setup(
    n: usize,
    max_age: Duration,
) -> (
    LocalBackend,
    Arc<crate::backend::local::LocalQueue>,
    Arc<Shared>,
) {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let dlq = local.create_queue("dlq", QueueOptions::default());
    for i in 0..n {
        q.enqueue(OutgoingMessage::new(format!("m{i}"))).unwrap();
    }
    let shared = Shared::new(
        Pipeline::new("p")
            .source(q.clone())
            .dead_letter(dlq)
            .processor(|| Noop)
            .configure(|c| {
                c.visibility_timeout = Duration::from_secs(30);
                c.max_lease_age = max_age;
            }),
    );
    (local, q, shared)
}

#[test]
fn a_leases_other_messages_are_extended_in_the_same_call_as_its_own() {
    let table = crate::lease::LeaseTable::default();
    let lease = |i: usize| {
        table.insert(
            Job::from_message(crate::backend::ReceivedMessage {
                message_id: format!("m{i}"),
                receipt_handle: format!("h{i}"),
                body: String::new(),
                attributes: Default::default(),
                receive_count: 1,
                group_id: None,
                dedup_id: None,
            }),
            format!("h{i}"),
            Instant::now(),
        )
    };
    // Leases with 0, 3, 0, 5, 12 other messages.
    let mut due = Vec::new();
    for (i, others) in [0usize, 3, 0, 5, 12].into_iter().enumerate() {
        let l = lease(i);
        for o in 0..others {
            due.push((l.clone(), format!("other-{i}-{o}"), false));
        }
        due.push((l, format!("h{i}"), true));
    }
    let chunks = chunks_by_lease(due);
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![6, 6, 10, 3]);
    for c in &chunks[..2] {
        // Every lease in a call has its own handle in it.
        for (l, _, _) in c {
            assert!(c.iter().any(|(m, _, own)| *own && Arc::ptr_eq(l, m)));
        }
    }
    assert!(
        chunks[3].last().unwrap().2,
        "the big lease's own handle comes last"
    );
}

#[test]
fn leases_are_extended_in_batches_then_released_at_the_maximum_age() {
    paused_system().block_on(async {
        let (local, q, shared) = setup(12, Duration::from_secs(600));
        lease_all(&shared, q.as_ref(), 12).await;
        crate::pipeline::start_keeper_only(shared.clone());
        // Nine minutes with a 30 s visibility: never visible to anyone else.
        for _ in 0..18 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert_eq!(q.depth_now().visible, 0, "a held lease lapsed");
        }
        let s = shared.stats.snapshot();
        assert!(
            s.leases_extended >= 12 * 18,
            "extended {} times",
            s.leases_extended
        );
        let calls = local.calls().get(Op::ChangeVisibility);
        assert!(
            calls * 5 <= s.leases_extended,
            "{calls} calls for {} extensions: not batched",
            s.leases_extended
        );
        // Past the maximum age the jobs are cancelled and the messages released.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(q.depth_now().visible, 12);
        assert_eq!(shared.life.table().len(), 0);
        assert_eq!(shared.stats.snapshot().leases_lost, 12);
    });
}

#[test]
fn a_lease_taken_by_another_reader_is_cancelled_before_any_effect() {
    paused_system().block_on(async {
        let (_local, q, shared) = setup(1, Duration::from_secs(3600));
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        crate::pipeline::start_keeper_only(shared.clone());
        // Another reader receives the message: our handle is stale now.
        assert!(q.duplicate_now(&lease.job.message_id));
        let theirs = q
            .receive(1, Duration::ZERO, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(theirs.len(), 1);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(lease.is_cancelled(), "the job must stop before its effects");
        assert_eq!(shared.life.table().len(), 0);
        assert_eq!(shared.stats.snapshot().leases_lost, 1);
        // The other reader's lease is untouched.
        assert_eq!(q.depth_now().in_flight, 1);
    });
}

/// A queue whose first visibility change never answers (one hung
/// call); every other call goes through.
#[derive(Debug)]
struct HangFirst {
    inner: Arc<crate::backend::local::LocalQueue>,
    hung: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Queue for HangFirst {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<crate::backend::ReceivedMessage>, BackendError> {
        self.inner.receive(max, wait, visibility).await
    }
    async fn delete_batch(
        &self,
        handles: &[String],
    ) -> Result<Vec<crate::backend::EntryResult>, BackendError> {
        self.inner.delete_batch(handles).await
    }
    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<crate::backend::EntryResult>, BackendError> {
        if !self.hung.swap(true, std::sync::atomic::Ordering::AcqRel) {
            std::future::pending::<()>().await;
        }
        self.inner.change_visibility_batch(entries).await
    }
    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<crate::backend::EntryResult<String>>, BackendError> {
        self.inner.send_batch(messages).await
    }
    async fn depth(&self) -> Result<crate::backend::QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

/// An idempotency store whose renewals answer `renewed` once `open`,
/// counting them.
#[derive(Debug, Default)]
struct Renewals {
    renewed: std::sync::atomic::AtomicBool,
    closed: std::sync::atomic::AtomicBool,
    /// Renewals fail (a transient error) instead of answering.
    failing: std::sync::atomic::AtomicBool,
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::idempotency::IdempotencyStore for Renewals {
    async fn claim(
        &self,
        _: &str,
        _: &str,
        _: Duration,
    ) -> Result<crate::idempotency::ClaimOutcome, BackendError> {
        Ok(crate::idempotency::ClaimOutcome::Claimed)
    }
    async fn renew(&self, _: &str, _: &str, _: Duration) -> Result<bool, BackendError> {
        use std::sync::atomic::Ordering::Acquire;
        self.calls.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        while self.closed.load(Acquire) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.failing.load(Acquire) {
            return Err(BackendError::transient("the store is down"));
        }
        Ok(self.renewed.load(Acquire))
    }
    async fn complete(&self, _: &str, _: &str, _: Duration) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn release(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn record(
        &self,
        _: &str,
    ) -> Result<Option<crate::idempotency::IdempotencyRecord>, BackendError> {
        Ok(None)
    }
}

/// A pipeline's shared state over `source` with `visibility`, one
/// message in it.
fn over(
    source: Arc<dyn Queue>,
    local: &LocalBackend,
    visibility: Duration,
    store: Option<Arc<Renewals>>,
) -> Arc<Shared> {
    let dlq = local.create_queue("dlq", QueueOptions::default());
    let mut p = Pipeline::new("p")
        .source(source)
        .dead_letter(dlq)
        .processor(|| Noop)
        .configure(|c| {
            c.visibility_timeout = visibility;
            c.max_lease_age = Duration::from_secs(3600);
        });
    if let Some(store) = store {
        p = p.idempotency(store);
    }
    Shared::new(p)
}

fn one_queue(local: &LocalBackend, n: usize) -> Arc<crate::backend::local::LocalQueue> {
    let q = local.create_queue("q", QueueOptions::default());
    for i in 0..n {
        q.enqueue(OutgoingMessage::new(format!("m{i}"))).unwrap();
    }
    q
}

/// Extensions go out once half the visibility has passed (the tick is
/// a tenth of it), not more often: with 2 s, at 1 s exactly, then
/// about once a second.
#[test]
fn an_extension_goes_out_at_half_the_visibility_and_no_sooner() {
    paused_system().block_on(async {
        let local = LocalBackend::new();
        let q = one_queue(&local, 1);
        let vis = Duration::from_secs(2);
        let shared = over(q.clone(), &local, vis, None);
        let t0 = Instant::now();
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_eq!(lease.handle_and_deadline().1, t0 + vis, "extended early");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            lease.handle_and_deadline().1,
            t0 + Duration::from_secs(3),
            "not extended at half the visibility"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        let s = shared.stats.snapshot();
        assert_eq!(s.leases_lost, 0);
        assert_eq!(q.depth_now().visible, 0);
        assert!(
            (55..=65).contains(&s.leases_extended),
            "{} extensions in a minute",
            s.leases_extended
        );
    });
}

/// A lease is extended up to exactly its maximum age, then released.
#[test]
fn a_lease_is_extended_up_to_its_maximum_age_then_released() {
    paused_system().block_on(async {
        let (_local, q, shared) = setup(1, Duration::from_secs(600));
        let t0 = Instant::now();
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_secs(584)).await;
        assert_eq!(lease.handle_and_deadline().1, t0 + Duration::from_secs(600));
        assert!(!lease.is_cancelled());
        assert_eq!(q.depth_now().visible, 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(lease.is_cancelled(), "kept past its maximum age");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(q.depth_now().visible, 1, "released");
        assert_eq!(shared.stats.snapshot().leases_lost, 1);
    });
}

/// At its maximum age a lease's job is cancelled; only a job that has
/// itself been running for half that age or more is charged an attempt
/// ("timed out"): one that waited most of it for a worker is given back
/// uncharged.
#[test]
fn at_the_maximum_age_only_a_long_run_counts_an_attempt() {
    paused_system().block_on(async {
        let (_local, q, shared) = setup(2, Duration::from_secs(600));
        let leases = lease_all(&shared, q.as_ref(), 2).await;
        let (long, late) = (&leases[0], &leases[1]);
        assert!(long.try_start(), "runs from its receive");
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_secs(500)).await;
        assert!(late.try_start(), "starts after waiting 500 s");
        tokio::time::sleep(Duration::from_secs(110)).await;
        assert!(long.is_cancelled() && late.is_cancelled());
        assert!(
            matches!(long.ending(), Some(Ending::Retry { ref reason, .. }) if reason.contains("timed out")),
            "{:?}",
            long.ending()
        );
        assert_eq!(late.ending(), Some(Ending::Release), "charged for its wait");
    });
}

/// The acker owns a Settling lease: it is extended while being
/// deleted, not while being given back, and never lost by the keeper.
#[test]
fn settling_leases_are_extended_unless_given_back() {
    paused_system().block_on(async {
        let (_local, q, shared) = setup(2, Duration::from_secs(3600));
        let leases = lease_all(&shared, q.as_ref(), 2).await;
        let (deleting, releasing) = (&leases[0], &leases[1]);
        assert!(deleting.begin_settling(Ending::Delete {
            dead_lettered: false
        }));
        assert!(releasing.begin_settling(Ending::Release));
        let (_, releasing_until) = releasing.handle_and_deadline();
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert!(deleting.handle_and_deadline().1 > Instant::now());
        assert_eq!(releasing.handle_and_deadline().1, releasing_until);
        // The released one's visibility ran out; the other is held.
        let depth = q.depth_now();
        assert_eq!((depth.visible, depth.in_flight), (1, 1));
        assert_eq!(shared.life.table().len(), 2, "the keeper ended one");
        assert!(!deleting.is_cancelled() && !releasing.is_cancelled());
        assert_eq!(shared.stats.snapshot().leases_lost, 0);
    });
}

/// Every extension hangs: the lease is lost at its deadline, not before.
#[test]
fn a_lease_whose_extensions_hang_is_lost_at_its_deadline() {
    paused_system().block_on(async {
        let (local, q, shared) = setup(1, Duration::from_secs(3600));
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        let _gate = local.gate(Op::ChangeVisibility);
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_millis(29_900)).await;
        assert!(!lease.is_cancelled());
        assert_eq!(shared.life.table().len(), 1);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(lease.is_cancelled(), "held past its deadline");
        assert_eq!(shared.life.table().len(), 0);
        assert_eq!(shared.stats.snapshot().leases_lost, 1);
    });
}

/// DESIGN rule 5: each extension has a quarter of the visibility, so a
/// hung one leaves time for another before the lease would lapse.
#[test]
fn one_hung_extension_leaves_time_for_another() {
    paused_system().block_on(async {
        let local = LocalBackend::new();
        let inner = one_queue(&local, 1);
        let q = Arc::new(HangFirst {
            inner: inner.clone(),
            hung: Default::default(),
        });
        let shared = over(q.clone(), &local, Duration::from_secs(30), None);
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!lease.is_cancelled(), "lost to one hung call");
        assert!(q.hung.load(std::sync::atomic::Ordering::Acquire));
        assert_eq!(inner.depth_now().visible, 0);
        assert!(shared.stats.snapshot().leases_extended >= 4);
    });
}

/// A refusal of a handle the lease no longer uses (a newer delivery of
/// its message arrived meanwhile) loses nothing.
#[test]
fn a_refused_handle_that_was_replaced_meanwhile_loses_nothing() {
    paused_system().block_on(async {
        let (local, q, shared) = setup(1, Duration::from_secs(3600));
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        let gate = local.gate(Op::ChangeVisibility);
        crate::pipeline::start_keeper_only(shared.clone());
        // The extension with the first handle is under way (held)...
        tokio::time::sleep(Duration::from_secs(16)).await;
        assert!(lease.is_extending());
        // ...when the message is delivered again: the newer handle wins.
        assert!(q.duplicate_now(&lease.job.message_id));
        let again = q
            .receive(1, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap()
            .remove(0);
        lease.merge(
            &again.message_id,
            again.receipt_handle,
            Instant::now() + Duration::from_secs(30),
        );
        gate.open();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!lease.is_cancelled(), "lost over a handle it gave up");
        assert_eq!(shared.life.table().len(), 1);
        assert_eq!(q.depth_now().visible, 0);
    });
}

/// Another message merged into a lease is extended with it.
#[test]
fn a_leases_other_message_is_kept_hidden_with_it() {
    paused_system().block_on(async {
        let (_local, q, shared) = setup(2, Duration::from_secs(3600));
        let mut leases = lease_all(&shared, q.as_ref(), 2).await;
        let other = leases.pop().unwrap();
        let lease = leases.pop().unwrap();
        let (handle, until) = other.handle_and_deadline();
        shared.life.table().remove(&other);
        lease.merge(&other.job.message_id, handle, until);
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(q.depth_now().visible, 0, "the other message lapsed");
        assert!(!lease.is_cancelled());
    });
}

/// A restarted keeper forgets the extensions it had under way (their
/// calls were dropped), so the leases are extended again.
#[test]
fn a_restarted_keeper_extends_again() {
    paused_system().block_on(async {
        let (_local, q, shared) = setup(1, Duration::from_secs(3600));
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        // An extension was under way when the keeper stopped.
        assert!(lease.begin_extend());
        let s = shared.clone();
        let keeper = actix::Supervisor::start(move |_| {
            LeaseKeeper::new(s.clone(), crate::pipeline::routes_nowhere())
        });
        keeper.send(Restart).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!lease.is_extending(), "still counted as under way");
    });
}

/// `n` leases of a queue with a 30 s visibility over a `Renewals` store
/// that `set_up` prepares.
async fn leases_over_renewals(
    n: usize,
    set_up: impl FnOnce(&Renewals),
) -> (
    LocalBackend,
    Arc<crate::backend::local::LocalQueue>,
    Arc<Renewals>,
    Arc<Shared>,
    Vec<Arc<crate::lease::Lease>>,
) {
    let local = LocalBackend::new();
    let q = one_queue(&local, n);
    let store = Arc::new(Renewals::default());
    set_up(&store);
    let shared = over(
        q.clone(),
        &local,
        Duration::from_secs(30),
        Some(store.clone()),
    );
    let leases = lease_all(&shared, q.as_ref(), n).await;
    (local, q, store, shared, leases)
}

/// `n` leases over a store that renews, the first claimed; `prepare` sees
/// the backend before the keeper starts.
async fn claimed_leases(
    n: usize,
    prepare: impl FnOnce(&LocalBackend),
) -> (
    LocalBackend,
    Arc<crate::backend::local::LocalQueue>,
    Arc<Renewals>,
    Arc<Shared>,
    Vec<Arc<crate::lease::Lease>>,
) {
    let (local, q, store, shared, leases) = leases_over_renewals(n, |store| {
        store
            .renewed
            .store(true, std::sync::atomic::Ordering::Release)
    })
    .await;
    leases[0].set_claimed(tokio::time::Instant::now() + shared.config.claim_hold());
    prepare(&local);
    crate::pipeline::start_keeper_only(shared.clone());
    (local, q, store, shared, leases)
}

/// The heartbeat renews the claim of each lease it extends, and only
/// those; a refused renewal cancels the job and gives its message back.
#[test]
fn claims_are_renewed_with_each_extension_and_a_refusal_cancels() {
    paused_system().block_on(async {
        let (_local, q, store, shared, leases) = claimed_leases(2, |_| {}).await;
        tokio::time::sleep(Duration::from_secs(62)).await;
        let calls = store.calls.load(std::sync::atomic::Ordering::Acquire);
        assert!(
            (3..=5).contains(&calls),
            "{calls} renewals for 4 extensions"
        );
        store
            .renewed
            .store(false, std::sync::atomic::Ordering::Release);
        tokio::time::sleep(Duration::from_secs(16)).await;
        assert!(leases[0].is_cancelled(), "a refused renewal");
        assert!(!leases[0].is_claimed());
        assert!(!leases[1].is_cancelled());
        assert_eq!(shared.stats.snapshot().claims_lost, 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(q.depth_now().visible, 1, "given back");
    });
}

/// A throttled extension leaves the lease held until its deadline, and its
/// claim must hold as long: the heartbeat renews it all the same (else the
/// claim lapses while the job completes, and another worker runs it again).
#[test]
fn claims_are_renewed_while_extensions_are_throttled() {
    paused_system().block_on(async {
        let (_local, _q, store, shared, leases) = claimed_leases(1, |local| {
            local.set_infra_faults(crate::backend::local::InfraFaults {
                throttle_window: Some(crate::backend::local::Window::new(
                    Duration::ZERO,
                    Duration::from_secs(3600),
                )),
                ops: vec![crate::backend::local::Op::ChangeVisibility],
                ..Default::default()
            })
        })
        .await;
        tokio::time::sleep(Duration::from_secs(25)).await;
        let calls = store.calls.load(std::sync::atomic::Ordering::Acquire);
        assert!(calls >= 1, "no renewal while every extension was throttled");
        assert_eq!(shared.stats.snapshot().leases_extended, 0);
        assert!(!leases[0].is_cancelled());
    });
}

/// The age check ends a lease at the last extension that fits, which can
/// come well before `max_lease_age` (here at about 10 s of a 40 s limit
/// with a 30 s visibility): a job running since its receive is charged.
#[test]
fn a_job_running_since_its_receive_is_timed_out_whatever_the_limit() {
    paused_system().block_on(async {
        let (_local, q, shared) = setup(1, Duration::from_secs(40));
        let lease = lease_all(&shared, q.as_ref(), 1).await.remove(0);
        assert!(lease.try_start());
        crate::pipeline::start_keeper_only(shared.clone());
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert!(lease.is_cancelled());
        assert!(
            matches!(lease.ending(), Some(Ending::Retry { ref reason, .. }) if reason.contains("timed out")),
            "{:?}",
            lease.ending()
        );
    });
}

/// Leases `n` claimed messages, holds their renewals past the first
/// extension, then settles the first lease and gives up the second's
/// claim before the renewals answer — refused, or failing when
/// `failing` — and lets them land.
async fn renewals_answering_late(
    n: usize,
    failing: bool,
) -> (Arc<Shared>, Vec<Arc<crate::lease::Lease>>) {
    let (_local, _q, store, shared, leases) = leases_over_renewals(n, |store| {
        store
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        store
            .failing
            .store(failing, std::sync::atomic::Ordering::Release);
    })
    .await;
    for l in &leases {
        l.set_claimed(tokio::time::Instant::now() + shared.config.claim_hold());
    }
    crate::pipeline::start_keeper_only(shared.clone());
    // All extended at 15 s, their renewals held.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(store.calls.load(std::sync::atomic::Ordering::Acquire), n);
    assert!(leases[0].begin_settling(Ending::Delete {
        dead_lettered: false
    }));
    assert!(leases[1].take_claim());
    store
        .closed
        .store(false, std::sync::atomic::Ordering::Release);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!leases[0].is_cancelled() && !leases[1].is_cancelled());
    assert_eq!(
        leases[0].ending(),
        Some(Ending::Delete {
            dead_lettered: false
        })
    );
    (shared, leases)
}

/// A refusal that lands after the lease began settling, or after its
/// claim was given up, changes nothing.
#[test]
fn a_late_renewal_refusal_leaves_a_settling_or_unclaimed_lease_alone() {
    paused_system().block_on(async {
        let (shared, _) = renewals_answering_late(2, false).await;
        assert_eq!(shared.stats.snapshot().claims_lost, 0);
    });
}

/// A renewal that fails after the lease began settling, or after its
/// claim was given up, changes nothing either: the effects are done, or
/// no claim is at stake. One that fails while the job runs cancels it.
#[test]
fn a_failed_renewal_cancels_only_a_running_claimed_lease() {
    paused_system().block_on(async {
        let (shared, leases) = renewals_answering_late(3, true).await;
        assert!(leases[2].is_cancelled(), "the running claimed job");
        assert_eq!(shared.stats.snapshot().claims_lost, 1);
    });
}

/// The tick is a tenth of the visibility, within 5 ms and 5 s.
#[test]
fn the_tick_is_a_tenth_of_the_visibility() {
    paused_system().block_on(async {
        for (vis, tick) in [(30_000, 3_000), (2_000, 200), (20, 5), (600_000, 5_000)] {
            let local = LocalBackend::new();
            let q = one_queue(&local, 0);
            let shared = over(q, &local, Duration::from_millis(vis), None);
            assert_eq!(
                LeaseKeeper::new(shared, crate::pipeline::routes_nowhere()).tick_every(),
                Duration::from_millis(tick),
                "visibility {vis} ms"
            );
        }
    });
}

#[test]
fn a_lease_with_nine_other_messages_fills_one_call() {
    let table = crate::lease::LeaseTable::default();
    let l = table.insert(
        Job::from_message(crate::backend::ReceivedMessage {
            message_id: "m".into(),
            receipt_handle: "h".into(),
            body: String::new(),
            attributes: Default::default(),
            receive_count: 1,
            group_id: None,
            dedup_id: None,
        }),
        "h".into(),
        Instant::now(),
    );
    // Leases with these many other messages, in calls of these sizes.
    let sizes = |others: &[usize]| -> Vec<usize> {
        let mut due = Vec::new();
        for (i, n) in others.iter().enumerate() {
            for o in 0..*n {
                due.push((l.clone(), format!("other-{i}-{o}"), false));
            }
            due.push((l.clone(), format!("h{i}"), true));
        }
        chunks_by_lease(due).iter().map(Vec::len).collect()
    };
    assert_eq!(sizes(&[9]), [10]);
    assert_eq!(sizes(&[0, 9]), [1, 10]);
    assert_eq!(sizes(&[0, 0, 5]), [8]);
    assert_eq!(sizes(&[0, 0, 8]), [2, 9]);
    assert!(sizes(&[]).is_empty());
}
