//! The gate: what a new lease passes before it may run, when the pipeline
//! asks for it (a pipeline that asks for neither skips the gate).
//!
//! - **FIFO group order** (DESIGN rule 8). Of each message group, one lease
//!   runs at a time, in the order received; the next starts only when the
//!   one before is settled (deleted or dead-lettered). When a group's running
//!   job fails, is given back or is lost, the group's waiting leases are
//!   released too, so the queue hands them out again after it, in order.
//! - **Idempotency claims** (DESIGN rule 10). Each lease about to run claims
//!   its job in the [`crate::idempotency::IdempotencyStore`]: a job already
//!   completed is deleted unprocessed; one claimed by another worker is given
//!   back until that claim would expire.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use super::messages::{Leased, Probe, Restart};
use super::Shared;
use crate::idempotency::{ClaimOutcome, RecordStatus};
use crate::lease::{Ending, Lease, LeaseState};
use crate::stats::Stats;

/// One message group's leases: the one running, and those waiting behind it.
#[derive(Default)]
struct Group {
    running: Option<u64>,
    waiting: VecDeque<Arc<Lease>>,
}

/// The FIFO groups of one pipeline, held in [`Shared`] so that whoever
/// settles a lease can move its group on.
#[derive(Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<String, Group>>,
    /// Leases waiting behind their group's running one.
    waiting: AtomicUsize,
}

/// What settling a group's lease lets happen.
#[derive(Default)]
pub(crate) struct Next {
    /// The next lease of the group, to run now.
    pub(crate) go: Vec<Arc<Lease>>,
    /// Waiting leases to give back (their group's head failed).
    pub(crate) release: Vec<Arc<Lease>>,
}

impl Groups {
    /// Leases waiting behind a running one of their group.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Takes new leases in receive order; returns those that may run now.
    pub(crate) fn admit(&self, leases: Vec<Arc<Lease>>) -> Vec<Arc<Lease>> {
        let mut map = self.map.lock().expect("groups lock");
        let mut go = Vec::new();
        for lease in leases {
            let key = lease.job.group_id.clone().unwrap_or_default();
            let g = map.entry(key).or_default();
            if g.running.is_none() || crate::sabotage::on(crate::sabotage::Sabotage::LoseFifoOrder)
            {
                g.running = Some(lease.id);
                go.push(lease);
            } else {
                g.waiting.push_back(lease);
                self.waiting.fetch_add(1, Ordering::AcqRel);
            }
        }
        go
    }

    /// Whether a lease is its group's running one.
    pub(crate) fn is_running(&self, lease: &Lease) -> bool {
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let map = self.map.lock().expect("groups lock");
        map.get(key).is_some_and(|g| g.running == Some(lease.id))
    }

    /// Whether a lease waits behind its group's running one.
    pub(crate) fn is_waiting(&self, lease: &Lease) -> bool {
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let map = self.map.lock().expect("groups lock");
        map.get(key)
            .is_some_and(|g| g.waiting.iter().any(|l| l.id == lease.id))
    }

    /// Moves on every group whose running lease is no longer held (it ended
    /// on a path that did not reach its group): the stall watch's repair.
    pub(crate) fn repair(&self, shared: &Shared) {
        let gone: Vec<(String, u64)> = {
            let map = self.map.lock().expect("groups lock");
            map.iter()
                .filter_map(|(k, g)| g.running.map(|id| (k.clone(), id)))
                .filter(|(_, id)| !shared.life.leases.contains(*id))
                .collect()
        };
        for (group, id) in gone {
            tracing::error!(pipeline = %shared.name, group, lease = id,
                "FIFO group held by a lease that is gone: moving it on");
            let next = {
                let mut map = self.map.lock().expect("groups lock");
                let Some(g) = map.get_mut(&group) else {
                    continue;
                };
                if g.running != Some(id) {
                    continue;
                }
                g.running = None;
                self.waiting.fetch_sub(g.waiting.len(), Ordering::AcqRel);
                let release: Vec<_> = g.waiting.drain(..).collect();
                map.remove(&group);
                release
            };
            shared.settle(next.into_iter().map(|l| (l, Ending::Release)).collect());
        }
    }

