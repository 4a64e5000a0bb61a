//! Counters per pipeline, readable at any time as a [`StatsSnapshot`], and
//! mirrored to the `metrics` facade (see the `metrics` module): each counter
//! `x` is also `ferry_x_total{pipeline="…"}`, bumped at the same moment.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The label naming the pipeline on every ferry metric.
pub const PIPELINE_LABEL: &str = "pipeline";
/// Histogram: how long one processor run took, in seconds.
pub const PROCESSING_SECONDS: &str = "ferry_processing_seconds";
/// Histogram: from a message's receive to its delete, in seconds, per job
/// acked (dead-lettered jobs and dropped copies not included).
pub const END_TO_END_SECONDS: &str = "ferry_end_to_end_seconds";
/// Gauge: leases held now.
pub const IN_FLIGHT: &str = "ferry_in_flight";

/// One counter: the value the snapshot reads, and its `metrics` handle.
#[derive(Debug)]
pub(crate) struct Counter {
    value: AtomicU64,
    metric: metrics::Counter,
}

impl Counter {
    fn new(name: &'static str, pipeline: &str) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric: metrics::counter!(name, PIPELINE_LABEL => pipeline.to_owned()),
        }
    }

    fn load(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters of one pipeline, and its other metrics.
        #[derive(Debug)]
        pub(crate) struct Stats {
            $( pub(crate) $name: Counter, )*
            /// `ferry_processing_seconds`: one processor run.
            pub(crate) processing: metrics::Histogram,
            /// `ferry_end_to_end_seconds`: receive to delete, per job acked.
            pub(crate) end_to_end: metrics::Histogram,
            /// `ferry_in_flight`: leases held.
            pub(crate) in_flight: metrics::Gauge,
        }

        /// A copy of one pipeline's counters.
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            /// The counters of the pipeline `pipeline`, registered with the
            /// `metrics` recorder installed now (if any).
            pub(crate) fn new(pipeline: &str) -> Self {
                Self {
                    $( $name: Counter::new(concat!("ferry_", stringify!($name), "_total"), pipeline), )*
                    processing: metrics::histogram!(PROCESSING_SECONDS, PIPELINE_LABEL => pipeline.to_owned()),
                    end_to_end: metrics::histogram!(END_TO_END_SECONDS, PIPELINE_LABEL => pipeline.to_owned()),
                    in_flight: metrics::gauge!(IN_FLIGHT, PIPELINE_LABEL => pipeline.to_owned()),
                }
            }

            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(), )* }
            }
        }

        /// Every counter's metric name.
        pub(crate) const COUNTER_NAMES: &[&str] = &[
            $( concat!("ferry_", stringify!($name), "_total"), )*
        ];

        impl std::ops::Add for StatsSnapshot {
            type Output = StatsSnapshot;
            fn add(self, o: StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name + o.$name, )* }
            }
        }
    };
}

counters! {
    /// Messages received (copies included).
    received,
    /// Copies that arrived while the job was in flight and joined its lease.
    duplicates_merged,
    /// Copies deleted unprocessed: deliveries of a job that completed, and
    /// other messages of a job in flight.
    duplicates_dropped,
    /// Successful processor runs.
    processed,
    /// Processor runs that returned an error.
    failed,
    /// Processor runs that panicked.
    panics,
    /// Processors rebuilt after a panic.
    restarts,
    /// Actors restarted (after a panic, or stalled) and worker threads that
    /// carried on after a panic outside the processor.
    actor_restarts,
    /// Backend or store calls that panicked (turned into transient errors).
    backend_panics,
    /// Backend or store calls that timed out (turned into transient errors).
    backend_timeouts,
    /// Lease endings given up after repeated or permanent failures: the
    /// lease was let go for the queue's visibility timeout to return.
    settle_gave_up,
    /// Redelivered jobs whose result already existed, so processing was skipped.
    resumed,
    /// Result objects written.
    uploaded,
    /// Notifications accepted by the topic.
    published,
    /// Messages deleted after success.
    acked,
    /// Jobs put back with a backoff to be tried again after they failed
    /// (an attempt charged).
    retried,
    /// Jobs put back for a while because the infrastructure failed (an
    /// upload, a notice, a dependency the processor needs): no attempt
    /// charged.
    waited,
    /// Messages sent to the dead-letter queue.
    dead_lettered,
    /// Leases given back (visibility 0) without processing to the end.
    released,
    /// Successful visibility extensions.
    leases_extended,
    /// Leases lost (receipt invalid or maximum age reached).
    leases_lost,
    /// Times the pipeline escalated (restarts in a row past the limit).
    escalations,
    /// Jobs the idempotency store knew as completed: deleted unprocessed.
    skipped_completed,
    /// Jobs claimed by another worker: given back for a later look.
    claims_deferred,
    /// Claims lost while the job ran (renewal or completion refused): the
    /// job was cancelled before its effects, or its record left alone.
    claims_lost,
    /// S3 test events deleted on receipt, without work.
    s3_test_events,
    /// Messages split into parts sent back to the source queue, then
    /// deleted (see `Pipeline::split`).
    split_messages,
    /// Worker threads replaced because their job ran past its cancellation
    /// by more than `hang_grace` (the old thread abandoned, detached).
    workers_replaced,
}

impl StatsSnapshot {
    /// Copies dropped or merged by the seen-ID cache.
    pub fn duplicates(&self) -> u64 {
        self.duplicates_merged + self.duplicates_dropped
    }
}

impl Stats {
    pub(crate) fn add(&self, counter: &Counter, n: u64) {
        if n == 0 {
            return;
        }
        counter.value.fetch_add(n, Ordering::Relaxed);
        counter.metric.increment(n);
    }

    pub(crate) fn inc(counter: &Counter) {
        counter.value.fetch_add(1, Ordering::Relaxed);
        counter.metric.increment(1);
    }
}
