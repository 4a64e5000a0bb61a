//! DESIGN rule 6: a panicking processor is rebuilt from its factory, its job
//! retried, no lease lapses while held; restarts past the limit escalate.

mod common;

use std::time::Duration;

use common::watched::Watched;
use common::*;
use ferry::prelude::*;
use ferry::testkit::PanicInjector;

#[tokio::test]
async fn panicking_processor_is_rebuilt_and_every_job_completes() {
    let h = Harness::new();
    h.send_jobs(40).await;
    let p = Counting::new().with_delay(Duration::from_millis(20));
    let built = p.built.clone();
    let factory_p = p.clone();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(h.jobs.clone())
                .dead_letter(h.dlq.clone())
                .results(h.local.blobs(), "results", "out/", "txt")
                .topic(h.topic.clone())
                .processor(move || PanicInjector::new(factory_p.clone(), 5, 0.3))
                .configure(|c| {
                    fast(c);
                    // Short leases: the keeper must extend those queued behind
                    // slow jobs, or they would lapse and come back as copies.
                    c.visibility_timeout = Duration::from_millis(100);
                    c.max_in_flight = 40;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("every job deleted", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert!(stats.panics > 0, "the injector chose no job: {stats:?}");
    assert_eq!(stats.restarts, stats.panics, "one rebuild per panic");
    assert_eq!(
        *built.lock().unwrap() as u64,
        2 + stats.restarts,
        "built by the factory"
    );
    assert_eq!(h.results().await.len(), 40);
    for i in 0..40 {
        assert_eq!(p.runs_of(&format!("job-{i}")), 1);
    }
    // A lapsed lease would have come back as a copy or been lost.
    assert_eq!(
        stats.duplicates_merged, 0,
        "a lease lapsed while held: {stats:?}"
    );
    assert_eq!(stats.leases_lost, 0);
    assert!(stats.leases_extended > 0, "{stats:?}");
    assert!(h.dlq.snapshot().is_empty());
}

#[tokio::test]
async fn restarts_past_the_limit_stop_polling_and_release_every_lease() {
    let h = Harness::new();
    h.send_jobs(20).await;
    // Records every delivery and every visibility ferry sets.
    let q = Watched::new(h.jobs.clone());
    let p = Counting::new();
    p.set(Behaviour::Panic);
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).source(q.clone()).configure(|c| {
            c.restart.max_restarts = 3;
            c.retry_backoff_base = Duration::from_secs(30);
            c.max_in_flight = 10;
            // A lease not given back would keep its message hidden this
            // long, past every wait below.
            c.visibility_timeout = Duration::from_secs(30);
        }))
        .start()
        .await
        .unwrap();
    eventually("escalation", || {
        rt.stats_of("stage").unwrap().escalations == 1
    })
    .await;
    eventually("every lease released", || rt.in_flight() == 0).await;
    let received = rt.stats_of("stage").unwrap().received;
    assert!(
        (1..=10).contains(&received),
        "{received} received, with at most 10 in flight"
    );
    // Each message ferry held was given back at the queue: its handle's
    // last visibility change makes it visible again at once (released) or
    // after the retry backoff (capped at 200 ms), and none was deleted.
    let record = q.record();
    assert_eq!(record.deliveries.len() as u64, received, "{record:?}");
    assert!(record.deleted.is_empty(), "{record:?}");
    for d in &record.deliveries {
        let changes = record.changes_of(&d.handle);
        assert!(
            changes
                .last()
                .is_some_and(|c| c.to <= Duration::from_millis(200)),
            "delivery {d:?} was not given back: {changes:?}"
        );
    }
    // So all 20 are visible again and none is in flight.
    eventually("every message visible again", || {
        let depth = h.jobs.depth_now();
        depth.visible == 20 && depth.in_flight == 0
    })
    .await;
    // With every message visible, a pipeline still polling would receive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rt.stats_of("stage").unwrap();
    assert_eq!(
        after.received, received,
        "the pipeline kept polling after escalating"
    );
    assert_eq!(q.record().deliveries.len() as u64, received);
    assert!(rt.stats()[0].escalated);
    assert!(h.dlq.snapshot().is_empty());
    rt.shutdown().await;
}