    /// A lease ended: `finished` (deleted or dead-lettered) lets its group
    /// go on; otherwise the group's waiting leases are given back.
    pub(crate) fn settled(&self, lease: &Lease, finished: bool) -> Next {
        let mut next = Next::default();
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let mut map = self.map.lock().expect("groups lock");
        let Some(g) = map.get_mut(key) else {
            return next;
        };
        if g.running == Some(lease.id) {
            g.running = None;
            if finished {
                while let Some(l) = g.waiting.pop_front() {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    // A waiting lease given back meanwhile (a drain) is skipped.
                    if l.state() == LeaseState::Gated {
                        g.running = Some(l.id);
                        next.go.push(l);
                        break;
                    }
                }
            } else {
                self.waiting.fetch_sub(g.waiting.len(), Ordering::AcqRel);
                next.release.extend(g.waiting.drain(..));
            }
        } else if let Some(i) = g.waiting.iter().position(|l| l.id == lease.id) {
            g.waiting.remove(i);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if !finished {
                // It comes back later (lost, given back): the leases behind
                // it would overtake it, so they go back too and the queue
                // hands the group out again in order.
                let behind: Vec<_> = g.waiting.drain(i..).collect();
                self.waiting.fetch_sub(behind.len(), Ordering::AcqRel);
                next.release.extend(behind);
            }
        }
        if g.running.is_none() && g.waiting.is_empty() {
            map.remove(key);
        }
        next
    }
}

/// Lifecycle → gate: leases cleared to run (their group moved on).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Admit(pub(crate) Vec<Arc<Lease>>);

/// Poller → gate: new Gated leases.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Arrived(pub(crate) Vec<Arc<Lease>>);

pub(crate) struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Sends leases cleared to run on: redeliveries with a result store to
    /// the uploader's probe, the rest to the processors.
    fn route(&self, leases: Vec<Arc<Lease>>) {
        let s = &self.shared;
        let (mut probes, mut fresh) = (Vec::new(), Vec::new());
        for l in leases {
            if l.job.receive_count > 1 && s.sinks.results.is_some() {
                if l.transition(&[LeaseState::Gated], LeaseState::Probing)
                    .is_some()
                {
                    probes.push(l);
                }
            } else if l
                .transition(&[LeaseState::Gated], LeaseState::Pending)
                .is_some()
            {
                fresh.push(l);
            }
        }
        if !fresh.is_empty() {
            s.addrs().run.do_send(Leased(fresh));
        }
        if !probes.is_empty() {
            s.addrs().probe.do_send(Probe(probes));
        }
    }

    /// Claims each lease's job, then routes, skips or defers it.
    fn claim_then_route(&mut self, leases: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        if self.shared.sinks.store.is_none() {
            self.route(leases);
            return;
        }
        let s = &self.shared;
        let hold = s.config.claim_hold();
        let store = s.sinks.store.clone().expect("checked");
        // A redelivery may be of a message another worker dead-lettered
        // (its delete came back): then it is deleted, not run again.
        let calls = futures_util::future::join_all(leases.iter().map(|l| {
            let mark = (l.job.receive_count > 1).then(|| s.dead_letter_mark(l));
            let (store, key, owner) = (store.clone(), s.claim_key(l), s.owner(l));
            async move {
                if let Some(Ok(Some(r))) = match &mark {
                    Some(m) => Some(store.record(m).await),
                    None => None,
                } {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis();
                    if u128::from(r.expires_at_ms) > now {
                        if r.status == RecordStatus::Completed {
                            return Ok(None);
                        }
                        // Being dead-lettered by another worker now: look
                        // again once that is done (or has lapsed).
                        let until = SystemTime::UNIX_EPOCH + Duration::from_millis(r.expires_at_ms);
                        return Ok(Some(ClaimOutcome::HeldElsewhere { until }));
                    }
                }
                store.claim(&key, &owner, hold).await.map(Some)
            }
        }));
        ctx.spawn(
            calls
                .into_actor(self)
                .map(move |results, act, _| act.claimed(leases, results)),
        );
    }

    fn claimed(
        &mut self,
        leases: Vec<Arc<Lease>>,
        results: Vec<Result<Option<ClaimOutcome>, crate::BackendError>>,
    ) {
        let s = &self.shared;
        let (mut go, mut settle) = (Vec::new(), Vec::new());
        for (lease, r) in leases.into_iter().zip(results) {
            if lease.state() != LeaseState::Gated {
                // Given back or lost meanwhile: a claim it took is released.
                if matches!(r, Ok(Some(ClaimOutcome::Claimed))) {
                    lease.set_claimed();
                    s.release_claim(&lease);
                }
                continue;
            }
            match r {
                Ok(None) => {
                    // Its entry is in the dead-letter queue already.
                    s.jobs_started(1);
                    s.life.seen.dead_lettered(&lease.job.message_id);
                    Stats::inc(&s.stats.duplicates_dropped);
                    tracing::info!(pipeline = %s.name, job_id = %lease.job.id,
                        "message dead-lettered by another worker: deleting unprocessed");
                    settle.push((
                        lease,
                        Ending::Delete {
                            dead_lettered: true,
                        },
                    ));
                }
                Ok(Some(ClaimOutcome::Claimed)) => {
                    lease.set_claimed();
                    go.push(lease);
                }
                Ok(Some(ClaimOutcome::Completed)) => {
                    s.jobs_started(1);
                    Stats::inc(&s.stats.skipped_completed);
                    tracing::info!(pipeline = %s.name, job_id = %lease.job.id,
                        "job already completed (idempotency store): deleting unprocessed");
                    settle.push((
                        lease,
                        Ending::Delete {
                            dead_lettered: false,
                        },
                    ));
                }
                Ok(Some(ClaimOutcome::HeldElsewhere { until })) => {
                    // Look again when that claim would lapse, at the latest
                    // one visibility timeout from now.
                    let most = s.config.visibility_timeout;
                    let after = until
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .clamp(most.min(Duration::from_secs(1)), most);
                    Stats::inc(&s.stats.claims_deferred);
                    tracing::debug!(pipeline = %s.name, job_id = %lease.job.id,
                        "job claimed by another worker: given back");
                    settle.push((lease, Ending::Defer { after }));
                }
                Err(e) => {
                    tracing::warn!(pipeline = %s.name, job_id = %lease.job.id, error = %e,
                        "claiming the job failed: given back");
                    let after = s.config.visibility_timeout.min(Duration::from_secs(1));
                    settle.push((lease, Ending::Defer { after }));
                }
            }
        }
        self.route(go);
        s.settle(settle);
    }

    /// Takes in Gated leases (once each) and admits them to their groups;
    /// returns those cleared to be claimed and routed now.
    fn admit(&self, leases: Vec<Arc<Lease>>) -> Vec<Arc<Lease>> {
        let leases: Vec<_> = leases
            .into_iter()
            .filter(|l| l.state() == LeaseState::Gated && l.take_in())
            .collect();
        match &self.shared.life.groups {
            Some(groups) => groups.admit(leases),
            None => leases,
        }
    }
}

