//! Spot interruption drain, in process on the embedded backend: a fake
//! metadata service starts announcing an interruption mid-run, and the
//! runtime drains exactly as on SIGTERM — unstarted jobs released at once,
//! the started one finished, no lease held at exit, no job lost.
#![cfg(feature = "aws")]

mod common;

use std::time::{Duration, Instant};

use common::imds::FakeImds;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_drains_like_sigterm() {
    let imds = FakeImds::start();
    let client = ferry::spot::imds_client(Some(&imds.endpoint)).unwrap();
    // Before the notice: 404, no interruption.
    assert_eq!(
        ferry::spot::check_interruption(&client).await.unwrap(),
        None
    );

    let h = Harness::new();
    let ids = h.send_jobs(20).await;
    let p = Counting::new().with_delay(Duration::from_millis(800));
    let rt = common::ten_leases_one_started(&h, &p).await;
    let watcher = ferry::spot::interruption_notice(client, Duration::from_millis(50));
    let checks_before = imds.checks();
    let run = tokio::spawn(rt.run_until(async move {
        let notice = watcher.await;
        assert_eq!(notice.action, "terminate");
    }));
    // The watcher polls and finds nothing yet: the runtime keeps running.
    eventually("the watcher polled a few times", || {
        imds.checks() >= checks_before + 3
    })
    .await;
    assert!(!run.is_finished(), "drained before any notice");
    assert_eq!(h.jobs.depth_now().in_flight, 10);

    imds.interrupt("terminate");
    let noticed = Instant::now();
    eventually("unstarted leases released", || {
        h.jobs.depth_now().visible >= 19
    })
    .await;
    let released_in = noticed.elapsed();
    let report = tokio::time::timeout(LIMIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eprintln!(
        "spot: notice after {} checks, {} token(s); unstarted released {released_in:?} after the notice; {report:?}",
        imds.checks(),
        imds.tokens()
    );
    assert!(released_in < Duration::from_secs(1), "took {released_in:?}");
    assert_eq!(report.released_unstarted, 9, "{report:?}");
    assert_eq!(report.released_after_grace, 0, "{report:?}");
    assert_eq!(report.held_at_exit, 0, "{report:?}");
    // IMDSv2: a session token was fetched and every read carried it.
    assert!(imds.tokens() >= 1);
    assert_eq!(imds.refused(), 0);
    // No job lost: the started one finished, the rest wait in the queue.
    let depth = h.jobs.depth_now();
    assert_eq!((depth.visible, depth.in_flight), (19, 0));
    let results = h.results().await;
    assert_eq!(results.len(), 1);
    assert_eq!(results.len() + depth.visible, ids.len());
    assert!(h.dlq.depth_now().total() == 0);
}

#[tokio::test]
async fn no_metadata_service_means_no_notice_and_no_crash() {
    // A port nobody listens on: errors are logged, polling goes on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = ferry::spot::imds_client(Some(&format!("http://127.0.0.1:{port}"))).unwrap();
    assert!(ferry::spot::check_interruption(&client).await.is_err());
    let watch = ferry::spot::interruption_notice(client, Duration::from_millis(20));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch)
            .await
            .is_err(),
        "a notice out of nowhere"
    );
}
