//! Unit tests of `gate`.

use std::collections::HashMap;

use super::*;
use crate::backend::ReceivedMessage;
use crate::job::Job;
use crate::lease::Groups;
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
    l.put_in(LeaseState::Gated);
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
    a3.put_in(LeaseState::Settling);
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
    fn fifo(
        messages: &[(&str, &str)],
    ) -> (Arc<LocalQueue>, Arc<Shared>, crate::pipeline::next::Routes) {
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
        let routes = crate::pipeline::start_keeper_only(shared.clone());
        (q, shared, routes)
    }

    /// Receives every message of `q` as the poller does: Gated leases,
    /// in receive order.
    async fn gated(shared: &Shared, q: &dyn Queue, n: usize) -> Vec<Arc<Lease>> {
        let vis = shared.config.visibility_timeout;
        let mut out = Vec::new();
        while out.len() < n {
            for m in q.receive(10, Duration::ZERO, vis).await.unwrap() {
                let handle = m.receipt_handle.clone();
                let l = shared.life.table().insert(
                    Job::from_message(m),
                    handle,
                    tokio::time::Instant::now() + vis,
                );
                l.put_in(LeaseState::Gated);
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
            let (q, shared, routes) = fifo(&[("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")]);
            let leases = gated(&shared, q.as_ref(), 4).await;
            let [a1, a2, a3, b1] = <[_; 4]>::try_from(leases).ok().unwrap();
            let groups = shared.life.groups().unwrap();
            let go = groups.admit(vec![a1.clone(), a2.clone(), a3.clone(), b1.clone()]);
            assert_eq!(go.len(), 2);
            // Nothing is gone yet: repair changes nothing.
            routes.send(shared.repair_groups());
            assert_eq!(groups.waiting(), 2);
            assert!(groups.is_running(&a1) && groups.is_running(&b1));
            // a1 leaves the table without its group hearing of it.
            assert!(shared.life.table().remove(&a1));
            routes.send(shared.repair_groups());
            assert_eq!(groups.waiting(), 0);
            assert!(!groups.is_waiting(&a2) && !groups.is_waiting(&a3));
            // b's running lease is held: b stays as it was.
            assert!(groups.is_running(&b1));
            let b2 = lease(shared.life.table(), "b", 2);
            assert!(
                groups.admit(vec![b2.clone()]).is_empty(),
                "b2 ran beside b1"
            );
            // a2 and a3 go back to the queue, visible again, in order.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!shared.life.table().contains(a2.id));
            assert!(!shared.life.table().contains(a3.id));
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
            let a4 = lease(shared.life.table(), "a", 4);
            assert_eq!(groups.admit(vec![a4]).len(), 1);
        });
    }

    /// The gate routes a first delivery to the processors, a redelivery
    /// to the uploader's probe when there is a result store; it takes a
    /// lease in once; an Admit routes it.
    #[test]
    fn the_gate_routes_each_lease_once() {
        paused_system().block_on(async {
            let (q, shared, _) = fifo(&[("a", "a1"), ("a", "a2"), ("b", "b1")]);
            let leases = gated(&shared, q.as_ref(), 3).await;
            let gate = Gate::new(shared.clone(), crate::pipeline::routes_nowhere()).start();
            gate.send(Arrived(leases.clone())).await.unwrap();
            assert_eq!(
                states(&leases),
                [LeaseState::Pending, LeaseState::Gated, LeaseState::Pending]
            );
            let groups = shared.life.groups().unwrap();
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
                let store = Arc::new(crate::backend::local::LocalIdempotencyStore::new());
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
                let gate = Gate::new(shared.clone(), crate::pipeline::routes_nowhere()).start();
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
            let (q, shared, _) = fifo(&[("a", "a1"), ("a", "a2"), ("c", "c1")]);
            let leases = gated(&shared, q.as_ref(), 3).await;
            let [a1, a2, c1] = <[_; 3]>::try_from(leases).ok().unwrap();
            let groups = shared.life.groups().unwrap();
            // The gate took a1 and a2 in and had not routed a1 yet when
            // it stopped; c1's `Arrived` was never handled.
            assert_eq!(groups.admit(vec![a1.clone(), a2.clone()]).len(), 1);
            assert!(a1.take_in() && a2.take_in());
            let shared2 = shared.clone();
            let gate = actix::Supervisor::start(move |_| {
                Gate::new(shared2.clone(), crate::pipeline::routes_nowhere())
            });
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