impl Actor for Gate {
    type Context = Context<Self>;
}

impl actix::Supervised for Gate {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Claims in flight were dropped. A group's running lease is claimed
        // again; one its group does not know yet (its `Arrived` not handled)
        // is admitted as it would have been; a waiting one stays waiting.
        let s = self.shared.clone();
        let mut again = Vec::new();
        let mut fresh = Vec::new();
        for l in s.life.leases.restart_owner(&[LeaseState::Gated]) {
            match &s.life.groups {
                Some(g) if g.is_waiting(&l) => {
                    l.take_in();
                }
                Some(g) if g.is_running(&l) => {
                    l.take_in();
                    again.push(l);
                }
                _ => fresh.push(l),
            }
        }
        again.extend(self.admit(fresh));
        self.claim_then_route(again, ctx);
    }
}

impl Handler<Restart> for Gate {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl super::supervisor::Child for Gate {
    const NAME: &'static str = "gate";
}

impl Handler<Arrived> for Gate {
    type Result = ();

    fn handle(&mut self, msg: Arrived, ctx: &mut Context<Self>) {
        let leases = self.admit(msg.0);
        self.claim_then_route(leases, ctx);
    }
}

impl Handler<Admit> for Gate {
    type Result = ();

    fn handle(&mut self, msg: Admit, ctx: &mut Context<Self>) {
        self.claim_then_route(msg.0, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ReceivedMessage;
    use crate::job::Job;
    use crate::lease::LeaseTable;

    fn lease(t: &LeaseTable, group: &str, n: u32) -> Arc<Lease> {
        let job = Job::from_message(ReceivedMessage {
            message_id: format!("{group}-{n}"),
            receipt_handle: String::new(),
            body: "{}".into(),
            attributes: HashMap::new(),
            receive_count: 1,
            group_id: Some(group.into()),
            dedup_id: None,
        });
        let l = t.insert(job, String::new(), tokio::time::Instant::now());
        l.transition(&[LeaseState::Pending], LeaseState::Gated);
        l
    }

    #[tokio::test]
    async fn one_per_group_in_order_and_failure_gives_back_the_rest() {
        let t = LeaseTable::default();
        let g = Groups::default();
        let (a1, a2, a3, b1) = (
            lease(&t, "a", 1),
            lease(&t, "a", 2),
            lease(&t, "a", 3),
            lease(&t, "b", 1),
        );
        let go = g.admit(vec![a1.clone(), a2.clone(), b1.clone(), a3.clone()]);
        assert_eq!(
            go.iter().map(|l| l.id).collect::<Vec<_>>(),
            vec![a1.id, b1.id]
        );
        assert_eq!(g.waiting(), 2);
        let next = g.settled(&a1, true);
        assert_eq!(
            next.go.iter().map(|l| l.id).collect::<Vec<_>>(),
            vec![a2.id]
        );
        // a2 fails: a3 is given back, and group a is empty.
        let next = g.settled(&a2, false);
        assert!(next.go.is_empty());
        assert_eq!(
            next.release.iter().map(|l| l.id).collect::<Vec<_>>(),
            vec![a3.id]
        );
        assert_eq!(g.waiting(), 0);
        // A new delivery of group a runs at once; settling twice is harmless.
        let a2b = lease(&t, "a", 2);
        assert_eq!(g.admit(vec![a2b.clone()]).len(), 1);
        assert!(g.settled(&a2, true).go.is_empty());
        assert!(g.settled(&b1, true).go.is_empty());
    }

    #[tokio::test]
    async fn lookups_name_only_their_own_lease() {
        let t = LeaseTable::default();
        let g = Groups::default();
        let (a1, a2, a3) = (lease(&t, "a", 1), lease(&t, "a", 2), lease(&t, "a", 3));
        assert_eq!(g.admit(vec![a1.clone(), a2.clone()]).len(), 1);
        assert!(g.is_running(&a1));
        assert!(!g.is_running(&a2));
        assert!(!g.is_running(&a3), "not in its group at all");
        assert!(g.is_waiting(&a2));
        assert!(!g.is_waiting(&a1));
        assert!(!g.is_waiting(&a3));
        assert_eq!(g.waiting(), 1);
        // A waiting lease that ends leaves its place; the group goes on.
        assert!(g.settled(&a2, false).release.is_empty());
        assert_eq!(g.waiting(), 0);
        assert!(g.is_running(&a1));
        assert_eq!(g.admit(vec![a3.clone()]).len(), 0);
        // A waiting lease given back meanwhile (no longer Gated) is skipped.
        a3.transition(&[LeaseState::Gated], LeaseState::Settling);
        let next = g.settled(&a1, true);
        assert!(next.go.is_empty());
        assert_eq!(g.waiting(), 0);
        // The group is gone: its next lease runs at once.
        let a4 = lease(&t, "a", 4);
        assert_eq!(g.admit(vec![a4.clone()]).len(), 1);
        assert!(g.is_running(&a4));
    }

    mod actor {
        use std::time::Duration;

        use super::*;
        use crate::backend::local::{LocalBackend, LocalQueue, QueueOptions};
        use crate::backend::{OutgoingMessage, Queue};
        use crate::pipeline::Pipeline;
        use crate::processor::{Context as JobContext, Output, Processor};
        use crate::ProcessError;

        struct Noop;
        impl Processor for Noop {
            fn process(&mut self, _: &Job, _: &JobContext) -> Result<Output, ProcessError> {
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

        /// A FIFO pipeline's shared state, its acker and lease keeper
        /// started, over a queue holding `messages` (group, body).
        fn fifo(messages: &[(&str, &str)]) -> (Arc<LocalQueue>, Arc<Shared>) {
            let local = LocalBackend::new();
            let options = QueueOptions {
                fifo: true,
                content_based_dedup: true,
                ..Default::default()
            };
            let q = local.create_queue("q.fifo", options.clone());
            let dlq = local.create_queue("dlq.fifo", options);
            for (g, body) in messages {
                q.enqueue(OutgoingMessage::new(*body).group(*g)).unwrap();
            }
            let shared = Shared::new(
                Pipeline::new("p")
                    .source(q.clone())
                    .dead_letter(dlq)
                    .processor(|| Noop)
                    .configure(|c| c.visibility_timeout = Duration::from_secs(30)),
            );
            crate::pipeline::start_keeper_only(shared.clone());
            (q, shared)
        }

        /// Receives every message of `q` as the poller does: Gated leases,
        /// in receive order.
        async fn gated(shared: &Shared, q: &dyn Queue, n: usize) -> Vec<Arc<Lease>> {
            let vis = shared.config.visibility_timeout;
            let mut out = Vec::new();
            while out.len() < n {
                for m in q.receive(10, Duration::ZERO, vis).await.unwrap() {
                    let handle = m.receipt_handle.clone();
                    let l = shared.life.leases.insert(
                        Job::from_message(m),
                        handle,
                        tokio::time::Instant::now() + vis,
                    );
                    l.transition(&[LeaseState::Pending], LeaseState::Gated);
                    out.push(l);
                }
            }
            out
        }

        fn states(leases: &[Arc<Lease>]) -> Vec<LeaseState> {
            leases.iter().map(|l| l.state()).collect()
        }

        /// DESIGN rule 6's stall watch: a FIFO group whose running lease
        /// ended on a path that never reached its group is moved on, its
        /// waiting leases given back to the queue; a group whose running
        /// lease is still held is left alone.
        #[test]
        fn repair_moves_on_a_group_whose_running_lease_is_gone() {
            paused_system().block_on(async {
                let (q, shared) = fifo(&[("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")]);
                let leases = gated(&shared, q.as_ref(), 4).await;
                let [a1, a2, a3, b1] = <[_; 4]>::try_from(leases).ok().unwrap();
                let groups = shared.life.groups.as_ref().unwrap();
                let go = groups.admit(vec![a1.clone(), a2.clone(), a3.clone(), b1.clone()]);
                assert_eq!(go.len(), 2);
                // Nothing is gone yet: repair changes nothing.
                groups.repair(&shared);
                assert_eq!(groups.waiting(), 2);
                assert!(groups.is_running(&a1) && groups.is_running(&b1));
                // a1 leaves the table without its group hearing of it.
                assert!(shared.life.leases.remove(&a1));
                groups.repair(&shared);
                assert_eq!(groups.waiting(), 0);
                assert!(!groups.is_waiting(&a2) && !groups.is_waiting(&a3));
                // b's running lease is held: b stays as it was.
                assert!(groups.is_running(&b1));
                let b2 = lease(&shared.life.leases, "b", 2);
                assert!(
                    groups.admit(vec![b2.clone()]).is_empty(),
                    "b2 ran beside b1"
                );
                // a2 and a3 go back to the queue, visible again, in order.
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert!(!shared.life.leases.contains(a2.id));
                assert!(!shared.life.leases.contains(a3.id));
                assert_eq!(q.depth_now().in_flight, 2, "a1 (never settled) and b1");
                assert_eq!(shared.stats.snapshot().released, 2);
                assert!(q
                    .change_visibility_batch(&[(a1.handle(), Duration::ZERO)])
                    .await
                    .unwrap()[0]
                    .is_ok());
                let again = q
                    .receive(10, Duration::ZERO, Duration::from_secs(30))
                    .await
                    .unwrap();
                let bodies: Vec<_> = again.iter().map(|m| m.body.as_str()).collect();
                assert_eq!(bodies, ["a1", "a2", "a3"]);
                // Group a is free: its next lease runs at once.
                let a4 = lease(&shared.life.leases, "a", 4);
                assert_eq!(groups.admit(vec![a4]).len(), 1);
            });
        }

        /// The gate routes a first delivery to the processors, a redelivery
        /// to the uploader's probe when there is a result store; it takes a
        /// lease in once; an Admit routes it.
        #[test]
        fn the_gate_routes_each_lease_once() {
            paused_system().block_on(async {
                let (q, shared) = fifo(&[("a", "a1"), ("a", "a2"), ("b", "b1")]);
                let leases = gated(&shared, q.as_ref(), 3).await;
                let gate = Gate::new(shared.clone()).start();
                gate.send(Arrived(leases.clone())).await.unwrap();
                assert_eq!(
                    states(&leases),
                    [LeaseState::Pending, LeaseState::Gated, LeaseState::Pending]
                );
                let groups = shared.life.groups.as_ref().unwrap();
                assert_eq!(groups.waiting(), 1);
                // The same leases arriving again are not taken in twice.
                gate.send(Arrived(leases.clone())).await.unwrap();
                assert_eq!(groups.waiting(), 1);
                assert_eq!(leases[1].state(), LeaseState::Gated);
                // Admitted (its group moved on), a2 runs.
                gate.send(Admit(vec![leases[1].clone()])).await.unwrap();
                assert_eq!(leases[1].state(), LeaseState::Pending);
            });
        }

        #[test]
        fn redeliveries_are_probed_only_with_a_result_store() {
            paused_system().block_on(async {
                for results in [true, false] {
                    let local = LocalBackend::new();
                    let q = local.create_queue("q", QueueOptions::default());
                    let dlq = local.create_queue("dlq", QueueOptions::default());
                    for body in ["m1", "m2"] {
                        q.enqueue(OutgoingMessage::new(body)).unwrap();
                    }
                    let store = Arc::new(crate::idempotency::LocalIdempotencyStore::new());
                    let mut p = Pipeline::new("p")
                        .source(q.clone())
                        .dead_letter(dlq)
                        .idempotency(store)
                        .processor(|| Noop);
                    if results {
                        p = p.results(local.blobs(), "results", "out/", "txt");
                    }
                    let shared = Shared::new(p);
                    crate::pipeline::start_keeper_only(shared.clone());
                    // m1 is received twice: its second delivery is a redelivery.
                    let first = q.receive(1, Duration::ZERO, Duration::ZERO).await.unwrap();
                    assert_eq!(first.len(), 1);
                    let leases = gated(&shared, q.as_ref(), 2).await;
                    let mut counts: Vec<_> = leases.iter().map(|l| l.job.receive_count).collect();
                    counts.sort_unstable();
                    assert_eq!(counts, [1, 2]);
                    let gate = Gate::new(shared.clone()).start();
                    gate.send(Arrived(leases.clone())).await.unwrap();
                    for _ in 0..100 {
                        if leases.iter().all(|l| l.state() != LeaseState::Gated) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for l in &leases {
                        let want = if results && l.job.receive_count > 1 {
                            LeaseState::Probing
                        } else {
                            LeaseState::Pending
                        };
                        assert_eq!(
                            l.state(),
                            want,
                            "results {results}, {:?}",
                            l.job.receive_count
                        );
                        assert!(l.is_claimed(), "claimed before it runs");
                    }
                }
            });
        }

        /// A restarted gate re-derives its work from the Gated leases: a
        /// group's running one is routed again, a waiting one stays
        /// waiting, one its groups never saw is admitted.
        #[test]
        fn a_restarted_gate_rederives_its_work_from_the_gated_leases() {
            paused_system().block_on(async {
                let (q, shared) = fifo(&[("a", "a1"), ("a", "a2"), ("c", "c1")]);
                let leases = gated(&shared, q.as_ref(), 3).await;
                let [a1, a2, c1] = <[_; 3]>::try_from(leases).ok().unwrap();
                let groups = shared.life.groups.as_ref().unwrap();
                // The gate took a1 and a2 in and had not routed a1 yet when
                // it stopped; c1's `Arrived` was never handled.
                assert_eq!(groups.admit(vec![a1.clone(), a2.clone()]).len(), 1);
                assert!(a1.take_in() && a2.take_in());
                let shared2 = shared.clone();
                let gate = actix::Supervisor::start(move |_| Gate::new(shared2.clone()));
                gate.send(Restart).await.unwrap();
                for _ in 0..100 {
                    if a1.state() != LeaseState::Gated && c1.state() != LeaseState::Gated {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert_eq!(
                    states(&[a1.clone(), a2.clone(), c1.clone()]),
                    [LeaseState::Pending, LeaseState::Gated, LeaseState::Pending]
                );
                assert_eq!(groups.waiting(), 1);
                assert!(groups.is_waiting(&a2));
                assert!(groups.is_running(&a1));
                assert!(groups.is_running(&c1), "c1 admitted to its group");
                assert!(!a2.take_in(), "the waiting lease was taken in again");
            });
        }
    }
}
