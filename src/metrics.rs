//! The metrics ferry emits through the [`metrics`](https://docs.rs/metrics)
//! facade. ferry installs no recorder unless its HTTP endpoint serves them
//! (the `http` feature: `RuntimeBuilder::serve_http` installs a Prometheus
//! recorder): a service installs one (for example
//! `metrics-exporter-prometheus`) **before** starting the runtime, and every
//! pipeline's metrics go to it, labelled with [`PIPELINE_LABEL`].
//!
//! Counters (`ferry_<counter>_total`, one per field of
//! [`StatsSnapshot`](crate::StatsSnapshot), bumped at the same moment as it,
//! so the two always agree): `ferry_received_total`,
//! `ferry_duplicates_merged_total`, `ferry_duplicates_dropped_total`,
//! `ferry_processed_total`, `ferry_failed_total`, `ferry_panics_total`,
//! `ferry_restarts_total`, `ferry_resumed_total`, `ferry_uploaded_total`,
//! `ferry_published_total`, `ferry_acked_total`, `ferry_retried_total`,
//! `ferry_waited_total`, `ferry_dead_lettered_total`,
//! `ferry_released_total`, `ferry_leases_extended_total`,
//! `ferry_leases_lost_total`, `ferry_escalations_total`,
//! `ferry_actor_restarts_total`, `ferry_backend_panics_total`,
//! `ferry_backend_timeouts_total`, `ferry_settle_gave_up_total`, the
//! idempotency store's `ferry_skipped_completed_total`,
//! `ferry_claims_deferred_total` and `ferry_claims_lost_total`,
//! `ferry_s3_test_events_total`, `ferry_split_messages_total` and
//! `ferry_workers_replaced_total` ([`counter_names`] lists them).
//!
//! Histograms, in seconds: [`PROCESSING_SECONDS`] (one processor run) and
//! [`END_TO_END_SECONDS`] (from receive to delete, per job acked). Gauge:
//! [`IN_FLIGHT`] (leases held).
//!
//! Gauges of each pipeline's source queue, set by the `http` feature's
//! endpoint each time it reads the queue's depth: [`QUEUE_VISIBLE`],
//! [`QUEUE_IN_FLIGHT`] and [`BACKLOG_PER_WORKER`].

pub use crate::stats::{END_TO_END_SECONDS, IN_FLIGHT, PIPELINE_LABEL, PROCESSING_SECONDS};

/// Gauge: messages a receive could return now from the pipeline's source
/// queue (SQS `ApproximateNumberOfMessages` plus the delayed ones).
pub const QUEUE_VISIBLE: &str = "ferry_queue_depth_visible";
/// Gauge: messages of the pipeline's source queue received by any consumer
/// and not yet deleted or visible again.
pub const QUEUE_IN_FLIGHT: &str = "ferry_queue_depth_in_flight";
/// Gauge: [`QUEUE_VISIBLE`] divided by the pipeline's processor slots in
/// this process (its workers; its concurrency for async and batch
/// processors) — the backlog per worker to scale a fleet on.
pub const BACKLOG_PER_WORKER: &str = "ferry_backlog_per_worker";

/// The names of every counter ferry emits (each ends in `_total`).
pub fn counter_names() -> &'static [&'static str] {
    crate::stats::COUNTER_NAMES
}

/// Registers a description and unit for each ferry metric with the
/// recorder installed now. Optional: exporters show the descriptions as
/// `# HELP` lines.
pub fn describe() {
    for name in counter_names() {
        ::metrics::describe_counter!(*name, ::metrics::Unit::Count, "ferry pipeline counter");
    }
    ::metrics::describe_histogram!(
        PROCESSING_SECONDS,
        ::metrics::Unit::Seconds,
        "one processor run"
    );
    ::metrics::describe_histogram!(
        END_TO_END_SECONDS,
        ::metrics::Unit::Seconds,
        "from receive to delete, per job acked"
    );
    ::metrics::describe_gauge!(IN_FLIGHT, ::metrics::Unit::Count, "leases held now");
    ::metrics::describe_gauge!(
        QUEUE_VISIBLE,
        ::metrics::Unit::Count,
        "messages visible in the source queue"
    );
    ::metrics::describe_gauge!(
        QUEUE_IN_FLIGHT,
        ::metrics::Unit::Count,
        "messages of the source queue in flight (any consumer)"
    );
    ::metrics::describe_gauge!(
        BACKLOG_PER_WORKER,
        "visible messages in the source queue per processor slot of this process"
    );
}
