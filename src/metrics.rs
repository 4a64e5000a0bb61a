//! The metrics ferry emits through the [`metrics`](https://docs.rs/metrics)
//! facade. ferry installs no recorder: a service installs one (for example
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
//! `ferry_dead_lettered_total`, `ferry_released_total`,
//! `ferry_leases_extended_total`, `ferry_leases_lost_total`,
//! `ferry_escalations_total`.
//!
//! Histograms, in seconds: [`PROCESSING_SECONDS`] (one processor run) and
//! [`END_TO_END_SECONDS`] (from receive to delete, per job acked). Gauge:
//! [`IN_FLIGHT`] (leases held).

pub use crate::stats::{END_TO_END_SECONDS, IN_FLIGHT, PIPELINE_LABEL, PROCESSING_SECONDS};

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
}
