//! Leases count from when the message arrived, whatever the long poll's
//! wait (DESIGN rule 5), and a configuration SQS could not serve is refused
//! at start-up with the setting named.

mod common;

use std::time::Duration;

use common::*;
use ferry::backend::local::Op;
use ferry::backend::MAX_VISIBILITY;
use ferry::prelude::*;
use ferry::FerryError;

/// A visibility of 2 s and a long poll of 10 s: a job sent to an idle queue
/// 3 s after the poller started waiting (past the visibility counted from
/// the receive it arrives in) is run once, acknowledged once, and no lease
/// is lost.
#[tokio::test]
async fn a_job_arriving_late_in_a_long_poll_keeps_its_lease() {
    let h = Harness::new();
    let p = Counting::new().with_delay(Duration::from_secs(1));
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()).configure(|c| {
            c.workers = 1;
            c.visibility_timeout = Duration::from_secs(2);
            c.receive_wait = Duration::from_secs(10);
        }))
        .start()
        .await
        .unwrap();
    eventually("the poller waiting on the idle queue", || {
        h.local.calls().get(Op::Receive) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.send_jobs(1).await;
    eventually("the job acknowledged", || rt.total().acked >= 1).await;
    // Long enough for a lapsed lease to show: another run, a redelivery.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reader = rt.stats_reader();
    rt.shutdown().await;
    let s = reader.total();
    assert_eq!(p.runs_of("job-0"), 1, "the processor ran more than once");
    assert_eq!(p.started_count(), 1, "the job started more than once");
    assert_eq!(s.acked, 1);
    assert_eq!(s.leases_lost, 0, "a lease was lost");
    assert_eq!(s.dead_lettered, 0);
    assert_eq!(h.dlq.depth_now().total(), 0, "the job was dead-lettered");
    assert_eq!(h.jobs.depth_now().total(), 0);
    assert_eq!(h.results().await.len(), 1);
}

/// Starts one pipeline with `f` applied to its configuration.
async fn start_with(f: impl FnOnce(&mut PipelineConfig)) -> Result<RuntimeHandle, FerryError> {
    let h = Harness::new();
    Runtime::builder()
        .pipeline(h.pipeline(Counting::new()).configure(f))
        .start()
        .await
}

/// The message of a refused start, which must name `field`.
async fn refused(field: &str, f: impl FnOnce(&mut PipelineConfig)) {
    match start_with(f).await {
        Ok(rt) => {
            rt.shutdown().await;
            panic!("a pipeline with this {field} started");
        }
        Err(e @ FerryError::Config { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(field),
                "the error does not name {field}: {message}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
    }
}

#[tokio::test]
async fn a_visibility_over_twelve_hours_is_refused() {
    refused("visibility_timeout", |c| {
        c.visibility_timeout = MAX_VISIBILITY + Duration::from_secs(1)
    })
    .await;
    refused("visibility_timeout", |c| {
        c.visibility_timeout = Duration::from_secs(13 * 3600)
    })
    .await;
}

#[tokio::test]
async fn a_maximum_lease_age_over_twelve_hours_is_refused() {
    refused("max_lease_age", |c| {
        c.max_lease_age = MAX_VISIBILITY + Duration::from_secs(1)
    })
    .await;
}

#[tokio::test]
async fn a_visibility_too_short_to_extend_is_refused() {
    refused("visibility_timeout", |c| {
        c.visibility_timeout = PipelineConfig::MIN_VISIBILITY - Duration::from_millis(1)
    })
    .await;
    refused("visibility_timeout", |c| {
        c.visibility_timeout = Duration::ZERO
    })
    .await;
}

#[tokio::test]
async fn settings_of_zero_are_refused_by_name() {
    refused("workers", |c| c.workers = 0).await;
    refused("max_in_flight", |c| c.max_in_flight = 0).await;
    refused("receive_concurrency", |c| c.receive_concurrency = 0).await;
    refused("concurrency", |c| c.concurrency = 0).await;
    refused("max_receives", |c| c.max_receives = 0).await;
}

#[tokio::test]
async fn the_limits_themselves_are_accepted() {
    let mut c = PipelineConfig::default();
    assert_eq!(c.validate(), Ok(()));
    c.visibility_timeout = MAX_VISIBILITY;
    c.max_lease_age = MAX_VISIBILITY;
    assert_eq!(c.validate(), Ok(()));
    c.visibility_timeout = PipelineConfig::MIN_VISIBILITY;
    assert_eq!(c.validate(), Ok(()));
    let err = PipelineConfig {
        max_lease_age: MAX_VISIBILITY * 2,
        ..PipelineConfig::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.field, "max_lease_age");
    let rt = start_with(|c| {
        c.visibility_timeout = MAX_VISIBILITY;
        c.max_lease_age = MAX_VISIBILITY;
    })
    .await
    .expect("the 12-hour limits start");
    rt.shutdown().await;
}

/// A long poll waits at most 40 % of the visibility: a message arriving at
/// its end still has 60 % of its lease, more than the half at which the
/// keeper extends.
#[test]
fn the_long_poll_is_bounded_by_the_visibility() {
    let mut c = PipelineConfig {
        visibility_timeout: Duration::from_secs(60),
        ..PipelineConfig::default()
    };
    assert_eq!(c.poll_wait(), Duration::from_secs(20));
    c.visibility_timeout = Duration::from_secs(30);
    assert_eq!(c.poll_wait(), Duration::from_secs(12));
    c.visibility_timeout = Duration::from_secs(2);
    c.receive_wait = Duration::from_secs(10);
    assert_eq!(c.poll_wait(), Duration::from_millis(800));
    c.receive_wait = Duration::ZERO;
    assert_eq!(c.poll_wait(), Duration::ZERO);
}

/// The keeper stops extending before the maximum lease age, and before
/// SQS's 12 hours from the receive with a quarter of the visibility to
/// spare for the extension to land in.
#[test]
fn leases_are_not_extended_past_twelve_hours_from_the_receive() {
    let hour = Duration::from_secs(3600);
    let mut c = PipelineConfig {
        visibility_timeout: Duration::from_secs(30),
        ..PipelineConfig::default()
    };
    assert_eq!(c.lease_age_limit(Duration::ZERO), None);
    let last = c.max_lease_age - c.visibility_timeout;
    assert_eq!(c.lease_age_limit(last), None);
    assert_eq!(
        c.lease_age_limit(last + Duration::from_millis(1)),
        Some("max_lease_age")
    );
    c.max_lease_age = 12 * hour;
    let last = MAX_VISIBILITY - Duration::from_millis(37_500);
    assert_eq!(c.lease_age_limit(last), None);
    assert_eq!(
        c.lease_age_limit(last + Duration::from_millis(1)),
        Some("SQS's 12 hours from the receive")
    );
}
