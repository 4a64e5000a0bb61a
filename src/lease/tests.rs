//! Unit tests of `lease`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::backend::ReceivedMessage;
use crate::job::Job;
use crate::processor::Output;

fn job(message_id: &str) -> Job {
    Job::from_message(ReceivedMessage {
        message_id: message_id.into(),
        receipt_handle: String::new(),
        body: String::new(),
        attributes: Default::default(),
        receive_count: 1,
        group_id: None,
        dedup_id: None,
    })
}

/// `ms` after now (tests run on a paused clock: now stands still).
fn at(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn states_read_back_as_set_and_name_themselves() {
    let t = LeaseTable::default();
    let l = t.insert(job("m"), "h".into(), at(1000));
    assert_eq!(l.state(), LeaseState::Pending);
    for (i, s) in LeaseState::ALL.into_iter().enumerate().skip(1) {
        assert_eq!(
            l.transition(&[LeaseState::ALL[i - 1]], s),
            Some(LeaseState::ALL[i - 1])
        );
        assert_eq!(l.state(), s);
    }
    let names: Vec<_> = LeaseState::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            "pending",
            "gated",
            "probing",
            "running",
            "processed",
            "stored",
            "settling",
            "ended"
        ]
    );
    let unstarted: Vec<_> = LeaseState::ALL
        .into_iter()
        .filter(|s| s.unstarted())
        .collect();
    assert_eq!(
        unstarted,
        [LeaseState::Pending, LeaseState::Gated, LeaseState::Probing]
    );
}

