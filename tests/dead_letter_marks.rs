//! A dead-lettered message that comes back (a replica missed its delete)
//! gets no second dead-letter entry and no second run, whichever worker
//! receives it: with an idempotency store the message is marked
//! dead-lettered there before its delete (DESIGN rule 13). The worker here
//! forgets at once what its seen cache knew, as another process would.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry::backend::local::Faults;
use ferry::prelude::*;
use ferry::StatsSnapshot;

/// Refuses every job as bad input; counts its runs.
#[derive(Clone, Default)]
struct Refuses {
    runs: Arc<AtomicU32>,
}

impl Processor for Refuses {
    fn process(&mut self, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        self.runs.fetch_add(1, Ordering::AcqRel);
        Err(ProcessError::bad_input("cannot be used"))
    }
}

async fn returning_dead_letters(with_store: bool) -> (u32, usize, StatsSnapshot) {
    let h = Harness::new();
    let ids: Vec<String> = (0..3).map(|i| format!("bad-{i}")).collect();
    h.send_named(&ids).await;
    // Every delete is missed once: each message comes back within 200 ms.
    h.local.set_faults(Faults {
        redeliver_after_delete_rate: 1.0,
        ..Faults::none()
    });
    let p = Refuses::default();
    let store = Arc::new(h.local.idempotency_store());
    let mut pipeline = Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .processor({
            let p = p.clone();
            move || p.clone()
        })
        .configure(|c| {
            fast(c);
            // The seen cache keeps nothing: the message's return is met
            // as another worker would meet it.
            c.seen_ttl = Duration::from_millis(1);
        });
    if with_store {
        pipeline = pipeline.idempotency(store);
    }
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    // Each message received, deleted, received again once it came back,
    // and deleted again.
    eventually("every message back once and gone", || {
        let received = rt.stats_of("stage").map_or(0, |s| s.received);
        received >= 6 && h.jobs.depth_now().total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").expect("the pipeline");
    rt.shutdown().await;
    (
        p.runs.load(Ordering::Acquire),
        h.dlq.depth_now().total(),
        stats,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_dead_lettered_message_is_deleted_unrun_with_a_store() {
    let (runs, entries, stats) = returning_dead_letters(true).await;
    assert_eq!(runs, 3, "each job ran once: {stats:?}");
    assert_eq!(entries, 3, "one entry per job: {stats:?}");
    assert_eq!(stats.received, 6, "each message came back once: {stats:?}");
    assert_eq!(stats.dead_lettered, 3, "{stats:?}");
}

/// Without a store a worker that does not remember the message runs it
/// again: what the mark prevents, shown so the test above cannot pass for
/// another reason (the returns not reaching the worker, say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_a_forgetful_worker_dead_letters_the_return_again() {
    let (runs, entries, stats) = returning_dead_letters(false).await;
    assert_eq!(stats.received, 6, "each message came back once: {stats:?}");
    assert_eq!(runs, 6, "{stats:?}");
    assert_eq!(entries, 6, "{stats:?}");
}