#[tokio::test(start_paused = true)]
async fn a_transition_moves_only_from_its_states_and_counts_starts_once() {
    let t = LeaseTable::default();
    let l = t.insert(job("m"), "h".into(), at(1000));
    assert_eq!(t.pending(), 1);
    assert!(l.take_in());
    assert_eq!(
        l.transition(&[LeaseState::Running], LeaseState::Stored),
        None
    );
    assert_eq!(l.state(), LeaseState::Pending);
    assert!(!l.take_in(), "a refused transition changes nothing");
    // Between unstarted states: still pending.
    assert_eq!(
        l.transition(
            &[LeaseState::Running, LeaseState::Pending],
            LeaseState::Gated
        ),
        Some(LeaseState::Pending)
    );
    assert_eq!(t.pending(), 1);
    assert!(l.take_in(), "a transition lets the lease be taken in anew");
    assert_eq!(
        l.transition(&[LeaseState::Gated], LeaseState::Probing),
        Some(LeaseState::Gated)
    );
    assert_eq!(t.pending(), 1);
    // Started: counted once.
    assert_eq!(
        l.transition(&[LeaseState::Probing], LeaseState::Stored),
        Some(LeaseState::Probing)
    );
    assert_eq!(t.pending(), 0);
    assert_eq!(
        l.transition(&[LeaseState::Stored], LeaseState::Settling),
        Some(LeaseState::Stored)
    );
    assert_eq!(t.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn settling_from_a_state_seen_leaves_a_lease_that_moved_on() {
    let t = LeaseTable::default();
    let l = t.insert(job("a"), "h".into(), at(1000));
    // Seen Pending, then started by another worker: not given back.
    assert!(l.try_start());
    assert!(!l.begin_settling_from(LeaseState::Pending, Ending::Release));
    assert_eq!(l.state(), LeaseState::Running);
    assert!(l.ending().is_none());
    // Still as seen: it moves, with its ending.
    let p = t.insert(job("b"), "h".into(), at(1000));
    assert!(p.begin_settling_from(LeaseState::Pending, Ending::Release));
    assert_eq!(p.state(), LeaseState::Settling);
    assert!(matches!(p.ending(), Some(Ending::Release)));
    assert_eq!(t.pending(), 0);
    // Never from a state the settle move does not leave.
    assert!(!p.begin_settling_from(LeaseState::Settling, Ending::Release));
}

#[tokio::test(start_paused = true)]
async fn try_start_takes_a_pending_lease_once_and_never_a_cancelled_one() {
    let t = LeaseTable::default();
    let l = t.insert(job("a"), "h".into(), at(1000));
    assert!(l.try_start());
    assert_eq!(l.state(), LeaseState::Running);
    assert!(!l.try_start());
    assert_eq!(t.pending(), 0);
    let c = t.insert(job("b"), "h".into(), at(1000));
    t.cancel(&c);
    assert!(c.is_cancelled());
    assert!(!c.try_start());
    assert_eq!(c.state(), LeaseState::Pending);
    assert!(!l.is_cancelled(), "cancelling one lease cancels only it");
    let g = t.insert(job("c"), "h".into(), at(1000));
    g.transition(&[LeaseState::Pending], LeaseState::Gated);
    assert!(!g.try_start(), "only a Pending lease starts");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_wakes_its_waiters_and_shares_its_flag() {
    let t = LeaseTable::default();
    let l = t.insert(job("a"), "h".into(), at(1000));
    let flag = l.cancel_arc();
    let handle = t.cancel_handle(&l);
    assert!(!handle.is_cancelled());
    let waiter = tokio::spawn({
        let handle = handle.clone();
        async move { handle.cancelled().await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiter.is_finished(), "woken before the cancel");
    t.cancel(&l);
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("the cancel wakes the waiter")
        .unwrap();
    assert!(handle.is_cancelled());
    assert!(
        flag.load(Ordering::Acquire),
        "the processor's flag is the lease's"
    );
    // A waiter arriving after the cancel returns at once.
    tokio::time::timeout(Duration::from_secs(1), handle.cancelled())
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_newest_handle_of_each_message_is_kept() {
    let t = LeaseTable::default();
    let l = t.insert(job("own"), "h1".into(), at(1000));
    assert_eq!(l.handle(), "h1");
    assert_eq!(l.handle_and_deadline(), ("h1".to_string(), at(1000)));
    l.merge("own", "h2".into(), at(2000));
    assert_eq!(l.handle_and_deadline(), ("h2".to_string(), at(2000)));
    assert!(!l.had_others(), "its own message is not another");
    assert!(l.take_others().is_empty());
    l.merge("other", "o1".into(), at(3000));
    assert!(l.had_others());
    assert_eq!(
        l.handle(),
        "h2",
        "another message leaves the lease's handle"
    );
    l.merge("other", "o2".into(), at(3000));
    l.merge("third", "t1".into(), at(3000));
    assert_eq!(l.take_others(), ["o2", "t1"]);
    assert!(l.take_others().is_empty());
    assert!(l.had_others());
}

#[tokio::test(start_paused = true)]
async fn an_extension_counts_only_for_the_current_handle() {
    let t = LeaseTable::default();
    let l = t.insert(job("own"), "h1".into(), at(1000));
    assert!(l.extended("h1", at(5000)));
    assert_eq!(l.handle_and_deadline().1, at(5000));
    assert!(
        l.extended("h1", at(4000)),
        "an older answer shortens nothing"
    );
    assert_eq!(l.handle_and_deadline().1, at(5000));
    l.merge("own", "h2".into(), at(6000));
    assert!(!l.extended("h1", at(9000)), "a stale handle's extension");
    assert_eq!(l.handle_and_deadline(), ("h2".to_string(), at(6000)));
}

#[tokio::test(start_paused = true)]
async fn other_messages_are_due_by_their_own_deadlines() {
    let t = LeaseTable::default();
    let l = t.insert(job("own"), "h".into(), at(1000));
    assert!(l.others_due(at(0), at(100_000)).is_empty());
    for (m, until) in [("a", 10), ("b", 20), ("c", 30), ("d", 40)] {
        l.merge(m, format!("h-{m}"), at(until));
    }
    // At 10 a's deadline has passed: dropped. Due by 30: b and c.
    assert_eq!(l.others_due(at(10), at(30)), ["h-b", "h-c"]);
    assert_eq!(l.others_due(at(0), at(100)), ["h-b", "h-c", "h-d"]);
    // An extension moves one's deadline on, never back.
    l.other_extended("h-b", at(35));
    l.other_extended("h-c", at(25));
    l.other_extended("h-x", at(99));
    assert_eq!(l.others_due(at(0), at(30)), ["h-c"]);
    assert_eq!(l.others_due(at(0), at(35)), ["h-b", "h-c"]);
    // A refused handle is not ours any more.
    l.drop_other("h-c");
    assert_eq!(l.others_due(at(0), at(100)), ["h-b", "h-d"]);
    assert_eq!(l.take_others(), ["h-b", "h-d"]);
}

#[tokio::test(start_paused = true)]
async fn one_extension_at_a_time_and_none_while_giving_back() {
    let t = LeaseTable::default();
    let l = t.insert(job("a"), "h".into(), at(1000));
    assert!(!l.is_extending());
    assert!(l.begin_extend());
    assert!(l.is_extending());
    assert!(!l.begin_extend());
    l.end_extend();
    assert!(!l.is_extending());
    assert!(l.begin_extend());
    assert!(!l.gives_back());
    for (ending, back) in [
        (
            Ending::Delete {
                dead_lettered: false,
            },
            false,
        ),
        (Ending::DeadLetter { reason: "r".into() }, false),
        (
            Ending::Retry {
                reason: "r".into(),
                after: None,
            },
            true,
        ),
        (Ending::Release, true),
        (
            Ending::Defer {
                after: Duration::from_secs(1),
            },
            true,
        ),
    ] {
        l.set_ending(ending.clone());
        assert_eq!(l.gives_back(), back, "{ending:?}");
        assert_eq!(l.ending(), Some(ending));
    }
}

#[tokio::test(start_paused = true)]
async fn settling_keeps_the_ending_of_the_move_that_won() {
    let t = LeaseTable::default();
    let l = t.insert(job("a"), "h".into(), at(1000));
    assert_eq!(l.ending(), None);
    assert!(l.try_start());
    assert!(l.begin_settling(Ending::Release));
    assert_eq!(l.state(), LeaseState::Settling);
    assert!(!l.begin_settling(Ending::Delete {
        dead_lettered: false
    }));
    assert_eq!(l.ending(), Some(Ending::Release));
    assert_eq!(l.settle_failed(), 1);
    assert_eq!(l.settle_failed(), 2);
    assert_eq!(l.settle_failed(), 3);
}

#[tokio::test(start_paused = true)]
async fn claims_outputs_and_taking_in_are_kept_per_lease() {
    let t = LeaseTable::default();
    let l = t.insert(job("a"), "h".into(), at(1000));
    assert!(!l.is_claimed());
    assert!(!l.take_claim());
    l.set_claimed(at(2000));
    assert!(l.is_claimed());
    assert!(!l.claim_lapsed(at(1999)));
    assert!(
        l.claim_lapsed(at(2000)),
        "held until its deadline, not at it"
    );
    l.claim_renewed(at(1500));
    assert!(l.claim_lapsed(at(2000)), "an older renewal moves nothing");
    l.claim_renewed(at(3000));
    assert!(!l.claim_lapsed(at(2500)));
    assert!(l.take_claim());
    assert!(!l.is_claimed());
    assert!(!l.take_claim(), "given up once");
    assert_eq!(l.output(), None);
    l.set_output(Some(Output::text("out")));
    assert_eq!(l.output(), Some(Output::text("out")));
    l.set_output(None);
    assert_eq!(l.output(), None);
    assert!(l.take_in());
    assert!(!l.take_in());
    l.let_out();
    assert!(l.take_in());
}

#[tokio::test(start_paused = true)]
async fn time_in_state_follows_the_tables_clock() {
    let t = LeaseTable::default();
    let l = t.insert(job("a"), "h".into(), at(1000));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(l.in_state_for(), Duration::ZERO, "the clock moves on ticks");
    t.tick();
    assert_eq!(l.in_state_for(), Duration::from_secs(5));
    l.transition(&[LeaseState::Pending], LeaseState::Gated);
    assert_eq!(l.in_state_for(), Duration::ZERO);
    tokio::time::advance(Duration::from_secs(2)).await;
    t.tick();
    assert_eq!(l.in_state_for(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_table_finds_leases_by_state_oldest_first() {
    let t = LeaseTable::default();
    assert!(t.is_empty());
    let ls: Vec<_> = (0..4)
        .map(|i| t.insert(job(&format!("m{i}")), "h".into(), at(1000)))
        .collect();
    assert_eq!(t.len(), 4);
    assert!(!t.is_empty());
    let ids: std::collections::HashSet<_> = ls.iter().map(|l| l.id).collect();
    assert_eq!(ids.len(), 4, "every lease its own id");
    for l in [&ls[3], &ls[1], &ls[0]] {
        l.transition(&[LeaseState::Pending], LeaseState::Gated);
    }
    let gated: Vec<_> = t.in_state(LeaseState::Gated).iter().map(|l| l.id).collect();
    assert_eq!(gated, [ls[0].id, ls[1].id, ls[3].id]);
    let mut all: Vec<_> = t.all().iter().map(|l| l.id).collect();
    all.sort_unstable();
    assert_eq!(all, [ls[0].id, ls[1].id, ls[2].id, ls[3].id]);
    // A restarted owner takes its leases in again, once.
    for l in &ls {
        l.take_in();
    }
    let owned = t.restart_owner(&[LeaseState::Pending, LeaseState::Gated]);
    let owned: Vec<_> = owned.iter().map(|l| l.id).collect();
    assert_eq!(owned, [ls[2].id, ls[0].id, ls[1].id, ls[3].id]);
    assert!(ls.iter().all(|l| l.take_in()));
    assert!(t.contains(ls[2].id));
    assert!(t.remove(&ls[2]));
    assert!(!t.remove(&ls[2]));
    assert!(!t.contains(ls[2].id));
    assert_eq!(t.len(), 3);
    assert!(t.restart_owner(&[LeaseState::Running]).is_empty());
}

/// DESIGN.md's table of lease states, owners and moves is the one the code
/// has (regenerate it from the failure's output when the table changes).
#[test]
fn design_shows_the_lease_table_the_code_has() {
    let design = include_str!("../../DESIGN.md");
    let table = state::design_table();
    assert!(
        design.contains(&table),
        "DESIGN.md's table of lease states is out of date; it should read:\n{table}"
    );
}
